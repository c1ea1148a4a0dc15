"""The labelled scenarios of benchmarks/findings.py: small runs on the bundled digits whose fault we caused.

Each :class:`Scenario` is data: a model builder, an optimizer, a fault (NaN in a batch, log of a saturated
softmax, ``zero_grad`` between backward and step, ...), the finding kinds it must raise (``expect``) and the
kinds that are true consequences of the fault (``accept``: counted neither as hits nor as false alarms).
``TRAIN`` is the set the thresholds were chosen on. ``HELD_OUT`` holds variants (widths, depths, learning rates,
seeds); its first measurement (README) led to three rule changes, so it is no longer unseen. ``HELD_OUT_2`` was
written after those changes; its first measurement led to two more. ``HELD_OUT_3`` was written after those and
measured once with the rules as committed. ``HELD_OUT_4`` was written together with the manipulation checks
(:class:`Probe` here, the criteria in ``findings.py``), before any of its runs was trained, and run once.
``HELD_OUT_5`` (seeds 10 and 11) was written with version 2 of the checks (the probe also records each step's
relative weight movement), committed before any of its runs was trained, and run once. ``HELD_OUT_6`` (seeds 12
and 13) was written with version 3 of the checks (the probe also records which dead units were active early on),
committed before any of its runs was trained, and run once.
"""

from __future__ import annotations

import inspect
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import diagnostics as dx
from diagnostics.experiments.data import load_digits

BATCH = 64


# --- models (inputs: digits (N, 1, 8, 8), normalised) -------------------------------------------------------

def _init_linear(layers: list[nn.Module], gain: float | None, init: str) -> None:
    """Weights ~ N(0, (gain·c)²/fan_in) with c = √2 for "he" and 1 for "lecun"; biases 0. None: PyTorch's own."""
    if gain is None:
        return
    c = math.sqrt(2.0) if init == "he" else 1.0
    for layer in layers:
        nn.init.normal_(layer.weight, 0.0, gain * c / math.sqrt(layer.weight.shape[1]))
        nn.init.zeros_(layer.bias)


