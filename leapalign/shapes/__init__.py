"""The shapes world: GenEval in miniature, where composition (what, how many, where, which colour) is the task.

Pure torch (no ComfyUI): scenes of coloured shapes on a 4x4 grid of cells (``scenes``), prompts in
GenEval's six categories (``prompts``), a fixed linear latent codec (``codec``), an exact rule-based
judge that parses pictures by colour segmentation and connected components (``judge``), a
differentiable reward network (``reward``) and the evaluation (``evaluate``). ``nodes/shapes_world.py``
builds the world's ComfyUI objects; ``scripts/make_shapes_world.py`` makes its shipped weights.
"""

from .codec import ShapesCodec
from .prompts import CATEGORIES, all_prompts, parse_prompt

__all__ = ["CATEGORIES", "ShapesCodec", "all_prompts", "parse_prompt"]
