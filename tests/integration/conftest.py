"""Integration fixtures: a real ComfyUI booted in-process once per test session, on CPU.

Which ComfyUI: ``COMFYUI_PATH`` if set (``make test`` runs the suite once more against a second
version that way), else the pinned copy; the session header names it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
FIXTURE_NODES = Path(__file__).resolve().parents[1] / "fixture_nodes"


def pytest_report_header(config):
    from trainer_cli.locate import ComfyUINotFound, locate_comfyui

    try:
        install = locate_comfyui()
    except ComfyUINotFound as exc:
        return f"ComfyUI: none found ({exc})"
    return f"ComfyUI {install.version} at {install.path} ({install.source})"


@pytest.fixture(scope="session")
def comfy_home(tmp_path_factory):
    return tmp_path_factory.mktemp("comfy_home")


@pytest.fixture(scope="session")
def comfy(comfy_home):
    """The booted ComfyUI (version, pack module) with models/ and output/ in a temp folder."""
    from trainer_cli.comfy_runtime import boot_comfyui
    from trainer_cli.locate import ComfyUINotFound, locate_comfyui

    try:
        locate_comfyui()
    except ComfyUINotFound as exc:  # one clear line instead of an error per test
        pytest.exit(str(exc), returncode=4)
    return boot_comfyui(cpu=True, models_dir=comfy_home / "models", output_dir=comfy_home / "output",
                        extra_custom_nodes=[FIXTURE_NODES])


@pytest.fixture(scope="session")
def pack(comfy):
    """This node pack as ComfyUI imported it (use it to reach ``pack.nodes.<module>``)."""
    return sys.modules[comfy.pack_module_name]


@pytest.fixture
def tiny_flux(comfy):
    from comfy_fixtures import build_tiny_flux

    return build_tiny_flux(seed=0)


@pytest.fixture
def tiny_vae(comfy):
    from comfy_fixtures import build_tiny_vae

    return build_tiny_vae(seed=0)


@pytest.fixture
def tiny_clip(comfy):
    from comfy_fixtures import build_tiny_clip

    return build_tiny_clip(seed=0)


@pytest.fixture
def flux_cond(comfy):
    from comfy_fixtures import flux_conditioning

    return flux_conditioning()


@pytest.fixture(scope="session")
def pack_import(pack):
    """Import a submodule of the pack as ComfyUI sees it, e.g. ``pack_import("nodes.autograd_seam")``."""
    import importlib

    return lambda name: importlib.import_module(f"{pack.__name__}.{name}")
