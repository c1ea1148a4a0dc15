"""One CNN family with switches (depth, width, residual, batch norm, activation, init, 1-D/2-D), its checkpoints."""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ..errors import ModelConfigError

#: The four standard variants of a comparison: name -> (residual, batchnorm).
VARIANTS: dict[str, tuple[bool, bool]] = {
    "plain": (False, False),
    "batchnorm": (False, True),
    "residual": (True, False),
    "residual+batchnorm": (True, True),
}

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
#: Weight initialisations, as the literature defines them (biases start at zero except under ``default``).
INITS: dict[str, str] = {
    "default": "PyTorch's own: uniform with variance 1/(3·fan_in) (kaiming_uniform_ with a=√5), bias uniform.",
    "he": "He et al. 2015 (Kaiming, fan-in): normal with variance gain²/fan_in, gain √2 for ReLU; keeps the "
          "forward and backward signal at constant scale through ReLU layers.",
    "xavier": "Glorot & Bengio 2010 (Xavier): uniform with variance 2/(fan_in + fan_out), gain 1 as published "
              "and as PyTorch's xavier_uniform_; made for symmetric activations, so with ReLU each layer halves "
              "the signal's variance.",
    "orthogonal": "Saxe et al. 2014: a (semi-)orthogonal weight matrix (rows of the flattened kernel) times the "
                  "activation's gain (√2 for ReLU); preserves norms exactly for linear layers.",
}
#: Where batch norm sits in a block: before the activation (conv -> bn -> act, as in ResNet) or after it.
BN_POSITIONS: tuple[str, ...] = ("before", "after")
MIN_DEPTH, MAX_DEPTH = 2, 100

