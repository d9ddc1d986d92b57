"""Prompt list node: prompts from a text box or from a file in ComfyUI's input folder."""

from __future__ import annotations

from comfy_api.latest import io

from ..leapalign.prompts import PromptListError, load_prompt_file, parse_prompt_text, require_prompts
from . import sockets
from .common import CATEGORY, node_error
from .paths import input_file


class LeapAlignPromptList(io.ComfyNode):
    """Builds the prompt list a training or evaluation node draws from."""

    DISPLAY_NAME = "LeapAlign Prompt List"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LeapAlignPromptList", display_name=cls.DISPLAY_NAME, category=CATEGORY,
            description="A list of prompts for LeapAlign training or reward evaluation.",
            inputs=[io.String.Input("text", multiline=True, default="a photo of a cat\na red apple on a table",
                                    tooltip="One prompt per line; lines starting with # are ignored."),
                    io.String.Input("file", default="", optional=True, tooltip=(
                        "Optional .txt / .jsonl (prompt field) / .csv (prompt column) file inside ComfyUI's "
                        "input folder; its prompts are appended."))],
            outputs=[sockets.Prompts.Output("prompts", display_name="prompts", tooltip="The prompts, in order."),
                     io.Int.Output("count", display_name="count", tooltip="How many prompts the list holds.")])

    @classmethod
    def execute(cls, text: str, file: str = "") -> io.NodeOutput:
        try:
            prompts = parse_prompt_text(text)
            if file.strip():
                prompts += load_prompt_file(input_file(file.strip(), "prompt file"))
            prompts = require_prompts(prompts, source=cls.DISPLAY_NAME)
        except (PromptListError, ValueError) as exc:
            raise node_error(cls.DISPLAY_NAME, str(exc)) from None
        return io.NodeOutput(prompts, len(prompts))


NODES = [LeapAlignPromptList]
