"""The hooks on the model: one owner of every handle, and what each hook writes into the step's buffer.

* A forward hook on every leaf reduces the module's primary output at once and, when it requires a gradient,
  registers a hook for the output gradient (module full-backward hooks break on in-place ReLU): with the fused
  kernels, a C++ hook (``GradWatch`` in ``csrc/fused_sums.cpp``: no Python runs in backward; its log is drained
  into the step's buffer by :meth:`LiveState.drain`), else ``output.register_hook``.
* A forward pre-hook and a forward hook on the model delimit a pass and tell whether backward reached it.
* A hook on every trainable parameter counts backward passes (for ``step()`` misuse): a C++ counter of the
  watch (:class:`CountHook`), else a post-accumulate-grad hook.
* A forward inside backward (``torch._C._current_graph_task_id() != -1``) is a checkpoint's recomputation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import stats
from .buffers import Call, Kernels, Pass, Scratch, StepBuffer
from .layers import LayerTable, primary_output
from .reductions import local
from .units import active_units, default_axis, own_axis


def graph_task_id() -> int:
    """The running backward pass's id, or -1 outside backward (a forward inside backward is a recomputation)."""
    return torch._C._current_graph_task_id()


def compiled(model: nn.Module) -> bool:
    """Whether ``model`` runs through ``torch.compile`` (an ``OptimizedModule`` or a module compiled in place)."""
    return type(model).__name__ == "OptimizedModule" or any(
        getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def compiled_in_place(model: nn.Module) -> bool:
    """Whether the model's own call is compiled (``model.compile()``): hooks on it would be traced."""
    return getattr(model, "_compiled_call_impl", None) is not None


@dataclass
class LiveState:
    """What the hooks read and write while the model trains; the monitor swaps ``buffer`` at each step."""

    activations: bool
    histogram_every: int
    units: bool = False                 # per-unit activity of every hooked output (unit_activity=True)
    enabled: bool = False
    recording: bool = True              # the current step is recorded
    step: int = 0                       # the current step's number
    buffer: StepBuffer = field(default_factory=StepBuffer)
    backwards: int = 0                  # backward events seen (parameter gradients or output gradients)
    backwards_at_step: int = 0          # ... when the last step was closed
    scratch: Scratch = field(default_factory=Scratch)
    kernels: Kernels | None = None      # the fused CPU kernels, when they can be used
    arena_rows: int = 256               # rows of the next buffer's arena (doubled when one overflows)
    watch: Any = None                   # the kernels' GradWatch: output-gradient hooks in C++ (None: Python)
    names: list[str] = field(default_factory=list)   # leaf names by the layer ids given to the watch
    layer_ids: dict[str, int] = field(default_factory=dict)   # ... and the ids by name
    generation: int = 0                 # the watch's generation: one per buffer
    fast: bool = False                  # leaves' forward calls may go to the watch (see :meth:`refresh`)

    def histogram_step(self, step: int) -> bool:
        return self.histogram_every > 0 and step % self.histogram_every == 0

    def refresh(self) -> None:
        """Decide whether this step's leaf calls may take the C++ path (``GradWatch.forward``): recording
        activations with the watch, and nothing asked of a call that the watch does not do (per-unit activity,
        log10 histograms). Call after any change of ``enabled``, ``recording`` or ``step``."""
        self.fast = self.enabled and self.recording and self.activations and self.watch is not None \
            and not self.units and not self.histogram_step(self.step)

    def fresh_buffer(self) -> StepBuffer:
        """Start a new step's buffer (the old one is returned to whoever closes the step); the output-gradient
        hooks of the C++ watch registered before it log nothing any more (drain first)."""
        old, self.buffer = self.buffer, StepBuffer.create(self.kernels, self.arena_rows)
        if self.watch is not None:
            self.generation += 1
            self.watch.begin(self.generation)
        return old

    def forward_seq(self) -> int:
        """The next forward call's order in this step (one count with the C++ path)."""
        if self.watch is not None:
            return self.watch.next_forward_seq()
        self.buffer.forward_seq += 1
        return self.buffer.forward_seq

    def backward_seq(self) -> int:
        """The next output gradient's order in this step's backward (one count with the C++ hooks)."""
        if self.watch is not None:
            return self.watch.next_seq()
        self.buffer.backward_seq += 1
        return self.buffer.backward_seq

    def drain(self) -> None:
        """Move what the C++ path logged since the buffer started into it: the leaves' forward calls and the
        output gradients (call before reading ``backwards``, the passes or the buffer's calls)."""
        if self.watch is None:
            return
        buf, names = self.buffer, self.names
        rows, meta = self.watch.take_forward()
        if len(meta):
            passes = buf.passes
            for (layer, index, seq, numel, training, tracked), at in zip(meta.tolist(), buf.keep(rows)):
                p, name = passes[index], names[layer]
                p.add(name, seq)
                p.acts[name].append(Call(numel, at[0], None, seq, None, at[1]))
                if training:
                    p.training = True
                if tracked:
                    p.tracked = True
        rows, meta = self.watch.take()
        if len(meta):
            for (layer, index, seq, numel), at in zip(meta.tolist(), buf.keep(rows)):
                buf.passes[index].got_grad = True
                buf.grads[names[layer]].append(Call(numel, at[0], None, seq, None, at[1]))
            self.backwards += len(meta)
        self.backwards += self.watch.take_counted()


class CountHook:
    """A C++ hook counting a parameter's gradients into the watch (no Python in backward); a handle."""

    def __init__(self, watch: Any, tensor: torch.Tensor) -> None:
        self.watch, self.tensor = watch, tensor
        self.position = watch.count(tensor)

    def remove(self) -> None:
        if self.tensor is not None:
            tensor, self.tensor = self.tensor, None
            try:
                self.watch.uncount(tensor, self.position)
            except RuntimeError:            # the tensor's hooks were cleared by someone else: nothing to remove
                pass


class Hooks:
    """Adds and removes every hook of one monitor; the handles are kept here and nowhere else."""

    def __init__(self, table: LayerTable, live: LiveState) -> None:
        self.table = table
        self.live = live
        self._handles: list[Any] = []
        self._leaf_handles: list[Any] = []
        self._stance: Any = None                       # force_eager stance of a compiled model's activation step

    def __len__(self) -> int:
        return len(self._handles) + len(self._leaf_handles)

    def add(self, handle: Any) -> None:
        self._handles.append(handle)

    def attach(self, model: nn.Module, leaves: bool = True) -> None:
        """Hook the model's passes, the trainable parameters and (unless ``leaves=False``) every selected leaf.

        A compiled model's leaves are hooked only around the steps it runs eagerly (:meth:`attach_leaves`):
        hooks present when Dynamo traces would be traced, and their side effects would break the graph.
        """
        if leaves:
            self.attach_leaves()
        if not compiled_in_place(model):                 # an OptimizedModule's own call is not traced
            self.add(model.register_forward_pre_hook(self._before_model))
            self.add(model.register_forward_hook(self._after_model))
        watch = self.live.watch
        for param in self.table.params:
            if param.tensor.requires_grad:
                self.add(CountHook(watch, param.tensor) if watch is not None
                         else param.tensor.register_post_accumulate_grad_hook(self._on_param_grad))

    def attach_leaves(self) -> None:
        """Hook every selected leaf (idempotent)."""
        if self._leaf_handles:
            return
        for module, name in self.table.leaf_names().items():
            if name in self.table.selected:
                layer = self.live.layer_ids.setdefault(name, len(self.live.names))
                if layer == len(self.live.names):
                    self.live.names.append(name)
                self._leaf_handles.append(module.register_forward_hook(
                    self._forward_hook(name, own_axis(module), layer)))

    def remove_leaves(self) -> None:
        """Remove the leaves' hooks (idempotent)."""
        handles, self._leaf_handles = self._leaf_handles, []
        for handle in handles:
            handle.remove()

    def begin_eager(self) -> None:
        """Run the next step of a compiled model eagerly, its leaves hooked (the compiled steps carry no hook:
        nothing for Dynamo to trace, no graph break, no recompile)."""
        if self._stance is None:
            self._stance = torch.compiler.set_stance("force_eager")      # set now; restored by __exit__
            self.attach_leaves()

    def end_eager(self) -> bool:
        """Leave the eager step (unhook the leaves, restore the stance); whether the step was one."""
        if self._stance is None:
            return False
        self.remove_leaves()
        stance, self._stance = self._stance, None
        stance.__exit__(None, None, None)
        return True

    def remove(self) -> None:
        """Remove every handle (idempotent)."""
        self.end_eager()
        self.remove_leaves()
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    # -- the hooks -----------------------------------------------------------------------------------------
    def _on_param_grad(self, _: torch.Tensor) -> None:
        self.live.backwards += 1

    def _before_model(self, module: nn.Module, args: Any) -> None:
        live = self.live
        if live.enabled and live.recording and graph_task_id() == -1:
            p = live.buffer.start_pass(rooted=True)
            if live.watch is not None:
                live.watch.set_pass(p.index)             # the leaves' calls of this pass may take the C++ path
            for x in args:                               # was the batch itself non-finite? (one pass over it)
                if isinstance(x, torch.Tensor) and x.is_floating_point() and x.device.type != "meta":
                    live.buffer.inputs.append((~torch.isfinite(local(x.detach()))).sum())

    def _after_model(self, module: nn.Module, args: Any, output: Any) -> None:
        live = self.live
        if not (live.enabled and live.recording) or graph_task_id() != -1:
            return
        buf = live.buffer
        p, buf.current = buf.current, None
        if live.watch is not None:
            live.watch.set_pass(-1)
        out = primary_output(output)
        if p is not None and out is not None and out.requires_grad and torch.is_grad_enabled():
            p.tracked = True

            def reached(_: torch.Tensor) -> None:
                p.got_grad = True
                live.backwards += 1
            out.register_hook(reached)

    def _forward_hook(self, name: str, axis: int | None, layer: int) -> Callable[..., None]:
        live = self.live
        activations = live.activations
        plain = torch.Tensor

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if live.fast and type(output) is plain and live.watch.forward(output, layer, module.training):
                return                                    # reduced and watched in C++, drained at step()
            if not (live.enabled and live.recording):
                return
            buf = live.buffer
            if graph_task_id() != -1:                     # recomputed inside backward by a checkpoint
                self._recomputed(name, buf, output)
                return
            out = primary_output(output)
            p = buf.pass_for_call()
            seq = live.forward_seq()
            if module.training:
                p.training = True
            if not torch.is_grad_enabled():               # counts only if a checkpoint recomputes it
                call = self._reduce_activation(out, seq, buf) if activations and out is not None else None
                if call is not None and live.units:
                    call.units = self._units(out, inputs, axis, buf)
                buf.nograd[name].append((p, call, seq))
                return
            p.add(name, seq)
            if out is None or not activations:
                return
            call = self._reduce_activation(out, seq, buf)
            if live.units:
                call.units = self._units(out, inputs, axis, buf)
            p.acts[name].append(call)
            if out.requires_grad:
                p.tracked = True
                watch = live.watch
                if watch is not None and type(out) is plain and out.is_cpu and not live.histogram_step(live.step):
                    watch.watch(out, layer, p.index)          # reduced in C++ in backward, drained at step()
                else:
                    out.register_hook(self._grad_hook(name, p))
        return hook

    def _recomputed(self, name: str, buf: StepBuffer, output: Any) -> None:
        """A forward inside backward: a reentrant checkpoint's recomputation takes over its no_grad call (its
        output gradient is recorded); a non-reentrant one's recomputation is ignored."""
        adopted = buf.adopt_nograd(name)
        if adopted is None:
            return
        p, _ = adopted
        out = primary_output(output)
        if out is not None and out.requires_grad:
            p.tracked = True
            out.register_hook(self._grad_hook(name, p))

    @staticmethod
    def _units(out: torch.Tensor, inputs: Any, axis: int | None, buf: StepBuffer) -> torch.Tensor | None:
        """Which units of ``out`` were active; the unit axis is the module's own, or its input producer's."""
        x = local(out.detach())
        if x.device.type == "meta" or type(x) is not torch.Tensor:
            return None
        if axis is None:
            source = inputs[0] if isinstance(inputs, tuple) and inputs and isinstance(inputs[0], torch.Tensor) \
                else None
            known = buf.unit_axes.get(id(source)) if source is not None else None
            axis = known[0] if known is not None and known[1] == source.shape else default_axis(x)
        buf.unit_axes[id(out)] = (axis, out.shape)
        return active_units(x, axis)

    def _reduce_activation(self, out: torch.Tensor, seq: int, buf: StepBuffer) -> Call:
        call = buf.fused(out, seq, 0)
        if call is not None:
            return call
        x = local(out.detach())
        sums = stats.activation_sums(x, self.live.scratch.like(x))
        nonfinite = stats.nonfinite_count(x, sums)
        if isinstance(nonfinite, int) and nonfinite:
            # NaN poisons the sign-based count of non-zeros: count exactly on this rare path.
            sums = sums.clone()
            sums[2] = x.numel() - stats.zero_count_exact(x)
        return Call(x.numel(), sums, nonfinite, seq)

    def _grad_hook(self, name: str, p: Pass) -> Callable[[torch.Tensor], None]:
        live = self.live

        def hook(grad: torch.Tensor) -> None:
            if not (live.enabled and live.recording):
                return
            p.got_grad = True
            live.backwards += 1
            buf = live.buffer
            seq = live.backward_seq()
            call = buf.fused(grad, seq, 1)
            if call is None:
                g = local(grad.detach())
                sums = stats.gradient_sums(g, live.scratch.like(g))
                call = Call(g.numel(), sums, stats.nonfinite_count(g, sums), seq)
            buf.grads[name].append(call)
            if live.histogram_step(live.step):
                h = stats.log10_histogram(local(grad.detach()))
                prev = buf.act_grad_hist.get(name)
                buf.act_grad_hist[name] = h if prev is None else prev + h
        return hook