#: Marks a checkpoint written by :func:`save_checkpoint` (and its layout version).
CHECKPOINT_FORMAT = "gradient-flow-diagnostics/cnn"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class CNNConfig:
    """The architecture of one network of the family; everything needed to rebuild it.

    ``depth`` counts conv layers: a stem conv (``in_channels`` -> ``width``, never residual) followed by
    ``depth - 1`` blocks of ``width`` channels. Every block is conv -> [batch norm] -> activation, and with
    ``residual`` the block's input is added before the activation: ``act(bn(conv(x)) + x)``.
    """

    depth: int = 20              # conv layers in total (stem + depth-1 blocks), 2..100
    width: int = 16              # channels of every conv layer
    residual: bool = False       # add each block's input to its output (not the stem)
    batchnorm: bool = False      # batch norm in every block
    bn_position: str = "before"  # before the activation (conv -> bn -> act) | after it (conv -> act -> bn)
    activation: str = "relu"     # relu | tanh | sigmoid
    init: str = "default"        # default (PyTorch's) | he | xavier | orthogonal (see INITS)
    dims: int = 2                # 2: images (N, C, H, W) with Conv2d; 1: signals (N, C, L) with Conv1d
    in_channels: int = 1         # channels of the input
    num_classes: int = 10        # outputs of the linear head
    input_size: int = 8          # H = W of images or L of signals (recorded for rebuilding and checks)
    kernel_size: int = 3         # odd, "same" padding keeps the spatial size
    pool_size: int = 4           # average-pool to pool_size (x pool_size) positions before the linear head

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.depth, int) and MIN_DEPTH <= self.depth <= MAX_DEPTH,
             f"depth must be an integer from {MIN_DEPTH} to {MAX_DEPTH}"),
            (isinstance(self.width, int) and 1 <= self.width <= 4096, "width must be an integer from 1 to 4096"),
            (self.activation in ACTIVATIONS, f"activation must be one of {sorted(ACTIVATIONS)}"),
            (self.init in INITS, f"init must be one of {list(INITS)}"),
            (self.bn_position in BN_POSITIONS, f"bn_position must be one of {list(BN_POSITIONS)}"),
            (not (self.residual and self.batchnorm and self.bn_position == "after"),
             "bn_position='after' is for plain networks (a residual block adds its input before the activation, "
             "so batch norm after it would normalise the skip path too)"),
            (self.dims in (1, 2), "dims must be 1 (Conv1d, signals) or 2 (Conv2d, images)"),
            (isinstance(self.in_channels, int) and self.in_channels >= 1, "in_channels must be a positive integer"),
            (isinstance(self.num_classes, int) and self.num_classes >= 2, "num_classes must be at least 2"),
            (isinstance(self.input_size, int) and self.input_size >= 1, "input_size must be a positive integer"),
            (isinstance(self.kernel_size, int) and self.kernel_size >= 1 and self.kernel_size % 2 == 1,
             "kernel_size must be a positive odd integer"),
            (isinstance(self.pool_size, int) and 1 <= self.pool_size <= max(1, self.input_size),
             "pool_size must be a positive integer no larger than input_size"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelConfigError(f"{message}; got {self!r}")

    @property
    def variant(self) -> str:
        """The standard variant name of the (residual, batchnorm) switches, e.g. ``"residual+batchnorm"``."""
        return next(name for name, switches in VARIANTS.items() if switches == (self.residual, self.batchnorm))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/``weights_only``-safe types only."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CNNConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown CNNConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)


def variant_config(variant: str, **overrides: Any) -> CNNConfig:
    """The config of a standard variant (``"plain"``, ``"batchnorm"``, ``"residual"``, ``"residual+batchnorm"``).

    Args:
        variant: One of :data:`VARIANTS`.
        **overrides: Any other :class:`CNNConfig` field (depth, width, activation, ...).
    """
    if variant not in VARIANTS:
        raise ModelConfigError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    residual, batchnorm = VARIANTS[variant]
    return CNNConfig(**{**overrides, "residual": residual, "batchnorm": batchnorm})


class ConvBlock(nn.Module):
    """conv -> [batch norm] -> activation, with ``act(bn(conv(x)) + x)`` when ``residual``; with
    ``bn_position="after"`` (plain blocks only) conv -> activation -> batch norm."""

    def __init__(self, in_channels: int, out_channels: int, config: CNNConfig, residual: bool) -> None:
        super().__init__()
        conv = nn.Conv2d if config.dims == 2 else nn.Conv1d
        norm = nn.BatchNorm2d if config.dims == 2 else nn.BatchNorm1d
        if residual and in_channels != out_channels:
            raise ModelConfigError("a residual block needs as many input as output channels")
        self.residual = residual
        self.conv = conv(in_channels, out_channels, config.kernel_size, padding=config.kernel_size // 2)
        self.bn = norm(out_channels) if config.batchnorm else None
        self.bn_after = config.bn_position == "after"
        self.act = ACTIVATIONS[config.activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)                                  # (N, C, H, W) or (N, C, L)
        if self.bn is not None and not self.bn_after:
            h = self.bn(h)                                # same shape
        if self.residual:
            h = h + x                                     # same shape: the skip connection
        h = self.act(h)                                   # same shape
        if self.bn is not None and self.bn_after:
            h = self.bn(h)                                # same shape: normalises the activation's output
        return h


class CNN(nn.Module):
    """The CNN family: ``blocks`` (stem + depth-1 blocks), average ``pool``, linear ``head``.

    The head sees ``pool_size`` positions per channel rather than one global average: with a global average a
    near-identity residual network would see only the stem's channel means and learn slowly, which would
    confound the comparison.

    Layer names (as the monitor records them): ``blocks.0.conv`` (the first conv), ``blocks.<i>.bn``,
    ``blocks.<i>.act``, ``pool``, ``head``.
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        blocks = [ConvBlock(config.in_channels, config.width, config, residual=False)]
        blocks += [ConvBlock(config.width, config.width, config, residual=config.residual)
                   for _ in range(config.depth - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.pool = (nn.AdaptiveAvgPool2d if config.dims == 2 else nn.AdaptiveAvgPool1d)(config.pool_size)
        self.head = nn.Linear(config.width * config.pool_size ** config.dims, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = 4 if self.config.dims == 2 else 3
        if x.dim() != expected or x.shape[1] != self.config.in_channels:
            layout = "(N, C, H, W)" if self.config.dims == 2 else "(N, C, L)"
            raise ModelConfigError(f"expected input of shape {layout} with C={self.config.in_channels}, got "
                                   f"{tuple(x.shape)}")
        h = self.blocks(x)                                # (N, width, H, W) or (N, width, L)
        h = torch.flatten(self.pool(h), 1)                # (N, width * pool_size**dims)
        return self.head(h)                               # (N, num_classes)


def _generator(seed: int, part: str) -> torch.Generator:
    """An independent generator per (seed, part): the same part gets the same numbers in every variant."""
    digest = hashlib.sha256(f"{int(seed)}/{part}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _init_layer(layer: nn.Module, init: str, activation: str, gen: torch.Generator) -> None:
    """Initialise a conv or linear layer's weight and bias in place from ``gen``."""
    weight, bias = layer.weight, layer.bias
    fan_in = weight[0].numel()
    with torch.no_grad():
        if init == "default":
            # What nn.Conv*/nn.Linear.reset_parameters do, drawn from our generator.
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
            bound = 1.0 / math.sqrt(fan_in)
            if bias is not None:
                nn.init.uniform_(bias, -bound, bound, generator=gen)
            return
        if init == "he":
            nn.init.kaiming_normal_(weight, nonlinearity=activation, generator=gen)    # Var = gain² / fan_in
        elif init == "xavier":
            nn.init.xavier_uniform_(weight, gain=1.0, generator=gen)    # Var = 2 / (fan_in + fan_out), as published
        else:
            nn.init.orthogonal_(weight, gain=nn.init.calculate_gain(activation), generator=gen)
        if bias is not None:
            nn.init.zeros_(bias)


def build_cnn(config: CNNConfig, seed: int = 0) -> CNN:
    """Build a network of the family with deterministic initial weights.

    Each part draws from its own generator seeded by ``(seed, part)``, so with the same seed the conv of
    block ``i`` and the head start identical in every variant (plain, batchnorm, residual, both) and the
    global RNG is left untouched. Batch-norm layers start at weight 1, bias 0.

    Args:
        config: The architecture.
        seed: Seed of the initial weights.

    Returns:
        The model, in training mode, on the CPU.
    """
    with torch.random.fork_rng(devices=[]):              # the layers' own reset_parameters use the global RNG
        model = CNN(config)
    for i, block in enumerate(model.blocks):
        _init_layer(block.conv, config.init, config.activation, _generator(seed, f"conv{i}"))
    # The head is linear (no activation follows it).
    _init_layer(model.head, config.init, "linear", _generator(seed, "head"))
    return model


def conv_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the conv layers in definition order (for this family, also execution order)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


# --- checkpoints --------------------------------------------------------------------------------------------

def save_checkpoint(model: nn.Module, config: CNNConfig, path: str | os.PathLike[str],
                    extra: dict[str, Any] | None = None) -> None:
    """Save weights and architecture so that :func:`~diagnostics.checkpoints.architecture.load_project_checkpoint` can rebuild the model.

    The file holds only plain types and tensors (it loads with ``torch.load(weights_only=True)``):
    ``{"format", "version", "config": dict, "state_dict": {name: tensor}, "extra": dict}``.

    Args:
        model: A model built by :func:`build_cnn` (a DDP wrapper is unwrapped).
        config: Its :class:`CNNConfig`.
        path: Where to write (``.pt`` by convention).
        extra: Plain-typed extras to keep with it (step, run id, variant, ...).
    """
    model = getattr(model, "module", model)
    state = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config.to_dict(),
               "state_dict": state, "extra": dict(extra or {})}
    torch.save(payload, os.fspath(path))
