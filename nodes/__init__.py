"""The pack's graph blocks (ComfyUI V3 nodes), collected into one list for ``comfy_entrypoint``.

Each module below declares its nodes in a ``NODES`` list; this file only concatenates them, so adding
a node touches one module and, for a new module, one line here.
"""

from . import (
    demo_nodes,  # digits world
    eval_nodes,  # evaluation: scores a model and its LoRAs
    lora_nodes,
    method_nodes,  # the method, optimizer and LoRA blocks
    metrics_nodes,
    prompt_nodes,
    reward_nodes,
    rollout_nodes,
    shapes_nodes,  # shapes world
    train_nodes,
)

_NODE_MODULES = (prompt_nodes, method_nodes, train_nodes, rollout_nodes, lora_nodes, metrics_nodes, reward_nodes,
                 demo_nodes, eval_nodes, shapes_nodes)

NODES: list[type] = [node for module in _NODE_MODULES for node in module.NODES]


def node_ids() -> list[str]:
    """Every node id of the pack, checked to be unique."""
    ids = [node.GET_SCHEMA().node_id for node in NODES]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise RuntimeError(f"node id(s) {', '.join(repeated)} declared twice in the LeapAlign pack")
    return ids
