"""What a LoRA file does to the tiny Flux under stock ``LoraLoaderModelOnly``, on one ComfyUI.

Run as a script by a test under *another* ComfyUI version's Python (``--comfyui PATH --lora FILE``):
it prints the patched model's output for fixed inputs as JSON, which the test compares with the same
numbers computed in its own process. Equal numbers mean the file means the same thing to both versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
if str(TESTS.parent) not in sys.path:
    sys.path.insert(0, str(TESTS.parent))
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def lora_output(lora_path: Path) -> list[float]:
    """Tiny Flux (seed 0) + the LoRA through stock ``LoraLoaderModelOnly``: its output for fixed inputs."""
    import comfy.model_management
    import folder_paths
    from comfy_fixtures import build_tiny_flux, flux_conditioning

    import nodes as comfy_nodes

    # A private copy under a unique name in its own folder: nothing else can shadow it, and the loras
    # folders other code saves into stay as they are.
    folder = Path(tempfile.mkdtemp(prefix="cross_version_"))
    name = f"cross_{uuid.uuid4().hex}.safetensors"
    shutil.copyfile(lora_path, folder / name)
    folder_paths.add_model_folder_path("loras", str(folder))
    model = build_tiny_flux(seed=0)
    (patched,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)
    comfy.model_management.load_models_gpu([patched])
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 16, 8, 8, generator=gen)
    tensor, extras = flux_conditioning(batch=2)[0]
    with torch.no_grad():
        out = patched.model.apply_model(x, torch.tensor([0.7, 0.4]), c_crossattn=tensor, y=extras["pooled_output"],
                                        guidance=torch.full((2,), 3.5))
    return [float(v) for v in out.flatten()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comfyui", required=True)
    parser.add_argument("--lora", required=True, type=Path)
    args = parser.parse_args()
    from trainer_cli.comfy_runtime import boot_comfyui

    booted = boot_comfyui(args.comfyui, cpu=True, load_pack=False)
    print(json.dumps({"version": booted.version, "output": lora_output(args.lora)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
