"""Reward nodes: load a reward model, combine rewards, and score images or a folder of images.

Importing this module registers ComfyUI's ``reward_models`` model folder (``models/reward_models``),
where users put the reward checkpoints (see the README section "Reward models" for the expected layouts).
"""

from __future__ import annotations

import os

from comfy_api.latest import io

from ..leapalign.prompts import PromptListError, parse_prompt_text
from ..leapalign.rewards import REWARD_KINDS, RewardLoadError, WeightedSumReward, load_reward
from ..leapalign.rewards.base import MissingRewardDependency
from ..leapalign.rewards.evaluate import ScoreRow, format_table, score_batch, score_folder, write_scores_csv
from . import sockets, widgets
from .common import CATEGORY, node_error
from .paths import input_file, name_problem, resolve_inside

REWARD_FOLDER = "reward_models"
REWARD_EXTENSIONS = {".pt", ".pth", ".bin", ".safetensors"}
NO_FILE = "(none: built-in reward)"
PRECISIONS = ["auto", "float32", "bfloat16", "float16"]


def register_reward_folder() -> None:
    """Add ``models/reward_models`` to ComfyUI's model folders, keeping paths users configured."""
    try:
        import folder_paths
    except ImportError:  # imported outside a running ComfyUI (e.g. pytest collecting the pack's package)
        return
    default = os.path.join(folder_paths.models_dir, REWARD_FOLDER)
    entry = folder_paths.folder_names_and_paths.get(REWARD_FOLDER)
    if entry is None:
        folder_paths.folder_names_and_paths[REWARD_FOLDER] = ([default], set(REWARD_EXTENSIONS))
        return
    paths, extensions = entry
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[REWARD_FOLDER] = (paths, set(extensions) | REWARD_EXTENSIONS)


register_reward_folder()


def _torch_placement(precision: str):
    import comfy.model_management
    import torch

    device = comfy.model_management.get_torch_device()
    if precision == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    else:
        dtype = getattr(torch, precision)
    return device, dtype


