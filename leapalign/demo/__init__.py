"""The digits world: a tiny text-to-image task in which reward alignment has a visible job to do.

Pure torch (no ComfyUI): the handwritten-digits data set that ships inside scikit-learn, prompts such
as "a handwritten seven", a fixed linear latent codec, the reward classifier and the independent
judge classifier, and evaluation metrics. ``nodes/demo_world.py`` wraps these in ComfyUI objects.
"""

from .codec import DigitsCodec
from .prompts import DIGIT_WORDS, digit_prompt, parse_digit

__all__ = ["DIGIT_WORDS", "DigitsCodec", "digit_prompt", "parse_digit"]
