"""GradientMonitor against independent oracles: p.grad, captured output gradients, autograd.grad."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import diagnostics as dx
from diagnostics.recording.stats import LAYER_COLUMNS, PARAM_COLUMNS, STEP_COLUMNS

from tests.conftest import hook_state


def small_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def train(model, mon, steps=2, batch=(4, 3, 8, 8), classes=4, opt=None, metrics=None):
    for _ in range(steps):
        x = torch.randn(*batch)
        y = torch.randint(0, classes, (batch[0],))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss=loss, **(metrics or {}))
        if opt is not None:
            opt.step()
        model.zero_grad()


def capture_output_grads(model):
    """Independent capture of every leaf module's output gradients (full tensors, float64)."""
    grads: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue

        def fwd(mod, inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda g: grads[name].append(g.detach().double().clone()))
        handles.append(module.register_forward_hook(fwd))
    return grads, handles


# --- schema -------------------------------------------------------------------------------------------------

def test_frames_have_the_documented_columns(store):
    model = small_cnn()
    with dx.GradientMonitor(model, store=store, run_name="schema") as mon:
        train(model, mon, metrics={"accuracy": 0.5})
    frame, steps, params = mon.frame(), mon.step_frame(), mon.param_frame()
    assert set(LAYER_COLUMNS) <= set(frame.columns)
    assert {"loss", "grad_norm_total", "accuracy"} <= set(frame.columns)
    assert set(STEP_COLUMNS) | {"accuracy"} <= set(steps.columns)
    assert set(PARAM_COLUMNS) <= set(params.columns)
    assert len(frame) == 2 * 8 and list(steps["step"]) == [0, 1]
    assert (frame["run"] == mon.run_id).all()
    assert mon.run_id.startswith("schema-")
    assert store.meta(mon.run_id)["name"] == "schema"


def test_layer_without_weight_has_nan_weight_columns():
    model = small_cnn()
    with dx.GradientMonitor(model) as mon:
        train(model, mon, steps=1)
    relu = mon.frame().set_index("layer").loc["2"]
    assert math.isnan(relu["weight_grad_norm"]) and math.isnan(relu["weight_norm"])
    assert relu["act_grad_norm"] > 0


# --- oracles on real architectures --------------------------------------------------------------------------

ZOO = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), (2, 3, 32, 32)),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=5), (2, 3, 32, 32)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=5), (2, 3, 32, 32)),
    "vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=5), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("arch", list(ZOO), ids=list(ZOO))
def test_statistics_match_independent_oracles_on_torchvision_models(arch, reductions):
    factory, shape = ZOO[arch]
    model = factory()
    before = hook_state(model)
    oracle, handles = capture_output_grads(model)
    x, y = torch.randn(*shape), torch.tensor([1, 3])
    with dx.GradientMonitor(model) as mon:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads = {n: p.grad.detach().double().clone() for n, p in model.named_parameters() if p.grad is not None}
        mon.step(loss=loss)
    for h in handles:
        h.remove()
    frame = mon.frame().set_index("layer")
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    checked_weights = checked_acts = 0
    for layer, row in frame.iterrows():
        weight = getattr(modules[layer], "weight", None)
        if isinstance(weight, nn.Parameter) and f"{layer}.weight" in grads:
            g = grads[f"{layer}.weight"]
            torch.testing.assert_close(row["weight_grad_norm"], g.norm().item(), rtol=1e-4, atol=1e-12)
            torch.testing.assert_close(row["weight_grad_max_abs"], g.abs().max().item(), rtol=1e-5, atol=1e-12)
            torch.testing.assert_close(row["weight_grad_mean_abs"], g.abs().mean().item(), rtol=1e-4, atol=1e-12)
            torch.testing.assert_close(row["weight_norm"], params[f"{layer}.weight"].double().norm().item(),
                                       rtol=1e-4, atol=0)
            checked_weights += 1
        if oracle.get(layer):
            pooled = torch.cat([g.reshape(-1) for g in oracle[layer]])
            torch.testing.assert_close(row["act_grad_norm"], pooled.norm().item(), rtol=1e-4, atol=1e-12)
            assert row["calls"] == len(oracle[layer])
            checked_acts += 1
    assert checked_weights >= 5 and checked_acts >= 5
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    torch.testing.assert_close(mon.step_frame()["grad_norm_total"].iloc[0], total, rtol=1e-4, atol=0)
    assert hook_state(model) == before


