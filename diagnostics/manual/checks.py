"""Manual gradients against autograd and central finite differences, in float64, as rows of a DataFrame.

Errors, per tensor (``a``: manual gradient, ``b``: reference, over the compared coordinates):

* ``max_abs_err = max |a - b|``
* ``max_rel_err = max |a - b| / max(max |b|, 1e-3 * S)``, with ``S`` the largest reference entry over all
  gradients of the layer call (input, weight and bias). Relative to the tensor's own scale, so near-zero
  entries do not blow it up; the floor ``1e-3 * S`` keeps a gradient that is zero up to rounding (the
  bias of a convolution followed by batch norm) from turning rounding noise into a huge ratio.

A row passes when ``max_rel_err <= rtol``: ``1e-10`` against autograd (both exact up to rounding in float64)
and ``1e-6`` against finite differences, which also get their own noise, ``10 * eps * max|L| / h``, as an
absolute allowance. Where the layer is not differentiable at the input -- a max-pool window whose maximum
is attained twice, or a finite-difference step that crosses such a tie or ReLU's zero -- and the error
comes only from those coordinates, the row says ``non_differentiable`` instead of ``fail``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..errors import ManualGradError
from .functions import is_routed_forward
from .registry import IMPLS, backward, checked_output_shape, is_supported, kink_mask, module_state, rule_for

REFERENCES = ("autograd", "finite_diff")
AUTOGRAD_RTOL = 1e-10
FINITE_DIFF_RTOL = 1e-6
ZERO_FLOOR = 1e-3
"""A tensor's errors are relative to at least this fraction of the layer's largest reference gradient."""
FINITE_DIFF_NOISE = 10.0
"""Finite differences may be off by ``FINITE_DIFF_NOISE * eps * max|L| / h`` from cancellation alone."""
FINITE_DIFF_STEP = 1e-6
MAX_COORDS = 64

COLUMNS = ["module", "tensor", "reference", "impl", "max_abs_err", "max_rel_err", "status", "reason"]
MODEL_COLUMNS = ["layer", "call", *COLUMNS]


def max_abs_err(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected|``.

    Args:
        actual: Any shape.
        expected: The same shape.

    Returns:
        A float; ``nan`` for empty tensors.
    """
    if actual.numel() == 0:
        return float("nan")
    return float((actual - expected).abs().max())


def max_rel_err(actual: Tensor, expected: Tensor, floor: float = 0.0) -> float:
    """``max |actual - expected| / max(max |expected|, floor)``: the error relative to the reference's scale.

    Args:
        actual: Any shape.
        expected: The same shape (the reference).
        floor: The smallest scale to divide by (:func:`check` passes ``1e-3`` times the layer's largest
            reference gradient); the smallest normal float64 at least.

    Returns:
        A float; ``nan`` for empty tensors.
    """
    if actual.numel() == 0:
        return float("nan")
    return max_abs_err(actual, expected) / _scale(expected, floor)


def _scale(expected: Tensor, floor: float) -> float:
    return max(float(expected.abs().max()), floor, torch.finfo(torch.float64).tiny)


def _largest(tensors: Sequence[Tensor]) -> float:
    return max((float(t.abs().max()) for t in tensors if t.numel()), default=0.0)


def _float64_copy(module: nn.Module) -> nn.Module:
    clone = copy.deepcopy(module).to(torch.float64)
    for sub in clone.modules():
        if is_routed_forward(sub.__dict__.get("forward")):
            del sub.forward  # a copy made inside use_manual_backward: check the module's own forward
    return clone


