"""The pinned ComfyUI boots in-process, loads this pack as a custom node pack, and runs a tiny Flux."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from trainer_cli.locate import REPO_ROOT


def test_boot_reports_the_expected_version(comfy):
    """The suite runs against the ComfyUI it was meant for (``make test`` sets the variable per run)."""
    assert comfy.version == os.environ.get("LEAPALIGN_EXPECT_COMFYUI", "0.3.75")
    assert comfy.install.source in {"pinned dev copy", "COMFYUI_PATH", "comfy-cli workspace"}


def test_pack_loads_like_a_custom_node_without_warnings(comfy):
    import nodes as comfy_nodes

    assert comfy.pack_warnings == [], comfy.pack_warnings
    pack_nodes = {name for name, cls in comfy_nodes.NODE_CLASS_MAPPINGS.items()
                  if getattr(cls, "RELATIVE_PYTHON_MODULE", "").endswith(REPO_ROOT.name)}
    pack = sys.modules[comfy.pack_module_name]
    assert pack_nodes == set(pack.nodes.node_ids())
    assert "LeapAlignPromptList" in pack_nodes
    assert all(name.startswith("LeapAlign") for name in pack_nodes)
    for name in pack_nodes:
        assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[name]


def test_pack_never_shadows_comfyui_modules(comfy):
    import nodes as comfy_nodes

    assert hasattr(comfy_nodes, "NODE_CLASS_MAPPINGS") and hasattr(comfy_nodes, "KSampler")
    assert importlib.util.find_spec("leapalign") is not None
    assert importlib.util.find_spec("trainer_cli") is not None


def test_tiny_flux_is_differentiable_through_the_seam(tiny_flux, flux_cond, pack_import):
    seam = pack_import("nodes.autograd_seam")
    model = tiny_flux.model
    x = torch.randn(2, 16, 8, 8)
    attached = torch.zeros(2, 16, 8, 8, requires_grad=True)
    cond, extra = flux_cond[0]
    kwargs = {"c_crossattn": cond.repeat(2, 1, 1), "y": extra["pooled_output"].repeat(2, 1),
              "guidance": torch.full((2,), 3.5)}
    with seam.OutOfPlaceAdds(), pack_import("nodes.comfy_compat").training_mode():
        out = model.apply_model(x + attached, torch.tensor([0.7, 0.3]), **kwargs)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert attached.grad is not None and torch.isfinite(attached.grad).all()
    assert attached.grad.abs().sum() > 0
    with torch.no_grad():  # the seam changes no value
        plain = model.apply_model(x, torch.tensor([0.7, 0.3]), **kwargs)
    torch.testing.assert_close(out.detach(), plain, rtol=0, atol=0)


def test_plain_comfy_flux_backward_fails_without_the_seam(tiny_flux, flux_cond, pack_import):
    """Documents why the seam exists; if ComfyUI ever fixes this, the seam can go.

    Under the compatibility module's training mode (the torch RoPE on every version), the in-place
    residual adds are what remains between ComfyUI's Flux and a backward pass.
    """
    x = torch.randn(1, 16, 8, 8, requires_grad=True)
    cond, extra = flux_cond[0]
    with pack_import("nodes.comfy_compat").training_mode():
        out = tiny_flux.model.apply_model(x, torch.tensor([0.5]), c_crossattn=cond, y=extra["pooled_output"],
                                          guidance=torch.tensor([3.5]))
    with pytest.raises(RuntimeError, match="inplace"):
        out.sum().backward()


def test_tiny_vae_decodes_to_images(tiny_vae):
    image = tiny_vae.decode(torch.randn(1, 16, 4, 4)).detach()
    assert image.shape == (1, 32, 32, 3)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


@pytest.mark.parametrize("setup", ["missing", "not_comfy"])
def test_bad_comfyui_path_gives_one_clear_line(tmp_path, setup):
    target = tmp_path / "nowhere" if setup == "missing" else tmp_path
    if setup == "not_comfy":
        (tmp_path / "main.py").write_text("print('hi')\n")
    code = "from trainer_cli.comfy_runtime import boot_comfyui\nboot_comfyui()\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"COMFYUI_PATH": str(target), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ComfyUINotFound" in last and "COMFYUI_PATH" in last and str(target) in last


def test_fixture_pack_graph_runs_through_the_executor(comfy):
    """Stock CLIPTextEncode + FluxGuidance + KSampler + VAEDecode on the tiny fixtures."""
    from trainer_cli.comfy_runtime import execute_prompt

    prompt = {
        "1": {"class_type": "TinyFluxModelLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "TinyVAELoader", "inputs": {"seed": 0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a red apple"}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["5", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "seed": 1, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["3", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    result = execute_prompt(prompt)
    assert result.success, result.error
    assert "9" in result.outputs
