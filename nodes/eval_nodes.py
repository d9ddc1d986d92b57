"""``LeapAlign Evaluate``: score a model and its LoRAs the way the paper does, resumably.

Each prompt is sampled with one fixed seed (``images_per_prompt`` images, one batch) by ComfyUI's
own code (CLIPTextEncode, optional Flux guidance, ``common_ksampler``, VAEDecode) for the base model
and for the base model plus each LoRA (stock LoRA loading); every image is scored by every reward
given (and the judge, with its accuracy when it has one). Images, scores, a summary table with
standard errors and paired differences against the base, CSVs and a grid go to a folder in the
output folder; running the node again on the same folder samples and scores only what is missing.
"""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..leapalign.evaluation import (
    EvalPlan,
    EvalStore,
    EvalStoreError,
    metrics_for,
    run_evaluation,
    write_reports,
)
from . import sockets, widgets
from .adapters import sample_latent_shape
from .common import CATEGORY, node_error
from .families import family_of
from .paths import resolve_inside

NODE = "LeapAlign Evaluate"
BASE = "base"
EXTRA_REWARDS = ("reward_2", "reward_3", "reward_4")


def parse_loras(text: str) -> list[tuple[str, float]]:
    """One LoRA per line, ``name`` or ``name:strength`` (names as in models/loras)."""
    loras = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, strength = line, 1.0
        head, sep, tail = line.rpartition(":")
        if sep:
            try:
                name, strength = head.strip(), float(tail)
            except ValueError:
                name = line
        loras.append((name, strength))
    return loras


def variant_label(name: str, strength: float) -> str:
    return name if strength == 1.0 else f"{name}@{strength:g}"


def lora_models(model, loras: list[tuple[str, float]]) -> dict:
    """{label: MODEL}: the base and the base with each LoRA, through ComfyUI's stock LoRA loader."""
    import folder_paths

    import nodes as comfy_nodes

    models = {BASE: model}
    available = set(folder_paths.get_filename_list("loras"))
    for name, strength in loras:
        if name not in available:
            raise node_error(NODE, f"LoRA {name!r} is not in models/loras (or the run folder); "
                                   "give names as ComfyUI's LoRA loader lists them")
        (models[variant_label(name, strength)],) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(
            model, name, strength)
    return models


def comfy_sampler(models: dict, clip, vae, settings: dict):
    """The core's ``SampleFn`` on ComfyUI: stock text encoding, KSampler code and VAE decoding."""
    import node_helpers

    import nodes as comfy_nodes

    (negative,) = comfy_nodes.CLIPTextEncode().encode(clip, "")

    def sample(variant: str, prompt: str, count: int, seed: int) -> torch.Tensor:
        (positive,) = comfy_nodes.CLIPTextEncode().encode(clip, prompt)
        if settings["guidance"] > 0:
            positive = node_helpers.conditioning_set_values(positive, {"guidance": settings["guidance"]})
        model = models[variant]  # an empty latent the size the model's family uses (Flux.2: 1/16, 128 channels)
        latent = {"samples": torch.zeros((count, *sample_latent_shape(
            model, settings["width"], settings["height"], family_of(model).latent_downscale)))}
        (samples,) = comfy_nodes.common_ksampler(models[variant], seed, settings["steps"], settings["cfg"],
                                                 settings["sampler_name"], settings["scheduler"], positive, negative,
                                                 latent)
        (images,) = comfy_nodes.VAEDecode().decode(vae, samples)
        return images[..., :3].movedim(-1, 1).float().cpu()

    return sample


def process_group() -> tuple[int, int]:
    """(rank, world size) of a torch.distributed job this process is in (the CLI's --gpus), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def open_store(target, plan: EvalPlan, rank: int, world: int) -> EvalStore:
    """Rank 0 creates or checks the folder first; the other ranks open it once it is ready."""
    store = EvalStore(target, rank=rank)
    error = None
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            try:
                store.open(plan.record())
            except EvalStoreError as exc:
                error = exc
        barrier(world)
    if error is not None:
        raise node_error(NODE, str(error)) from None
    return store


def progress_reporter(total_hint: int, unique_id):
    """ComfyUI's progress bar plus a text line per prompt (the CLI prints those)."""
    import comfy.utils

    bar = comfy.utils.ProgressBar(total_hint)

    def report(done: int, total: int, message: str) -> None:
        bar.update_absolute(done, total)
        try:
            from server import PromptServer

            PromptServer.instance.send_progress_text(f"eval {done}/{total}: {message}", unique_id)
        except (ImportError, AttributeError):
            pass

    return report


