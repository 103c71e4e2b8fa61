"""Errors that name the node and the user's source line, and say what to do."""
from __future__ import annotations


class AutoparError(RuntimeError):
    """Base class of every error autopar raises on purpose."""


class LaunchError(AutoparError):
    """The processes do not match the cluster (no process group, or another world size); says how to launch."""


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

    def __reduce__(self):  # rebuilt from its text, so it crosses process boundaries (rank 0 -> all)
        return (_rebuild, (type(self), str(self), self.node_name))


class InfeasibleBudgetError(AutoparError):
    """No plan fits the memory budget; ``min_budget`` is the smallest (bytes per device) that does."""

    def __init__(self, budget: float, min_budget: float, detail: str = "") -> None:
        from autopar.report.text import human_bytes

        self.budget, self.min_budget, self.detail = budget, min_budget, detail
        todo = "Raise memory_budget or use more devices" if "with activation checkpointing" in detail else \
            "Raise memory_budget, use more devices, or allow activation checkpointing (checkpoint=None or 'auto')"
        super().__init__(
            f"no plan fits a memory budget of {human_bytes(budget)} per device; the smallest budget that fits is "
            f"{human_bytes(min_budget)} ({min_budget:.0f} bytes){(' ' + detail) if detail else ''}. {todo}."
        )

    def __reduce__(self):
        return (type(self), (self.budget, self.min_budget, self.detail))


def _rebuild(cls, text: str, node_name: str):
    err = cls.__new__(cls)
    RuntimeError.__init__(err, text)
    err.node_name = node_name
    return err
