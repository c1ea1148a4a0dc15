"""Which rows a model has: leaf modules that run, modules that own parameters, and who owns each parameter.

A **row** of the layer table is either

* a *leaf*: a module without children (a parametrized module counts as a leaf: its ``parametrizations``
  container is part of it) that ran in a recorded forward pass, or
* an *owner*: a module that directly owns (``named_parameters(recurse=False)``) a parameter that received a
  gradient, whether or not it was called itself (``MultiheadAttention.in_proj_weight``, ViT's
  ``class_token``, an LSTM's ``weight_ih_l0``).

A parameter shared by several modules (tied embeddings) belongs to the first of them in ``named_modules()``
order; the others name that owner in ``shared_with``. Parametrized weights (``torch.nn.utils.parametrize``)
belong to the module they parametrize. Names are the user's: the ``module.`` of (Distributed)DataParallel and
the ``_orig_mod.`` of ``torch.compile`` are left out.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import MonitorError


@dataclass
class Param:
    """One parameter of the model, once: its name, its owner row and its group in that row."""

    name: str                       # qualified name as the user knows it, e.g. "encoder.layers.0.linear1.weight"
    tensor: nn.Parameter
    row: str                        # the owner's row name
    group: str                      # "weight" (every name not starting with "bias") or "bias"
    attr: str                       # attribute on the owner ("weight", "in_proj_weight", "weight.original0")


@dataclass
class Row:
    """A module that can become a row of the layer table."""

    name: str                       # row name ("" is the model itself; shown as its class name)
    module: nn.Module
    type: str                       # class name
    leaf: bool
    order: int                      # position in named_modules() order
    params: list[Param] = field(default_factory=list)   # parameters it owns (shared ones counted elsewhere)
    shared_with: str = ""           # first owner of a parameter this module also holds
    shared: list[nn.Parameter] = field(default_factory=list)   # those parameters
    parent: str | None = None       # parent module's row name (None for the model)
    leaves: tuple[str, ...] = ()    # leaf descendants (itself when a leaf), in named_modules() order


def _wrapper_child(parent: nn.Module, child_name: str) -> bool:
    """Whether ``parent.<child_name>`` is the wrapped model of a DDP/DataParallel/torch.compile wrapper."""
    if child_name == "_orig_mod":
        return type(parent).__name__ == "OptimizedModule"
    if child_name == "module":
        return isinstance(parent, (nn.DataParallel, nn.parallel.DistributedDataParallel))
    return False


def _walk(model: nn.Module) -> Iterator[tuple[str, nn.Module, str | None]]:
    """``(clean name, module, clean parent name)`` in named_modules() order, wrappers folded into their child."""
    seen: set[int] = set()

    def visit(module: nn.Module, name: str, parent: str | None) -> Iterator[tuple[str, nn.Module, str | None]]:
        if id(module) in seen:
            return
        seen.add(id(module))
        yield name, module, parent
        for child_name, child in module.named_children():
            if _wrapper_child(module, child_name):
                yield from visit(child, name, parent)
                continue
            yield from visit(child, f"{name}.{child_name}" if name else child_name, name)

    yield from visit(model, "", None)


def _is_container_of_parametrizations(parent: nn.Module, child_name: str) -> bool:
    return child_name == "parametrizations" and parametrize.is_parametrized(parent)


class LayerTable:
    """Every module that can be a row, every parameter once, and the row filters. Built once per monitor."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...] | None = None,
                 layer_types: tuple[type[nn.Module], ...] | None = None) -> None:
        self.rows: dict[str, Row] = {}
        self.params: list[Param] = []
        skip: set[int] = set()                 # parametrization containers and everything inside them
        owner_of: dict[int, str] = {}          # id(parameter) -> its first owner's row name
        self.root_type = type(model).__name__
        for order, (name, module, parent) in enumerate(_walk(model)):
            if id(module) in skip:
                continue
            children = [(n, c) for n, c in module.named_children() if not _wrapper_child(module, n)]
            inner = [c for n, c in module.named_children() if _wrapper_child(module, n)]
            if inner:                          # a wrapper: its model takes its name (folded by _walk)
                continue
            for child_name, child in children:
                if _is_container_of_parametrizations(module, child_name):
                    skip.update(id(m) for m in child.modules())
            own_children = [c for n, c in children if not _is_container_of_parametrizations(module, n)]
            row = Row(name=name, module=module, type=type(module).__name__, leaf=not own_children,
                      order=order, parent=parent)
            if name == "":
                self.root_type = row.type
            for attr, p in self._own_parameters(module):
                first = owner_of.setdefault(id(p), name)
                if first != name:
                    row.shared_with = row.shared_with or first
                    row.shared.append(p)
                    continue
                group = "bias" if attr.startswith("bias") else "weight"
                param = Param(name=_param_name(name, attr, module), tensor=p, row=name, group=group, attr=attr)
                row.params.append(param)
                self.params.append(param)
            self.rows[name] = row
        children: dict[str, list[str]] = {n: [] for n in self.rows}
        for name, row in self.rows.items():
            if row.parent in children:
                children[row.parent].append(name)
        for name in reversed(list(self.rows)):           # children come after their parent in this order
            row = self.rows[name]
            row.leaves = (name,) if row.leaf else tuple(x for c in children[name] for x in self.rows[c].leaves)
        self._filters = (layers, layer_types)
        self.selected = {n for n, r in self.rows.items() if self._matches(r)}
        if (layers is not None or layer_types is not None) and not any(
                r.leaf or r.params or r.shared_with for n, r in self.rows.items() if n in self.selected):
            raise MonitorError(_no_match_message(self, layers, layer_types))

    @staticmethod
    def _own_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        """The module's own parameters, with those of its parametrizations under the parametrized name."""
        yield from module.named_parameters(recurse=False)
        if parametrize.is_parametrized(module):
            for tensor_name, plist in module.parametrizations.items():
                for attr, p in plist.named_parameters(recurse=False):
                    yield f"{tensor_name}.{attr}", p

    def _matches(self, row: Row) -> bool:
        layers, layer_types = self._filters
        label = self.label(row.name)
        if layers is not None and not any(fnmatch.fnmatchcase(label, p) for p in layers):
            return False
        return layer_types is None or isinstance(row.module, layer_types)

    def label(self, name: str) -> str:
        """The row's name as shown (the model itself is shown by its class name)."""
        return name or self.root_type

    def leaf_names(self) -> dict[nn.Module, str]:
        """Leaf modules to hook, with their row names."""
        return {r.module: n for n, r in self.rows.items() if r.leaf}

    def ancestors(self, name: str) -> Iterator[str]:
        """Row names of the module's ancestors, nearest first."""
        parent = self.rows[name].parent
        while parent is not None:
            yield parent
            parent = self.rows[parent].parent