class LeapAlignEvaluate(io.ComfyNode):
    """Sample fixed prompts and seeds with a model and its LoRAs; score with every reward; write the results."""

    DISPLAY_NAME = NODE

    @classmethod
    def define_schema(cls):
        import comfy.samplers

        extra = [sockets.Reward.Input(name, optional=True, tooltip="Another reward to score every image with.")
                 for name in EXTRA_REWARDS]
        return io.Schema(
            node_id="LeapAlignEvaluate", display_name=cls.DISPLAY_NAME, category=CATEGORY, is_output_node=True,
            description="Scores a model and its LoRAs on fixed prompts and seeds with every reward: mean, standard "
                        "error and paired difference against the base; images, CSVs and a grid in the output folder.",
            inputs=[widgets.model("The base model; LoRAs below are applied to it one at a time."),
                    widgets.clip(), widgets.vae(),
                    sockets.Prompts.Input("prompts", tooltip="The evaluation prompts (LeapAlign Prompt List)."),
                    sockets.Reward.Input("reward", tooltip="The main reward every image is scored with."),
                    io.String.Input("loras", multiline=True, default="", tooltip=(
                        "One LoRA per line (as listed in models/loras), optionally name:strength; each is "
                        "compared with the base.")),
                    io.Int.Input("images_per_prompt", default=4, min=1, max=256,
                                 tooltip="Images sampled per prompt and model (one batch)."),
                    widgets.seed(tooltip="Every prompt and every model starts from this seed's noises."),
                    widgets.size("width", 1024, 8192), widgets.size("height", 1024, 8192),
                    widgets.sampling_steps(28),
                    io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                                   tooltip="ComfyUI sampler (as in KSampler)."),
                    io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                                   tooltip="ComfyUI scheduler (as in KSampler)."),
                    io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1,
                                   tooltip="Classifier-free guidance scale (1 = none, as Flux samples)."),
                    io.Float.Input("guidance", default=3.5, min=0.0, max=100.0, step=0.1,
                                   tooltip="Flux guidance; 0 leaves the conditioning as it is."),
                    io.String.Input("folder", default="leapalign_eval/my_eval",
                                    tooltip="Inside the output folder; run again to resume or add rewards."),
                    *extra,
                    sockets.Reward.Input("judge", optional=True,
                                         tooltip="An evaluation-only scorer, e.g. the digits world's judge.")],
            outputs=[io.Image.Output("grid", display_name="grid", tooltip="A grid of the sampled images per model."),
                     io.String.Output("table", display_name="table", tooltip="Means, standard errors and differences against the base.")],
            hidden=[io.Hidden.unique_id])

    @classmethod
    def validate_inputs(cls, sampler_name, scheduler) -> bool | str:
        return widgets.combo_problem(cls, sampler_name=sampler_name, scheduler=scheduler)

    @classmethod
    def execute(cls, model, clip, vae, prompts, reward, loras, images_per_prompt, seed, width, height,
                sampling_steps, sampler_name, scheduler, cfg, guidance, folder, reward_2=None, reward_3=None,
                reward_4=None, judge=None) -> io.NodeOutput:
        unique_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
        import folder_paths

        prompt_list = list(prompts or [])
        if not prompt_list:
            raise node_error(cls.DISPLAY_NAME, "the prompt list is empty")
        try:
            target = resolve_inside(folder_paths.get_output_directory(), folder.strip() or ".", "evaluation folder")
        except ValueError as exc:
            raise node_error(cls.DISPLAY_NAME, str(exc)) from None
        models = lora_models(model, parse_loras(loras))
        settings = {"width": width, "height": height, "steps": sampling_steps, "sampler_name": sampler_name,
                    "scheduler": scheduler, "cfg": cfg, "guidance": guidance}
        plan = EvalPlan(prompt_list, list(models), images_per_prompt, seed, settings)
        scorers = [r for r in (reward, reward_2, reward_3, reward_4, judge) if r is not None]
        metrics = metrics_for(scorers)
        rank, world = process_group()  # on several GPUs each process takes every world-th prompt
        store = open_store(target, plan, rank, world)
        share = range(rank, len(prompt_list), world)
        with torch.no_grad():  # evaluation only; ComfyUI's executor may also hold inference mode
            run_evaluation(plan, comfy_sampler(models, clip, vae, settings), metrics, store,
                           progress_reporter(len(plan.variants) * len(share), unique_id), prompt_indices=share)
        barrier(world)
        store.reload()
        if rank == 0:
            write_reports(store, plan, [m.name for m in metrics])
        barrier(world)
        table = (target / "table.txt").read_text(encoding="utf-8").rstrip() + f"\nwritten to {target}"
        from PIL import Image

        with Image.open(target / "grid.png") as grid:
            image = torch.from_numpy(np.asarray(grid.convert("RGB"), dtype=np.float32) / 255.0)[None]
        return io.NodeOutput(image, table, ui={"text": [table]})


NODES = [LeapAlignEvaluate]
