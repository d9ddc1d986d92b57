"""Graph blocks of the digits world: load it, and evaluate models on it (judge accuracy, reward, grid).

``LeapAlign Digits World`` gives an ordinary MODEL/CLIP/VAE triple plus the world's reward and judge,
so the demo workflow trains with the same ``LeapAlign Train LoRA`` node as a Flux.1 workflow.
``LeapAlign Digits Evaluate`` samples fixed held-out noises for every digit prompt with ComfyUI's own
KSampler code (Euler, the model's schedule, cfg 1) and reports how often the judge sees the prompted
digit, before and (optionally) after training, with a labelled sample grid.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from ..leapalign.atomic import atomic_write_bytes
from ..leapalign.demo import spec
from ..leapalign.demo.evaluate import EVAL_SEED, SAMPLES_PER_DIGIT, DigitsScore, score_digits
from ..leapalign.demo.prompts import all_digit_prompts
from ..leapalign.demo.report import markdown_scores, sample_grid
from ..leapalign.demo.reward import DigitClassifierReward, DigitJudge, DigitReward
from ..leapalign.rewards.base import RewardLoadError
from .common import CATEGORY, node_error
from .cpu_threads import threads_for_model
from .demo_world import load_world

LEAP_REWARD = "LEAP_REWARD"
GRID_COLUMNS = 6


def load_digits_world():
    """(MODEL, CLIP, VAE, reward, judge) from the shipped files, as ordinary (non-inference) tensors."""
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    with torch.inference_mode(False):
        model, clip, vae, _ = load_world()
        reward = DigitReward.from_file().to(device)
        judge = DigitJudge.from_file().to(device)
    return model, clip, vae, reward, judge


class LeapAlignDigitsWorld:
    """The tiny built-in text-to-image world: Flux-architecture model, prompt encoder, codec, reward, judge."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE", LEAP_REWARD, LEAP_REWARD)
    RETURN_NAMES = ("model", "clip", "vae", "reward", "judge")
    OUTPUT_TOOLTIPS = (
        "A 0.4 M-parameter Flux model (ComfyUI's Flux class) pretrained on scikit-learn's handwritten digits; "
        "it draws the prompted digit only about half of the time.",
        "Flux text encoders (CLIP-L + T5) at toy width; prompts like 'a handwritten seven'.",
        "A fixed linear codec in ComfyUI's VAE class: 16x2x2 latents <-> 16x16 pictures.",
        "Differentiable reward: log-probability of the prompted digit under a small CNN.",
        "Independent judge (an MLP trained on other digits), for evaluation only.",
    )
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("A self-contained text-to-image world for trying LeapAlign on a CPU in minutes: "
                   "train with 16x16 pictures and 8 sampling steps.")

    def load(self):
        try:
            return load_digits_world()
        except (FileNotFoundError, RewardLoadError, ValueError) as exc:
            raise node_error("LeapAlign Digits World", str(exc)) from None


