"""bench.accounting: meta-device saved-bytes counting agrees with real tensors; the flash stand-in's cost."""

from __future__ import annotations

import torch
from torch import nn

from bench.accounting import ModuleMeter, SavedBytes, _FlashCost


def _count(device: str):
    torch.manual_seed(0)
    with torch.device(device):
        model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16), nn.LayerNorm(16)).requires_grad_(False)
        model[0].weight.requires_grad_(True)
        x = torch.randn(4, 16) if device == "cpu" else torch.empty(4, 16)
    counter = SavedBytes(model.parameters())
    meter = ModuleMeter(counter, {"first": model[0], "last": model[3]})
    with counter.recording():
        out = model(x)
    meter.close()
    return counter, meter, out


def test_meta_counts_what_real_tensors_save():
    real, real_meter, out = _count("cpu")
    meta, meta_meter, _ = _count("meta")
    assert real.activation_bytes == meta.activation_bytes == sum(real.by_pointer.values())
    assert real.activation_bytes > 0 and meta.by_pointer == {}
    assert real_meter.saved == meta_meter.saved and real_meter.inputs == meta_meter.inputs == {"first": 256, "last": 256}
    out.sum().backward()  # the counted graph is a working one


def test_flash_stand_in_saves_q_k_v_out_and_float32_lse():
    q, k, v = (torch.empty(1, 2, 10, 8, dtype=torch.bfloat16, device="meta", requires_grad=True) for _ in range(3))
    counter = SavedBytes()
    with counter.recording():
        _FlashCost.apply(q, k, v)
    assert counter.activation_bytes == 4 * (2 * 10 * 8 * 2) + 2 * 10 * 4
