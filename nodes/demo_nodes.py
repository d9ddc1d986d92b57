"""Graph blocks of the digits world: load it, and evaluate models on it (judge accuracy, reward, grid).

``LeapAlign Digits World`` gives an ordinary MODEL/CLIP/VAE triple plus the world's reward and judge,
so the demo workflow trains with the same ``LeapAlign Train LoRA`` node as a Flux.1 workflow.
``LeapAlign Digits Evaluate`` samples fixed held-out noises for every digit prompt with ComfyUI's own
KSampler code (Euler, the model's schedule, cfg 1) and reports how often the judge sees the prompted
digit, before and (optionally) after training, with a labelled sample grid.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from comfy_api.latest import io

from ..leapalign.atomic import atomic_write_bytes
from ..leapalign.demo import spec
from ..leapalign.demo.evaluate import EVAL_SEED, SAMPLES_PER_DIGIT, DigitsScore, score_digits
from ..leapalign.demo.prompts import all_digit_prompts
from ..leapalign.demo.report import markdown_scores, sample_grid
from ..leapalign.demo.reward import DigitClassifierReward, DigitJudge, DigitReward
from ..leapalign.rewards.base import RewardLoadError
from . import sockets, widgets
from .common import CATEGORY, node_error
from .cpu_threads import threads_for_model
from .demo_world import load_world
from .flux_shift import with_resolution_shift
from .paths import name_problem

GRID_COLUMNS = 6


def load_digits_world():
    """(MODEL, CLIP, VAE, reward, judge) from the shipped files, as ordinary (non-inference) tensors.

    The MODEL samples on Flux's schedule shifted for the world's picture size (as ``ModelSamplingFlux``
    at 16x16 would), so training, KSampler and the evaluation all use the same grid.
    """
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    with torch.inference_mode(False):
        model, clip, vae, _ = load_world()
        model = with_resolution_shift(model, spec.IMAGE_SIZE, spec.IMAGE_SIZE)
        reward = DigitReward.from_file().to(device)
        judge = DigitJudge.from_file().to(device)
    return model, clip, vae, reward, judge


class LeapAlignDigitsWorld(io.ComfyNode):
    """The tiny built-in text-to-image world: Flux-architecture model, prompt encoder, codec, reward, judge."""

    DISPLAY_NAME = "LeapAlign Digits World"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignDigitsWorld", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="A self-contained text-to-image world for trying LeapAlign on a CPU in minutes: "
                        "train with 16x16 pictures and 8 sampling steps.",
            inputs=[],
            outputs=[io.Model.Output("model", display_name="model", tooltip=(
                         "A 0.4 M-parameter Flux model (ComfyUI's Flux class) pretrained on scikit-learn's "
                         "handwritten digits; it draws the prompted digit only about half of the time.")),
                     io.Clip.Output("clip", display_name="clip", tooltip=("Flux text encoders (CLIP-L + T5) at toy width; prompts like "
                                                     "'a handwritten seven'.")),
                     io.Vae.Output("vae", display_name="vae", tooltip="A fixed linear codec in ComfyUI's VAE class: 16x2x2 latents <-> "
                                                  "16x16 pictures."),
                     sockets.Reward.Output("reward", display_name="reward", tooltip=(
                         "Differentiable reward: log-probability of the prompted digit under a small CNN.")),
                     sockets.Reward.Output("judge", display_name="judge", tooltip=(
                         "Independent judge (an MLP trained on other digits), for evaluation only."))])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        try:
            return io.NodeOutput(*load_digits_world())
        except (FileNotFoundError, RewardLoadError, ValueError) as exc:
            raise node_error(cls.DISPLAY_NAME, str(exc)) from None


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


class LeapAlignDigitsEvaluate(io.ComfyNode):
    """Judge accuracy and mean reward of a model (and optionally a trained one) on held-out noises."""

    DISPLAY_NAME = "LeapAlign Digits Evaluate"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignDigitsEvaluate", display_name=cls.DISPLAY_NAME, category=CATEGORY, is_output_node=True,
            description="Samples every digit prompt on fixed held-out noises (stock KSampler: euler, simple, cfg 1) "
                        "and reports judge accuracy and mean reward, before and after training.",
            inputs=[widgets.model("The model before training (the world's model)."), widgets.clip(), widgets.vae(),
                    sockets.Reward.Input("reward", tooltip="The world's reward (LeapAlign Digits World)."),
                    sockets.Reward.Input("judge", tooltip="The world's judge (LeapAlign Digits World)."),
                    io.Int.Input("samples_per_digit", default=SAMPLES_PER_DIGIT, min=1, max=4096,
                                 tooltip="Held-out samples per digit prompt."),
                    widgets.seed(default=EVAL_SEED, control=False,
                                 tooltip="Held-out noise: keep it different from the training seed."),
                    widgets.sampling_steps(spec.SAMPLING_STEPS), widgets.eval_filename_prefix("digits_eval"),
                    widgets.model("The trained model, evaluated on the same noises.", id="model_after",
                                  optional=True)],
            outputs=[io.Image.Output("grid", display_name="grid", tooltip=(
                         "Labelled sample grid (green frame: the judge sees the prompted digit).")),
                     io.String.Output("report", display_name="report", tooltip=(
                         "Judge accuracy, reward-net accuracy and mean reward, before/after/change, as a Markdown "
                         "table; connect it to Preview as Text to read it in the editor."))])

    @classmethod
    def validate_inputs(cls, filename_prefix) -> bool | str:
        import folder_paths

        return name_problem(folder_paths.get_output_directory(), filename_prefix, "filename_prefix")

    @classmethod
    def execute(cls, model, clip, vae, reward, judge, samples_per_digit, seed, sampling_steps, filename_prefix,
                model_after=None) -> io.NodeOutput:
        import folder_paths

        name = cls.DISPLAY_NAME
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
        buffer = BytesIO()
        grid.save(buffer, format="PNG")
        write_atomic(Path(folder) / f"{stem}.png", buffer.getvalue())
        write_atomic(Path(folder) / f"{stem}.json", json.dumps(record, indent=2).encode("utf-8"))
        image = torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)[None]
        report = markdown_scores(*scores.values())
        ui = {"images": [{"filename": f"{stem}.png", "subfolder": subfolder, "type": "output"}],
              "text": [report]}
        return io.NodeOutput(image, report, ui=ui)


NODES = [LeapAlignDigitsWorld, LeapAlignDigitsEvaluate]
