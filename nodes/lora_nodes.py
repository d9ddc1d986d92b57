"""The trained LoRA as a graph value, and the node that saves it where ComfyUI's LoRA loaders look."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..leapalign.lora import LoRAConfig, LoRAMetadata, save_kohya
from . import sockets, widgets
from .common import CATEGORY, node_error
from .paths import resolve_inside

SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainedLoRA:
    """A LoRA in its model family's file layout (fp32, CPU) with what it was trained with."""

    state_dict: dict[str, torch.Tensor]
    config: LoRAConfig
    metadata: LoRAMetadata


def _next_free_name(folder, prefix: str) -> str:
    """``<prefix>_00001_.safetensors``-style numbering, like ComfyUI's image savers."""
    import re
    from pathlib import Path

    folder = Path(folder)
    base = Path(prefix).name
    pattern = re.compile(rf"^{re.escape(base)}_(\d{{5}})_\.safetensors$")
    taken = [int(m.group(1)) for p in folder.glob(f"{base}_*_.safetensors") if (m := pattern.match(p.name))]
    return f"{prefix}_{max(taken, default=0) + 1:05d}_.safetensors"


def _checked_prefix(filename_prefix: str) -> tuple[str, str]:
    """ComfyUI's LoRA save folder and the cleaned prefix; ValueError when the prefix is unusable."""
    import folder_paths

    folder = folder_paths.get_folder_paths("loras")[0]
    prefix = filename_prefix.strip().replace("\\", "/")
    if not prefix:
        raise ValueError("filename_prefix is empty; give a name such as leapalign/my_lora")
    if prefix.endswith("/"):
        raise ValueError(f"filename_prefix {filename_prefix!r} names a folder; add a file name, e.g. {prefix}my_lora")
    resolve_inside(folder, prefix, "LoRA file")
    return folder, prefix


class LeapAlignSaveLoRA(io.ComfyNode):
    """Writes the LoRA into ComfyUI's first ``loras`` folder, atomically, with its training metadata."""

    DISPLAY_NAME = "LeapAlign Save LoRA"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignSaveLoRA", display_name=cls.DISPLAY_NAME, category=CATEGORY, is_output_node=True,
            description="Saves a trained LeapAlign LoRA (in its model family's layout) for the stock LoRA loaders.",
            inputs=[sockets.LoRA.Input("lora", tooltip="The training node's lora output."),
                    io.String.Input("filename_prefix", default="leapalign/flux_lora",
                                    tooltip="Path inside models/loras; a counter and .safetensors are appended."),
                    io.Combo.Input("dtype", options=list(SAVE_DTYPES), default="fp32",
                                   tooltip="Precision of the saved tensors.")],
            outputs=[io.String.Output("lora_name", display_name="lora_name", tooltip="The file's name as LoraLoaderModelOnly lists it.")])

    @classmethod
    def validate_inputs(cls, filename_prefix, dtype=None) -> bool | str:
        """Checked when the graph is validated, so a bad name stops the run before any training."""
        if not isinstance(filename_prefix, str):
            return widgets.combo_problem(cls, dtype=dtype)  # a linked name is checked when the node runs
        try:
            _checked_prefix(filename_prefix)
        except ValueError as exc:
            return str(exc)
        return widgets.combo_problem(cls, dtype=dtype)

    @classmethod
    def execute(cls, lora: TrainedLoRA, filename_prefix: str, dtype: str = "fp32") -> io.NodeOutput:
        from ..leapalign.distributed import DistContext

        try:
            folder, prefix = _checked_prefix(filename_prefix)
            target = resolve_inside(folder, _next_free_name(resolve_inside(folder, prefix, "LoRA file").parent,
                                                            prefix), "LoRA file")
        except ValueError as exc:
            raise node_error(cls.DISPLAY_NAME, str(exc)) from None
        relative = target.relative_to(folder).as_posix()
        if DistContext.current().is_main:
            sd = {k: v.to(SAVE_DTYPES[dtype]) for k, v in lora.state_dict.items()}
            save_kohya(sd, target, lora.metadata.to_safetensors(lora.config))
        return io.NodeOutput(relative, ui={"text": [f"saved {relative}"]})


NODES = [LeapAlignSaveLoRA]
