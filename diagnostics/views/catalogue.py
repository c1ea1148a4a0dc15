"""The layer catalogue of the Gradient checks page and the ``check`` command: layer types, options and inputs.

The table of checkable layers is written once, as data (:data:`LAYERS`); a layer is built from its key and
constructor options, and its input from a seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import LayerOptionsError

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
