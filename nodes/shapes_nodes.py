"""Graph blocks of the shapes world: load it, and evaluate models on it GenEval-style.

``LeapAlign Shapes World`` gives an ordinary MODEL/CLIP/VAE triple plus the world's reward, so a
workflow trains on it with the same ``LeapAlign Train LoRA`` node as a Flux.1 workflow.
``LeapAlign Shapes Evaluate`` samples every prompt on fixed held-out noises with ComfyUI's own KSampler
code (Euler, the model's schedule, cfg 1) and reports the rule-based judge's accuracy per GenEval
category, the mean reward, and quality/diversity against real scenes, before and (optionally) after
training, with a labelled sample grid.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from comfy_api.latest import io

from ..leapalign.atomic import atomic_write_bytes
from ..leapalign.demo.report import sample_grid
from ..leapalign.quality import quality_report
from ..leapalign.rewards.base import RewardLoadError
from ..leapalign.shapes import spec
from ..leapalign.shapes.evaluate import (
    EVAL_SEED,
    SAMPLES_PER_PROMPT,
    ShapesScore,
    format_shapes_scores,
    real_scenes,
    score_shapes,
)
from ..leapalign.shapes.judge import judge
from ..leapalign.shapes.prompts import CATEGORIES, all_prompts, category_of
from ..leapalign.shapes.reward import ShapesReward
from . import sockets, widgets
from .common import CATEGORY, node_error
from .shapes_world import load_world

GRID_COLUMNS = 6
GRID_PROMPTS_PER_CATEGORY = 2


def load_shapes_world():
    """(MODEL, CLIP, VAE, reward) from the shipped files, as ordinary (non-inference) tensors."""
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    with torch.inference_mode(False):
        model, clip, vae, _ = load_world()
        reward = ShapesReward.from_file().to(device)
    return model, clip, vae, reward


class LeapAlignShapesWorld(io.ComfyNode):
    """The compositional built-in world: coloured shapes on a grid, GenEval's six prompt categories."""

    DISPLAY_NAME = "LeapAlign Shapes World"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignShapesWorld", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="GenEval in miniature for trying LeapAlign on composition on a CPU: train with 32x32 "
                        f"pictures and {spec.SAMPLING_STEPS} sampling steps; evaluate with LeapAlign Shapes Evaluate.",
            inputs=[],
            outputs=[io.Model.Output("model", display_name="model", tooltip=(
                         "A toy Flux model (ComfyUI's Flux class) pretrained on scenes of coloured shapes; it gets "
                         "counts, colours and positions wrong often. Samples on Flux's schedule for 32x32.")),
                     io.Clip.Output("clip", display_name="clip", tooltip=("Flux text encoders (CLIP-L + T5) at toy width; prompts like "
                                                     "'a photo of a red square and a blue circle'.")),
                     io.Vae.Output("vae", display_name="vae", tooltip="A fixed linear codec in ComfyUI's VAE class: 16x4x4 latents <-> "
                                                  "32x32 pictures."),
                     sockets.Reward.Output("reward", display_name="reward", tooltip=(
                         "Differentiable reward: log-probability that the scene satisfies the prompt under a "
                         "per-cell classifier."))])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        try:
            return io.NodeOutput(*load_shapes_world())
        except (FileNotFoundError, RewardLoadError, ValueError) as exc:
            raise node_error(cls.DISPLAY_NAME, str(exc)) from None


