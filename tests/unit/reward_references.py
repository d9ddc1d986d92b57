"""The reward models' reference transforms and models, taken from the installed reference packages.

The packages are test-only dependencies, installed by scripts/setup.sh with ``--no-deps``.
None of them imports cleanly in this environment as a whole, so only the code under test is run:

* hpsv2 1.2.0: its package ``__init__`` needs ``clint`` and its tokenizer a vocabulary file missing
  from the wheel, so ``hpsv2/src/open_clip/transform.py`` (and the ``constants.py`` it imports) is
  loaded as a submodule of a bare package over that folder.
* clip (clip-anytorch 2.6.0, OpenAI's ``clip`` package): ``clip/clip.py`` imports ``pkg_resources``,
  gone from current setuptools; ``_transform`` is taken from that file's source, and ``clip/model.py``
  (plain torch) is loaded as above.
* image-reward 1.5: importing it needs fairscale, timm 0.6 and transformers 4 internals;
  ``_transform`` is taken from ``ImageReward/ImageReward.py``'s source.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image


def package_dir(module: str) -> Path:
    """Folder of an installed top-level package, found without executing its ``__init__``."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the reference package {module!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def import_from_folder(alias: str, folder: Path, module: str):
    """Import ``folder/module.py`` as ``alias.module``, ``alias`` being a bare package over ``folder``."""
    if alias not in sys.modules:
        package = types.ModuleType(alias)
        package.__path__ = [str(folder)]
        sys.modules[alias] = package
    return importlib.import_module(f"{alias}.{module}")


def functions_from_source(path: Path, names: tuple[str, ...]) -> dict:
    """Run a file's absolute imports, ``try`` blocks and the named top-level functions; return them.

    This executes the package's own definitions (not a copy) without its unimportable imports.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    keep = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in ("torchvision", "PIL"):
            keep.append(node)
        elif isinstance(node, ast.Try):  # the BICUBIC fallback for old torchvision
            keep.append(node)
        elif isinstance(node, ast.FunctionDef) and node.name in names:
            keep.append(node)
    namespace: dict = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    missing = [name for name in names if name not in namespace]
    if missing:
        raise AssertionError(f"{path} no longer defines {missing}")
    return {name: namespace[name] for name in names}


def function_source(path: Path, name: str) -> str:
    """A top-level function's AST dump (to pin two packages' definitions to each other)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.dump(node)
    raise AssertionError(f"{path} defines no {name}")


@functools.cache
def hpsv2_transform_module():
    return import_from_folder("_reference_hpsv2_open_clip", package_dir("hpsv2") / "src" / "open_clip", "transform")


def hpsv2_preprocess_val(size: int):
    """What ``hpsv2.img_score`` scores with: ``create_model_and_transforms(..., light_augmentation=True)``'s
    ``preprocess_val`` (the pin of that call is in test_rewards_preprocess.py)."""
    return hpsv2_transform_module().image_transform(size, is_train=False, mean=None, std=None,
                                                    resize_longest_max=True)


def openai_clip_transform(size: int):
    return functions_from_source(package_dir("clip") / "clip.py", ("_convert_image_to_rgb", "_transform"))["_transform"](size)


def image_reward_transform(size: int):
    path = package_dir("ImageReward") / "ImageReward.py"
    return functions_from_source(path, ("_convert_image_to_rgb", "_transform"))["_transform"](size)


@functools.cache
def openai_clip_model_module():
    return import_from_folder("_reference_openai_clip", package_dir("clip"), "model")


def transformers_pil_processor(resize: int, crop: int):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": resize}, crop_size={"height": crop, "width": crop})


# --- test images: (height, width) -> uint8 HxWx3 -------------------------------------------------------

def smooth(height: int, width: int) -> np.ndarray:
    y, x = np.ogrid[0:height, 0:width]
    red = np.broadcast_to(0.5 + 0.5 * np.sin(x / 17.0), (height, width))
    green = np.broadcast_to(0.5 + 0.5 * np.cos(y / 23.0), (height, width))
    blue = 0.5 + 0.4 * np.sin((x + y) / 41.0)
    return np.stack([red, green, blue], -1)


def photo(height: int, width: int) -> np.ndarray:
    """1/f ("pink") noise, the power spectrum of natural photographs."""
    rng = np.random.default_rng(height * 10007 + width)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fy ** 2 + fx ** 2)
    radius[0, 0] = 1.0
    channels = []
    for _ in range(3):
        spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius
        field = np.fft.irfft2(spectrum, s=(height, width))
        channels.append(0.5 + 0.18 * (field - field.mean()) / field.std())
    return np.stack(channels, -1)


def edges(height: int, width: int) -> np.ndarray:
    """Hard-edged black/white/colour shapes: checkerboard, a disc, diagonal stripes."""
    y, x = np.ogrid[0:height, 0:width]
    checker = ((x // 37 + y // 29) % 2).astype(np.float64)
    disc = (((x - width / 2) ** 2 + (y - height / 2) ** 2) < (min(height, width) / 3) ** 2).astype(np.float64)
    stripes = ((3 * x + 5 * y) % 97 < 40).astype(np.float64)
    return np.stack([checker, disc, stripes], -1)


def text(height: int, width: int) -> np.ndarray:
    """Dark one-to-three pixel strokes on a light page, like rendered text."""
    rng = np.random.default_rng(height + 31 * width)
    page = np.full((height, width), 0.95)
    for top in range(8, height - 24, 28):
        left = 8
        while left < width - 20:
            glyph_w, stroke = int(rng.integers(6, 14)), int(rng.integers(1, 4))
            row = top + int(rng.integers(0, 16))
            page[top:top + 18, left:left + stroke] = 0.05  # vertical stroke
            page[row:row + stroke, left:left + glyph_w] = 0.05  # horizontal stroke
            left += glyph_w + int(rng.integers(3, 9))
    return np.stack([page, page * 0.9 + 0.05, page], -1)


IMAGES = {"smooth": smooth, "photo": photo, "edges": edges, "text": text}
# (width, height): the sizes, common Flux sizes among them.
SIZES = ((512, 512), (720, 720), (720, 477), (832, 1216), (1216, 832), (1344, 768))


@functools.cache
def reference_image(kind: str, width: int, height: int) -> Image.Image:
    array = IMAGES[kind](height, width)
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8))


def as_tensor(image: Image.Image):
    """The PIL image's exact 8-bit values as a float ``[1, 3, H, W]`` batch in [0, 1]."""
    import torch

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