def mlp(depth: int, width: int, act: str = "relu", gain: float | None = None, init: str = "lecun",
        dead_half: int | None = None) -> nn.Sequential:
    """``depth`` hidden Linear+activation pairs and a Linear head; ``dead_half``: that hidden layer's first half
    of units get bias -30, so they never fire on any digit (and never get a gradient to recover)."""
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    mods: list[nn.Module] = [nn.Flatten()]
    linears = []
    fan_in = 64
    for _ in range(depth):
        linears.append(nn.Linear(fan_in, width))
        mods += [linears[-1], acts[act]()]
        fan_in = width
    mods.append(nn.Linear(fan_in, 10))
    _init_linear(linears, gain, init)
    if dead_half is not None:
        with torch.no_grad():
            linears[dead_half].bias[: width // 2] = -30.0
    return nn.Sequential(*mods)


def cnn(width: int, bn: bool = True, depth: int = 3, dead_half: bool = False) -> nn.Sequential:
    """3×3 conv (+BN) + ReLU blocks, global average pool, Linear head; ``dead_half``: the second conv's first
    half of channels get bias -30 (no BN then: it would re-centre them)."""
    mods: list[nn.Module] = []
    c = 1
    convs = []
    for _ in range(depth):
        convs.append(nn.Conv2d(c, width, 3, padding=1))
        mods += [convs[-1], *([nn.BatchNorm2d(width)] if bn else []), nn.ReLU()]
        c = width
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    if dead_half:
        with torch.no_grad():
            convs[1].bias[: width // 2] = -30.0
    return nn.Sequential(*mods)


class RowTransformer(nn.Module):
    """The 8 rows of a digit as 8 tokens: embedding, one encoder layer, mean over tokens, Linear head."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(1, 8, d))
        self.encoder = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(-1, 8, 8)) + self.pos       # (N, 8, d)
        return self.head(self.encoder(tokens).mean(dim=1))         # (N, 10)


class PixelRNN(nn.Module):
    """A ReLU RNN reading the 64 pixels one by one; recurrent weights ``radius`` × an orthogonal matrix."""

    def __init__(self, hidden: int = 32, radius: float = 1.0) -> None:
        super().__init__()
        self.rnn = nn.RNN(1, hidden, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(hidden, 10)
        with torch.no_grad():
            nn.init.orthogonal_(self.rnn.weight_hh_l0)
            self.rnn.weight_hh_l0.mul_(radius)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(-1, 64, 1))                   # (N, 64, hidden)
        return self.head(out[:, -1])                               # (N, 10)


# --- scenarios --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    """One labelled training run (trained once per seed)."""

    name: str
    build: Callable[[], nn.Module]
    expect: frozenset[str] = frozenset()      # finding kinds (above info) the fault must raise
    accept: frozenset[str] = frozenset()      # kinds that are true consequences of the fault
    optimizer: str = "sgd"                    # "sgd" (momentum 0.9), "plain-sgd" or "adam"
    lr: float = 0.05
    steps: int = 200
    nan_at: int | None = None                 # a NaN pixel in the batch of this step
    log_softmax_temperature: float | None = None   # loss = nll(log(softmax(T·logits))): log(0) once saturated
    zero_grad_bug: bool = False               # zero_grad() between backward and step: the weights never move
    freeze: tuple[int, ...] = ()              # indices (in .parameters() order of Linear/Conv layers) frozen
    leave_out: tuple[int, ...] = ()           # ... or left out of the optimizer (they still get gradients)
    seeds: tuple[int, ...] = (0, 1)
    tags: tuple[str, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        return not self.expect


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _optimizer(s: Scenario, model: nn.Module) -> torch.optim.Optimizer:
    layers = _weight_layers(model)
    for i in s.freeze:
        for p in layers[i].parameters():
            p.requires_grad_(False)
    out = {id(p) for i in s.leave_out for p in layers[i].parameters()}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in out]
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr)
    return torch.optim.SGD(params, lr=s.lr, momentum=0.0 if s.optimizer == "plain-sgd" else 0.9)


def _loss(s: Scenario, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if s.log_softmax_temperature is not None:
        probs = F.softmax(s.log_softmax_temperature * logits, dim=1)   # (N, 10), exact zeros once saturated
        return F.nll_loss(torch.log(probs), y)
    return F.cross_entropy(logits, y)


def monitor_options() -> dict:
    """``unit_activity=True`` where the monitor has it (the per-unit dead-unit statistic), else nothing."""
    params = inspect.signature(dx.GradientMonitor).parameters
    return {"unit_activity": True} if "unit_activity" in params else {}


class Probe:
    """The benchmark's own instruments on one run, for the manipulation checks of ``findings.py``.

    Nothing here reads the monitor: the training loop itself records, per step, the loss, whether the input batch,
    the loss or any parameter gradient was non-finite, the total gradient norm ``sqrt(Σ‖p.grad‖²)`` (float64), and
    ``‖∂L/∂x‖`` (the network's input) and ``‖∂L/∂logits‖`` (a tensor hook); its own forward hooks record which units
    were active (output > 0) on any sample of a step — ``nn.ReLU`` outputs, a ReLU ``nn.RNN``'s hidden states and
    the pre-activation of a transformer layer's ``linear1`` (its ReLU is a function, not a module); the unit axis
    is the channel of a 4-d output, else the last axis. It keeps the first weights of every Linear/Conv layer and
    the last ones that were all finite, and per step the median over trained layers of ‖ΔW‖/‖W‖ (NaN on a step
whose loss or weights were not finite). :meth:`summary` is what is stored (JSON) beside the run.
    """

    def __init__(self, model: nn.Module, s: Scenario, opt: torch.optim.Optimizer) -> None:
        self.loss: list[float] = []
        self.norm: list[float] = []
        self.in_norm: list[float] = []
        self.out_norm: list[float] = []
        self.input_nonfinite: list[int] = []
        self.grad_nonfinite: list[int] = []
        self.activity: list[dict[str, tuple[torch.Tensor, bool]]] = []
        self._now: dict[str, tuple[torch.Tensor, bool]] = {}
        self.model = model
        held = {id(p) for g in opt.param_groups for p in g["params"]}
        layers = _weight_layers(model)
        self.layers = [(f"{i}:{type(m).__name__}", m.weight) for i, m in enumerate(layers)]
        self.trained = [name for name, w in self.layers if id(w) in held]
        self.untouched = [f"{i}:{type(layers[i]).__name__}" for i in (*s.freeze, *s.leave_out)]
        self.w0 = {name: w.detach().clone() for name, w in self.layers}
        self.last_finite = dict(self.w0)
        self.before = {name: w.detach().clone() for name, w in self.layers if name in self.trained}
        self.step_moved: list[float] = []
        self.hooks = []
        for name, m in model.named_modules():
            if isinstance(m, nn.ReLU) or (isinstance(m, nn.RNN) and m.nonlinearity == "relu"):
                self.hooks.append(m.register_forward_hook(self._hook(name)))
            elif isinstance(m, nn.TransformerEncoderLayer):
                self.hooks.append(m.linear1.register_forward_hook(self._hook(f"{name}.linear1")))

    def _hook(self, name: str):
        def record(module, inputs, output):
            y = (output[0] if isinstance(output, tuple) else output).detach()
            y = y.transpose(0, 1).reshape(y.shape[1], -1) if y.dim() == 4 else y.reshape(-1, y.shape[-1]).T
            self._now[name] = (y.gt(0).any(dim=1), bool(y.isnan().any()))      # (units,), any NaN
        return record

    def after_backward(self, step: int, x: torch.Tensor, logit_grad: torch.Tensor | None, loss: torch.Tensor) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        total = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        self.loss.append(float(loss))
        self.norm.append(total)
        self.in_norm.append(float(x.grad.double().norm()) if x.grad is not None else math.nan)
        self.out_norm.append(float(logit_grad.double().norm()) if logit_grad is not None else math.nan)
        if not bool(torch.isfinite(x.detach()).all()):
            self.input_nonfinite.append(step)
        if any(not bool(torch.isfinite(g).all()) for g in grads):
            self.grad_nonfinite.append(step)
        self.activity.append(self._now)
        self._now = {}

    def after_step(self) -> None:
        """Keep the last all-finite weights, and record this step's movement: the median over trained layers of
        ‖W_after − W_before‖/‖W_before‖, NaN unless the step's loss and every trained weight before and after the
        step were finite (version 2 of the update-size checks)."""
        if all(bool(torch.isfinite(w).all()) for _, w in self.layers):
            self.last_finite = {name: w.detach().clone() for name, w in self.layers}
        after = {name: w.detach().clone() for name, w in self.layers if name in self.trained}
        finite = (bool(self.loss) and math.isfinite(self.loss[-1])
                  and all(bool(torch.isfinite(after[n]).all()) and bool(torch.isfinite(self.before[n]).all())
                          for n in after))
        ratios = sorted(float((after[n].double() - self.before[n].double()).norm()
                              / self.before[n].double().norm().clamp_min(1e-12)) for n in after)
        self.step_moved.append(float(statistics.median(ratios)) if finite and ratios else math.nan)
        self.before = after

    def summary(self, window: int = 50, start_window: int = 10) -> dict:
        """Per-step series, per-layer never-active units over the last ``window`` steps whose loss was finite
        (and, version 3, how many of them were active on some sample of the first ``start_window`` finite
        steps: killed by training rather than dead from initialisation), per trained layer
        ‖W_last_finite − W_0‖/‖W_0‖, and the by-construction facts."""
        for h in self.hooks:
            h.remove()
        finite = [i for i, v in enumerate(self.loss) if math.isfinite(v)]
        units = {}
        for name in (self.activity[0] if self.activity else {}):
            seen = [self.activity[i][name] for i in finite[-window:] if name in self.activity[i]]
            start = [self.activity[i][name] for i in finite[:start_window] if name in self.activity[i]]
            if seen:
                active = torch.stack([a for a, _ in seen]).any(dim=0)
                units[name] = {"units": int(active.numel()), "dead": int((~active).sum()), "steps": len(seen),
                               "nan": any(n for _, n in seen)}
                if start:     # version 3: units active early on that training killed (not dead from the start)
                    early = torch.stack([a for a, _ in start]).any(dim=0)
                    units[name]["killed"] = int((early & ~active).sum())
        now = {name: w.detach() for name, w in self.layers}
        moved = {name: float((self.last_finite[name] - self.w0[name]).norm() / self.w0[name].norm().clamp_min(1e-12))
                 for name in self.trained}
        unchanged = {name: bool(torch.equal(now[name], self.w0[name])) for name in self.trained}
        return {"loss": self.loss, "norm": self.norm, "in_norm": self.in_norm, "out_norm": self.out_norm,
                "input_nonfinite": self.input_nonfinite, "grad_nonfinite": self.grad_nonfinite, "units": units,
                "moved": moved, "step_moved": self.step_moved, "trained_unchanged": bool(self.trained) and all(unchanged.values()),
                "untouched_unchanged": all(torch.equal(now[n], self.w0[n]) for n in self.untouched)
                if self.untouched else None}


def probe_path(store: dx.RunStore, run: str) -> Path:
    """Where the probe's summary of a run is kept (a hidden folder: the store does not list it as a run)."""
    return Path(store.root) / ".manipulation" / f"{run}.json"


def train(s: Scenario, seed: int, store: dx.RunStore, split: str, data: dx.DataSplit | None = None) -> str:
    """Train one scenario with one seed under a monitor and the benchmark's own :class:`Probe`; returns the run id
    (meta: scenario, split, seed) and writes the probe's summary to :func:`probe_path`."""
    data = data or load_digits(seed=0)
    torch.manual_seed(seed)
    model = s.build()
    opt = _optimizer(s, model)
    probe = Probe(model, s, opt)
    gen = torch.Generator().manual_seed(seed)
    meta = {"scenario": s.name, "split": split, "seed": seed, "expect": sorted(s.expect),
            "accept": sorted(s.accept)}
    with dx.GradientMonitor(model, store, f"{s.name} s{seed}", optimizer=opt, on_nonfinite="ignore", meta=meta,
                            flush_every=50, **monitor_options()) as mon:
        for step in range(s.steps):
            idx = torch.randint(0, len(data.y_train), (BATCH,), generator=gen)    # (B,)
            x = data.x_train[idx].clone()                                          # (B, 1, 8, 8)
            if s.nan_at == step:
                x[0, 0, 0, 0] = math.nan
            x.requires_grad_(True)                 # ∂L/∂x for the probe; the parameters' gradients are unchanged
            logits = model(x)                                                      # (B, 10)
            seen: list[torch.Tensor] = []
            logits.register_hook(lambda g: seen.append(g.detach()))
            loss = _loss(s, logits, data.y_train[idx])
            loss.backward()
            probe.after_backward(step, x, seen[0] if seen else None, loss.detach())
            mon.step(loss=loss)
            if s.zero_grad_bug:
                opt.zero_grad(set_to_none=False)
            opt.step()
            probe.after_step()
            opt.zero_grad(set_to_none=True)
        run = mon.run_id
    path = probe_path(store, str(run))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(probe.summary()))
    return str(run)


def _s(name: str, build: Callable[[], nn.Module], expect: str = "", accept: str = "", **kw) -> Scenario:
    return Scenario(name, build, frozenset(expect.split()), frozenset(accept.split()), **kw)


# Consequences a divergence may bring along: NaN/Inf after the overflow, steps far too large, dead ReLUs.
_DIVERGED = "nonfinite update_large dead_units"

TRAIN: tuple[Scenario, ...] = (
    # healthy
    _s("healthy cnn bn", lambda: cnn(16), lr=0.05),
    _s("healthy mlp adam", lambda: mlp(2, 128), optimizer="adam", lr=1e-3),
    _s("healthy mlp sgd", lambda: mlp(3, 64), lr=0.05),
    _s("healthy transformer", lambda: RowTransformer(32), optimizer="adam", lr=1e-3),
    _s("healthy cnn adam converged", lambda: cnn(16), optimizer="adam", lr=3e-3, steps=300),
    # deliberately frozen or left out of the optimizer: info at most
    _s("frozen first layers", lambda: mlp(3, 64), freeze=(0, 1)),
    _s("not in optimizer", lambda: mlp(3, 64), leave_out=(1,)),
    # vanishing
    _s("vanishing sigmoid", lambda: mlp(10, 64, "sigmoid"), "vanishing", "update_small", lr=0.1),
    _s("vanishing tanh", lambda: mlp(15, 64, "tanh", gain=0.5), "vanishing", "update_small", lr=0.05),
    _s("vanishing relu", lambda: mlp(20, 64, "relu"), "vanishing", "update_small dead_units", lr=0.05),
    # exploding
    _s("exploding lr", lambda: mlp(3, 64), "exploding", _DIVERGED, lr=3.0),
    _s("exploding init", lambda: mlp(10, 64, "relu", gain=3.0, init="he"), "exploding", _DIVERGED, lr=0.01),
    _s("exploding chaotic tanh", lambda: mlp(20, 64, "tanh", gain=4.0), "exploding", _DIVERGED + " vanishing",
       optimizer="adam", lr=1e-4),
    _s("exploding rnn", lambda: PixelRNN(32, 2.0), "exploding", _DIVERGED, lr=0.01),
    # dead units
    _s("dead half mlp", lambda: mlp(3, 64, dead_half=1), "dead_units"),
    _s("dead half cnn", lambda: cnn(16, bn=False, dead_half=True), "dead_units"),
    # non-finite
    _s("nan input", lambda: mlp(3, 64), "nonfinite", "", nan_at=60),
    _s("log of zero", lambda: mlp(3, 64), "nonfinite", "", log_softmax_temperature=60.0, lr=0.05),
    # learning rates
    _s("tiny lr", lambda: mlp(3, 64), "update_small", "vanishing", optimizer="plain-sgd", lr=1e-5),
    _s("huge lr adam", lambda: mlp(3, 128), "update_large", "dead_units exploding nonfinite", optimizer="adam",
       lr=0.3),
    # a training-loop bug
    _s("zero_grad before step", lambda: mlp(3, 64), "not_updated", zero_grad_bug=True),
    _s("zero_grad before step adam", lambda: cnn(16), "not_updated", optimizer="adam", lr=1e-3, zero_grad_bug=True),
)

HELD_OUT: tuple[Scenario, ...] = tuple(
    replace(s, seeds=(2, 3)) for s in (
        _s("healthy cnn bn w8", lambda: cnn(8, depth=4), lr=0.1),
        _s("healthy mlp adam w256", lambda: mlp(3, 256), optimizer="adam", lr=3e-4),
        _s("healthy mlp sgd d5", lambda: mlp(5, 96), lr=0.02),
        _s("healthy transformer d48", lambda: RowTransformer(48, 6), optimizer="adam", lr=5e-4),
        _s("healthy cnn no bn", lambda: cnn(12, bn=False), lr=0.05),
        _s("frozen head", lambda: mlp(2, 96), freeze=(2,)),
        _s("not in optimizer first", lambda: cnn(16), leave_out=(0,)),
        _s("vanishing sigmoid d8 w128", lambda: mlp(8, 128, "sigmoid"), "vanishing", "update_small", lr=0.2),
        _s("vanishing tanh d25", lambda: mlp(25, 48, "tanh", gain=0.6), "vanishing", "update_small", lr=0.05),
        _s("vanishing relu d30", lambda: mlp(30, 32, "relu"), "vanishing", "update_small dead_units", lr=0.02),
        _s("exploding lr 2", lambda: mlp(2, 128), "exploding", _DIVERGED, lr=2.0),
        _s("exploding init d12", lambda: mlp(12, 48, "relu", gain=2.5, init="he"), "exploding", _DIVERGED,
           lr=0.01),
        _s("exploding chaotic tanh d16", lambda: mlp(16, 96, "tanh", gain=5.0), "exploding",
           _DIVERGED + " vanishing", optimizer="adam", lr=2e-4),
        _s("exploding rnn r1.8", lambda: PixelRNN(48, 1.8), "exploding", _DIVERGED, lr=0.005),
        _s("dead half mlp w128", lambda: mlp(2, 128, dead_half=0), "dead_units", optimizer="adam", lr=1e-3),
        _s("dead half cnn w24", lambda: cnn(24, bn=False, dead_half=True), "dead_units", lr=0.03),
        _s("nan input late", lambda: cnn(8), "nonfinite", "", nan_at=120),
        _s("log of zero t40", lambda: mlp(2, 96), "nonfinite", "", log_softmax_temperature=40.0, lr=0.1),
        _s("tiny lr adam", lambda: mlp(2, 96), "update_small", "vanishing", optimizer="adam", lr=1e-6),
        _s("huge lr adam cnn", lambda: cnn(16, bn=False), "update_large", "dead_units exploding nonfinite",
           optimizer="adam", lr=0.2),
        _s("zero_grad before step cnn", lambda: cnn(8, depth=2), "not_updated", lr=0.05, zero_grad_bug=True),
    ))

HELD_OUT_2: tuple[Scenario, ...] = tuple(
    replace(s, seeds=(4, 5)) for s in (
        _s("healthy cnn w24 d2", lambda: cnn(24, depth=2), lr=0.03),
        _s("healthy mlp adam d4", lambda: mlp(4, 64), optimizer="adam", lr=2e-3),
        _s("healthy transformer d24", lambda: RowTransformer(24, 2), optimizer="adam", lr=2e-3),
        _s("healthy mlp plain sgd", lambda: mlp(2, 32), optimizer="plain-sgd", lr=0.1),
        _s("frozen first conv", lambda: cnn(16), freeze=(0,)),
        _s("not in optimizer middle", lambda: mlp(4, 48), leave_out=(2,)),
        _s("vanishing sigmoid d12", lambda: mlp(12, 48, "sigmoid"), "vanishing", "update_small", lr=0.1),
        _s("vanishing tanh d20 w96", lambda: mlp(20, 96, "tanh", gain=0.4), "vanishing", "update_small", lr=0.05),
        _s("vanishing relu d25", lambda: mlp(25, 64, "relu"), "vanishing", "update_small dead_units", lr=0.05),
        _s("exploding lr 4", lambda: mlp(3, 32), "exploding", _DIVERGED, optimizer="plain-sgd", lr=4.0),
        _s("exploding init d8", lambda: mlp(8, 96, "relu", gain=3.5, init="he"), "exploding", _DIVERGED,
           lr=0.005),
        _s("exploding chaotic tanh d24", lambda: mlp(24, 48, "tanh", gain=4.5), "exploding",
           _DIVERGED + " vanishing", optimizer="adam", lr=1e-4),
        _s("exploding rnn r2.2", lambda: PixelRNN(24, 2.2), "exploding", _DIVERGED, lr=0.02),
        _s("dead half mlp w96", lambda: mlp(3, 96, dead_half=2), "dead_units"),
        _s("dead half cnn adam", lambda: cnn(12, bn=False, dead_half=True), "dead_units", optimizer="adam",
           lr=1e-3),
        _s("nan input transformer", lambda: RowTransformer(32), "nonfinite", "", optimizer="adam", lr=1e-3,
           nan_at=90),
        _s("log of zero cnn", lambda: cnn(8), "nonfinite", "", log_softmax_temperature=80.0),
        _s("tiny lr cnn", lambda: cnn(8), "update_small", "vanishing", lr=3e-6),
        _s("huge lr adam mlp", lambda: mlp(2, 64), "update_large", "dead_units exploding nonfinite",
           optimizer="adam", lr=0.5),
        _s("zero_grad before step transformer", lambda: RowTransformer(32), "not_updated", optimizer="adam",
           lr=1e-3, zero_grad_bug=True),
    ))

HELD_OUT_3: tuple[Scenario, ...] = tuple(
    replace(s, seeds=(6, 7)) for s in (
        _s("healthy cnn bn w32", lambda: cnn(32), optimizer="adam", lr=1e-3),
        _s("healthy mlp sgd w192", lambda: mlp(3, 192), lr=0.03),
        _s("healthy transformer d40", lambda: RowTransformer(40, 4), optimizer="adam", lr=1e-3, steps=250),
        _s("healthy cnn no bn d2", lambda: cnn(16, bn=False, depth=2), optimizer="adam", lr=2e-3),
        _s("frozen two convs", lambda: cnn(16, depth=4), freeze=(0, 1)),
        _s("not in optimizer head", lambda: mlp(3, 64), leave_out=(3,)),
        _s("vanishing sigmoid d15", lambda: mlp(15, 32, "sigmoid"), "vanishing", "update_small", lr=0.05),
        _s("vanishing tanh d30", lambda: mlp(30, 64, "tanh", gain=0.5), "vanishing", "update_small",
           optimizer="adam", lr=1e-3),
        _s("vanishing relu d40", lambda: mlp(40, 48, "relu"), "vanishing", "update_small dead_units", lr=0.1),
        _s("exploding lr 1.5 cnn", lambda: cnn(16, bn=False), "exploding", _DIVERGED, lr=1.5),
        _s("exploding init d10 w48", lambda: mlp(10, 48, "relu", gain=2.8, init="he"), "exploding", _DIVERGED,
           optimizer="adam", lr=1e-3),
        _s("exploding chaotic tanh d18", lambda: mlp(18, 128, "tanh", gain=4.0), "exploding",
           _DIVERGED + " vanishing", optimizer="adam", lr=3e-4),
        _s("exploding rnn r1.9 w64", lambda: PixelRNN(64, 1.9), "exploding", _DIVERGED, lr=0.01),
        _s("dead half mlp d4", lambda: mlp(4, 64, dead_half=3), "dead_units", optimizer="adam", lr=2e-3),
        _s("dead half cnn w16 sgd", lambda: cnn(16, bn=False, dead_half=True), "dead_units", lr=0.02),
        _s("nan input first steps", lambda: mlp(3, 64), "nonfinite", "", nan_at=30),
        _s("log of zero t100 adam", lambda: mlp(3, 64), "nonfinite", "", log_softmax_temperature=100.0,
           optimizer="adam", lr=1e-3),
        _s("tiny lr plain sgd cnn", lambda: cnn(16), "update_small", "vanishing", optimizer="plain-sgd", lr=1e-5),
        _s("huge lr adam transformer", lambda: RowTransformer(32), "update_large", "dead_units exploding nonfinite",
           optimizer="adam", lr=0.3),
        _s("zero_grad before step mlp adam", lambda: mlp(2, 128), "not_updated", optimizer="adam", lr=1e-3,
           zero_grad_bug=True),
    ))

# Written (with the manipulation checks of findings.py) before any of its runs was trained; run once.
HELD_OUT_4: tuple[Scenario, ...] = tuple(
    replace(s, seeds=(8, 9)) for s in (
        _s("healthy cnn bn w20", lambda: cnn(20), lr=0.08),
        _s("healthy mlp adam w160", lambda: mlp(3, 160), optimizer="adam", lr=7e-4),
        _s("healthy mlp sgd d4 w80", lambda: mlp(4, 80), lr=0.04),
        _s("healthy transformer d56", lambda: RowTransformer(56, 7), optimizer="adam", lr=7e-4),
        _s("healthy cnn no bn w20", lambda: cnn(20, bn=False), lr=0.04),
        _s("frozen first layer d4", lambda: mlp(4, 80), freeze=(0,)),
        _s("not in optimizer second conv", lambda: cnn(20), leave_out=(1,)),
        _s("vanishing sigmoid d9 w80", lambda: mlp(9, 80, "sigmoid"), "vanishing", "update_small", lr=0.15),
        _s("vanishing tanh d22 w80", lambda: mlp(22, 80, "tanh", gain=0.45), "vanishing", "update_small",
           lr=0.04),
        _s("vanishing relu d35 w40", lambda: mlp(35, 40, "relu"), "vanishing", "update_small dead_units", lr=0.03),
        _s("exploding lr 2.5", lambda: mlp(3, 80), "exploding", _DIVERGED, lr=2.5),
        _s("exploding init d9 w64", lambda: mlp(9, 64, "relu", gain=3.2, init="he"), "exploding", _DIVERGED,
           lr=0.008),
        _s("exploding chaotic tanh d22 w80", lambda: mlp(22, 80, "tanh", gain=4.2), "exploding",
           _DIVERGED + " vanishing", optimizer="adam", lr=1.5e-4),
        _s("exploding rnn r2.0 w40", lambda: PixelRNN(40, 2.0), "exploding", _DIVERGED, lr=0.008),
        _s("dead half mlp w80", lambda: mlp(3, 80, dead_half=1), "dead_units", lr=0.04),
        _s("dead half cnn w20", lambda: cnn(20, bn=False, dead_half=True), "dead_units", lr=0.04),
        _s("nan input d4", lambda: mlp(4, 80), "nonfinite", "", nan_at=75),
        _s("log of zero t70 sgd", lambda: mlp(3, 80), "nonfinite", "", log_softmax_temperature=70.0, lr=0.08),
        _s("tiny lr d4", lambda: mlp(4, 80), "update_small", "vanishing", optimizer="plain-sgd", lr=2e-5),
        _s("huge lr adam w80", lambda: mlp(3, 80), "update_large", "dead_units exploding nonfinite",
           optimizer="adam", lr=0.4),
        _s("zero_grad before step cnn w12", lambda: cnn(12), "not_updated", lr=0.05, zero_grad_bug=True),
    ))

# Written with version 2 of the manipulation checks (findings.py), committed before any of its runs was trained;
# run once. Widths, depths, learning rates and seeds (10, 11) used in no earlier set.
HELD_OUT_5: tuple[Scenario, ...] = tuple(
    replace(s, seeds=(10, 11)) for s in (
        _s("healthy cnn bn w28", lambda: cnn(28), lr=0.06),
        _s("healthy mlp adam w112", lambda: mlp(3, 112), optimizer="adam", lr=1.5e-3),
        _s("healthy mlp sgd d6 w72", lambda: mlp(6, 72), lr=0.03),
        _s("healthy transformer d64", lambda: RowTransformer(64, 8), optimizer="adam", lr=5e-4),
        _s("healthy cnn no bn w10 d2", lambda: cnn(10, bn=False, depth=2), lr=0.06),
        _s("frozen middle layers d4 w72", lambda: mlp(4, 72), freeze=(1, 2)),
        _s("not in optimizer third conv d4", lambda: cnn(12, depth=4), leave_out=(2,)),
        _s("vanishing sigmoid d11 w56", lambda: mlp(11, 56, "sigmoid"), "vanishing", "update_small", lr=0.12),
        _s("vanishing tanh d28 w56", lambda: mlp(28, 56, "tanh", gain=0.5), "vanishing", "update_small", lr=0.03),
        _s("vanishing relu d32 w56", lambda: mlp(32, 56, "relu"), "vanishing", "update_small dead_units", lr=0.04),
        _s("exploding lr 3.5 w112", lambda: mlp(2, 112), "exploding", _DIVERGED, lr=3.5),
        _s("exploding init d11 w56", lambda: mlp(11, 56, "relu", gain=3.0, init="he"), "exploding", _DIVERGED,
           lr=0.006),
        _s("exploding chaotic tanh d20 w112", lambda: mlp(20, 112, "tanh", gain=4.6), "exploding",
           _DIVERGED + " vanishing", optimizer="adam", lr=1.2e-4),
        _s("exploding rnn r2.1 w56", lambda: PixelRNN(56, 2.1), "exploding", _DIVERGED, lr=0.006),
        _s("dead half mlp w112 first", lambda: mlp(2, 112, dead_half=0), "dead_units", lr=0.03),
        _s("dead half cnn w28 adam", lambda: cnn(28, bn=False, dead_half=True), "dead_units", optimizer="adam",
           lr=1.5e-3),
        _s("nan input cnn w12", lambda: cnn(12), "nonfinite", "", nan_at=140),
        _s("log of zero t50", lambda: mlp(3, 56), "nonfinite", "", log_softmax_temperature=50.0, lr=0.06),
        _s("tiny lr adam w56", lambda: mlp(3, 56), "update_small", "vanishing", optimizer="adam", lr=3e-6),
        _s("tiny lr plain sgd d5 w56", lambda: mlp(5, 56), "update_small", "vanishing", optimizer="plain-sgd",
           lr=1e-5),
        _s("huge lr adam w112", lambda: mlp(2, 112), "update_large", "dead_units exploding nonfinite",
           optimizer="adam", lr=0.25),
        _s("huge lr adam d5 w48", lambda: mlp(5, 48), "update_large", "dead_units exploding nonfinite",
           optimizer="adam", lr=0.35),
        _s("zero_grad before step plain sgd d4", lambda: mlp(4, 56), "not_updated", optimizer="plain-sgd",
           lr=0.05, zero_grad_bug=True),
    ))

# Written with version 3 of the manipulation checks (findings.py), committed before any of its runs was trained;
# run once. Widths, depths, learning rates and seeds (12, 13) used in no earlier set.
HELD_OUT_6: tuple[Scenario, ...] = tuple(
    replace(s, seeds=(12, 13)) for s in (
        _s("healthy cnn bn w24 d4", lambda: cnn(24, depth=4), lr=0.05),
        _s("healthy mlp adam w144", lambda: mlp(3, 144), optimizer="adam", lr=1.2e-3),
        _s("healthy mlp sgd d4 w112", lambda: mlp(4, 112), lr=0.03),
        _s("healthy transformer d36", lambda: RowTransformer(36, 4), optimizer="adam", lr=8e-4),
        _s("healthy cnn no bn w14", lambda: cnn(14, bn=False), lr=0.05),
        _s("frozen penultimate layer d4 w96", lambda: mlp(4, 96), freeze=(3,)),
        _s("not in optimizer first layer w112", lambda: mlp(3, 112), leave_out=(0,)),
        _s("vanishing sigmoid d10 w96", lambda: mlp(10, 96, "sigmoid"), "vanishing", "update_small", lr=0.15),
        _s("vanishing tanh d26 w72", lambda: mlp(26, 72, "tanh", gain=0.5), "vanishing", "update_small", lr=0.04),
        _s("vanishing relu d36 w64", lambda: mlp(36, 64, "relu"), "vanishing", "update_small dead_units", lr=0.05),
        _s("exploding lr 2.8 w96", lambda: mlp(3, 96), "exploding", _DIVERGED, lr=2.8),
        _s("exploding init d10 w72", lambda: mlp(10, 72, "relu", gain=3.0, init="he"), "exploding", _DIVERGED,
           lr=0.008),
        _s("exploding chaotic tanh d21 w96", lambda: mlp(21, 96, "tanh", gain=4.4), "exploding",
           _DIVERGED + " vanishing", optimizer="adam", lr=1.3e-4),
        _s("exploding rnn r2.05 w48", lambda: PixelRNN(48, 2.05), "exploding", _DIVERGED, lr=0.008),
        _s("dead half mlp w144 third", lambda: mlp(3, 144, dead_half=2), "dead_units", lr=0.04),
        _s("dead half cnn w18 sgd", lambda: cnn(18, bn=False, dead_half=True), "dead_units", lr=0.03),
        _s("nan input mlp w96", lambda: mlp(3, 96), "nonfinite", "", nan_at=100),
        _s("log of zero t55 d4", lambda: mlp(4, 72), "nonfinite", "", log_softmax_temperature=55.0, lr=0.07),
        _s("tiny lr adam d4 w72", lambda: mlp(4, 72), "update_small", "vanishing", optimizer="adam", lr=2e-6),
        _s("tiny lr plain sgd w144", lambda: mlp(3, 144), "update_small", "vanishing", optimizer="plain-sgd",
           lr=1.5e-5),
        _s("huge lr adam w144", lambda: mlp(2, 144), "update_large", "dead_units exploding nonfinite",
           optimizer="adam", lr=0.3),
        _s("huge lr adam d4 w64", lambda: mlp(4, 64), "update_large", "dead_units exploding nonfinite",
           optimizer="adam", lr=0.2),
        _s("zero_grad before step adam w72", lambda: mlp(3, 72), "not_updated", optimizer="adam", lr=1e-3,
           zero_grad_bug=True),
    ))
