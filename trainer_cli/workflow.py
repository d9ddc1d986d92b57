"""Read a workflow file in either of ComfyUI's two formats and turn it into an API-format prompt.

UI format is what the graph editor saves (``nodes`` + ``links`` lists, widget values by position);
API format is what ``POST /prompt`` takes (``{node_id: {class_type, inputs, _meta}}``). The UI
format is converted with comfy-cli's converter, fed the same ``/object_info`` data the editor uses.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .errors import CLIError

UI_FORMAT = "ui"
API_FORMAT = "api"


def read_workflow(path: str | Path) -> dict[str, Any]:
    """The parsed JSON object of a workflow file, or a CLIError saying what is wrong with the file."""
    path = Path(path)
    if not path.exists():
        raise CLIError(f"workflow file not found: {path}")
    if not path.is_file():
        raise CLIError(f"workflow path is not a file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read workflow file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except RecursionError:
        raise CLIError(f"{path} nests JSON arrays or objects too deeply to read; no ComfyUI workflow does that: "
                       "save the workflow from ComfyUI again") from None
    except ValueError as exc:  # parser limits, e.g. an integer with more than 4300 digits
        raise CLIError(f"{path} cannot be read as a workflow: {exc}") from None
    if not isinstance(data, dict):
        raise CLIError(f"{path} holds a JSON {type(data).__name__}, not a ComfyUI workflow (a JSON object)")
    workflow_format(data, path)  # reject unrecognisable shapes before anything expensive happens
    return data


def workflow_format(data: dict[str, Any], path: str | Path = "workflow") -> str:
    """``"ui"`` or ``"api"``, decided by shape; anything else is a CLIError."""
    if isinstance(data.get("nodes"), list) and isinstance(data.get("links"), list):
        return UI_FORMAT
    prompt = unwrap_api_prompt(data)
    if prompt and all(isinstance(node, dict) and "class_type" in node for node in prompt.values()):
        return API_FORMAT
    raise CLIError(
        f"{path} is neither a ComfyUI workflow (UI format, with 'nodes' and 'links') nor an API-format prompt "
        "(node ids mapping to objects with 'class_type'); save it from ComfyUI with Workflow > Save or Export (API)"
    )


def unwrap_api_prompt(data: dict[str, Any]) -> dict[str, Any]:
    """The node map of an API-format file, also when saved as a ``/prompt`` request body."""
    if isinstance(data.get("prompt"), dict) and ("client_id" in data or "extra_data" in data or len(data) == 1):
        return data["prompt"]
    return data


def to_api_prompt(data: dict[str, Any], object_info: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """An API-format prompt (a fresh copy) from a workflow of either format.

    ``object_info`` is needed only for the UI format (see ``trainer_cli.object_info``).
    """
    if workflow_format(data) == API_FORMAT:
        prompt = copy.deepcopy(unwrap_api_prompt(data))
        return {str(node_id): node for node_id, node in prompt.items()}
    if object_info is None:
        raise ValueError("converting a UI-format workflow needs object_info")
    from comfy_cli.workflow_to_api import WorkflowConversionError, convert_ui_to_api  # noqa: PLC0415

    try:
        prompt = convert_ui_to_api(data, object_info)
    except WorkflowConversionError as exc:
        raise CLIError(f"cannot convert the UI-format workflow to API format: {exc}") from None
    except RecursionError:
        raise CLIError("cannot convert the UI-format workflow to API format: its links or subgraphs nest too "
                       "deeply (a cycle?); open it in ComfyUI and save it again") from None
    if not prompt:
        raise CLIError("the workflow has no nodes that would run (all muted, bypassed or notes)")
    return prompt


def unknown_node_types(data: dict[str, Any], known: set[str] | dict) -> dict[str, str]:
    """``{node_id: type}`` of nodes whose type ComfyUI does not know (before any conversion)."""
    if workflow_format(data) == API_FORMAT:
        items = ((str(k), v.get("class_type")) for k, v in unwrap_api_prompt(data).items())
    else:
        ui_only = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute", "GetNode", "SetNode"}
        subgraphs = {sg.get("id") for sg in (data.get("definitions") or {}).get("subgraphs", []) if isinstance(sg, dict)}
        items = ((str(n.get("id")), n.get("type")) for n in data["nodes"]
                 if isinstance(n, dict) and n.get("type") not in ui_only and n.get("type") not in subgraphs)
    return {node_id: str(kind) for node_id, kind in items if kind not in known}


def describe_unknown_types(unknown: dict[str, str]) -> str:
    listed = ", ".join(f"node {node_id} ({kind})" for node_id, kind in sorted(unknown.items(), key=_id_key))
    kinds = sorted(set(unknown.values()))
    many = len(kinds) > 1
    return (f"unknown node type{'s' if many else ''} {', '.join(kinds)} in {listed}: no loaded node pack provides "
            f"{'them' if many else 'it'}. Install the custom node pack that does into ComfyUI's custom_nodes folder, "
            "or load its folder with --custom-nodes DIR")


def _id_key(item: tuple[str, Any]) -> tuple[int, str]:
    node_id = item[0]
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)


def node_label(node_id: str, node: dict[str, Any]) -> str:
    """``12 'Train LoRA' (LeapAlignTrainLoRA)``: how messages name a node."""
    title = (node.get("_meta") or {}).get("title")
    kind = node.get("class_type", "?")
    return f"{node_id} '{title}' ({kind})" if title and title != kind else f"{node_id} ({kind})"


def sorted_node_ids(prompt: dict[str, Any]) -> list[str]:
    return [node_id for node_id, _ in sorted(prompt.items(), key=_id_key)]
