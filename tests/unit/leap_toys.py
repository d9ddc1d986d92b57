"""Small velocity fields, decoders and rewards for the core's unit tests (no ComfyUI)."""

from __future__ import annotations

import torch
from torch import Tensor


class LinearVelocity(torch.nn.Module):
    """``v(x, s) = W x + s c`` per sample on the flattened latent: Jacobians writable by hand."""

    def __init__(self, dim: int, dtype=torch.float64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(0.3 * torch.randn(dim, dim, generator=g, dtype=dtype))
        self.c = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=dtype))

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        flat = x.flatten(1)
        return (flat @ self.W.T + sigma[:, None].to(flat.dtype) * self.c).view_as(x)


class MLPVelocity(torch.nn.Module):
    """A small MLP on ``[x, sigma]``; ``dropout`` exercises the global torch RNG."""

    def __init__(self, dim: int, hidden: int = 32, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(hidden, dim))

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        h = torch.cat([x.flatten(1), sigma[:, None].to(x.dtype)], dim=1)
        return self.net(h).view_as(x)


class CountingVelocity:
    """Wraps a velocity and records every call: grad mode, input, sigma."""

    def __init__(self, velocity):
        self.velocity = velocity
        self.calls: list[dict] = []

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls.append({"grad": torch.is_grad_enabled(), "x": x.detach().clone(),
                           "x_requires_grad": x.requires_grad, "sigma": sigma.detach().clone()})
        return self.velocity(x, sigma)

    @property
    def grad_calls(self) -> list[dict]:
        return [c for c in self.calls if c["grad"]]


def identity_decoder(x: Tensor) -> Tensor:
    return x


def sigmoid_decoder(x: Tensor) -> Tensor:
    """Latent ``[B, D]`` -> image ``[B, 3, 2, 2]`` in [0, 1] from the first 3 channels."""
    return torch.sigmoid(x.flatten(1)[:, :3, None, None].expand(-1, 3, 2, 2))


class LinearReward:
    """``r_b = sum(g * image_b)``; records the images it was called on."""

    default_lambda = 1e6

    def __init__(self, g: Tensor):
        self.g = g
        self.seen: list[Tensor] = []

    def __call__(self, images: Tensor, prompts) -> Tensor:
        self.seen.append(images.detach().clone())
        return (images * self.g).flatten(1).sum(dim=1)


def brightness_reward(images: Tensor, prompts) -> Tensor:
    return images.mean(dim=(1, 2, 3))


def saved_tensor_bytes(fn) -> int:
    """Bytes of all tensors autograd saves for backward while ``fn()`` runs (distinct storages counted once)."""
    seen: dict[int, int] = {}

    def pack(t: Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


DP_PROMPTS = [f"prompt {i}" for i in range(7)]


def dp_setup():
    """A deterministic tiny world for the data-parallel test: params dict, loss_fn, TrainConfig."""
    from leapalign.config import MethodConfig, OptimConfig, TrainConfig
    from leapalign.methods import compute_loss
    from leapalign.sigmas import flow_sigmas

    model = MLPVelocity(6, seed=4)
    sigmas = flow_sigmas(6, shift=2.0)
    method = MethodConfig(hinge_lambda=1.0)

    def loss_fn(batch):
        return compute_loss(method, model, sigmoid_decoder, brightness_reward, batch.noise((6,)), sigmas,
                            batch.prompts, batch.generator())

    config = TrainConfig(steps=4, batch_size=4, grad_accum=2, seed=5, optim=OptimConfig(lr=1e-2))
    return dict(model.named_parameters()), loss_fn, config


def dp_worker(rank: int, world_size: int, init_file: str, out_path: str, checkpoint_dir: str) -> None:
    """One gloo rank: train the tiny world data-parallel; rank 0 saves weights and metrics."""
    import torch.distributed as tdist

    from leapalign.distributed import DistContext
    from leapalign.train import train

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        params, loss_fn, config = dp_setup()
        config.checkpoint_dir = checkpoint_dir
        result = train(params, loss_fn, DP_PROMPTS, config, dist=DistContext.current())
        if rank == 0:
            torch.save({"params": {k: v.detach().clone() for k, v in params.items()},
                        "rewards": [h["rewards"] for h in result.history],
                        "checkpoint": str(result.checkpoint)}, out_path)
        tdist.barrier()
    finally:
        tdist.destroy_process_group()
