"""Reading reward checkpoints from local files only, with errors that say what was expected.

Checkpoints come from users, so they are untrusted: ``torch.load(weights_only=True)`` or safetensors,
never arbitrary unpickling. Every failure names the reward, the path and the expected file.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from .base import load_error

# Key fingerprints of the checkpoints this package knows, to tell a user which file they gave instead.
_FINGERPRINTS = (
    ("an open_clip CLIP state dict (HPSv2 / HPSv2.1)", ("visual.conv1.weight", "token_embedding.weight")),
    ("the ImageReward checkpoint (ImageReward.pt)", ("blip.visual_encoder.cls_token", "mlp.layers.0.weight")),
    ("a LAION aesthetic predictor MLP", ("layers.0.weight", "layers.7.weight")),
    ("a transformers CLIPModel state dict", ("text_model.embeddings.token_embedding.weight",)),
)


def describe_state_dict(keys: Iterable[str]) -> str:
    keys = set(keys)
    for description, needed in _FINGERPRINTS:
        if all(k in keys for k in needed):
            return description
    sample = ", ".join(sorted(keys)[:4])
    return f"an unknown state dict (first keys: {sample})"


def require_file(path: str | Path, reward: str, expected: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise load_error(reward, path, "the file does not exist", expected)
    if not path.is_file():
        raise load_error(reward, path, "this is a folder, not a file", expected)
    return path


def require_folder(path: str | Path, reward: str, expected: str) -> Path:
    path = Path(path)
    if path.is_file():  # a file inside the model folder (e.g. picked from ComfyUI's file list)
        path = path.parent
    if not path.is_dir():
        raise load_error(reward, path, "the folder does not exist", expected)
    return path


def load_state_dict_file(path: str | Path, reward: str, expected: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` dict from ``.safetensors`` or a PyTorch file (``weights_only``).

    A ``{'state_dict': ...}`` wrapper (as in the HPSv2 release) is unwrapped and a DataParallel
    ``module.`` prefix stripped.
    """
    path = require_file(path, reward, expected)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise load_error(reward, path, f"the file is truncated or not a weights file ({problem})", expected) from None
    except Exception as exc:  # safetensors raises its own error type
        raise load_error(reward, path, f"the file could not be read ({type(exc).__name__}: {exc})", expected) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise load_error(reward, path, f"it holds a {type(obj).__name__}, not a dict of tensors", expected)
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def require_keys(state_dict: Mapping[str, torch.Tensor], keys: Iterable[str], reward: str, path: object,
                 expected: str) -> None:
    missing = [k for k in keys if k not in state_dict]
    if missing:
        found = describe_state_dict(state_dict)
        raise load_error(reward, path, f"it looks like {found}; missing keys {missing[:3]}", expected)


def read_json(path: Path, reward: str, expected: str) -> dict:
    path = require_file(path, reward, expected)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise load_error(reward, path, f"not valid JSON ({exc})", expected) from None
    if not isinstance(data, dict):
        raise load_error(reward, path, "the JSON is not an object", expected)
    return data


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], reward: str, path: object,
              expected: str) -> None:
    """``load_state_dict(strict=True)`` with the mismatch reported as a loading error."""
    try:
        module.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = "; ".join(lines[1:4]) if len(lines) > 1 else lines[0]
        raise load_error(reward, path, f"the weights do not fit the architecture ({detail})", expected) from None
