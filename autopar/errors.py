"""Errors that name the node and the user's source line, and say what to do."""
from __future__ import annotations


class AutoparError(RuntimeError):
    """Base class of every error autopar raises on purpose."""


class NodeError(AutoparError):
    """An error about one graph node: ``While <stage> %name (op) at file.py:12: <message>``."""

    def __init__(self, node, message: str, *, stage: str = "planning", hint: str = "") -> None:
        self.node_name = getattr(node, "name", str(node))
        op = node.meta.get("op", getattr(node, "target", "?")) if hasattr(node, "meta") else "?"
        source = node.meta.get("source", "") if hasattr(node, "meta") else ""
        where = f" at {source}" if source else ""
        text = f"While {stage} %{self.node_name} ({op}){where}: {message}"
        if hint:
            text += f"\n  What to do: {hint}"
        super().__init__(text)


class InfeasibleBudgetError(AutoparError):
    """No plan fits the memory budget; ``min_budget`` is the smallest (bytes per device) that does."""

    def __init__(self, budget: float, min_budget: float, detail: str = "") -> None:
        self.budget, self.min_budget = budget, min_budget
        gib = 1024**3
        super().__init__(
            f"no plan fits a memory budget of {budget / gib:.3f} GiB per device; the smallest budget that fits is "
            f"{min_budget / gib:.3f} GiB ({min_budget:.0f} bytes). Raise memory_budget, use more devices, "
            f"or enable activation checkpointing.{(' ' + detail) if detail else ''}"
        )