def _param_name(row: str, attr: str, module: nn.Module) -> str:
    if "." in attr and parametrize.is_parametrized(module):          # weight.original0 -> parametrizations...
        tensor_name, original = attr.split(".", 1)
        attr = f"parametrizations.{tensor_name}.{original}"
    return f"{row}.{attr}" if row else attr


def _no_match_message(table: LayerTable, layers: Any, layer_types: Any) -> str:
    names = [table.label(n) for n, r in table.rows.items() if r.leaf or r.params][:8]
    types = sorted({r.type for r in table.rows.values() if r.leaf or r.params})[:8]
    wanted = []
    if layers is not None:
        wanted.append(f"layers={list(layers)}")
    if layer_types is not None:
        wanted.append(f"layer_types={[t.__name__ for t in layer_types]}")
    return (f"{' and '.join(wanted)} match no layer of this model; layers are named like {names} "
            f"and have types such as {types}")


def rank_rows(table: LayerTable, names: set[str], first_seq: Mapping[str, int],
              ranked: dict[str, int]) -> None:
    """Give every row in ``names`` without a depth its rank (in place in ``ranked``).

    Leaves rank by when they first started running in the step (``first_seq``); an owner by its first leaf
    descendant that ran or, when none ran, by its nearest ancestor's first leaf that ran; ties follow
    named_modules() order. Rows first seen in a later step are ranked after every earlier row, so a row's depth
    never changes within a run.
    """
    new = [n for n in names if n not in ranked]
    if not new:
        return

    def first_leaf(name: str) -> float:
        seqs = [first_seq[leaf] for leaf in table.rows[name].leaves if leaf in first_seq]
        return min(seqs) if seqs else math.inf

    def key(name: str) -> tuple[float, int]:
        value = first_leaf(name)
        if math.isinf(value):
            value = next((v for v in map(first_leaf, table.ancestors(name)) if not math.isinf(v)), math.inf)
        return value, table.rows[name].order

    start = max(ranked.values(), default=-1) + 1
    for i, name in enumerate(sorted(new, key=key)):
        ranked[name] = start + i


def primary_output(output: Any) -> torch.Tensor | None:
    """The one tensor of a module's output that its statistics describe.

    The tensor itself; for a Hugging Face ``ModelOutput`` (or any mapping) its ``logits`` or
    ``last_hidden_state``; otherwise the first floating tensor that is not a scalar in a tuple, list or
    mapping (an LSTM's ``output``, not ``h_n``/``c_n``; never a scalar ``loss``). None when there is none.
    """
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, Mapping):
        for key in ("logits", "last_hidden_state"):
            value = output.get(key)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value
    return _first_nonscalar(output)


def _first_nonscalar(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() and output.dim() > 0 else None
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for item in items:
        found = _first_nonscalar(item)
        if found is not None:
            return found
    return None