def _differentiable_output(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def _autograd_grads(module: nn.Module, names: Sequence[str], x: Tensor, grad_output: Tensor) -> dict[str, Tensor]:
    leaf = x.detach().clone().requires_grad_(True)
    params = [getattr(module, name) for name in names[1:]]
    with torch.enable_grad():
        output = _differentiable_output(module(leaf.clone()))  # clone: an in-place ReLU must not touch the leaf
        grads = torch.autograd.grad(output, [leaf, *params], grad_output, allow_unused=True)
    return {
        name: torch.zeros_like(tensor) if grad is None else grad
        for name, tensor, grad in zip(names, [leaf, *params], grads)
    }


def _loss(module: nn.Module, x: Tensor, grad_output: Tensor) -> float:
    with torch.no_grad():
        return float((_differentiable_output(module(x.clone())) * grad_output).sum())


def _finite_diff(
    module: nn.Module, name: str, x: Tensor, grad_output: Tensor, coords: Tensor, step: float
) -> tuple[Tensor, float]:
    """Central differences ``(L(t + h e_i) - L(t - h e_i)) / 2h`` of ``L = <module(x), grad_output>``.

    Returns:
        The estimates at ``coords`` and the largest ``|L|`` evaluated (for the noise allowance).
    """
    estimates, largest_loss = [], 0.0
    for i in coords.tolist():
        if name == "input":
            plus, minus = x.clone(), x.clone()
            plus.view(-1)[i] += step
            minus.view(-1)[i] -= step
            loss_plus, loss_minus = _loss(module, plus, grad_output), _loss(module, minus, grad_output)
        else:
            flat = getattr(module, name).data.view(-1)
            original = float(flat[i])
            flat[i] = original + step
            loss_plus = _loss(module, x, grad_output)
            flat[i] = original - step
            loss_minus = _loss(module, x, grad_output)
            flat[i] = original
        estimates.append((loss_plus - loss_minus) / (2 * step))
        largest_loss = max(largest_loss, abs(loss_plus), abs(loss_minus))
    return torch.tensor(estimates, dtype=torch.float64), largest_loss


def _row(
    tensor: str,
    reference: str,
    actual: Tensor,
    expected: Tensor,
    rtol: float,
    floor: float,
    noise: float,
    kinks: Tensor | None,
    kink_kind: str,
) -> dict[str, Any]:
    """One row: errors, and pass when ``max_abs_err <= rtol * scale + noise``."""
    row = {"tensor": tensor, "reference": reference}
    if actual.numel() == 0:
        return row | {
            "max_abs_err": float("nan"),
            "max_rel_err": float("nan"),
            "status": "skipped",
            "reason": "the tensor has no elements (empty batch)",
        }
    scale = _scale(expected, floor)
    diff = (actual - expected).abs().reshape(-1)
    abs_err = float(diff.max())
    row |= {"max_abs_err": abs_err, "max_rel_err": abs_err / scale}
    allowed = rtol * scale + noise
    tolerance = f"{rtol:g}" + (f" (plus finite-difference noise {noise:.2g})" if noise else "")
    if abs_err <= allowed:
        return row | {"status": "pass", "reason": f"max_rel_err <= {tolerance}"}
    if kinks is not None and bool(kinks.any()):
        smooth = ~kinks.reshape(-1)
        smooth_err = float(diff[smooth].max()) if bool(smooth.any()) else 0.0
        if smooth_err <= allowed:
            return row | {
                "status": "non_differentiable",
                "reason": (
                    f"{int(kinks.sum())} of {kinks.numel()} compared coordinates sit at {kink_kind}, where the "
                    f"gradient is not defined; elsewhere max_rel_err = {smooth_err / scale:.2g} <= {tolerance}"
                ),
            }
    return row | {"status": "fail", "reason": f"max_rel_err {abs_err / scale:.3g} > {tolerance}"}


def _kink_kind(module: nn.Module) -> str:
    return "ReLU's kink at zero" if isinstance(module, nn.ReLU) else "max-pool ties"


@dataclass(frozen=True)
class _Settings:
    """How one check compares; ``generator`` draws grad_output and the finite-difference coordinates."""

    impl: str
    references: tuple[str, ...]
    max_coords: int
    step: float
    generator: torch.Generator


def _check_settings(impl: str, references: Sequence[str], max_coords: int, step: float) -> tuple[str, ...]:
    if impl not in IMPLS:
        raise ManualGradError(f"impl={impl!r} must be one of {IMPLS}")
    references = (references,) if isinstance(references, str) else tuple(references)
    unknown = [r for r in references if r not in REFERENCES]
    if unknown or not references:
        raise ManualGradError(f"references={references!r} must be a non-empty subset of {REFERENCES}")
    if max_coords < 1:
        raise ManualGradError(f"max_coords={max_coords} must be at least 1")
    if not step > 0:
        raise ManualGradError(f"step={step} must be positive")
    return references


def _compare(module64: nn.Module, x: Tensor, grad_output: Tensor, settings: _Settings) -> list[dict[str, Any]]:
    """Rows comparing the manual gradients of a float64 module with each reference."""
    rule = rule_for(module64)
    state = module_state(module64, rule)
    names = ["input", *(name for name in rule.params if state[name] is not None)]
    manual = backward(module64, x, grad_output, impl=settings.impl)
    rows = []
    kind = _kink_kind(module64)
    if "autograd" in settings.references:
        expected = _autograd_grads(module64, names, x, grad_output)
        floor = ZERO_FLOOR * _largest(list(expected.values()))
        ties = kink_mask(module64, x, 0.0)
        for name in names:
            kinks = ties if name == "input" else None
            rows.append(_row(name, "autograd", manual[name], expected[name], AUTOGRAD_RTOL, floor, 0.0, kinks, kind))
    if "finite_diff" in settings.references:
        near_kinks = kink_mask(module64, x, settings.step)
        sampled = {}
        for name in names:
            numel = manual[name].numel()
            if numel > settings.max_coords:
                coords = torch.randperm(numel, generator=settings.generator)[: settings.max_coords].sort().values
            else:
                coords = torch.arange(numel)
            sampled[name] = (coords, *_finite_diff(module64, name, x, grad_output, coords, settings.step))
        floor = ZERO_FLOOR * _largest([estimate for _, estimate, _ in sampled.values()])
        for name, (coords, estimate, largest_loss) in sampled.items():
            noise = FINITE_DIFF_NOISE * torch.finfo(torch.float64).eps * largest_loss / settings.step
            kinks = near_kinks.reshape(-1)[coords] if name == "input" and near_kinks is not None else None
            actual = manual[name].reshape(-1)[coords]
            rows.append(_row(name, "finite_diff", actual, estimate, FINITE_DIFF_RTOL, floor, noise, kinks, kind))
    for row in rows:
        row["impl"] = settings.impl
    return rows


def check(
    module: nn.Module,
    x: Tensor,
    grad_output: Tensor | None = None,
    *,
    impl: str = "fast",
    references: Sequence[str] = REFERENCES,
    max_coords: int = MAX_COORDS,
    step: float = FINITE_DIFF_STEP,
    seed: int = 0,
) -> pd.DataFrame:
    """Compares a layer's manual gradients with autograd and with central finite differences.

    Works on a float64 deep copy of the module (float32 modules included), so the module's parameters,
    running statistics and ``.grad`` never change. Finite differences perturb at most ``max_coords``
    coordinates per tensor, drawn with ``seed``.

    Args:
        module: A supported layer.
        x: Its input.
        grad_output: ``dL/dY`` to backpropagate; by default standard normal, drawn with ``seed``.
        impl: ``"fast"`` or ``"reference"``: the manual implementation under test.
        references: Any of ``"autograd"`` and ``"finite_diff"``.
        max_coords: The most coordinates per tensor checked by finite differences.
        step: The finite-difference step ``h``.
        seed: Seeds ``grad_output`` and the sampled coordinates.

    Returns:
        One row per (tensor, reference) with the columns ``module, tensor, reference, impl, max_abs_err,
        max_rel_err, status, reason``; ``status`` is ``pass``, ``fail``, ``non_differentiable`` or
        ``skipped`` and ``reason`` says why.

    Raises:
        UnsupportedModuleError: If the module's type has no rule.
        ManualGradError: If ``x`` or ``grad_output`` does not fit the module, or on bad settings.
    """
    references = _check_settings(impl, references, max_coords, step)
    rule = rule_for(module)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ManualGradError(f"the input of {rule.name} must be a floating-point tensor")
    module64 = _float64_copy(module)
    x64 = x.detach().to(torch.float64)
    settings = _Settings(impl, references, max_coords, step, torch.Generator().manual_seed(seed))
    if grad_output is None:
        shape = checked_output_shape(module64, rule, x64, module_state(module64, rule))
        grad_output = torch.randn(shape, generator=settings.generator, dtype=torch.float64)
    rows = _compare(module64, x64, grad_output.detach().to(torch.float64), settings)
    for row in rows:
        row["module"] = repr(module)
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclass
class _Call:
    layer: str
    module: nn.Module
    index: int
    input: Tensor | None = None
    grad_output: Tensor | None = None
    skip_reason: str | None = None


def _square_sum(output: Tensor) -> Tensor:
    return output.pow(2).sum()


def check_model(
    model: nn.Module,
    example_input: Tensor,
    *,
    loss_fn: Callable[[Any], Tensor] | None = None,
    impl: str = "fast",
    references: Sequence[str] = ("autograd",),
    max_coords: int = MAX_COORDS,
    step: float = FINITE_DIFF_STEP,
    seed: int = 0,
) -> pd.DataFrame:
    """Checks the manual rule of every supported layer of a model on the inputs it really sees.

    Runs one forward and backward pass of ``loss_fn(model(example_input))`` (default: the sum of the
    squared output) with hooks on the leaf modules: a forward pre-hook copies each call's input (before an
    in-place layer changes it) and a forward hook registers ``output.register_hook`` for its output
    gradient. Then, per call, the manual rule runs on the captured (input, output gradient) and is
    compared with autograd on a float64 copy of the layer, so a layer called several times is checked
    once per call. Unsupported layers get a ``skipped`` row saying why. Gradients are taken with
    ``torch.autograd.grad``, so no ``.grad`` changes; hooks are removed and buffers (running statistics)
    restored afterwards, also on error; the training flags are never touched.

    Args:
        model: Any module taking one tensor.
        example_input: Its input.
        loss_fn: ``output -> scalar``; default ``output.pow(2).sum()``.
        impl: ``"fast"`` or ``"reference"``.
        references: Any of ``"autograd"`` (default) and ``"finite_diff"``.
        max_coords: As for :func:`check`.
        step: As for :func:`check`.
        seed: As for :func:`check`.

    Returns:
        The rows of :func:`check` with two more columns first: ``layer`` (qualified name) and ``call``
        (0 for the layer's first call in the forward pass, 1 for its second, ...), in the order the
        layers ran; layers that never ran come last.
    """
    references = _check_settings(impl, references, max_coords, step)
    loss_fn = loss_fn or _square_sum
    leaves = [(name, module) for name, module in model.named_modules() if next(module.children(), None) is None]
    calls: list[_Call] = []
    counts: dict[nn.Module, int] = {}
    pending: dict[nn.Module, list[_Call]] = {}

    def pre_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            call = _Call(name, module, counts.get(module, 0))
            counts[module] = call.index + 1
            calls.append(call)
            pending.setdefault(module, []).append(call)
            if len(args) != 1 or not isinstance(args[0], Tensor):
                call.skip_reason = "the layer was called with other than one tensor argument"
            elif not is_supported(module):
                call.skip_reason = str(_unsupported_reason(module))
            else:
                call.input = args[0].detach().clone()

        return hook

    def forward_hook(module: nn.Module, args: tuple, output: Any) -> None:
        call = pending[module].pop()
        if call.skip_reason is not None:
            return
        tensor = _differentiable_output(output)
        if not isinstance(tensor, Tensor) or not tensor.requires_grad:
            call.skip_reason = "the layer's output does not require grad, so no gradient reaches it"
            return

        def store(grad: Tensor) -> None:
            call.grad_output = grad.detach().clone()

        tensor.register_hook(store)

    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    handles = []
    try:
        for name, module in leaves:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(forward_hook))
        leaf = example_input.detach().clone()
        if leaf.is_floating_point():
            leaf.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(model(leaf))
            inputs = [t for t in (leaf, *model.parameters()) if t.requires_grad]
            if not loss.requires_grad:
                raise ManualGradError("the loss does not require grad: no layer can be checked")
            torch.autograd.grad(loss, inputs, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])

    settings = _Settings(impl, references, max_coords, step, torch.Generator().manual_seed(seed))
    rows: list[dict[str, Any]] = []
    copies: dict[nn.Module, nn.Module] = {}
    for call in calls:
        base = {"layer": call.layer, "call": call.index, "module": repr(call.module)}
        if call.skip_reason is None and call.grad_output is None:
            call.skip_reason = "no gradient reached the layer's output (it does not affect the loss)"
        if call.skip_reason is not None:
            rows.append(base | _skipped_row(call.skip_reason, impl))
            continue
        if call.module not in copies:
            copies[call.module] = _float64_copy(call.module)
        module64 = copies[call.module]
        x64 = call.input.to(torch.float64)
        for row in _compare(module64, x64, call.grad_output.to(torch.float64), settings):
            rows.append(base | row)
    for name, module in leaves:
        if module not in counts:
            rows.append(
                {"layer": name, "call": -1, "module": repr(module)}
                | _skipped_row("the layer did not run in the forward pass", impl)
            )
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def _unsupported_reason(module: nn.Module) -> str:
    try:
        rule_for(module)
    except ManualGradError as err:
        return str(err)
    return ""


def _skipped_row(reason: str, impl: str) -> dict[str, Any]:
    return {
        "tensor": "",
        "reference": "",
        "impl": impl,
        "max_abs_err": float("nan"),
        "max_rel_err": float("nan"),
        "status": "skipped",
        "reason": reason,
    }
