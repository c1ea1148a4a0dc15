"""The Gradient checks page and ``check`` command without widgets: layers from options, checks, formulas, figures."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import manual
from ..errors import LayerOptionsError
from ..manual.conv import conv_padding

Options = dict[str, Any]
"""A layer's constructor arguments, except its channel count (which the input's shape gives), plus ``mode``
(``"train"`` or ``"eval"``) for batch norm."""


@dataclass(frozen=True)
class LayerSpec:
    """One layer type of the page and of ``python -m diagnostics check --module``.

    Attributes:
        key: The command-line name, e.g. ``"conv2d"``.
        cls: The ``nn.Module`` class.
        family: Which formulas apply: ``conv``, ``conv_transpose``, ``max_pool``, ``avg_pool``,
            ``adaptive_avg``, ``adaptive_max``, ``relu``, ``tanh``, ``sigmoid``, ``linear``, ``batchnorm``,
            ``flatten`` or ``identity``.
        layout: The input's layout: ``"NCHW"``, ``"NCL"``, ``"NF"`` (features) or ``"NC[L]"`` (the length
            is optional: batch norm 1-d).
        channel_arg: The constructor argument the input's channels fill (``in_channels``, ...), or ``None``.
        defaults: The options the page starts from.
    """

    key: str
    cls: type[nn.Module]
    family: str
    layout: str
    channel_arg: str | None = None
    defaults: Options = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The class name, e.g. ``"Conv2d"``."""
        return self.cls.__name__


_CONV2D = {"out_channels": 4, "kernel_size": (3, 3), "stride": (1, 1), "padding": (1, 1), "dilation": (1, 1),
           "groups": 1, "bias": True, "padding_mode": "zeros"}
_CONV1D = {"out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1, "dilation": 1, "groups": 1,
           "bias": True, "padding_mode": "zeros"}
_CONV_T = {"out_channels": 3, "kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "output_padding": (1, 1),
           "groups": 1, "bias": True, "dilation": (1, 1)}
_BATCH_NORM = {"eps": 1e-5, "momentum": 0.1, "affine": True, "track_running_stats": True, "mode": "train"}

