"""Data parallel: two real gloo processes compute what one process computes on the global batch."""

import pytest
import torch
import torch.multiprocessing as mp
from leap_toys import DP_PROMPTS, dp_setup, dp_worker

from leapalign.distributed import DistContext
from leapalign.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_two_gloo_ranks_match_one_rank(tmp_path):
    out = tmp_path / "rank0.pt"
    ckpt_dir = tmp_path / "ckpt"
    mp.spawn(dp_worker, args=(2, str(tmp_path / "init"), str(out), str(ckpt_dir)), nprocs=2, join=True)
    two = torch.load(out, weights_only=True)

    params, loss_fn, config = dp_setup()
    single = train(params, loss_fn, DP_PROMPTS, config, dist=DistContext())
    start, _, _ = dp_setup()
    moved = 0.0
    for name, p in params.items():
        diff = (p.detach() - two["params"][name]).abs().max().item()
        assert diff < 1e-6, (name, diff)
        moved = max(moved, (p.detach() - start[name].detach()).abs().max().item())
    assert moved > 1e-3   # training did change the weights, so the match is not trivial
    for ours, theirs in zip([h["rewards"] for h in single.history], two["rewards"]):
        # per-sample lists come back rank-major, so compare as multisets
        assert sorted(ours) == pytest.approx(sorted(theirs), abs=1e-6) and len(ours) == 8
    assert [p.name for p in ckpt_dir.iterdir()] == ["checkpoint-00000004.pt"]   # written once, by rank 0


def test_single_context_is_a_no_op():
    ctx = DistContext.current()
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    ctx.all_reduce_grads([p])
    assert torch.equal(p.grad, torch.full((2,), 3.0))
    assert ctx.reduce_metrics({"a": 1.0}) == {"a": 1.0} and ctx.any(True) and not ctx.any(False)
