"""ComfyUI's entry point into the LeapAlign node pack.

ComfyUI imports this folder as a package (``nodes.load_custom_node``); everything below is
imported relatively so that nothing here can resolve to ComfyUI's own top-level ``nodes``,
``utils`` or ``execution`` modules.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