def sample_prompts(model, clip, vae, prompts: list[str], samples_per_prompt: int, seed: int, steps: int) -> torch.Tensor:
    """Pictures ``[len(prompts), n, 3, H, W]`` in [0, 1]: stock CLIPTextEncode, KSampler (euler, simple,
    cfg 1, the same ``seed`` for every prompt) and VAEDecode."""
    import nodes as comfy_nodes  # ComfyUI's built-in nodes

    size = spec.IMAGE_SIZE
    latent = {"samples": torch.zeros((samples_per_prompt, 4, size // 8, size // 8))}
    (negative,) = comfy_nodes.CLIPTextEncode().encode(clip, "")
    out = []
    for prompt in prompts:
        (positive,) = comfy_nodes.CLIPTextEncode().encode(clip, prompt)
        (samples,) = comfy_nodes.common_ksampler(model, seed, steps, 1.0, "euler", "simple", positive, negative, latent)
        (images,) = comfy_nodes.VAEDecode().decode(vae, samples)
        out.append(images.movedim(-1, 1).float().cpu())
    return torch.stack(out)


def evaluate_model(model, clip, vae, reward: DigitClassifierReward, judge: DigitClassifierReward,
                   samples_per_digit: int, seed: int, steps: int) -> tuple[torch.Tensor, DigitsScore, torch.Tensor]:
    """(pictures ``[10, n, 3, H, W]``, score, judge-correct ``[10, n]``) on the held-out noises."""
    prompts = all_digit_prompts()
    pictures = sample_prompts(model, clip, vae, prompts, samples_per_digit, seed, steps)
    flat = pictures.flatten(0, 1)
    flat_prompts = [p for p in prompts for _ in range(samples_per_digit)]
    score = score_digits(flat, flat_prompts, reward, judge)
    correct = judge.correct(flat, flat_prompts).reshape(len(prompts), samples_per_digit).cpu()
    return pictures, score, correct


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and ``os.replace``."""
    atomic_write_bytes(path, data)


class LeapAlignDigitsEvaluate:
    """Judge accuracy and mean reward of a model (and optionally a trained one) on held-out noises."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model before training (the world's model)."}),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "reward": (LEAP_REWARD,),
                "judge": (LEAP_REWARD,),
                "samples_per_digit": ("INT", {"default": SAMPLES_PER_DIGIT, "min": 1, "max": 4096}),
                "seed": ("INT", {"default": EVAL_SEED, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Held-out noise: keep it different from the training seed."}),
                "sampling_steps": ("INT", {"default": spec.SAMPLING_STEPS, "min": 1, "max": 1000}),
                "filename_prefix": ("STRING", {"default": "digits_eval",
                                               "tooltip": "Writes <prefix>_NNNNN_.png (labelled grid) and .json "
                                                          "(scores) into the output folder."}),
            },
            "optional": {
                "model_after": ("MODEL", {"tooltip": "The trained model, evaluated on the same noises."}),
            },
        }

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("grid", "report")
    OUTPUT_TOOLTIPS = ("Labelled sample grid (green frame: the judge sees the prompted digit).",
                       "Judge accuracy, reward-net accuracy and mean reward, before/after/change, as a Markdown "
                       "table; connect it to Preview as Text to read it in the editor.")
    FUNCTION = "evaluate"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = ("Samples every digit prompt on fixed held-out noises (stock KSampler: euler, simple, cfg 1) "
                   "and reports judge accuracy and mean reward, before and after training.")

    def evaluate(self, model, clip, vae, reward, judge, samples_per_digit, seed, sampling_steps, filename_prefix,
                 model_after=None):
        import folder_paths

        name = "LeapAlign Digits Evaluate"
        for label, scorer in (("reward", reward), ("judge", judge)):
            if not isinstance(scorer, DigitClassifierReward):
                raise node_error(name, f"the {label} input must come from LeapAlign Digits World, "
                                       f"got {type(scorer).__name__}")
        models = [("before", model), ("after", model_after)] if model_after is not None else [("model", model)]
        with threads_for_model(model):
            results = {label: evaluate_model(m, clip, vae, reward, judge, samples_per_digit, seed, sampling_steps)
                       for label, m in models}
        scores = {label: result[1] for label, result in results.items()}
        columns = min(GRID_COLUMNS, samples_per_digit)
        titles = {"before": "before training", "after": "after training", "model": "samples"}
        grid = sample_grid([(titles[label], r[0][:, :columns]) for label, r in results.items()],
                           all_digit_prompts(), correct=[r[2][:, :columns] for r in results.values()])
        record = {"samples_per_digit": samples_per_digit, "seed": seed, "sampling_steps": sampling_steps,
                  **{label: score.to_dict() for label, score in scores.items()}}
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), grid.width, grid.height)
        stem = f"{filename}_{counter:05}_"
        buffer = io.BytesIO()
        grid.save(buffer, format="PNG")
        write_atomic(Path(folder) / f"{stem}.png", buffer.getvalue())
        write_atomic(Path(folder) / f"{stem}.json", json.dumps(record, indent=2).encode("utf-8"))
        image = torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)[None]
        report = markdown_scores(*scores.values())
        ui = {"images": [{"filename": f"{stem}.png", "subfolder": subfolder, "type": "output"}],
              "text": [report]}
        return {"ui": ui, "result": (image, report)}


NODE_CLASS_MAPPINGS = {"LeapAlignDigitsWorld": LeapAlignDigitsWorld, "LeapAlignDigitsEvaluate": LeapAlignDigitsEvaluate}
NODE_DISPLAY_NAME_MAPPINGS = {"LeapAlignDigitsWorld": "LeapAlign Digits World",
                              "LeapAlignDigitsEvaluate": "LeapAlign Digits Evaluate"}