def test_activation_gradients_equal_autograd_grad(reductions):
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(7, 6)
    h1 = model[0](x)
    h2 = model[1](h1)
    out = model[2](h2)
    expected = torch.autograd.grad(out.pow(2).sum(), [h1, h2, out])    # before any hook exists
    with dx.GradientMonitor(model) as mon:
        loss = model(x).pow(2).sum()
        loss.backward()
        mon.step(loss=loss)
    frame = mon.frame().set_index("layer")
    for layer, g in zip(["0", "1", "2"], expected):
        torch.testing.assert_close(frame.loc[layer, "act_grad_norm"], g.double().norm().item(), rtol=1e-5, atol=0)
        torch.testing.assert_close(frame.loc[layer, "act_grad_mean_abs"], g.double().abs().mean().item(),
                                   rtol=1e-5, atol=0)
    acts = [h1, h2, out]
    for layer, a in zip(["0", "1", "2"], acts):
        a = a.detach().double()
        torch.testing.assert_close(frame.loc[layer, "act_mean"], a.mean().item(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(frame.loc[layer, "act_std"], a.std(unbiased=False).item(), rtol=1e-5, atol=1e-7)


def test_statistics_agree_with_float64_on_a_large_layer(reductions):
    torch.manual_seed(1)
    layer = nn.Linear(4096, 2500)            # 10.2 M weights
    x = torch.randn(64, 4096)
    with dx.GradientMonitor(layer) as mon:
        out = layer(x)
        loss = (out * torch.linspace(0.5, 1.5, 2500)).sum() / 1000
        loss.backward()
        mon.step(loss=loss)
    row = mon.frame().iloc[0]
    g = layer.weight.grad.double()
    a = out.detach().double()
    expected = {
        "weight_grad_norm": g.norm(), "weight_grad_mean_abs": g.abs().mean(), "weight_grad_max_abs": g.abs().max(),
        "weight_norm": layer.weight.detach().double().norm(), "act_mean": a.mean(),
        "act_std": a.std(unbiased=False), "bias_grad_norm": layer.bias.grad.double().norm(),
    }
    for column, value in expected.items():
        rel = abs(row[column] - value.item()) / abs(value.item())
        assert rel < 1e-4, (column, rel)


# --- hooks lifecycle ----------------------------------------------------------------------------------------

def test_hooks_removed_after_normal_exit_and_after_an_exception(store):
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = hook_state(model)
    opt_hooks = (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks))
    with dx.GradientMonitor(model, store=store, optimizer=opt) as mon:
        train(model, mon, opt=opt)
    assert hook_state(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with dx.GradientMonitor(model, store=store, optimizer=opt) as mon2:
            train(model, mon2, steps=1, opt=opt)
            raise RuntimeError("boom")
    assert hook_state(model) == before
    assert (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)) == opt_hooks
    assert store.meta(mon.run_id)["status"] == "finished"
    meta2 = store.meta(mon2.run_id)
    assert meta2["status"] == "crashed"
    assert "boom" in meta2["error"]
    assert len(store.frame(mon2.run_id)) == 8          # the recorded step survived the exception


def test_attaching_two_monitors_to_one_model_is_refused():
    model = small_cnn()
    with dx.GradientMonitor(model):
        second = dx.GradientMonitor(model[0])
        with pytest.raises(dx.MonitorError, match="already has a GradientMonitor"):
            second.attach()
    with dx.GradientMonitor(model):          # free again afterwards
        pass


def test_graph_built_inside_the_block_and_backpropagated_after_it_is_ignored():
    model = small_cnn()
    with dx.GradientMonitor(model) as mon:
        loss = model(torch.randn(2, 3, 8, 8)).sum()
    loss.backward()                            # hooks on that graph are disabled, nothing breaks
    assert mon.frame().empty
    with pytest.raises(dx.MonitorError, match="outside"):
        mon.step()


def test_inplace_relu_gradient_is_the_gradient_before_the_inplace_op(reductions):
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    x = torch.randn(5, 4)
    with dx.GradientMonitor(model) as mon:
        h = model[0](x)
        h_saved = h.detach().clone()
        r = model[1](h)
        out = model[2](r)
        loss = out.pow(2).sum()
        loss.backward()
        mon.step(loss=loss)
    frame = mon.frame().set_index("layer")
    w2 = model[2].weight.detach().double()
    g_out = 2 * out.detach().double()
    g_relu = g_out @ w2                                  # (5, 6)
    g_lin = g_relu * (h_saved.double() > 0)
    torch.testing.assert_close(frame.loc["1", "act_grad_norm"], g_relu.norm().item(), rtol=1e-5, atol=0)
    torch.testing.assert_close(frame.loc["0", "act_grad_norm"], g_lin.norm().item(), rtol=1e-5, atol=0)
    torch.testing.assert_close(frame.loc["0", "act_mean"], h_saved.double().mean().item(), rtol=1e-5, atol=1e-7)
    expected_zero = (h_saved.clamp(min=0) == 0).double().mean().item()
    assert frame.loc["1", "act_zero_frac"] == pytest.approx(expected_zero)


class TwiceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.shared(torch.tanh(self.shared(x))))