LAYERS: dict[str, LayerSpec] = {spec.key: spec for spec in (
    LayerSpec("conv2d", nn.Conv2d, "conv", "NCHW", "in_channels", _CONV2D),
    LayerSpec("conv1d", nn.Conv1d, "conv", "NCL", "in_channels", _CONV1D),
    LayerSpec("convtranspose2d", nn.ConvTranspose2d, "conv_transpose", "NCHW", "in_channels", _CONV_T),
    LayerSpec("maxpool1d", nn.MaxPool1d, "max_pool", "NCL", None,
              {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1, "ceil_mode": False}),
    LayerSpec("maxpool2d", nn.MaxPool2d, "max_pool", "NCHW", None,
              {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "ceil_mode": False}),
    LayerSpec("avgpool1d", nn.AvgPool1d, "avg_pool", "NCL", None,
              {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": False, "count_include_pad": True}),
    LayerSpec("avgpool2d", nn.AvgPool2d, "avg_pool", "NCHW", None,
              {"kernel_size": (3, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": False,
               "count_include_pad": True, "divisor_override": None}),
    LayerSpec("adaptiveavgpool1d", nn.AdaptiveAvgPool1d, "adaptive_avg", "NCL", None, {"output_size": 3}),
    LayerSpec("adaptiveavgpool2d", nn.AdaptiveAvgPool2d, "adaptive_avg", "NCHW", None, {"output_size": (3, 2)}),
    LayerSpec("adaptivemaxpool2d", nn.AdaptiveMaxPool2d, "adaptive_max", "NCHW", None, {"output_size": (3, 2)}),
    LayerSpec("relu", nn.ReLU, "relu", "NCHW", None, {"inplace": False}),
    LayerSpec("tanh", nn.Tanh, "tanh", "NCHW"),
    LayerSpec("sigmoid", nn.Sigmoid, "sigmoid", "NCHW"),
    LayerSpec("linear", nn.Linear, "linear", "NF", "in_features", {"out_features": 3, "bias": True}),
    LayerSpec("batchnorm1d", nn.BatchNorm1d, "batchnorm", "NC[L]", "num_features", _BATCH_NORM),
    LayerSpec("batchnorm2d", nn.BatchNorm2d, "batchnorm", "NCHW", "num_features", _BATCH_NORM),
    LayerSpec("flatten", nn.Flatten, "flatten", "NCHW", None, {"start_dim": 1, "end_dim": -1}),
    LayerSpec("identity", nn.Identity, "identity", "NCHW"),
)}
"""Every layer type with a manual rule, by its command-line name (the order of `check --help`)."""



@contextmanager
def single_thread() -> Iterator[None]:
    """Runs the block with one intra-op thread, restoring the count afterwards.

    A check runs thousands of operators on tiny tensors (finite differences perturb one coordinate at a
    time); with several threads each operator waits for OpenMP workers, which takes milliseconds when other
    processes keep the cores busy (measured: 0.24 s with one thread, 3.8 s with two, for the conv2d examples).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def layer_spec(key: str) -> LayerSpec:
    """The spec of a layer type.

    Args:
        key: A key of :data:`LAYERS`, e.g. ``"conv2d"`` (case-insensitive).

    Raises:
        LayerOptionsError: For an unknown key; the message lists the known ones.
    """
    spec = LAYERS.get(str(key).lower())
    if spec is None:
        raise LayerOptionsError(f"unknown layer type {key!r}; choose one of {', '.join(LAYERS)}")
    return spec


def _call(name: str, kwargs: Mapping[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def build_layer(key: str, options: Mapping[str, Any], channels: int, seed: int = 0) -> nn.Module:
    """Constructs a layer from its options, with weights drawn from ``seed`` (the global RNG is untouched).

    Batch norm gets a random affine ``gamma``, ``beta`` and, in eval mode, random running statistics, so
    that every term of its formulas is visible.

    Args:
        key: A key of :data:`LAYERS`.
        options: Constructor arguments (see :data:`Options`); missing ones take the spec's defaults.
        channels: The input's channels (``in_channels``, ``in_features`` or ``num_features``).
        seed: Seeds the parameters.

    Returns:
        The module, float32, in training mode unless ``options["mode"] == "eval"``.

    Raises:
        LayerOptionsError: With PyTorch's own reason when it refuses the options.
    """
    spec = layer_spec(key)
    kwargs = {**spec.defaults, **options}
    mode = kwargs.pop("mode", "train")
    if spec.channel_arg is not None:
        kwargs = {spec.channel_arg: int(channels), **kwargs}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            module = spec.cls(**kwargs)
        except (ValueError, RuntimeError, TypeError) as err:
            raise LayerOptionsError(f"PyTorch refuses {_call(spec.name, kwargs)}: {err}") from None
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                if module.affine:
                    module.weight.copy_(1 + 0.5 * torch.randn_like(module.weight))  # (C,) gamma
                    module.bias.copy_(0.5 * torch.randn_like(module.bias))  # (C,) beta
                if module.track_running_stats:
                    module.running_mean.copy_(0.5 * torch.randn_like(module.running_mean))  # (C,)
                    module.running_var.copy_(0.5 + torch.rand_like(module.running_var))  # (C,) positive
    return module.train(mode != "eval")


def input_shape(key: str, batch: int, channels: int, height: int, width: int) -> tuple[int, ...]:
    """The input's shape for a layer type's layout.

    Args:
        key: A key of :data:`LAYERS`.
        batch: ``N`` (0 allowed).
        channels: ``C`` (features for ``Linear``).
        height: ``H`` (ignored by 1-d layouts).
        width: ``W``, or the length ``L`` of 1-d layouts; ``0`` drops the length of batch norm 1-d.

    Returns:
        ``(N, C, H, W)``, ``(N, C, L)``, ``(N, F)`` or ``(N, C)``.
    """
    layout = layer_spec(key).layout
    if layout == "NCHW":
        return (batch, channels, height, width)
    if layout == "NCL" or (layout == "NC[L]" and width > 0):
        return (batch, channels, width)
    return (batch, channels)


def make_input(shape: Sequence[int], seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """A standard normal input drawn from ``seed``.

    Args:
        shape: Its shape.
        seed: The seed.
        dtype: Its dtype.
    """
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _output(result: Any) -> Tensor:
    return result[0] if isinstance(result, tuple) else result


def _pytorch_output_shape(module: nn.Module, x: Tensor) -> tuple[int, ...]:
    """Runs PyTorch's own forward on a copy; its refusal becomes a :class:`LayerOptionsError`."""
    try:
        with torch.no_grad():
            return tuple(_output(copy.deepcopy(module)(x.clone())).shape)
    except (RuntimeError, ValueError, IndexError) as err:
        raise LayerOptionsError(
            f"PyTorch refuses an input of shape {tuple(x.shape)} for {module!r}: {err}"
        ) from None


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
    output_shape = _pytorch_output_shape(module, x)
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
        output = _output(module64(leaf.clone()))  # clone: an in-place ReLU must not touch the leaf
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


# --- shape arithmetic and the transposed-convolution duality -------------------------------------------------

CONV_OUTPUT_SIZE = (r"H_{out} = \Big\lfloor \frac{H_{in} + p_{before} + p_{after} - d\,(k - 1) - 1}{s}"
                    r"\Big\rfloor + 1")
TRANSPOSE_OUTPUT_SIZE = r"H_{out} = (H_{in} - 1)\,s - 2p + d\,(k - 1) + \mathrm{output\_padding} + 1"


@dataclass
class Duality:
    """A transposed convolution mapping a downsampled map back, and the check that it is an input-gradient.

    Attributes:
        table: One row per spatial dimension: the sizes and arguments of the shape arithmetic.
        transpose: The ``ConvTranspose`` call whose forward is compared.
        statement: What is compared with what, in words.
        max_abs_diff: ``max |ConvTranspose forward - autograd's input-gradient of the convolution|``.
        scale: ``max |autograd's input-gradient|`` (for a relative reading).
    """

    table: pd.DataFrame
    transpose: str
    statement: str
    max_abs_diff: float
    scale: float

    @property
    def max_rel_diff(self) -> float:
        """``max_abs_diff / scale`` (0 when both are 0)."""
        return self.max_abs_diff / self.scale if self.scale else self.max_abs_diff


def _conv_fns(dims: int):
    return (F.conv2d, F.conv_transpose2d) if dims == 2 else (F.conv1d, F.conv_transpose1d)


def _as_tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * n


def transpose_duality(module: nn.Module, x: Tensor, seed: int = 0) -> Duality:
    """The ``ConvTranspose`` that maps a convolution's output back to its input's shape, and the proof.

    For ``Conv1d``/``Conv2d`` on ``x``: ``dL/dY`` (drawn from ``seed``) is fed to a transposed convolution
    with the same weight, stride, dilation and groups, and ``output_padding = (H_p - d(k-1) - 1) mod s``
    per dimension (the rows the stride skipped), which restores the (padded) input's size; its output is
    compared with autograd's ``dL/dX`` (of the padded input ``X^p`` when the padding is not a symmetric
    zero padding a transposed convolution can undo itself).

    For ``ConvTranspose2d`` on ``x``: its forward (without bias) is compared with autograd's input-gradient
    of ``Conv2d`` with the same weight and arguments at ``dL/dY = x``.

    Args:
        module: A ``Conv1d``, ``Conv2d`` or ``ConvTranspose2d``.
        x: Its input.
        seed: Seeds ``dL/dY``.

    Returns:
        The shape arithmetic and the maximum difference, in float64.

    Raises:
        LayerOptionsError: For other modules, or when PyTorch refuses the input.
    """
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
        raise LayerOptionsError(f"the transposed-convolution duality applies to Conv1d, Conv2d and ConvTranspose2d, "
                                f"not {type(module).__name__}")
    _pytorch_output_shape(module, x)
    x = x.detach().to(torch.float64)  # (N, C, *spatial)
    weight = module.weight.detach().to(torch.float64)
    dims = x.dim() - 2
    conv, conv_t = _conv_fns(dims)
    stride, dilation = _as_tuple(module.stride, dims), _as_tuple(module.dilation, dims)
    kernel, groups = tuple(weight.shape[2:]), module.groups
    names = ("H", "W") if dims == 2 else ("L",)
    if isinstance(module, nn.ConvTranspose2d):
        padding, output_padding = _as_tuple(module.padding, dims), _as_tuple(module.output_padding, dims)
        y = conv_t(x, weight, None, stride, padding, output_padding, groups, dilation)  # (N, C_out, *S_out)
        z = torch.zeros_like(y).requires_grad_(True)  # the convolution's input, shaped like y
        with torch.enable_grad():
            back = conv(z, weight, None, stride, padding, dilation, groups)  # (N, C_in, >= *S)
            grad_output = F.pad(x, [p for s, t in zip(reversed(x.shape[2:]), reversed(back.shape[2:]))
                                    for p in (0, t - s)])  # x, zero-extended to the convolution's output
            expected = torch.autograd.grad(back, z, grad_output)[0]  # (N, C_out, *S_out)
        rows = [{"dimension": n, "H_in": x.shape[2 + i], "stride s": stride[i], "padding p": padding[i],
                 "dilation d": dilation[i], "kernel k": kernel[i], "output_padding": output_padding[i],
                 "H_out": y.shape[2 + i]} for i, n in enumerate(names)]
        statement = ("ConvTranspose2d(X) (without bias) vs autograd's ∂⟨Conv2d(Z, W), X⟩/∂Z: the transposed "
                     "convolution's forward is the convolution's input-gradient")
        transpose = repr(module)
        return Duality(pd.DataFrame(rows), transpose, statement, float((y - expected).abs().max()) if y.numel()
                       else 0.0, float(expected.abs().max()) if y.numel() else 0.0)
    pads = conv_padding(kernel, dilation, module.padding)
    symmetric = module.padding_mode == "zeros" and all(before == after for before, after in pads)
    if symmetric:
        padding, x_in = tuple(before for before, _ in pads), x
        statement = "ConvTranspose(dL/dY) vs autograd's dL/dX of the convolution"
    else:
        padding = (0,) * dims
        flat = [p for before_after in reversed(pads) for p in before_after]  # F.pad order: last dimension first
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x_in = F.pad(x, flat, mode=mode)  # (N, C_in, *padded)
        statement = ("ConvTranspose(dL/dY) vs autograd's dL/dX^p of the padded input X^p (this padding is not a "
                     "symmetric zero padding, so the padding's own backward follows: crop or add the copies)")
    leaf = x_in.clone().requires_grad_(True)
    with torch.enable_grad():
        y = conv(leaf, weight, None, stride, padding, dilation, groups)  # (N, C_out, *S_out)
        grad_output = make_input(y.shape, seed + 1, torch.float64)  # dL/dY
        expected = torch.autograd.grad(y, leaf, grad_output)[0]  # (N, C_in, *S_in)
    sizes = x_in.shape[2:]
    output_padding = tuple((sizes[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) % stride[i]
                           for i in range(dims))
    back = conv_t(grad_output, weight, None, stride, padding, output_padding, groups, dilation)  # (N, C_in, *S_in)
    rows = [{"dimension": n, "H (conv input)": x.shape[2 + i], "p_before": pads[i][0], "p_after": pads[i][1],
             "target (H or H_p)": sizes[i], "H_out (conv)": y.shape[2 + i], "stride s": stride[i],
             "transpose padding p": padding[i], "dilation d": dilation[i], "kernel k": kernel[i],
             "output_padding": output_padding[i], "H_out (transpose)": back.shape[2 + i]}
            for i, n in enumerate(names)]
    name = "ConvTranspose2d" if dims == 2 else "ConvTranspose1d"
    transpose = (f"{name}({module.out_channels}, {module.in_channels}, kernel_size={kernel}, stride={stride}, "
                 f"padding={padding}, output_padding={output_padding}, groups={groups}, dilation={dilation}, "
                 "bias=False) with the convolution's weight")
    diff = float((back - expected).abs().max()) if back.numel() else 0.0
    return Duality(pd.DataFrame(rows), transpose, statement, diff, float(expected.abs().max()) if back.numel() else 0.0)


def conv_output_table(module: nn.Module, input_size: Sequence[int]) -> pd.DataFrame:
    """The convolution's output size per spatial dimension (:data:`CONV_OUTPUT_SIZE`), as PyTorch computes it.

    Args:
        module: A ``Conv1d`` or ``Conv2d``.
        input_size: The input's shape ``(N, C, *spatial)``.

    Returns:
        One row per spatial dimension with the arguments and ``H_out``.
    """
    dims = len(input_size) - 2
    kernel = _as_tuple(module.kernel_size, dims)
    stride, dilation = _as_tuple(module.stride, dims), _as_tuple(module.dilation, dims)
    pads = conv_padding(kernel, dilation, module.padding)
    rows = []
    for i, name in enumerate(("H", "W") if dims == 2 else ("L",)):
        size = input_size[2 + i]
        out = math.floor((size + sum(pads[i]) - dilation[i] * (kernel[i] - 1) - 1) / stride[i]) + 1
        rows.append({"dimension": name, "H_in": size, "p_before": pads[i][0], "p_after": pads[i][1],
                     "dilation d": dilation[i], "kernel k": kernel[i], "stride s": stride[i], "H_out": out})
    return pd.DataFrame(rows)
