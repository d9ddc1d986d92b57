"""Small helpers every node module shares: the category, and turning core errors into node errors."""

from __future__ import annotations

CATEGORY = "LeapAlign"


class LeapAlignNodeError(ValueError):
    """An error in a node's inputs, with a message meant for the person building the graph."""


def node_error(node: str, message: str) -> LeapAlignNodeError:
    return LeapAlignNodeError(f"{node}: {message}")