def test_a_module_called_twice_pools_both_calls(reductions):
    model = TwiceNet()
    oracle, handles = capture_output_grads(model)
    with dx.GradientMonitor(model) as mon:
        loss = model(torch.randn(3, 4)).pow(2).sum()
        loss.backward()
        mon.step(loss=loss)
    for h in handles:
        h.remove()
    row = mon.frame().set_index("layer").loc["shared"]
    assert row["calls"] == 2
    pooled = torch.cat([g.reshape(-1) for g in oracle["shared"]])
    torch.testing.assert_close(row["act_grad_norm"], pooled.norm().item(), rtol=1e-6, atol=0)
    torch.testing.assert_close(row["act_grad_mean_abs"], pooled.abs().mean().item(), rtol=1e-6, atol=0)
    assert mon.frame().set_index("layer").loc["shared", "depth"] == 0


class Reordered(nn.Module):
    """Defined last-to-first: depth must follow execution, not definition."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Linear(3, 2)
        self.early = nn.Linear(4, 3)

    def forward(self, x):
        return self.late(self.early(x))


def test_depth_is_the_order_layers_ran_in():
    model = Reordered()
    with dx.GradientMonitor(model) as mon:
        train_simple(model, mon, torch.randn(2, 4))
    frame = mon.frame()
    assert list(frame.sort_values("depth")["layer"]) == ["early", "late"]


def train_simple(model, mon, x):
    out = model(x)
    loss = (out[0] if isinstance(out, tuple) else out["logits"] if isinstance(out, dict) else out).pow(2).sum()
    loss.backward()
    mon.step(loss=loss)
    model.zero_grad()


# --- non-finite values --------------------------------------------------------------------------------------

class Poison(nn.Module):
    """Returns its input with a NaN in the forward pass, or passes a NaN gradient in the backward pass."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def forward(self, x):
        if self.where == "forward":
            return x + torch.where(torch.arange(x.shape[-1]) == 0, torch.tensor(float("nan")), torch.tensor(0.0))
        if self.where == "backward":
            return _NanGrad.apply(x)
        return x


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * torch.tensor(float("nan"))


@pytest.mark.parametrize("phase", ["forward", "backward"])
def test_a_nan_is_reported_at_the_layer_where_it_appeared(phase, store, reductions):
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), Poison(phase), nn.Linear(4, 4), nn.Linear(4, 1))
    with pytest.warns(RuntimeWarning, match=f"{phase} pass first at layer '2'|{phase} pass first at layer"):
        with dx.GradientMonitor(model, store=store) as mon:
            train_simple(model, mon, torch.randn(3, 4))
    steps = mon.step_frame()
    if phase == "forward":
        assert steps["nonfinite_forward_layer"].iloc[0] == "2"
    else:
        assert steps["nonfinite_forward_layer"].iloc[0] == ""
        # Backward runs last layer first: the NaN is created by layer 2's backward, so the first layer whose
        # output gradient is non-finite is the one feeding it, layer 1.
        assert steps["nonfinite_backward_layer"].iloc[0] == "1"
    frame = mon.frame().set_index("layer")
    assert frame.loc["0", "nonfinite"] > 0
    assert store.meta(mon.run_id)["first_nonfinite"]["step"] == 0


def test_on_nonfinite_raise_stops_with_the_layer_and_step(store, reductions):
    model = nn.Sequential(nn.Linear(4, 4), Poison("forward"), nn.Linear(4, 1))
    with pytest.raises(dx.NonFiniteGradientError, match="step 1.*layer '1'") as info:
        with dx.GradientMonitor(model, store=store, on_nonfinite="raise") as mon:
            model[1].where = "none"
            train_simple(model, mon, torch.randn(2, 4))
            model[1].where = "forward"
            train_simple(model, mon, torch.randn(2, 4))
    assert (info.value.step, info.value.layer, info.value.phase) == (1, "1", "forward")
    assert list(store.step_frame(mon.run_id)["step"]) == [0, 1]     # the bad step was stored first


