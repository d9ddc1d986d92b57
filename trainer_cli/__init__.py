"""Headless trainer: runs a LeapAlign training graph through ComfyUI's own executor, in-process."""
