"""LeapAlign core: pure-torch reward fine-tuning of flow-matching models (no ComfyUI imports).

Every module imports its siblings relatively, so the package works both installed (``leapalign``)
and vendored inside the ComfyUI node pack (``<pack>.leapalign``).
"""

__version__ = "0.1.0"
