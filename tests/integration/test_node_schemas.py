"""Every node of the pack is a V3 node declared once: tooltips on every input, socket types and display
names written in one place each (the editor shows what the schemas say; nothing else may disagree)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "__init__.py", *sorted((REPO / "nodes").rglob("*.py"))]


@pytest.fixture(scope="module")
def schemas(pack):
    from comfy_api.latest import io

    nodes = pack.nodes.NODES
    assert nodes and all(issubclass(node, io.ComfyNode) for node in nodes)
    return [node.GET_SCHEMA() for node in nodes]


def _source() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in SOURCES)


def test_every_input_and_output_has_a_tooltip(schemas):
    missing = [f"{s.node_id}.{i.id}" for s in schemas for i in s.inputs if not (i.tooltip or "").strip()]
    assert missing == []
    missing = [f"{s.node_id} -> {o.id}" for s in schemas for o in s.outputs if not (o.tooltip or "").strip()]
    assert missing == []
    assert [s.node_id for s in schemas if not (s.description and s.display_name and s.category)] == []
    assert sum(len(s.inputs) for s in schemas) > 100  # the check above saw the real inputs


def test_the_registry_holds_exactly_the_pack_nodes_under_their_schema_ids(schemas, comfy):
    import nodes as comfy_nodes

    for schema in schemas:
        assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[schema.node_id] == schema.display_name
        assert comfy_nodes.NODE_CLASS_MAPPINGS[schema.node_id].GET_SCHEMA().node_id == schema.node_id


def test_socket_type_names_are_declared_once():
    source = _source()
    declared = re.findall(r'io\.Custom\("([A-Z_]+)"\)', source)
    assert {"LEAP_REWARD", "LEAP_PROMPTS", "LEAP_METHOD", "LEAP_OPTIMIZER", "LEAP_LORA_SETTINGS"} <= set(declared)
    for name in declared:
        assert source.count(f'"{name}"') == 1, f"socket type {name} is spelled out more than once"
    assert (REPO / "nodes" / "sockets.py").read_text(encoding="utf-8").count("io.Custom(") == len(declared)


def test_display_names_are_declared_once(schemas):
    source = _source()
    for schema in schemas:
        assert source.count(f'"{schema.display_name}"') == 1, f"display name {schema.display_name!r} is repeated"
    assert len({s.display_name for s in schemas}) == len(schemas)


def test_switching_method_is_swapping_one_block(pack):
    """Every method of the core has a block, all with the same output socket the training node takes."""
    from leapalign.config import METHOD_NAMES

    method_nodes = pack.nodes.method_nodes
    made = {}
    for node in method_nodes.NODES:
        schema = node.GET_SCHEMA()
        if schema.outputs[0].io_type != "LEAP_METHOD":
            continue
        defaults = {i.id: i.default for i in schema.inputs}
        made[node.execute(**defaults).result[0].name] = schema.node_id
    assert set(made) == set(METHOD_NAMES)
    train = pack.nodes.train_nodes.LeapAlignTrain.GET_SCHEMA()
    socket = {i.id: i for i in train.inputs}["method"]
    assert socket.io_type == "LEAP_METHOD" and socket.optional


def test_nodes_check_their_combo_values_themselves(pack):
    """ComfyUI 0.3.75 does not check a V3 combo's value; each node's validate_inputs does, on every version."""
    method = pack.nodes.method_nodes.LeapAlignMethod
    assert method.validate_inputs(pair_sampling="released", weighting="both") is True
    assert method.validate_inputs(weighting="d_k") == \
        "Value not in list (weighting: 'd_k' not in ['both', 'd_j', 'd_0', 'none'])"
    train = pack.nodes.train_nodes.LeapAlignTrain
    assert "(scheduler: 'nope' not in" in train.validate_inputs(run_name="x", scheduler="nope")
    assert train.validate_inputs(run_name="x", scheduler=["9", 0]) is True  # a linked value is checked at run time
    assert "must be a path inside" in train.validate_inputs(run_name="../x", scheduler="simple")
