"""A tiny custom node pack for tests: loaders for the tiny Flux, VAE and CLIP fixtures.

Load it next to the LeapAlign pack with ``boot_comfyui(extra_custom_nodes=[this folder])`` or the
CLI's ``--custom-nodes``. Real users load real models with the stock loaders instead.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

import comfy_fixtures  # noqa: E402


class TinyFluxModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, seed):
        return (comfy_fixtures.build_tiny_flux(seed=seed),)


class TinyVAELoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})},
                "optional": {"weight_std": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 1.0, "step": 0.01,
                                                      "tooltip": "Std of the random weights; 0.2 gives decoded colours "
                                                                 "that follow the latent strongly (rewards move visibly)."})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, seed, weight_std=0.05):
        return (comfy_fixtures.build_tiny_vae(seed=seed, std=weight_std),)


class TinyCLIPLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, seed):
        return (comfy_fixtures.build_tiny_clip(seed=seed),)


NODE_CLASS_MAPPINGS = {
    "TinyFluxModelLoader": TinyFluxModelLoader,
    "TinyVAELoader": TinyVAELoader,
    "TinyCLIPLoader": TinyCLIPLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {name: name for name in NODE_CLASS_MAPPINGS}


# --------------------------------------------------------------------------- SD3 / SD3.5 (tests/sd3_fixtures.py)

import sd3_fixtures  # noqa: E402


def _seeded_loader(kind: str, build, choice: tuple[str, list[str]] | None = None):
    """A node class returning ``build(seed=seed)`` as ``kind``; with ``choice = (name, options)`` it has
    that combo input too and returns ``build(value, seed=seed)`` (the first option is the default)."""
    required = {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}
    if choice is not None:
        required = {choice[0]: (list(choice[1]), {"default": choice[1][0]}), **required}

    def load(self, seed, **chosen):
        return (build(*chosen.values(), seed=seed),)

    return type(f"Tiny{kind}Loader", (), {
        "INPUT_TYPES": classmethod(lambda cls: {"required": dict(required)}),
        "RETURN_TYPES": (kind,), "FUNCTION": "load", "CATEGORY": "testing", "load": load})


_SD3_NODES = {
    "TinySD3ModelLoader": _seeded_loader("MODEL", sd3_fixtures.build_tiny_sd3,
                                         ("variant", list(sd3_fixtures.TINY_SD3_CONFIGS))),
    "TinySD3CLIPLoader": _seeded_loader("CLIP", sd3_fixtures.build_tiny_sd3_clip),
}
NODE_CLASS_MAPPINGS.update(_SD3_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update({name: name for name in _SD3_NODES})


# --------------------------------------------------------------------------- Flux.2 and Chroma (tests/family_fixtures_flux.py)

import family_fixtures_flux  # noqa: E402

_FLUX_FAMILY_NODES = {
    "TinyFlux2ModelLoader": _seeded_loader("MODEL", family_fixtures_flux.build_tiny_flux2),
    "TinyFlux2VAELoader": _seeded_loader("VAE", family_fixtures_flux.build_tiny_flux2_vae),
    "TinyChromaModelLoader": _seeded_loader("MODEL", family_fixtures_flux.build_tiny_chroma),
}
NODE_CLASS_MAPPINGS.update(_FLUX_FAMILY_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update({name: name for name in _FLUX_FAMILY_NODES})


# --------------------------------------------------------------------------- Qwen-Image, Z-Image, Lumina 2 (tests/family_fixtures_dit.py)

import family_fixtures_dit  # noqa: E402

_DIT_NODES = {
    "TinyDiTModelLoader": _seeded_loader("MODEL", family_fixtures_dit.build_tiny_dit,
                                         ("model", list(family_fixtures_dit.MODELS))),
    "TinyHiDreamCLIPLoader": _seeded_loader("CLIP", family_fixtures_dit.build_tiny_hidream_clip),
}
NODE_CLASS_MAPPINGS.update(_DIT_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update({name: name for name in _DIT_NODES})
