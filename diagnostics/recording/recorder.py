"""One recorded step, from the gathered sums to typed rows: pooling, parameters, depth, snapshots, the store."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from . import pooling, stats
from .blocks import BlockHooks, BlockState
from .buffers import Call, Scratch, StepBuffer, Transfer
from .distributed import MAX, SUM, Exchange, mean_loss, world_size
from .layers import LayerTable, rank_rows
from .options import MonitorOptions
from .reductions import ParamBlock, ParamSums, queue_parameters
from .rows import Columns, LayerRecord, ParamRecord, block_records, queue_blocks, summed_histograms
from .snapshots import KernelSnapshots
from .units import UnitActivity, pooled_masks


@dataclass
class OpenStep:
    """A recorded step whose rows wait for the optimizer step's update before they are stored."""

    step: int
    layers: Columns
    params: Columns
    steps: dict[str, Any]
    hist: Columns | None
    blocks: Columns | None
    norms: dict[str, float]                          # parameter -> ‖W‖ (NaN when not read)
    groups: dict[str, list[str]]                     # row label -> parameters of its weight group
    with_grad: set[str]                              # parameters that had a gradient
    awaiting_update: bool
    kernels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    kernel_updates: dict[str, np.ndarray] = field(default_factory=dict)
    updates: dict[str, float] = field(default_factory=dict)   # parameter -> ‖ΔW‖²
    shard_updates: set[str] = field(default_factory=set)      # ... of which only this rank's shard is known yet
    nonfinite_forward: str | None = None
    nonfinite_backward: str | None = None


@dataclass
class RowLayout:
    """What a step's rows, in depth order, take from the layer table (the same while the rows stay the same)."""

    position: dict[str, int]                         # row name -> place
    labels: list[str]
    types: list[str]
    leaf: list[bool]
    shared: list[str]                                # label of the owner a parameter is shared with ("": none)
    groups: pooling.Groups                           # the parameters each row pools
    weight_groups: dict[str, list[str]]              # label -> parameters of its weight group (read only)
    param_ids: list[tuple[int, ...]]                 # id() of each row's own parameters


@dataclass
class HistRecord:
    """One log10|g| histogram row (see :data:`stats.HIST_COLUMNS`)."""

    step: int
    layer: str
    kind: str
    counts: list[int]
    zeros: int
    nonfinite: int
    log10_scale: float


def _queue_calls(transfer: Transfer, calls: Mapping[str, list[Call]],
                 arena: int) -> dict[str, list[tuple[Call, int, int]]]:
    """Offsets of each call's sums and NaN/Inf count; a fused call's are in its arena row, queued once for all
    (at offset ``arena``)."""
    def queue(c: Call) -> tuple[Call, int, int]:
        if c.row >= 0:                                    # a row of the fused kernels' arena: 4 numbers
            offset = arena + 4 * c.row
            return c, offset, offset + 3
        if c.nonfinite is None:                           # a host row of the fused kernels outside the arena
            offset = transfer.add(c.sums)
            return c, offset, offset + 3
        return c, transfer.add(c.sums), transfer.add(c.nonfinite)
    return {n: [queue(c) for c in items] for n, items in calls.items()}


def _number(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().cpu())
    return float(value)