def _parse_color(text: str, node: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.replace(";", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise node_error(node, f"target_color must be three numbers R, G, B in [0, 1] like '1.0, 0.0, 0.0', got {text!r}")
    return values


def _prompts(text: str, prompt_list, count: int | None, node: str) -> list[str]:
    prompts = list(prompt_list) if prompt_list else parse_prompt_text(text)
    if not prompts:
        raise node_error(node, "give prompts (one per line, or a LEAP_PROMPTS list)")
    if count is not None and len(prompts) not in (1, count):
        raise node_error(node, f"got {len(prompts)} prompts for {count} images; give one for all or one per image")
    return prompts


def _write_csv(name: str, rows: list[ScoreRow], reward_name: str, node: str) -> str:
    import folder_paths

    if not name.strip():
        return ""
    if not name.strip().lower().endswith(".csv"):
        raise node_error(node, f"csv_name {name!r} must end with .csv")
    try:
        path = resolve_inside(folder_paths.get_output_directory(), name.strip(), "CSV file")
    except ValueError as exc:
        raise node_error(node, str(exc)) from None
    return str(write_scores_csv(path, rows, reward_name))


def _reward_in(name: str = "reward", optional: bool = False, tooltip: str = "The reward that scores the images."):
    return sockets.Reward.Input(name, optional=optional, tooltip=tooltip)


def _csv_input(default: str) -> io.String.Input:
    return io.String.Input("csv_name", default=default, optional=True,
                           tooltip="A .csv inside the output folder for the scores (e.g. leapalign/scores.csv); "
                                   "empty = none.")


def _prompt_list_input() -> io.Input:
    return sockets.Prompts.Input("prompt_list", optional=True, tooltip="Overrides the text box when connected.")


class LeapAlignRewardLoader(io.ComfyNode):
    """Loads a differentiable reward model from ``models/reward_models`` (or a built-in one)."""

    DISPLAY_NAME = "LeapAlign Reward Loader"

    @classmethod
    def define_schema(cls):
        import folder_paths

        files = [NO_FILE, *folder_paths.get_filename_list(REWARD_FOLDER)]
        return io.Schema(
            node_id="LeapAlignRewardLoader", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="A differentiable reward (HPSv2.1, HPSv3, PickScore, ImageReward, CLIP score, aesthetic "
                        "or a built-in).",
            inputs=[io.Combo.Input("kind", options=list(REWARD_KINDS), default="hpsv2.1",
                                   tooltip="Which reward model (the README's reward table lists what each expects)."),
                    io.Combo.Input("model_file", options=files, tooltip=(
                        "The checkpoint in models/reward_models; for a transformers folder (PickScore, CLIP) "
                        "pick any weights file inside it.")),
                    io.Combo.Input("precision", options=PRECISIONS, default="auto",
                                   tooltip="auto: bfloat16 on CUDA, float32 otherwise"),
                    io.String.Input("target_color", default="1.0, 0.0, 0.0", optional=True,
                                    tooltip="R, G, B in [0, 1] for builtin_color_target")],
            outputs=[sockets.Reward.Output("reward", display_name="reward", tooltip="Connect to the training or scoring nodes."),
                     io.String.Output("info", display_name="info", tooltip="The reward's name, scale and default hinge lambda.")])

    @classmethod
    def validate_inputs(cls, kind, precision=None) -> bool | str:
        return widgets.combo_problem(cls, kind=kind, precision=precision)

    @classmethod
    def execute(cls, kind: str, model_file: str, precision: str = "auto",
                target_color: str = "1.0, 0.0, 0.0") -> io.NodeOutput:
        import folder_paths

        node = cls.DISPLAY_NAME
        if kind not in REWARD_KINDS:
            raise node_error(node, f"unknown reward kind {kind!r}; choose one of {', '.join(REWARD_KINDS)}")
        options, path = {}, None
        if REWARD_KINDS[kind].builtin:
            if kind == "builtin_color_target":
                options["target"] = _parse_color(target_color, node)
        else:
            if model_file == NO_FILE:
                raise node_error(node, f"{kind} needs a file in models/{REWARD_FOLDER}: {REWARD_KINDS[kind].expects}")
            path = folder_paths.get_full_path(REWARD_FOLDER, model_file)
            if path is None:
                raise node_error(node, f"{model_file!r} is not in models/{REWARD_FOLDER}")
        try:
            reward = load_reward(kind, path, **options)
        except (RewardLoadError, MissingRewardDependency, ValueError) as exc:
            raise node_error(node, str(exc)) from None
        device, dtype = _torch_placement(precision)
        reward = reward.to(device=device, dtype=dtype)
        info = f"{reward.name}: {reward.scale}; default hinge lambda {reward.default_lambda:g}"
        return io.NodeOutput(reward, info)


class LeapAlignRewardSum(io.ComfyNode):
    """Weighted sum of two or three rewards (multi-reward training)."""

    DISPLAY_NAME = "LeapAlign Reward Sum"

    @classmethod
    def define_schema(cls):
        def weight(i: int, optional: bool = False):
            return io.Float.Input(f"weight_{i}", default=1.0, min=-1000.0, max=1000.0, step=0.01, optional=optional,
                                  tooltip=f"Weight of reward_{i} in the sum.")

        return io.Schema(
            node_id="LeapAlignRewardSum", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="sum_i weight_i * reward_i; its default hinge lambda is the same weighted sum of the parts' "
                        "lambdas.",
            inputs=[_reward_in("reward_1", tooltip="First reward."), weight(1),
                    _reward_in("reward_2", tooltip="Second reward."), weight(2),
                    _reward_in("reward_3", optional=True, tooltip="Optional third reward."), weight(3, True)],
            outputs=[sockets.Reward.Output("reward", display_name="reward", tooltip="The weighted sum, usable wherever a reward is.")])

    @classmethod
    def execute(cls, reward_1, weight_1, reward_2, weight_2, reward_3=None, weight_3=1.0) -> io.NodeOutput:
        rewards, weights = [reward_1, reward_2], [weight_1, weight_2]
        if reward_3 is not None:
            rewards.append(reward_3)
            weights.append(weight_3)
        return io.NodeOutput(WeightedSumReward(rewards, weights))


class LeapAlignRewardScore(io.ComfyNode):
    """Scores an IMAGE batch with a reward, as numbers, a table and optionally a CSV in the output folder."""

    DISPLAY_NAME = "LeapAlign Reward Score"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignRewardScore", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Reward scores of an image batch (no gradients; for evaluation).",
            inputs=[_reward_in(), io.Image.Input("images", tooltip="The images to score (an IMAGE batch)."),
                    io.String.Input("prompts", multiline=True, default="",
                                    tooltip="One prompt for all images, or one per line per image."),
                    _prompt_list_input(), _csv_input("")],
            outputs=[io.Float.Output("mean_score", display_name="mean_score", tooltip="Mean reward over the batch."),
                     io.Float.Output("scores", display_name="scores", is_output_list=True, tooltip="One score per image."),
                     io.String.Output("table", display_name="table", tooltip="The scores as a text table.")])

    @classmethod
    def validate_inputs(cls, csv_name="") -> bool | str:
        import folder_paths

        if isinstance(csv_name, str) and csv_name.strip() and not csv_name.strip().lower().endswith(".csv"):
            return f"csv_name {csv_name!r} must end with .csv"
        return name_problem(folder_paths.get_output_directory(), csv_name, "CSV file", allow_empty=True)

    @classmethod
    def execute(cls, reward, images, prompts: str = "", prompt_list=None, csv_name: str = "") -> io.NodeOutput:
        node = cls.DISPLAY_NAME
        if images.dim() != 4 or images.shape[-1] not in (3, 4):
            raise node_error(node, f"expected an IMAGE batch [B, H, W, C], got shape {tuple(images.shape)}")
        batch = images[..., :3].permute(0, 3, 1, 2)  # ComfyUI [B, H, W, C] -> [B, 3, H, W]
        chosen = _prompts(prompts, prompt_list, batch.shape[0], node)
        chosen = chosen * batch.shape[0] if len(chosen) == 1 else chosen
        try:
            scores = score_batch(reward, batch, chosen)
        except (PromptListError, ValueError) as exc:
            raise node_error(node, str(exc)) from None
        rows = [ScoreRow(f"image_{i:04d}", p, s) for i, (p, s) in enumerate(zip(chosen, scores))]
        table = format_table(rows, reward.name)
        written = _write_csv(csv_name, rows, reward.name, node)
        if written:
            table += f"\nwritten to {written}"
        return io.NodeOutput(sum(scores) / len(scores), scores, table)


class LeapAlignRewardScoreFolder(io.ComfyNode):
    """Scores every image of a folder inside ComfyUI's input folder; prompts from text or <image>.txt files."""

    DISPLAY_NAME = "LeapAlign Reward Score Folder"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignRewardScoreFolder", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="Reward scores of a folder of images, as a table and a CSV in the output folder.",
            inputs=[_reward_in(),
                    io.String.Input("folder", default="eval_images", tooltip="A folder inside ComfyUI's input folder."),
                    io.String.Input("prompts", multiline=True, default="", tooltip=(
                        "One for all images or one per image (file-name order); a <image name>.txt next to an "
                        "image overrides.")),
                    _prompt_list_input(), _csv_input("leapalign/folder_scores.csv")],
            outputs=[io.Float.Output("mean_score", display_name="mean_score", tooltip="Mean reward over the folder."),
                     io.String.Output("table", display_name="table", tooltip="The scores as a text table.")])

    @classmethod
    def execute(cls, reward, folder: str, prompts: str = "", prompt_list=None, csv_name: str = "") -> io.NodeOutput:
        node = cls.DISPLAY_NAME
        try:
            path = input_file(folder.strip(), "image folder")
            chosen = list(prompt_list) if prompt_list else parse_prompt_text(prompts)
            rows = score_folder(reward, path, chosen)
        except ValueError as exc:
            raise node_error(node, str(exc)) from None
        table = format_table(rows, reward.name)
        written = _write_csv(csv_name, rows, reward.name, node)
        if written:
            table += f"\nwritten to {written}"
        return io.NodeOutput(sum(r.score for r in rows) / len(rows), table)


NODES = [LeapAlignRewardLoader, LeapAlignRewardSum, LeapAlignRewardScore, LeapAlignRewardScoreFolder]
