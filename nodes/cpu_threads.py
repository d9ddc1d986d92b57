"""One torch thread while a small model computes on the CPU, so a node in the ComfyUI server trains as
fast as the headless CLI.

The ComfyUI server leaves torch at its default of one intra-op thread per core. For a model as small as
the digits world (0.4 M parameters, matrices of a few dozen rows) every op is far shorter than a
thread hand-off, and on a busy machine the second thread spin-waits for a core that another process
holds: measured on a loaded 2-core machine, a demo training step took 0.5-2.7 s in the server against
0.1 s in the CLI, which runs torch on one thread (``bench/server_vs_cli.py`` measures both). Large
models, and any model on an accelerator, keep the server's setting.

``torch.set_num_threads`` is process-wide for new threads but the executor thread's OpenMP setting is
its own; the context manager sets it on the calling thread (the one that runs the node and its
backward pass) and restores the previous value afterwards, so nodes that run later are unaffected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

SMALL_MODEL_PARAMETERS = 20_000_000
"""Below this many parameters a model's ops are too short to share between threads."""


def wants_one_thread(module: torch.nn.Module, device: torch.device | str) -> bool:
    """True when ``module`` runs on the CPU and is small enough that one thread is faster."""
    if torch.device(device).type != "cpu":
        return False
    count = 0
    for param in module.parameters():
        count += param.numel()
        if count >= SMALL_MODEL_PARAMETERS:
            return False
    return True


@contextlib.contextmanager
def threads_for(module: torch.nn.Module, device: torch.device | str) -> Iterator[int]:
    """Run the block with one torch thread if ``wants_one_thread``; yields the thread count in use."""
    previous = torch.get_num_threads()
    if previous == 1 or not wants_one_thread(module, device):
        yield previous
        return
    torch.set_num_threads(1)
    try:
        yield 1
    finally:
        torch.set_num_threads(previous)


def threads_for_model(model) -> contextlib.AbstractContextManager[int]:
    """``threads_for`` a ComfyUI ``ModelPatcher``: its diffusion model on its load device."""
    return threads_for(model.model.diffusion_model, model.load_device)