def sample_prompts(model, clip, vae, prompts: list[str], samples_per_prompt: int, seed: int, steps: int) -> torch.Tensor:
    """Pictures ``[len(prompts), n, 3, 32, 32]`` in [0, 1]: stock CLIPTextEncode, KSampler, VAEDecode."""
    import nodes as comfy_nodes  # ComfyUI's built-in nodes

    size = spec.IMAGE_SIZE
    latent = {"samples": torch.zeros((samples_per_prompt, 4, size // 8, size // 8))}
    (negative,) = comfy_nodes.CLIPTextEncode().encode(clip, "")
    out = []
    for prompt in prompts:
        (positive,) = comfy_nodes.CLIPTextEncode().encode(clip, prompt)
        (samples,) = comfy_nodes.common_ksampler(model, seed, steps, 1.0, "euler", "simple", positive, negative,
                                                 latent, disable_noise=False)
        (images,) = comfy_nodes.VAEDecode().decode(vae, samples)
        out.append(images.movedim(-1, 1).float().cpu())
    return torch.stack(out)


def evaluate_model(model, clip, vae, reward, samples_per_prompt: int, seed: int,
                   steps: int) -> tuple[torch.Tensor, ShapesScore]:
    """(pictures ``[P, n, 3, 32, 32]``, score with quality) on the held-out noises, every prompt."""
    prompts = all_prompts()
    pictures = sample_prompts(model, clip, vae, prompts, samples_per_prompt, seed, steps)
    flat = pictures.flatten(0, 1)
    flat_prompts = [p for p in prompts for _ in range(samples_per_prompt)]
    score = score_shapes(flat, flat_prompts, reward)
    real, real_prompts = real_scenes(prompts, max(samples_per_prompt, 2))
    score.quality = quality_report(flat, flat_prompts, real, real_prompts)
    return pictures, score


def grid_rows() -> list[int]:
    """Indices of the prompts shown in the grid: the first two of every category."""
    prompts = all_prompts()
    return [i for cat in CATEGORIES for i in [j for j, p in enumerate(prompts) if category_of(p) == cat]
            [:GRID_PROMPTS_PER_CATEGORY]]


class LeapAlignShapesEvaluate(io.ComfyNode):
    """GenEval-style scores of a model (and optionally a trained one) on held-out noises."""

    DISPLAY_NAME = "LeapAlign Shapes Evaluate"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignShapesEvaluate", display_name=cls.DISPLAY_NAME, category=CATEGORY, is_output_node=True,
            description="Samples every shapes prompt on fixed held-out noises and reports the rule-based judge's "
                        "accuracy per GenEval category, mean reward, Fréchet distance to real scenes and "
                        "intra-prompt diversity.",
            inputs=[widgets.model("The model before training (the world's model)."), widgets.clip(), widgets.vae(),
                    sockets.Reward.Input("reward", tooltip="The world's reward (LeapAlign Shapes World)."),
                    io.Int.Input("samples_per_prompt", default=SAMPLES_PER_PROMPT, min=2, max=4096,
                                 tooltip="Held-out samples per prompt."),
                    widgets.seed(default=EVAL_SEED, control=False,
                                 tooltip="Held-out noise: keep it different from the training seed."),
                    widgets.sampling_steps(spec.SAMPLING_STEPS), widgets.eval_filename_prefix("shapes_eval"),
                    widgets.model("The trained model, evaluated on the same noises.", id="model_after",
                                  optional=True)],
            outputs=[io.Image.Output("grid", display_name="grid", tooltip="Labelled sample grid (green frame: the judge agrees)."),
                     io.String.Output("report", display_name="report", tooltip="Scores per category, before/after (Markdown).")])

    @classmethod
    def execute(cls, model, clip, vae, reward, samples_per_prompt, seed, sampling_steps, filename_prefix,
                model_after=None) -> io.NodeOutput:
        if not isinstance(reward, ShapesReward):
            raise node_error(cls.DISPLAY_NAME, "the reward input must come from LeapAlign Shapes World, "
                                               f"got {type(reward).__name__}")
        models = [("before", model), ("after", model_after)] if model_after is not None else [("model", model)]
        results = {label: evaluate_model(m, clip, vae, reward, samples_per_prompt, seed, sampling_steps)
                   for label, m in models}
        scores = {label: result[1] for label, result in results.items()}
        grid = cls._grid(results, samples_per_prompt)
        record = {"samples_per_prompt": samples_per_prompt, "seed": seed, "sampling_steps": sampling_steps,
                  **{label: score.to_dict() for label, score in scores.items()}}
        return cls._write(grid, record, "\n".join(format_shapes_scores(**scores)), filename_prefix)

    @staticmethod
    def _grid(results: dict, samples_per_prompt: int):
        rows, prompts = grid_rows(), all_prompts()
        columns = min(GRID_COLUMNS, samples_per_prompt)
        labels = [prompts[i].removeprefix("a photo of ") for i in rows]
        groups, correct = [], []
        for label, (pictures, _) in results.items():
            shown = pictures[rows, :columns]
            groups.append((label, shown))
            flat_prompts = [prompts[i] for i in rows for _ in range(columns)]
            correct.append(judge(shown.flatten(0, 1), flat_prompts).reshape(len(rows), columns))
        return sample_grid(groups, labels, correct=correct)

    @staticmethod
    def _write(grid, record: dict, report: str, filename_prefix: str):
        import folder_paths

        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), grid.width, grid.height)
        stem = f"{filename}_{counter:05}_"
        buffer = BytesIO()
        grid.save(buffer, format="PNG")
        atomic_write_bytes(Path(folder) / f"{stem}.png", buffer.getvalue())
        atomic_write_bytes(Path(folder) / f"{stem}.json", json.dumps(record, indent=2).encode("utf-8"))
        image = torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255.0)[None]
        ui = {"images": [{"filename": f"{stem}.png", "subfolder": subfolder, "type": "output"}], "text": [report]}
        return io.NodeOutput(image, report, ui=ui)


NODES = [LeapAlignShapesWorld, LeapAlignShapesEvaluate]
