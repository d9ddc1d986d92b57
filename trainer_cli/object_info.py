"""ComfyUI's ``/object_info`` data, built in-process from ``nodes.NODE_CLASS_MAPPINGS``.

The web server builds this in a closure inside ``PromptServer.__init__`` that cannot be called
without starting the server, so the same recipe (server.py, ``node_info``) is repeated here. The UI
-> API workflow converter needs it to tell widgets from sockets and to know widget order.
Call only after ``comfy_runtime.boot_comfyui()``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("leapalign_comfy.object_info")


def node_info(node_class: str) -> dict[str, Any]:
    """The ``/object_info`` entry of one registered node class (V1 and V3 nodes)."""
    from comfy_api.internal import _ComfyNodeInternal  # noqa: PLC0415

    import nodes  # noqa: PLC0415  (ComfyUI's node registry)

    cls = nodes.NODE_CLASS_MAPPINGS[node_class]
    if isinstance(cls, type) and issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    input_types = cls.INPUT_TYPES()
    info: dict[str, Any] = {
        "input": input_types,
        "input_order": {section: list(spec) for section, spec in input_types.items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": node_class,
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_class, node_class),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    if getattr(cls, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(cls, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(cls, "API_NODE"):
        info["api_node"] = cls.API_NODE
    return info


def build_object_info(node_classes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{node_class: info}`` for every registered node (or the given ones), like ``GET /object_info``.

    A node whose ``INPUT_TYPES`` raises is left out and logged, as the server does.
    """
    import folder_paths  # noqa: PLC0415

    import nodes  # noqa: PLC0415

    names = list(nodes.NODE_CLASS_MAPPINGS) if node_classes is None else node_classes
    out: dict[str, dict[str, Any]] = {}
    with folder_paths.cache_helper:
        for name in names:
            if name not in nodes.NODE_CLASS_MAPPINGS:
                continue
            try:
                out[name] = node_info(name)
            except Exception:
                log.exception("could not read the inputs of node %s", name)
    return out