# --- what gets recorded -------------------------------------------------------------------------------------

def test_every_n_records_only_every_nth_step():
    model = small_cnn()
    with dx.GradientMonitor(model, every=3) as mon:
        train(model, mon, steps=7)
    assert sorted(mon.step_frame()["step"]) == [0, 3, 6]
    assert mon.steps_seen == 7


def test_layer_filter_by_pattern_and_type():
    model = small_cnn()
    with dx.GradientMonitor(model, layers=["0", "3*"]) as mon:
        train(model, mon, steps=1)
    assert set(mon.frame()["layer"]) == {"0", "3"}
    with dx.GradientMonitor(model, layer_types=(nn.Conv2d, nn.Linear)) as mon2:
        train(model, mon2, steps=1)
    assert set(mon2.frame()["type"]) == {"Conv2d", "Linear"}


def test_no_grad_and_eval_passes_without_backward_are_ignored():
    model = small_cnn()
    x = torch.randn(4, 3, 8, 8)
    with dx.GradientMonitor(model) as reference:
        train_simple(model, reference, x)
    with dx.GradientMonitor(model) as mon:
        with torch.no_grad():
            model(torch.randn(4, 3, 8, 8) * 100)
        model.eval()
        model(torch.randn(4, 3, 8, 8) * 100)            # eval pass with grad enabled, never backpropagated
        model.train()
        train_simple(model, mon, x)
    a = reference.frame().set_index("layer")
    b = mon.frame().set_index("layer")
    np.testing.assert_allclose(b["act_mean"].to_numpy(), a["act_mean"].to_numpy(), rtol=1e-5, atol=1e-7)
    assert (b["calls"] == 1).all()


def test_frozen_layers_have_no_weight_gradient_but_keep_activation_gradients(reductions):
    model = small_cnn()
    for p in model[0].parameters():
        p.requires_grad_(False)
    with dx.GradientMonitor(model) as mon:
        train(model, mon, steps=1)
    frame = mon.frame().set_index("layer")
    assert math.isnan(frame.loc["0", "weight_grad_norm"])
    assert frame.loc["0", "weight_norm"] > 0
    assert frame.loc["3", "weight_grad_norm"] > 0
    assert "0.weight" not in set(mon.param_frame()["param"])


