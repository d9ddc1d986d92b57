"""``--set NODE.INPUT=VALUE``: change a widget value of an API-format prompt from the command line.

NODE is a node id, a node title, or (when only one node has it) a node type. VALUE is read as a
JSON literal and then checked against the input's declared type, never evaluated: ``40`` is a
number, ``true`` a boolean, ``"40"`` or a bare word a string; a STRING input always receives the
text as written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .errors import CLIError
from .training_nodes import METHOD_BLOCKS, TRAIN_NODES
from .workflow import node_label, sorted_node_ids

_EXAMPLE = 'e.g. --set 6.steps=40 or --set "Train LoRA (LeapAlign).learning_rate=2e-5"'


@dataclass(frozen=True)
class Override:
    node: str
    input: str
    text: str
    spec: str  # the argument as given, for messages


def parse_override(spec: str) -> Override:
    target, sep, text = spec.partition("=")
    node, dot, name = target.strip().rpartition(".")
    if not sep or not dot or not node.strip() or not name.strip():
        raise CLIError(f"--set {spec!r}: expected NODE.INPUT=VALUE ({_EXAMPLE})")
    return Override(node.strip(), name.strip(), text, spec)


def apply_overrides(prompt: dict[str, dict], specs: list[str], object_info: dict[str, dict]) -> dict[str, dict]:
    """Apply every ``--set`` to ``prompt`` in place (and return it); all problems are CLIErrors."""
    for spec in specs:
        override = parse_override(spec)
        node_id = resolve_node(prompt, override)
        node = prompt[node_id]
        declared = declared_inputs(object_info.get(node.get("class_type"), {}))
        inputs = node.setdefault("inputs", {})
        if override.input not in declared and override.input not in inputs:
            block = _block_with_input(prompt, node_id, override.input, object_info)
            if block is not None:  # a setting that moved from the training node onto a block linked into it
                node_id, node = block, prompt[block]
                declared = declared_inputs(object_info.get(node.get("class_type"), {}))
                inputs = node.setdefault("inputs", {})
        if override.input not in declared and override.input not in inputs:
            widgets = widget_names(node, declared)
            raise CLIError(f"--set {spec!r}: node {node_label(node_id, node)} has no input {override.input!r}; "
                           f"its settable inputs are: {', '.join(widgets) or '(none)'}")
        current = inputs.get(override.input)
        if override.input == "method" and _is_link(current) and node.get("class_type") in TRAIN_NODES:
            swap_method_block(prompt, current[0], override, object_info)
            continue
        if _is_link(current):
            raise CLIError(f"--set {spec!r}: input {override.input!r} of node {node_label(node_id, node)} is connected "
                           f"to node {current[0]}; --set changes widget values only (change that node instead)")
        inputs[override.input] = coerce_value(override, declared.get(override.input))
    return prompt


def _block_with_input(prompt: dict[str, dict], node_id: str, name: str, object_info: dict) -> str | None:
    """The one node linked directly into ``node_id`` that declares ``name`` (the method, optimizer or LoRA
    block of a training node), so ``--set TRAIN.learning_rate=...`` keeps working after the setting moved."""
    found = [link[0] for link in prompt[node_id].get("inputs", {}).values() if _is_link(link) and link[0] in prompt
             and name in declared_inputs(object_info.get(prompt[link[0]].get("class_type"), {}))]
    return found[0] if len(set(found)) == 1 else None


def swap_method_block(prompt: dict[str, dict], block_id: str, override: Override, object_info: dict) -> None:
    """``--set TRAIN.method=refl`` on a graph with a method block: swap that block for the named method's.

    The new block starts from its declared defaults (the released code's) and keeps ``hinge_lambda``.
    """
    name = override.text.strip().strip('"')
    if name not in METHOD_BLOCKS:
        raise CLIError(f"--set {override.spec!r}: {name!r} is not a method; choose one of {', '.join(METHOD_BLOCKS)}")
    block = prompt[block_id]
    kind = METHOD_BLOCKS[name]
    declared = declared_inputs(object_info.get(kind, {}))
    inputs = {key: _spec_options(spec)["default"] for key, spec in declared.items() if "default" in _spec_options(spec)}
    if "hinge_lambda" in inputs and "hinge_lambda" in block.get("inputs", {}):
        inputs["hinge_lambda"] = block["inputs"]["hinge_lambda"]
    block.update(class_type=kind, inputs=inputs)


_TYPE_ALIASES = {name: TRAIN_NODES for name in TRAIN_NODES}
"""A --set naming either training node type finds the workflow's training node, whichever it is."""


def resolve_node(prompt: dict[str, dict], override: Override) -> str:
    """The node id an override names: by id, else by title, else by a node type used once."""
    ref = override.node
    if ref in prompt:
        return ref
    types = _TYPE_ALIASES.get(ref, (ref,))
    for what, match in (("title", lambda n: (n.get("_meta") or {}).get("title") == ref),
                        ("type", lambda n: n.get("class_type") in types)):
        matches = [node_id for node_id in sorted_node_ids(prompt) if match(prompt[node_id])]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CLIError(f"--set {override.spec!r}: {len(matches)} nodes have the {what} {ref!r} "
                           f"(ids {', '.join(matches)}); name one by its id, e.g. --set {matches[0]}.{override.input}=...")
    listing = "; ".join(node_label(node_id, prompt[node_id]) for node_id in sorted_node_ids(prompt))
    raise CLIError(f"--set {override.spec!r}: no node has the id, title or type {ref!r}. Nodes: {listing}")


def declared_inputs(info: dict[str, Any]) -> dict[str, Any]:
    """``{input name: spec}`` of a node's required and optional inputs, from its object_info entry."""
    out: dict[str, Any] = {}
    for section in ("required", "optional"):
        section_inputs = (info.get("input") or {}).get(section) or {}
        if isinstance(section_inputs, dict):
            out.update(section_inputs)
    return out


_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def widget_names(node: dict[str, Any], declared: dict[str, Any]) -> list[str]:
    """Inputs that hold a value rather than a connection (what --set may change)."""
    names = [name for name, value in node.get("inputs", {}).items() if not _is_link(value)]
    for name, spec in declared.items():
        kind = _spec_type(spec)
        if name not in names and not _is_link(node.get("inputs", {}).get(name)) and (
                isinstance(kind, list) or kind in _WIDGET_TYPES):
            names.append(name)
    return names


def coerce_value(override: Override, spec: Any) -> Any:
    """The value of ``override.text`` for an input declared as ``spec`` (None when unknown)."""
    text = override.text
    kind = _spec_type(spec)
    parsed = _json_literal(text)
    where = f"--set {override.spec!r}"
    if isinstance(parsed, (list, dict)):
        raise CLIError(f"{where}: --set takes a single number, boolean or string, not a JSON {type(parsed).__name__}")
    as_text = parsed if isinstance(parsed, str) and text.strip().startswith('"') else text
    if kind == "STRING":
        return as_text
    if isinstance(kind, list) or kind == "COMBO":
        options = kind if isinstance(kind, list) else list(_spec_options(spec).get("options") or [])
        value = as_text if all(isinstance(o, str) for o in options) else parsed
        if options and value not in options:
            shown = ", ".join(map(str, options[:20])) + (" ..." if len(options) > 20 else "")
            raise CLIError(f"{where}: {value!r} is not one of the choices for {override.input!r}: {shown}")
        return value
    if kind == "INT":
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)) or not float(parsed).is_integer():
            raise CLIError(f"{where}: {override.input!r} takes a whole number, got {text!r}")
        return int(parsed)
    if kind == "FLOAT":
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)) or not math.isfinite(parsed):
            raise CLIError(f"{where}: {override.input!r} takes a number, got {text!r}")
        return float(parsed)
    if kind == "BOOLEAN":
        if not isinstance(parsed, bool):
            raise CLIError(f"{where}: {override.input!r} takes true or false, got {text!r}")
        return parsed
    return parsed


def _json_literal(text: str) -> Any:
    """``text`` as a JSON literal when it is one (also True/False), else the text itself."""
    stripped = text.strip()
    if stripped in ("True", "False"):
        return stripped == "True"
    try:
        return json.loads(stripped)
    except (json.JSONDecodeError, ValueError):
        return text


def _spec_type(spec: Any) -> Any:
    if isinstance(spec, (list, tuple)) and spec:
        return list(spec[0]) if isinstance(spec[0], (list, tuple)) else spec[0]
    return None


def _spec_options(spec: Any) -> dict[str, Any]:
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)
