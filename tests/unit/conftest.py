"""Unit-test fixtures for the core (no ComfyUI)."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny-tensor tests run ~30x faster on one intra-op thread when the 2 cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
