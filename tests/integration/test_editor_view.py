"""What the editor shows and how fast the server trains: thread budget, live preview, run summary."""

from __future__ import annotations

import threading

import torch


def _in_worker_thread(fn):
    """Run ``fn`` on a fresh thread, as ComfyUI's prompt worker runs nodes; returns its result."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn()))
    thread.start()
    thread.join()
    return out["value"]


def test_small_cpu_model_trains_on_one_thread_and_restores(pack_import):
    threads = pack_import("nodes.cpu_threads")

    def run():
        torch.set_num_threads(2)
        with threads.threads_for(torch.nn.Linear(8, 8), "cpu") as inside:
            during = torch.get_num_threads()
        return inside, during, torch.get_num_threads()

    assert _in_worker_thread(run) == (1, 1, 2)


def test_large_or_accelerator_models_keep_the_server_threads(pack_import):
    threads = pack_import("nodes.cpu_threads")
    big = torch.nn.Linear(5000, 4001, device="meta")  # 20.0 M parameters, no memory
    assert not threads.wants_one_thread(big, "cpu")
    assert threads.wants_one_thread(torch.nn.Linear(5000, 3000, device="meta"), "cpu")
    assert not threads.wants_one_thread(torch.nn.Linear(8, 8), "cuda")

    def run():
        torch.set_num_threads(2)
        with threads.threads_for(big, "cpu") as inside:
            return inside, torch.get_num_threads()

    assert _in_worker_thread(run) == (2, 2)
