"""In-context state as plain trees, so every model's state can be detached, moved and saved alike.

A state is any nesting of dicts, lists, tuples, NamedTuples and dataclasses whose leaves are
tensors, numbers or None. `tree_map(fn, state)` applies `fn` to every tensor leaf.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch


def tree_map(fn: Callable[[torch.Tensor], Any], tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # NamedTuple
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(tree, **{f.name: tree_map(fn, getattr(tree, f.name))
                                            for f in dataclasses.fields(tree) if f.init})
    return tree


def detach_state(state: Any) -> Any:
    """The same state with every tensor detached from the autograd graph."""
    return tree_map(lambda t: t.detach(), state)


def state_to(state: Any, device=None, dtype=None) -> Any:
    """Move every tensor of a state (floating tensors also change dtype when `dtype` is given)."""
    return tree_map(lambda t: t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None),
                    state)
