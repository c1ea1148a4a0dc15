"""The Gradient checks page and ``check`` command without widgets: layers from options, checks, formulas, figures."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import manual
from ..errors import LayerOptionsError
from ..manual.duality import Duality, conv_output_table, first_output, pytorch_output_shape, transpose_duality
from .catalogue import LAYERS, Options, build_layer, layer_spec, make_input, single_thread

@dataclass
class CheckResult:
    """One layer checked: its report and the gradients the page draws (float64 arrays).

    Attributes:
        module: The layer's ``repr``.
        input_shape: ``x``'s shape.
        output_shape: ``module(x)``'s shape.
        report: :func:`diagnostics.manual.check`'s rows (manual vs autograd and finite differences).
        manual: ``"input"`` and the parameter names -> the manual rule's gradient.
        autograd: The same keys -> autograd's gradient.
    """

    module: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    report: pd.DataFrame
    manual: dict[str, np.ndarray]
    autograd: dict[str, np.ndarray]

    @property
    def passed(self) -> bool:
        """No row of the report failed."""
        return not (self.report["status"] == "fail").any()


def run_check(module: nn.Module, x: Tensor, *, impl: str = "fast", seed: int = 0) -> CheckResult:
    """Checks a layer on an input: the manual rule against autograd and finite differences, in float64.

    PyTorch's own forward runs first, so a configuration it refuses raises with its reason. The module is
    not changed (everything runs on float64 copies).

    Args:
        module: A layer of a type in :data:`LAYERS`.
        x: Its input.
        impl: ``"fast"`` or ``"reference"``.
        seed: Seeds ``dL/dY`` and the finite-difference coordinates.

    Returns:
        The report and the gradients.

    Raises:
        LayerOptionsError: If PyTorch refuses the input, or the manual rule refuses it (e.g. a reference
            implementation asked for too many loop iterations).
    """
    output_shape = pytorch_output_shape(module, x)
    module64 = copy.deepcopy(module).double()
    x64 = x.detach().to(torch.float64)  # (N, C, *)
    grad_output = make_input(output_shape, seed + 1, torch.float64)  # dL/dY, shaped like module(x)
    names = ["input", *(n for n in ("weight", "bias") if isinstance(getattr(module64, n, None), Tensor))]
    try:
        grads = manual.backward(module64, x64, grad_output, impl=impl)
        report = manual.check(module, x, grad_output, impl=impl, seed=seed)
    except manual.ManualGradError as err:
        raise LayerOptionsError(str(err)) from None
    leaf = x64.clone().requires_grad_(True)
    params = [getattr(module64, name) for name in names[1:]]
    with torch.enable_grad():
        output = first_output(module64(leaf.clone()))  # clone: an in-place ReLU must not touch the leaf
        expected = torch.autograd.grad(output, [leaf, *params], grad_output, allow_unused=True)
    autograd = {n: (torch.zeros_like(t) if g is None else g) for n, t, g in zip(names, [leaf, *params], expected)}
    return CheckResult(
        module=repr(module),
        input_shape=tuple(x.shape),
        output_shape=output_shape,
        report=report,
        manual={n: grads[n].numpy() for n in names},
        autograd={n: autograd[n].detach().numpy() for n in names},
    )


def check_layer(key: str, options: Mapping[str, Any], shape: Sequence[int], *, impl: str = "fast",
                seed: int = 0) -> CheckResult:
    """:func:`build_layer`, :func:`make_input` and :func:`run_check` in one call (what the page caches).

    Args:
        key: A key of :data:`LAYERS`.
        options: Its options.
        shape: The input's shape; ``shape[1]`` is the channel count.
        impl: ``"fast"`` or ``"reference"``.
        seed: Seeds the weights, the input, ``dL/dY`` and the sampled coordinates.

    Raises:
        LayerOptionsError: With PyTorch's reason for an invalid combination.
    """
    module = build_layer(key, options, shape[1], seed)
    with single_thread():
        return run_check(module, make_input(shape, seed), impl=impl, seed=seed)


# --- representative configurations (python -m diagnostics check --module) ---------------------------------

#: Per layer type, a few configurations that together exercise its options: (label, options, input shape).
EXAMPLES: dict[str, list[tuple[str, Options, tuple[int, ...]]]] = {
    "conv2d": [
        ("3->4, k=3x3, padding=1", {}, (2, 3, 7, 6)),
        ("stride (2,1), dilation (2,1), groups 2, reflect, k=(3,2)",
         {"kernel_size": (3, 2), "stride": (2, 1), "padding": (2, 1), "dilation": (2, 1), "groups": 2,
          "padding_mode": "reflect"}, (2, 4, 9, 8)),
        ("depthwise, padding='same', dilation 2, circular, no bias",
         {"kernel_size": (2, 3), "padding": "same", "dilation": (2, 2), "groups": 4, "padding_mode": "circular",
          "bias": False}, (1, 4, 6, 7)),
    ],
    "conv1d": [
        ("3->4, k=3, stride 2, replicate", {"stride": 2, "padding_mode": "replicate"}, (2, 3, 11)),
        ("padding='valid', dilation 2, groups 3, no bias",
         {"out_channels": 6, "padding": "valid", "dilation": 2, "groups": 3, "bias": False}, (1, 3, 9)),
    ],
    "convtranspose2d": [
        ("4->3, k=3, stride 2, padding 1, output_padding 1", {}, (2, 4, 4, 5)),
        ("groups 2, stride (2,3), dilation (2,1), output_padding (1,2)",
         {"out_channels": 4, "stride": (2, 3), "dilation": (2, 1), "output_padding": (1, 2), "groups": 2,
          "padding": (0, 1)}, (1, 4, 3, 4)),
    ],
    "maxpool1d": [("k=3, stride 2, padding 1, dilation 2, ceil_mode", {"dilation": 2, "ceil_mode": True},
                   (2, 3, 12))],
    "maxpool2d": [
        ("k=3, stride 2, padding 1, ceil_mode", {"ceil_mode": True}, (2, 3, 7, 8)),
        ("k=(2,3), stride (1,2), dilation 2", {"kernel_size": (2, 3), "stride": (1, 2), "padding": (0, 1),
                                               "dilation": (2, 2)}, (1, 2, 8, 9)),
    ],
    "avgpool1d": [
        ("k=3, stride 2, padding 1, ceil_mode", {"ceil_mode": True}, (2, 3, 10)),
        ("count_include_pad=False", {"count_include_pad": False}, (1, 2, 9)),
    ],
    "avgpool2d": [
        ("k=3, stride 2, padding 1, ceil_mode, count_include_pad=False",
         {"ceil_mode": True, "count_include_pad": False}, (2, 3, 7, 8)),
        ("k=(2,3), divisor_override=4", {"kernel_size": (2, 3), "stride": (2, 2), "padding": (0, 1),
                                         "divisor_override": 4}, (1, 2, 6, 9)),
    ],
    "adaptiveavgpool1d": [("output 4 from 10", {"output_size": 4}, (2, 3, 10))],
    "adaptiveavgpool2d": [("output (3,2) from 7x5", {}, (2, 3, 7, 5))],
    "adaptivemaxpool2d": [("output (3,4) from 7x9", {"output_size": (3, 4)}, (2, 3, 7, 9))],
    "relu": [("elementwise", {}, (2, 3, 4, 5))],
    "tanh": [("elementwise", {}, (2, 3, 4, 5))],
    "sigmoid": [("elementwise", {}, (2, 3, 4, 5))],
    "linear": [("5->3", {}, (4, 5)), ("5->2, no bias", {"out_features": 2, "bias": False}, (3, 5))],
    "batchnorm1d": [("train, (N, C, L)", {}, (4, 3, 5)), ("eval, (N, C)", {"mode": "eval"}, (4, 3))],
    "batchnorm2d": [("train", {}, (4, 3, 3, 3)), ("eval", {"mode": "eval"}, (4, 3, 3, 3))],
    "flatten": [("start_dim=1", {}, (2, 3, 4, 5))],
    "identity": [("identity", {}, (2, 3, 4))],
}


def check_examples(keys: Sequence[str], *, impl: str = "fast", seed: int = 0) -> pd.DataFrame:
    """Runs :func:`diagnostics.manual.check` on the :data:`EXAMPLES` of some layer types.

    Args:
        keys: Keys of :data:`LAYERS`.
        impl: ``"fast"`` or ``"reference"``.
        seed: Seeds the weights, inputs, ``dL/dY`` and the sampled coordinates.

    Returns:
        The reports, one after the other, with two more columns first: ``layer`` (the key) and ``config``
        (the example's label).

    Raises:
        LayerOptionsError: For an unknown key.
    """
    frames = []
    for key in keys:
        layer_spec(key)
        for label, options, shape in EXAMPLES[key]:
            module = build_layer(key, options, shape[1], seed)
            with single_thread():
                report = manual.check(module, make_input(shape, seed), impl=impl, seed=seed)
            frames.append(report.assign(layer=key, config=label))
    report = pd.concat(frames, ignore_index=True)
    return report[["layer", "config", *(c for c in report.columns if c not in ("layer", "config"))]]


# --- formulas ------------------------------------------------------------------------------------------------

def formulas(key: str, module: nn.Module | None = None) -> list[tuple[str, str]]:
    """The forward pass and the backward formula of each gradient of a layer, in LaTeX, from its manual rule.

    Args:
        key: A key of :data:`LAYERS`.
        module: The layer (default: the layer type with its default options): batch norm in eval mode shows its
            running-statistics formulas, and a gradient of a parameter the layer does not have (``bias=False``,
            ``affine=False``) is left out.

    Returns:
        ``(what, latex)`` pairs: the forward pass first, then one per gradient.
    """
    module = build_layer(key, {}, 3) if module is None else module
    return [(f.what, f.latex) for f in manual.formulas(module)]


# --- heatmaps ------------------------------------------------------------------------------------------------

def selector_sizes(shape: Sequence[int]) -> tuple[int, int] | None:
    """The sizes of the two leading dimensions a heatmap selects from, or ``None`` if it draws the whole array.

    Args:
        shape: A gradient's shape: ``(N, C, H, W)``/``(N, C, L)`` inputs and ``(K, C, kH, kW)``/``(K, C, k)``
            conv weights select one (sample, channel) or (channel, channel) pair; 1-d and 2-d arrays do not.
    """
    return (int(shape[0]), int(shape[1])) if len(shape) >= 3 else None


@dataclass
class CheckView:
    """Everything the Gradient checks page shows of one layer on one input (the heatmaps are drawn on demand).

    Attributes:
        result: The check of the manual rule against autograd and finite differences.
        module: The layer that was checked.
        family: The layer family (``conv``, ``conv_transpose``, ``max_pool``, ...).
        formulas: ``(what, latex)`` pairs from the layer's manual rule.
        summary: The counts of each status in words (``"6 pass"``).
        output_table: The convolution's output-size arithmetic per dimension (convolutions only).
        duality: The transposed-convolution check (convolutions and transposed convolutions only).
        duality_error: Why the duality check cannot run, when it cannot.
    """

    result: CheckResult
    module: nn.Module
    family: str
    formulas: list[tuple[str, str]]
    summary: str
    output_table: pd.DataFrame | None = None
    duality: Duality | None = None
    duality_error: str | None = None


def check_view(key: str, options: Mapping[str, Any], shape: Sequence[int], *, impl: str = "fast",
               seed: int = 0) -> CheckView:
    """Check one layer on one input and gather what the page shows: formulas, errors, shape arithmetic, duality.

    Raises:
        LayerOptionsError: With PyTorch's reason for an invalid combination of options and input.
    """
    module = build_layer(key, options, shape[1], seed)
    result = check_layer(key, options, shape, impl=impl, seed=seed)
    counts = result.report["status"].value_counts().to_dict()
    family = layer_spec(key).family
    view = CheckView(result, module, family, formulas(key, module),
                     ", ".join(f"{n} {status}" for status, n in counts.items()))
    if family == "conv":
        view.output_table = conv_output_table(module, shape)
    if family in ("conv", "conv_transpose"):
        try:
            view.duality = transpose_duality(module, make_input(shape, seed), seed)
        except LayerOptionsError as err:
            view.duality_error = str(err)
    return view
