"""Prompt list node: prompts from a text box or from a file in ComfyUI's input folder."""

from __future__ import annotations

from ..leapalign.prompts import PromptListError, load_prompt_file, parse_prompt_text, require_prompts
from .common import CATEGORY, node_error
from .paths import input_file

PROMPT_LIST = "LEAP_PROMPTS"


class LeapAlignPromptList:
    """Builds the prompt list a training or evaluation node draws from."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"multiline": True, "default": "a photo of a cat\na red apple on a table",
                                    "tooltip": "One prompt per line; lines starting with # are ignored."}),
            },
            "optional": {
                "file": ("STRING", {"default": "", "tooltip": "Optional .txt / .jsonl (prompt field) / .csv (prompt column) "
                                    "file inside ComfyUI's input folder; its prompts are appended."}),
            },
        }

    RETURN_TYPES = (PROMPT_LIST, "INT")
    RETURN_NAMES = ("prompts", "count")
    FUNCTION = "build"
    CATEGORY = CATEGORY
    DESCRIPTION = "A list of prompts for LeapAlign training or reward evaluation."

    def build(self, text: str, file: str = ""):
        try:
            prompts = parse_prompt_text(text)
            if file.strip():
                prompts += load_prompt_file(input_file(file.strip(), "prompt file"))
            prompts = require_prompts(prompts, source="LeapAlign Prompt List")
        except (PromptListError, ValueError) as exc:
            raise node_error("LeapAlign Prompt List", str(exc)) from None
        return (prompts, len(prompts))


NODE_CLASS_MAPPINGS = {"LeapAlignPromptList": LeapAlignPromptList}
NODE_DISPLAY_NAME_MAPPINGS = {"LeapAlignPromptList": "LeapAlign Prompt List"}
