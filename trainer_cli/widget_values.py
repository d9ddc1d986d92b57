"""Catch UI-format nodes whose saved ``widgets_values`` are missing or too short.

The converter (like the editor when it loads an old file) fills a widget value that is not in the
file with the node's default. For a training node that silently turns a 32x32, 4-step test graph
into a 720x720, 300-step run, so a missing value is an error that names the node, unless ``--set``
gives it.

Only a lower bound is checked: the values the node's *required* widgets need, in declaration order,
one each plus one for an explicit ``control_after_generate`` companion (the editor writes it right
after the value). Extra values (upload buttons, optional widgets) are never an error.
"""

from __future__ import annotations

from typing import Any

from .overrides import parse_override, resolve_node

_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
_SKIPPED_MODES = (2, 4)  # muted, bypassed: the converter leaves them out


def required_widgets(info: dict[str, Any]) -> list[tuple[str, int]]:
    """``[(input name, slots)]`` for a node's required widget inputs, in order (from its object_info)."""
    required = ((info.get("input") or {}).get("required") or {})
    order = ((info.get("input_order") or {}).get("required")) or list(required)
    out = []
    for name in order:
        spec = required.get(name)
        if not isinstance(spec, (list, tuple)) or not spec:
            continue
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if options.get("forceInput") or options.get("defaultInput"):
            continue
        kind = spec[0]
        if isinstance(kind, (list, tuple)) or kind in _WIDGET_TYPES:
            out.append((name, 2 if options.get("control_after_generate") else 1))
    return out


def missing_widget_values(data: dict[str, Any], object_info: dict[str, Any]) -> dict[str, list[str]]:
    """``{node id: [required inputs with no saved value]}`` for the top-level nodes of a UI workflow."""
    missing = {}
    for node in data.get("nodes") or []:
        if not isinstance(node, dict) or node.get("mode") in _SKIPPED_MODES:
            continue
        info = object_info.get(node.get("type"))
        if not isinstance(info, dict):
            continue  # notes, reroutes, primitives, subgraphs: no declared widgets
        widgets = required_widgets(info)
        linked = {i.get("name") for i in node.get("inputs") or [] if isinstance(i, dict) and i.get("link") is not None}
        values = node.get("widgets_values")
        if isinstance(values, dict):
            names = [name for name, _ in widgets if name not in values]
        else:
            count = len(values) if isinstance(values, list) else 0
            names, used = [], 0
            for name, slots in widgets:
                if used + 1 > count:
                    names.append(name)
                used += slots
        names = [name for name in names if name not in linked]
        if names:
            missing[str(node.get("id"))] = names
    return missing


def check_widget_values(data: dict[str, Any], object_info: dict[str, Any], prompt: dict[str, dict],
                        overrides: list[str]) -> list[str]:
    """One line per node with missing values that ``--set`` does not give (empty when all is well)."""
    from .workflow import node_label  # noqa: PLC0415

    given = set()
    for spec in overrides:
        override = parse_override(spec)
        given.add((resolve_node(prompt, override), override.input))
    problems = []
    for node_id, names in missing_widget_values(data, object_info).items():
        names = [name for name in names if (node_id, name) not in given]
        if names:
            node = prompt.get(node_id, {"class_type": "?"})
            values = next((n.get("widgets_values") for n in data["nodes"] if str(n.get("id")) == node_id), None)
            saved = "no widgets_values" if values is None else f"{len(values)} widget value(s)"
            problems.append(f"node {node_label(node_id, node)} was saved with {saved}, so it has no value for "
                            f"{', '.join(names)}; open the workflow in ComfyUI and save it again, or give the "
                            f"values with --set {node_id}.{names[0]}=...")
    return problems
