"""ComfyUI's entry point into the LeapAlign node pack (V3: ``comfy_entrypoint`` returns the extension).

ComfyUI imports this folder as a package (``nodes.load_custom_node``) and, finding no
``NODE_CLASS_MAPPINGS`` here, calls ``comfy_entrypoint()`` and registers every node of
``ComfyExtension.get_node_list()`` under its schema's ``node_id`` (ComfyUI 0.3.75 and 0.33 alike).
Everything below is imported relatively so that nothing here can resolve to ComfyUI's own top-level
``nodes``, ``utils`` or ``execution`` modules. Outside ComfyUI (pytest imports every ``__init__.py``
above a test file, for example) there is nothing to register, so the node modules are not imported.
"""

import importlib.util

WEB_DIRECTORY = None

if importlib.util.find_spec("folder_paths") is not None:  # ComfyUI's module: we are inside ComfyUI
    from comfy_api.latest import ComfyExtension

    class LeapAlignExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            from .nodes import NODES, node_ids

            node_ids()  # refuses a node id declared twice
            return list(NODES)

    async def comfy_entrypoint() -> ComfyExtension:
        return LeapAlignExtension()

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
else:
    __all__ = ["WEB_DIRECTORY"]
