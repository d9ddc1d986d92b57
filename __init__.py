"""ComfyUI's entry point into the LeapAlign node pack.

ComfyUI imports this folder as a package (``nodes.load_custom_node``); everything below is
imported relatively so that nothing here can resolve to ComfyUI's own top-level ``nodes``,
``utils`` or ``execution`` modules. Outside ComfyUI (pytest imports every ``__init__.py`` above a
test file, for example) there is nothing to register, so the node modules are not imported.
"""

import importlib.util

if importlib.util.find_spec("folder_paths") is not None:  # ComfyUI's module: we are inside ComfyUI
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}

WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