class TupleDictNet(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Linear(4, 4)
        self.rnn = nn.GRU(4, 3, batch_first=True)      # a leaf whose output is a tuple

    def forward(self, x):
        out, h = self.rnn(self.body(x).unsqueeze(1))
        return (out[:, 0], h) if self.kind == "tuple" else {"logits": out[:, 0], "hidden": h}


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_models_returning_tuples_or_dicts(kind, reductions):
    model = TupleDictNet(kind)
    with dx.GradientMonitor(model) as mon:
        train_simple(model, mon, torch.randn(2, 4))
    frame = mon.frame().set_index("layer")
    assert frame.loc["rnn", "act_grad_norm"] > 0 and frame.loc["body", "weight_grad_norm"] > 0
    assert {"rnn.weight_ih_l0", "rnn.weight_hh_l0"} <= set(mon.param_frame()["param"])


def test_every_parameter_with_a_gradient_is_in_the_param_frame(reductions):
    class WithAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.scale = nn.Parameter(torch.ones(8))        # a parameter held by a container

        def forward(self, x):
            return self.attn(x, x, x)[0] * self.scale

    model = WithAttention()
    with dx.GradientMonitor(model) as mon:
        loss = model(torch.randn(2, 5, 8)).pow(2).sum()
        loss.backward()
        mon.step(loss=loss)
    params = mon.param_frame().set_index("param")
    expected = {n for n, p in model.named_parameters() if p.grad is not None}
    assert set(params.index) == expected
    assert "attn.in_proj_weight" in expected and "scale" in expected
    torch.testing.assert_close(params.loc["attn.in_proj_weight", "grad_norm"],
                               model.attn.in_proj_weight.grad.double().norm().item(), rtol=1e-5, atol=0)
    assert params.loc["scale", "layer"] == "WithAttention"


def test_gradient_accumulation_pools_micro_batches(reductions):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    oracle, handles = capture_output_grads(model)
    with dx.GradientMonitor(model) as mon:
        for _ in range(3):
            model(torch.randn(2, 3)).sum().backward()
        grad = model[0].weight.grad.double().clone()
        mon.step()
    for h in handles:
        h.remove()
    row = mon.frame().set_index("layer").loc["0"]
    assert row["calls"] == 3
    torch.testing.assert_close(row["weight_grad_norm"], grad.norm().item(), rtol=1e-6, atol=0)
    pooled = torch.cat([g.reshape(-1) for g in oracle["0"]])
    torch.testing.assert_close(row["act_grad_norm"], pooled.norm().item(), rtol=1e-6, atol=0)


def test_update_ratio_is_the_size_of_the_optimizer_step(store, reductions):
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    with dx.GradientMonitor(model, store=store, optimizer=opt) as mon:
        for _ in range(3):
            loss = model(torch.randn(4, 3, 8, 8)).pow(2).mean()
            loss.backward()
            mon.step(loss=loss)
            before = model[0].weight.detach().double().clone()
            opt.step()
            history.append((model[0].weight.detach().double() - before).norm().item() / before.norm().item())
            opt.zero_grad()
    got = store.frame(mon.run_id, layers=["0"])["update_ratio"].to_numpy()
    np.testing.assert_allclose(got, history, rtol=1e-4)
    with dx.GradientMonitor(model) as no_opt:
        train(model, no_opt, steps=1)
    assert no_opt.frame()["update_ratio"].isna().all()


WEIGHT_GRAD_COLUMNS = ["weight_grad_norm", "weight_grad_mean_abs", "weight_grad_max_abs", "bias_grad_norm"]
ACTIVATION_COLUMNS = ["act_grad_norm", "act_grad_mean_abs", "act_grad_max_abs", "act_mean", "act_std",
                      "act_zero_frac"]


def run_twice(options):
    """The same two steps recorded by a full monitor and by one with ``options``: (full frame, reduced frame)."""
    frames = []
    for opts in ({}, options):
        torch.manual_seed(5)
        model = small_cnn()
        with dx.GradientMonitor(model, **opts) as mon:
            train(model, mon, steps=2)
        frames.append(mon.frame().set_index(["step", "layer"]).sort_index())
    return frames


def test_weight_statistics_alone_skip_the_activation_hooks_and_keep_the_rest():
    full, reduced = run_twice({"activations": False})
    assert list(reduced.index) == list(full.index)             # same layers, same depth order
    assert (reduced["depth"] == full["depth"]).all()
    np.testing.assert_allclose(reduced[WEIGHT_GRAD_COLUMNS + ["weight_norm"]].to_numpy(),
                               full[WEIGHT_GRAD_COLUMNS + ["weight_norm"]].to_numpy(), rtol=1e-6)
    assert reduced[ACTIVATION_COLUMNS].isna().all().all()
    assert full[["act_grad_norm", "act_mean"]].notna().all().all()


def test_weight_norms_can_be_left_out(reductions):
    full, reduced = run_twice({"weight_norms": False})
    assert reduced["weight_norm"].isna().all() and full["weight_norm"].notna().any()
    kept = WEIGHT_GRAD_COLUMNS + ACTIVATION_COLUMNS
    np.testing.assert_allclose(reduced[kept].to_numpy(), full[kept].to_numpy(), rtol=1e-6)


def test_an_optimizer_keeps_weight_norms_for_the_update_ratio(store):
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with dx.GradientMonitor(model, store=store, optimizer=opt, weight_norms=False) as mon:
        train(model, mon, steps=2, opt=opt)
    frame = store.frame(mon.run_id, layers=["0"])
    assert frame["weight_norm"].notna().all() and frame["update_ratio"].notna().all()
    assert store.meta(mon.run_id)["weight_norms"] is True


@pytest.mark.parametrize("unscale_first", [False, True], ids=["scaled-grads", "after-unscale_"])
def test_amp_gradients_are_reported_unscaled(unscale_first, reductions):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    oracle, handles = capture_output_grads(model)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    true_w = model[0].weight.grad.double().norm().item()
    true_act = {k: torch.cat([g.reshape(-1) for g in v]).norm().item() for k, v in oracle.items()}
    for h in handles:
        h.remove()
    model.zero_grad()

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with dx.GradientMonitor(model, optimizer=opt, scaler=scaler) as mon:
        loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if unscale_first:
            scaler.unscale_(opt)
        mon.step(loss=loss)
        scaler.step(opt)
        scaler.update()
    frame = mon.frame().set_index("layer")
    torch.testing.assert_close(frame.loc["0", "weight_grad_norm"], true_w, rtol=1e-5, atol=0)
    for layer, value in true_act.items():
        torch.testing.assert_close(frame.loc[layer, "act_grad_norm"], value, rtol=1e-5, atol=0)
    assert mon.step_frame()["grad_scale"].iloc[0] == 1024.0


def test_histograms_count_every_element(store, reductions):
    model = small_cnn()
    with dx.GradientMonitor(model, store=store, histogram_every=2) as mon:
        train(model, mon, steps=3)
    hist = mon.histogram_frame()
    assert set(hist["step"]) == {0, 2}
    assert set(hist["kind"]) == {"act_grad", "weight_grad"}
    conv = hist[(hist["layer"] == "0") & (hist["kind"] == "weight_grad")].iloc[0]
    assert sum(conv["counts"]) + conv["zeros"] + conv["nonfinite"] == model[0].weight.numel()
    act = hist[(hist["layer"] == "1") & (hist["kind"] == "act_grad")].iloc[0]
    assert sum(act["counts"]) + act["zeros"] == 4 * 8 * 8 * 8
    assert act["zeros"] > 0              # the ReLU after the BN layer kills gradients: counted, not dropped
    assert len(store.meta(mon.run_id)["hist_edges"]) == len(conv["counts"]) + 1


def test_kernel_snapshots_hold_grad_weight_and_update(store):
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with dx.GradientMonitor(model, store=store, optimizer=opt, kernels="auto", kernel_every=2) as mon:
        x = torch.randn(4, 3, 8, 8)
        for step in range(4):
            loss = model(x).pow(2).mean()
            loss.backward()
            if step == 2:
                expected_grad = model[3].weight.grad.detach().clone()
                expected_weight = model[3].weight.detach().clone()
            mon.step(loss=loss)
            opt.step()
            opt.zero_grad()
            if step == 2:
                expected_update = model[3].weight.detach() - expected_weight
    assert store.kernel_steps(mon.run_id) == [0, 2]
    snap = store.kernel_snapshot(mon.run_id, 2)
    assert set(snap.arrays) == {"0", "3"}
    np.testing.assert_allclose(snap.arrays["3"]["grad"], expected_grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(snap.arrays["3"]["weight"], expected_weight.numpy(), rtol=1e-6)
    np.testing.assert_allclose(snap.arrays["3"]["update"], expected_update.numpy(), rtol=1e-5, atol=1e-8)


def test_kernel_snapshots_stay_within_their_budget(store):
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Flatten(), nn.LazyLinear(1))
    model(torch.randn(1, 3, 6, 6))
    one = 64 * 3 * 3 * 3 * 4 * 2                     # grad + weight, float32
    with dx.GradientMonitor(model, store=store, kernels=["0"], kernel_every=1,
                            kernel_max_mb=4.5 * one / 2**20) as mon:
        for _ in range(16):
            model(torch.randn(2, 3, 6, 6)).sum().backward()
            mon.step()
            model.zero_grad()
    steps = store.kernel_steps(mon.run_id)
    assert len(steps) <= 4 and steps[0] == 0 and steps[-1] >= 8   # thinned, still spanning the run
    assert store.meta(mon.run_id)["kernel_every"] > 1


def test_bad_arguments_are_refused_with_clear_messages():
    with pytest.raises(dx.MonitorError, match="nn.Module"):
        dx.GradientMonitor("not a model")
    with pytest.raises(dx.MonitorError, match="every"):
        dx.GradientMonitor(nn.Linear(1, 1), every=0)
    with pytest.raises(dx.MonitorError, match="on_nonfinite"):
        dx.GradientMonitor(nn.Linear(1, 1), on_nonfinite="explode")
    model = nn.Linear(2, 1)
    with dx.GradientMonitor(model) as mon:
        model(torch.randn(1, 2)).sum().backward()
        with pytest.raises(dx.MonitorError, match="must be a scalar"):
            mon.step(accuracy=torch.ones(3))


def test_warnings_do_not_fire_on_a_healthy_run():
    model = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with dx.GradientMonitor(model) as mon:
            train(model, mon, steps=2)