class StepRecorder:
    """Turns one step's :class:`StepBuffer` into rows; keeps what lasts across steps (depth, snapshots)."""

    def __init__(self, table: LayerTable, options: MonitorOptions, group: Any, fused: bool,
                 scratch: Scratch) -> None:
        self.table = table
        self.options = options
        self.group = group
        self.fused = fused
        self.depth: dict[str, int] = {}               # row name -> rank, fixed when first recorded
        self.ran: set[str] = set()                    # leaves seen running in any recorded step
        self.scratch = scratch
        self._segments: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}
        self._rows: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], str]] = {}
        self._layouts: dict[tuple[str, ...], RowLayout] = {}
        self._param_index = {p.name: i for i, p in enumerate(table.params)}
        #: selected rows owning or sharing parameters, with those tensors (a row when one received a gradient)
        self._owners = [(name, tuple(p.tensor for p in row.params) + tuple(row.shared))
                        for name, row in table.rows.items() if name in table.selected and (row.params or row.shared)]
        self._param_names: dict[tuple, tuple[list[str], list[str], list[str]]] = {}   # the last step's, by shape
        self.units = UnitActivity(options.unit_window)
        self.snapshots = None if options.kernels is None else KernelSnapshots(
            options.kernels, options.kernel_every, options.kernel_max_mb, self.conv_weight)

    def _row_info(self, name: str) -> tuple[str, tuple[str, ...], tuple[str, ...], str]:
        """A row's label, the names of its weight-group and bias-group parameters, and the owner it shares with
        (fixed for the monitor's life: kept after the first step)."""
        info = self._rows.get(name)
        if info is None:
            row = self.table.rows[name]
            info = self._rows[name] = (
                self.table.label(name), tuple(p.name for p in row.params if p.group == "weight"),
                tuple(p.name for p in row.params if p.group == "bias"),
                self.table.label(row.shared_with) if row.shared else "")
        return info

    def conv_weight(self, label: str) -> torch.nn.Parameter | None:
        row = self.table.rows.get("" if label == self.table.root_type else label)
        return next((p.tensor for p in row.params if p.attr == "weight"), None) if row else None

    def _segment_ids(self, sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
        key = (sizes, device)
        ids = self._segments.get(key)
        if ids is None:
            if len(self._segments) > 8:                   # the parameters with gradients changed shape again
                self._segments.clear()
            ids = self._segments[key] = stats.segment_ids(sizes, device)
        return ids

    def record(self, step: int, buf: StepBuffer, loss: Any, metrics: Mapping[str, Any], *, scale: float,
               weight_scale: float, in_optimizer: set[int] | None, writer: Any, histogram: bool,
               awaiting_update: bool, previous: OpenStep | None = None,
               blocks: tuple[BlockState, BlockHooks] | None = None) -> OpenStep:
        """Pool, reduce and transfer one step; the rows wait in the returned :class:`OpenStep`.

        In distributed mode the ranks' numbers are combined here (and the shard updates of ``previous``, the
        step before, ride along), so every statistic is the global batch's and the full parameters'.
        """
        table, opts = self.table, self.options
        had_loss = loss is not None
        acts, calls, first = buf.committed()
        grads = buf.grads
        transfer = Transfer()
        arena = transfer.add(buf.rows[:buf.used]) if buf.rows is not None and buf.used else -1
        act_off = _queue_calls(transfer, acts, arena)
        grad_off = _queue_calls(transfer, grads, arena)
        hist_off = {n: transfer.add(h) for n, h in buf.act_grad_hist.items()}
        masks = {n: pooled_masks(items) for n, items in acts.items()} if opts.unit_activity else {}
        unit_off = {n: (transfer.add(m), m.numel()) for n, m in masks.items() if m is not None}

        # Rows of this step: leaves that ran, and modules owning a parameter that received a gradient.
        names = {n for n in calls if n in table.selected}
        for name, tensors in self._owners:
            for t in tensors:
                if t.grad is not None:
                    names.add(name)
                    break
        wanted_weights = set()
        if opts.weight_norms:
            wanted_weights = {p.name for n in names for p in table.rows[n].params}
        param_off, param_block, weight_hist = queue_parameters(
            table.params, transfer, fused=self.fused, weight_norms=opts.weight_norms,
            weights_without_grad=wanted_weights, histograms=histogram, scratch=self.scratch,
            segment_ids=self._segment_ids)
        loss_off = transfer.add(loss.detach().float().reshape(1)) if isinstance(loss, torch.Tensor) else None
        metric_off = {k: transfer.add(v.detach().float().reshape(1)) for k, v in metrics.items()
                      if isinstance(v, torch.Tensor)}
        block_off = queue_blocks(transfer, blocks[0]) if blocks is not None else None
        input_off = [transfer.add(t) for t in buf.inputs]

        host = transfer.fetch()                                   # the one host transfer of this step

        local_nonfinite = self._local_nonfinite(param_off, param_block, host)
        bad_inputs = float(sum(host[o] for o in input_off)) if input_off else math.nan
        world = world_size(self.group) if opts.distributed else 1
        if world > 1:
            local_loss = host[loss_off] if loss_off is not None else (math.nan if loss is None else _number(loss))
            loss, bad_inputs, act_off, grad_off = self._combine(host, act_off, grad_off, param_off, local_nonfinite,
                                                                local_loss, bad_inputs, previous, world, unit_off)
            loss_off = None
        pa = self._parameter_arrays(param_off, param_block, host, weight_scale, local_nonfinite)
        params = self._param_columns(step, pa, in_optimizer)

        rank_rows(table, names, first, self.depth)
        self.ran.update(calls)
        order = sorted(names, key=self.depth.__getitem__)
        layout = self._layout(order)
        rows = len(order)
        acts_at = pooling.flatten_calls(act_off, layout.position)
        grads_at = pooling.flatten_calls(grad_off, layout.position)
        first_forward = pooling.first_nonfinite(acts_at, host)
        first_backward = pooling.first_nonfinite(grads_at, host)
        a_mean, a_std, a_zero, a_bad = pooling.activations(acts_at, host, rows)
        g_norm, g_mean, g_max, g_bad = pooling.output_grads(grads_at, host, rows, scale)
        weights = pooling.parameter_columns(layout.groups, pa, rows)
        units, dead = [0] * rows, [math.nan] * rows
        for name, (o, k) in unit_off.items():
            if name in layout.position:
                units[layout.position[name]], dead[layout.position[name]] = self.units.update(name, host[o:o + k] > 0)
        inside: list[bool | None] = [None] * rows
        if in_optimizer is not None:
            inside = [any(i in in_optimizer for i in ids) if ids else None for ids in layout.param_ids]
        w_bad = weights["weight_grad_nonfinite"]
        layers = Columns.of(LayerRecord, {
            "step": [step] * rows, "layer": list(layout.labels), "type": list(layout.types),
            "kind": ["leaf" if leaf and name in self.ran else "owner" for name, leaf in zip(order, layout.leaf)],
            "depth": [self.depth[n] for n in order], "calls": [int(calls.get(n, 0)) for n in order],
            **{k: v for k, v in weights.items() if k != "weight_grad_nonfinite"},
            "update_ratio": [math.nan] * rows, "act_grad_norm": g_norm, "act_grad_mean_abs": g_mean,
            "act_grad_max_abs": g_max, "act_mean": a_mean, "act_std": a_std, "act_zero_frac": a_zero,
            "units": units, "dead_units": dead, "nonfinite": [a + g + w for a, g, w in zip(a_bad, g_bad, w_bad)],
            "act_nonfinite": a_bad, "act_grad_nonfinite": g_bad, "weight_grad_nonfinite": w_bad,
            "shared_with": list(layout.shared), "in_optimizer": inside})
        if first_backward is None:
            bad = [(self.depth[p.row], p.row) for p, has, n in zip(table.params, pa.has, pa.nonfinite)
                   if has and n and p.row in self.depth]
            first_backward = min(bad, default=(None, None))[1]

        with_grad = {p.name for p, has in zip(table.params, pa.has) if has}
        any_grad = bool(with_grad)
        total = float(np.sum(pa.sumsq[pa.has]))
        steps: dict[str, Any] = {
            "step": step, "time": time.time(),
            "loss": host[loss_off] if loss_off is not None else (_number(loss) if loss is not None else math.nan),
            "grad_norm_total": stats.l2_norm(total) if any_grad else math.nan,
            "grad_scale": scale,
            "nonfinite_forward_layer": table.label(first_forward) if first_forward is not None else "",
            "nonfinite_backward_layer": table.label(first_backward) if first_backward is not None else "",
            # Where a non-finite value came from: the batch itself, the loss, or (the columns above) a layer.
            "input_nonfinite": bad_inputs,               # NaN/Inf in the model's input tensors (NaN: not seen)
        }
        steps["loss_nonfinite"] = not math.isfinite(steps["loss"]) if had_loss else None
        for key, value in metrics.items():
            steps[key] = host[metric_off[key]] if key in metric_off else _number(value)

        hist = None
        if histogram:
            hist = Columns(HistRecord)
            n_bins = len(stats.HIST_EDGES) - 1
            for kind, offsets, div in (("act_grad", {n: [o] for n, o in hist_off.items()}, scale),
                                       ("weight_grad", weight_hist, weight_scale)):
                for name, offs in offsets.items():
                    counts = summed_histograms(offs, host, n_bins)
                    # Dividing g by the loss scale shifts log10|g| by log10(scale): bins move as a whole only
                    # when the shift is a whole number of bins, so unscaled histograms are stored with the
                    # scale noted rather than re-binned.
                    hist.append(HistRecord(step=step, layer=table.label(name), kind=kind,
                                           counts=counts[:n_bins].astype(np.int64).tolist(),
                                           zeros=int(counts[n_bins]), nonfinite=int(counts[n_bins + 1]),
                                           log10_scale=math.log10(div) if div > 0 else 0.0))

        block_rows = None
        if blocks is not None:
            block_rows = block_records(step, block_off, host, blocks[1], self._block_depth(blocks[1]), scale)
        open_step = OpenStep(step=step, layers=layers, params=params, steps=steps, hist=hist, blocks=block_rows,
                             norms={p.name: n for p, n in zip(table.params, pa.norm.tolist())},
                             groups=layout.weight_groups, with_grad=with_grad, awaiting_update=awaiting_update,
                             nonfinite_forward=steps["nonfinite_forward_layer"] or None,
                             nonfinite_backward=steps["nonfinite_backward_layer"] or None)
        if self.snapshots is not None and self.snapshots.due(step):
            by_depth = [table.label(n) for n in sorted(self.depth, key=self.depth.__getitem__)]
            open_step.kernels = self.snapshots.take(step, by_depth, weight_scale, awaiting_update, writer)
        return open_step

    def _local_nonfinite(self, offsets: Mapping[str, ParamSums], block: ParamBlock | None,
                         host: np.ndarray) -> dict[str, int]:
        """NaN/Inf counts of the gradients whose Σg² is not finite (a second pass over those alone)."""
        out = {}
        if block is not None:
            sumsq = host[block.offset + 1:block.offset + 4 * len(block.taken):4]
            for i in np.flatnonzero(block.taken & ~np.isfinite(sumsq)).tolist():
                param = self.table.params[i]
                out[param.name] = int((~torch.isfinite(param.tensor.grad)).sum())
        for name, off in offsets.items():
            if off.grad >= 0 and not math.isfinite(host[off.grad + 1]):
                readable = off.values is not None and off.values.device.type != "meta"
                out[name] = int((~torch.isfinite(off.values)).sum()) if readable else 0
        return out

    def _combine(self, host: np.ndarray, act_off: dict[str, list[tuple[Call, int, int]]],
                 grad_off: dict[str, list[tuple[Call, int, int]]], param_off: Mapping[str, ParamSums],
                 nonfinite: dict[str, int], loss: float, bad_inputs: float, previous: OpenStep | None,
                 world: int, units: Mapping[str, tuple[int, int]],
                 ) -> tuple[float, float, dict[str, list[tuple[Call, int, int]]],
                            dict[str, list[tuple[Call, int, int]]]]:
        """Combine this rank's numbers with every other rank's, in place in ``host`` (two collectives).

        Each rank's loss averages only its local batch, so a local output gradient is ``W`` times the gradient
        of the global mean loss: Σ|g| is divided by W, Σg² by W², max|g| by W.
        """
        ex = Exchange()
        at_loss = ex.add("loss", SUM, loss)
        at_inputs = ex.add("inputs", SUM, bad_inputs)
        acts = {(n, i): ex.add(f"a:{n}:{i}", SUM, host[o], host[o + 1], host[o + 2], host[nf], c.numel)
                for n in sorted(act_off) for i, (c, o, nf) in enumerate(act_off[n])}
        grads = {(n, i): (ex.add(f"g:{n}:{i}", SUM, host[o], host[o + 1], host[nf], c.numel),
                          ex.add(f"m:{n}:{i}", MAX, host[o + 2]))
                 for n in sorted(grad_off) for i, (c, o, nf) in enumerate(grad_off[n])}
        shards = {}
        for name in sorted(n for n, off in param_off.items() if off.sharded):
            off = param_off[name]
            shards[name] = (ex.add(f"p:{name}", SUM, host[off.grad], host[off.grad + 1], nonfinite.get(name, 0))
                            if off.grad >= 0 else -1,
                            ex.add(f"x:{name}", MAX, host[off.grad + 2]) if off.grad >= 0 else -1,
                            ex.add(f"w:{name}", SUM, host[off.weight]) if off.weight >= 0 else -1)
        pending = sorted(previous.shard_updates) if previous is not None else []
        updates = {name: ex.add(f"u:{name}", SUM, previous.updates[name]) for name in pending}
        active = {n: ex.add(f"n:{n}", MAX, *host[o:o + k]) for n, (o, k) in sorted(units.items())}  # any rank
        result = ex.run(self.group)
        for n, i in active.items():
            o, k = units[n]
            host[o:o + k] = result[i:i + k]
        new_acts: dict[str, list[tuple[Call, int, int]]] = {}
        for n, items in act_off.items():
            new_acts[n] = []
            for i, (c, o, nf) in enumerate(items):
                k = acts[(n, i)]
                host[o:o + 3], host[nf] = result[k:k + 3], result[k + 3]
                new_acts[n].append((replace(c, numel=int(result[k + 4])), o, nf))
        new_grads: dict[str, list[tuple[Call, int, int]]] = {}
        for n, items in grad_off.items():
            new_grads[n] = []
            for i, (c, o, nf) in enumerate(items):
                k, m = grads[(n, i)]
                host[o], host[o + 1], host[o + 2] = result[k] / world, result[k + 1] / world**2, result[m] / world
                host[nf] = result[k + 2]
                new_grads[n].append((replace(c, numel=int(result[k + 3])), o, nf))
        for name, (k, m, w) in shards.items():
            off = param_off[name]
            if k >= 0:
                host[off.grad], host[off.grad + 1], host[off.grad + 2] = result[k], result[k + 1], result[m]
                nonfinite[name] = int(result[k + 2]) if math.isfinite(result[k + 2]) else 0
            if w >= 0:
                host[off.weight] = result[w]
        for name, k in updates.items():
            previous.updates[name] = float(result[k])
        if previous is not None:
            previous.shard_updates = set()
        return mean_loss(float(result[at_loss]), world), float(result[at_inputs]), new_acts, new_grads

    def _block_depth(self, hooks: BlockHooks) -> dict[str, int]:
        """Blocks ranked by the depth of their first layer row (the order they ran)."""
        first = {}
        for name, _ in hooks.blocks:
            depths = [self.depth[leaf] for leaf in self.table.rows[name].leaves if leaf in self.depth]
            first[name] = min(depths, default=1 << 30)
        return {name: i for i, name in enumerate(sorted(first, key=lambda n: (first[n], n)))}

    def _parameter_arrays(self, offsets: Mapping[str, ParamSums], block: ParamBlock | None, host: np.ndarray,
                          weight_scale: float, nonfinite: Mapping[str, int]) -> pooling.ParamArrays:
        """Every parameter's sums, in the table's parameter order."""
        params = self.table.params
        k = len(params)
        grad, weight = np.full(k, -1, dtype=np.int64), np.full(k, -1, dtype=np.int64)
        if block is not None:
            rows = block.offset + 4 * np.arange(k)
            grad = np.where(block.taken, rows, -1)
            if block.weight_norms:
                weight = np.where(block.taken, rows + 3, -1)
        numel = np.array([p.tensor.numel() for p in params], dtype=np.float64)
        bad = np.zeros(k)
        if offsets or nonfinite:
            index = self._param_index
            for name, off in offsets.items():
                i = index[name]
                grad[i], weight[i], numel[i] = off.grad, off.weight, off.numel
            for name, count in nonfinite.items():
                bad[index[name]] = count
        return pooling.parameter_arrays(grad, weight, numel, np.where(grad >= 0, bad, 0.0), host, weight_scale)

    def _param_columns(self, step: int, pa: pooling.ParamArrays, in_optimizer: set[int] | None) -> Columns:
        """The rows of the parameters that had a gradient."""
        at = np.flatnonzero(pa.has)
        params = [self.table.params[i] for i in at.tolist()]
        key = tuple((p.name, p.tensor.shape) for p in params)
        names = self._param_names.get(key)
        if names is None:                                  # the same parameters as last time, mostly
            self._param_names = {key: ([p.name for p in params], [self.table.label(p.row) for p in params],
                                       ["x".join(map(str, p.tensor.shape)) for p in params])}
            names = self._param_names[key]
        n = len(params)
        return Columns.of(ParamRecord, {
            "step": [step] * n, "param": list(names[0]), "layer": list(names[1]), "shape": list(names[2]),
            "numel": pa.numel[at].astype(np.int64).tolist(), "grad_norm": pa.grad_norm()[at].tolist(),
            "grad_mean_abs": pa.grad_mean_abs()[at].tolist(), "grad_max_abs": pa.max_abs[at].tolist(),
            "norm": pa.norm[at].tolist(), "update_ratio": [math.nan] * n,
            "nonfinite": pa.nonfinite[at].astype(np.int64).tolist(),
            "in_optimizer": [None] * n if in_optimizer is None else [id(p.tensor) in in_optimizer for p in params]})

    def _layout(self, order: list[str]) -> RowLayout:
        """What the step's rows (in depth order) take from the table; kept while the rows stay the same."""
        key = tuple(order)
        layout = self._layouts.get(key)
        if layout is not None:
            return layout
        if len(self._layouts) > 8:                          # the set of rows keeps changing: start again
            self._layouts.clear()
        index = self._param_index
        info = [self._row_info(name) for name in order]
        rows = [self.table.rows[name] for name in order]
        layout = self._layouts[key] = RowLayout(
            position={name: i for i, name in enumerate(order)}, labels=[i[0] for i in info],
            types=[r.type for r in rows], leaf=[r.leaf for r in rows], shared=[i[3] for i in info],
            groups=pooling.groups([([index[n] for n in i[1]], [index[n] for n in i[2]]) for i in info]),
            weight_groups={i[0]: list(i[1]) for i in info},
            param_ids=[tuple(id(p.tensor) for p in r.params) for r in rows])
        return layout


def write_step(open_step: OpenStep, run: str, writer: Any, memory: Mapping[str, Any] | None, layers: int) -> None:
    """Append one recorded step's rows to the run's writer (or to the in-memory tables without a store)."""
    tables: dict[str, dict[str, list[Any]]] = {}
    for key, columns in (("layers", open_step.layers), ("params", open_step.params), ("hist", open_step.hist),
                         ("blocks", open_step.blocks)):
        if columns is not None and len(columns):
            tables[key] = {"run": [run] * len(columns), **columns.data}
    tables["steps"] = {"run": [run], **{k: [v] for k, v in open_step.steps.items()}}
    if writer is None:
        for key, columns in tables.items() if memory is not None else ():
            memory[key].extend(columns)
        return
    for key, columns in tables.items():
        writer.append(key, columns)
    if open_step.kernels:
        arrays = {f"{layer}|{kind}": arr for layer, kinds in open_step.kernels.items() for kind, arr in kinds.items()}
        for layer, update in open_step.kernel_updates.items():
            arrays[f"{layer}|update"] = update
        writer.write_kernels(open_step.step, arrays)
    writer.meta["layers"] = layers
    writer.end_step()
