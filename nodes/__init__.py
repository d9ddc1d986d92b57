"""The pack's graph blocks (ComfyUI V1 node classes), registered through one mapping.

Each module below declares its own ``NODE_CLASS_MAPPINGS``/``NODE_DISPLAY_NAME_MAPPINGS``; this
file only merges them, so adding a node touches one module and one line here.
"""

from . import (
    demo_nodes,  # digits world: demo engineer
    eval_nodes,  # evaluation: scores a model and its LoRAs
    lora_nodes,  # graph blocks: nodes engineer
    metrics_nodes,  # graph blocks: nodes engineer
    prompt_nodes,
    reward_nodes,  # rewards engineer
    rollout_nodes,  # graph blocks: nodes engineer
    train_nodes,  # graph blocks: nodes engineer
)

_NODE_MODULES = (prompt_nodes, rollout_nodes, train_nodes, lora_nodes, metrics_nodes, reward_nodes, demo_nodes,
                 eval_nodes)

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in _NODE_MODULES:
    for _name in _module.NODE_CLASS_MAPPINGS:
        if _name in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"node id {_name} is declared twice in the LeapAlign pack")
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
