"""What every subcommand that touches a graph does first: boot ComfyUI, build and check the prompt."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .comfy_runtime import BootedComfy, ComfyBootError, PromptValidationError, boot_comfyui, validate_prompt
from .console import Console
from .errors import CLIError
from .locate import ComfyUINotFound, locate_comfyui
from .workflow import (
    API_FORMAT,
    describe_unknown_types,
    node_label,
    to_api_prompt,
    unknown_node_types,
    workflow_format,
)


@dataclass
class PreparedPrompt:
    prompt: dict[str, dict[str, Any]]
    outputs: list[str]
    source_format: str

    @property
    def labels(self) -> dict[str, str]:
        return {node_id: node_label(node_id, node) for node_id, node in self.prompt.items()}


def boot(args: argparse.Namespace, console: Console, log_file: Path, **folders: Any) -> BootedComfy:
    """Boot ComfyUI with the pack and any ``--custom-nodes``; its own output goes to ``log_file``."""
    try:
        locate_comfyui(args.comfyui)  # a wrong --comfyui is reported before anything else happens
    except ComfyUINotFound as exc:
        raise CLIError(str(exc)) from None
    console.capture_library_output(log_file)
    for folder in args.custom_nodes or []:
        if not Path(folder).exists():
            raise CLIError(f"--custom-nodes {folder}: no such folder")
    if getattr(args, "input_dir", None) and not Path(args.input_dir).is_dir():
        raise CLIError(f"--input-dir {args.input_dir}: no such folder")
    try:
        return boot_comfyui(args.comfyui, cpu=True if args.cpu else None, extra_custom_nodes=args.custom_nodes or [],
                            input_dir=getattr(args, "input_dir", None), **folders)
    except ComfyUINotFound as exc:
        raise CLIError(str(exc)) from None
    except ComfyBootError as exc:
        where = f"; ComfyUI's log: {console.log_path}" if console.log_path else ""
        raise CLIError(f"{exc}{where}", 1) from None


def build_prompt(data: dict[str, Any], overrides: list[str]) -> PreparedPrompt:
    """API prompt from a workflow of either format, with ``--set`` overrides; checks node types first."""
    import nodes  # noqa: PLC0415  (ComfyUI's registry; booted by now)

    from .object_info import build_object_info  # noqa: PLC0415
    from .overrides import apply_overrides  # noqa: PLC0415
    from .widget_values import check_widget_values  # noqa: PLC0415

    unknown = unknown_node_types(data, nodes.NODE_CLASS_MAPPINGS)
    if unknown:
        raise CLIError(describe_unknown_types(unknown))
    fmt = workflow_format(data)
    if fmt == API_FORMAT:
        prompt = to_api_prompt(data)
        object_info = build_object_info(sorted({node["class_type"] for node in prompt.values()}))
    else:
        object_info = build_object_info()
        prompt = to_api_prompt(data, object_info)
    apply_overrides(prompt, list(overrides or []), object_info)
    if fmt != API_FORMAT:
        problems = check_widget_values(data, object_info, prompt, list(overrides or []))
        if problems:
            raise CLIError("the workflow file is incomplete:\n  " + "\n  ".join(problems))
    return PreparedPrompt(prompt, [], fmt)


def validate(prepared: PreparedPrompt) -> PreparedPrompt:
    """ComfyUI's own validation; its errors become one readable line per problem."""
    try:
        prepared.outputs = validate_prompt(prepared.prompt)
    except PromptValidationError as exc:
        raise CLIError(format_validation(exc, prepared.prompt)) from None
    except RecursionError:
        raise CLIError("workflow is invalid: its chains of linked nodes are too long for ComfyUI's validation "
                       "(or they form a cycle)") from None
    return prepared


def format_validation(exc: PromptValidationError, prompt: dict[str, dict]) -> str:
    """ComfyUI's validation result as a headline plus one line per node error, nodes named by title."""
    error = exc.error or {}
    head = error.get("message") or "invalid workflow"
    if error.get("details") and not exc.node_errors:
        head += f": {error['details']}"
    lines = [f"workflow is invalid: {head}"]
    for node_id, info in (exc.node_errors or {}).items():
        label = node_label(node_id, prompt.get(node_id, {"class_type": info.get("class_type", "?")}))
        for err in info.get("errors", []):
            detail = err.get("details") or ""
            message = err.get("message", "")
            lines.append(f"  node {label}: {message}" + (f" ({detail})" if detail and detail not in message else ""))
    return "\n".join(lines)
