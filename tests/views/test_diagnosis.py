"""Every finding rule on synthetic runs: the fault it names, the ones it must not name, and frames with NaN,
zeros, one step, constant values and missing columns."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from diagnostics.views.diagnosis import Finding, Thresholds, diagnose
from diagnostics.views.diagnosis.evidence import from_frames

#: The synthetic network: (name, type), in forward order.
LAYERS = (("in", "Linear"), ("act", "ReLU"), ("mid", "Linear"), ("norm", "BatchNorm1d"), ("act2", "ReLU"),
          ("out", "Linear"))
WEIGHTS = {"in", "mid", "norm", "out"}


def healthy(n: int = 80) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run that learns: gradients of one order across depth, updates ~1e-3, a falling loss, few dead units."""
    rows = []
    for step in range(n):
        for depth, (layer, kind) in enumerate(LAYERS):
            weights = layer in WEIGHTS
            rows.append({
                "step": step, "layer": layer, "type": kind, "kind": "leaf", "depth": depth,
                "weight_grad_norm": 0.1 if weights else np.nan, "weight_norm": 5.0 if weights else np.nan,
                "update_ratio": 1e-3 if weights else np.nan, "in_optimizer": True if weights else None,
                "act_grad_norm": {"in": 0.5, "mid": 0.7, "out": 1.0}.get(layer, 0.6),
                "act_zero_frac": 0.5 if kind == "ReLU" else 0.0,
                "dead_units": 0.05 if kind == "ReLU" else 0.0, "units": 16,
            })
    layers = pd.DataFrame(rows)
    steps = pd.DataFrame({"step": np.arange(n), "loss": np.linspace(2.3, 0.3, n), "grad_norm_total": 1.0,
                          "grad_scale": 1.0, "nonfinite_forward_layer": "", "nonfinite_backward_layer": "",
                          "input_nonfinite": 0.0, "loss_nonfinite": False})
    return layers, steps


def run(layers: pd.DataFrame, steps: pd.DataFrame, t: Thresholds | None = None) -> list[Finding]:
    return diagnose(from_frames("r", "'demo'", layers, steps), t)


def at(frame: pd.DataFrame, layer: str, column: str, value, steps=slice(None)) -> pd.DataFrame:
    """Set ``column`` of ``layer`` (on the given step slice) to ``value``."""
    frame = frame.copy()
    chosen = frame["step"].isin(np.arange(frame["step"].max() + 1)[steps])
    frame.loc[(frame["layer"] == layer) & chosen, column] = value
    return frame


def kinds(found: list[Finding], above_info: bool = True) -> set[str]:
    return {f.kind for f in found if f.severity != "info" or not above_info}


def test_a_healthy_run_has_no_finding():
    assert run(*healthy()) == []


# --- vanishing and exploding across depth ------------------------------------------------------------------

def test_vanishing_is_judged_on_output_gradients_and_names_the_layers_and_a_fix():
    layers, steps = healthy()
    found = run(at(layers, "in", "act_grad_norm", 1e-6), steps)
    assert kinds(found) == {"vanishing"}
    f = found[0]
    assert (f.severity, f.detail, f.layers, f.steps) == ("problem", "depth", ("in", "out"), (30, 79))
    assert "1e+06× smaller" in f.message and "'demo'" in f.message and "output gradient" in f.message
    assert "He (Kaiming)" in f.fix and f.evidence["median_ratio"] == pytest.approx(1e-6)


def test_a_flat_weight_gradient_profile_does_not_hide_vanishing_output_gradients():
    layers, steps = healthy()        # weight gradients equal in every layer (Glorot-style), outputs vanish
    assert "vanishing" in kinds(run(at(layers, "in", "act_grad_norm", 1e-5), steps))


def test_without_output_gradients_vanishing_falls_back_to_weight_gradients_and_says_so():
    layers, steps = healthy()
    layers["act_grad_norm"] = np.nan                           # activations=False
    found = run(at(layers, "in", "weight_grad_norm", 1e-7), steps)
    assert kinds(found) == {"vanishing"}
    assert "activations=False" in found[0].message and "weight gradient" in found[0].message


def test_the_threshold_and_the_share_of_the_window_decide():
    layers, steps = healthy()
    vanishing = at(layers, "in", "act_grad_norm", 1e-6)
    assert run(vanishing, steps, Thresholds(vanishing_ratio=1e-7)) == []
    noisy = at(vanishing, "in", "act_grad_norm", 0.5, steps=slice(0, None, 4))   # 1 step in 4 healthy: 75 %
    assert kinds(run(noisy, steps)) == set()
    assert kinds(run(noisy, steps, Thresholds(persist=0.7))) == {"vanishing"}


def test_vanishing_that_ended_is_a_warning_that_says_so():
    layers, steps = healthy(120)
    found = run(at(layers, "in", "act_grad_norm", 1e-6, steps=slice(0, 50)), steps)
    assert [(f.kind, f.severity) for f in found] == [("vanishing", "warning")]
    assert "no longer holds" in found[0].message


def test_exploding_across_depth():
    layers, steps = healthy()
    found = run(at(layers, "in", "act_grad_norm", 1e3), steps)
    assert [(f.kind, f.detail, f.severity) for f in found] == [("exploding", "depth", "problem")]
    assert "1e+03× larger" in found[0].message and "clip" in found[0].fix


def test_an_exactly_zero_first_layer_gradient_is_no_vanishing_and_no_division_error():
    layers, steps = healthy()
    assert "vanishing" not in kinds(run(at(layers, "in", "act_grad_norm", 0.0), steps))


def test_normalisation_layers_are_not_the_first_or_last_layer_of_the_depth_rule():
    layers, steps = healthy()
    layers = at(layers, "norm", "act_grad_norm", 1e-9)
    assert run(layers, steps) == []


# --- exploding total norm -------------------------------------------------------------------------------------

def diverging(n: int = 80, inf_at: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    layers, steps = healthy(n)
    norm = np.ones(n)
    norm[30:inf_at] = 10.0 ** np.arange(1, inf_at - 29)                  # 10, 100, ... in ten steps
    norm[inf_at], norm[inf_at + 1:] = np.inf, np.nan
    steps["grad_norm_total"] = norm
    steps.loc[inf_at + 1:, "loss"] = np.nan
    steps.loc[inf_at + 1:, "nonfinite_backward_layer"] = "out"
    return layers, steps


def test_a_divergence_is_found_at_its_step_and_listed_before_the_nan_it_caused():
    found = run(*diverging())
    assert [f.kind for f in found if f.severity == "problem"] == ["exploding", "nonfinite"]
    exploding, nan = found[0], found[1]
    assert (exploding.detail, exploding.steps[0]) == ("divergence", 32)          # 1e3 × the first steps
    assert "diverged at step 32" in exploding.message
    assert "follows the exploding gradients from step 32" in nan.message


def test_inf_before_nan_without_a_growth_is_an_overflow():
    layers, steps = healthy()
    steps.loc[50, "grad_norm_total"] = np.inf
    steps.loc[51:, "grad_norm_total"] = np.nan
    found = run(layers, steps)
    assert ("exploding", "overflow") in {(f.kind, f.detail) for f in found}


def test_a_gradient_far_larger_than_its_weights_just_before_nan_is_exploding():
    layers, steps = healthy(20)
    layers = at(layers, "in", "weight_grad_norm", 5e3, steps=slice(0, 1))       # 1e3 × ‖W‖ at step 0
    steps.loc[1:, ["grad_norm_total", "loss"]] = np.nan
    steps.loc[1:, "nonfinite_forward_layer"] = "in"
    found = run(layers, steps)
    assert [(f.kind, f.detail) for f in found][:2] == [("exploding", "level"), ("nonfinite", "forward")]


def test_a_loss_rising_a_hundredfold_is_a_divergence():
    layers, steps = healthy()
    steps.loc[40:45, "loss"] = [10.0, 50.0, 300.0, 90.0, 20.0, 5.0]         # 2.3 -> 300 and back
    found = run(layers, steps)
    assert [(f.kind, f.detail, f.steps[0]) for f in found] == [("exploding", "loss", 42)]
    assert "the loss rose from 2.3 to 3e+02 at step 42" in found[0].message


def test_no_advice_to_raise_the_learning_rate_while_gradients_explode():
    layers, steps = healthy()
    steps["loss"] = 2.3
    tiny = layers.assign(update_ratio=np.where(layers["layer"].isin(WEIGHTS), 1e-7, np.nan))
    assert kinds(run(tiny, steps)) == {"update_small"}
    assert kinds(run(at(tiny, "in", "act_grad_norm", 1e3), steps)) == {"exploding"}


def test_a_healthy_growth_of_the_norm_is_no_finding():
    layers, steps = healthy()
    steps["grad_norm_total"] = np.linspace(0.3, 30.0, len(steps))              # 100×, as loss falls
    assert run(layers, steps) == []


# --- non-finite: origin first -------------------------------------------------------------------------------

@pytest.mark.parametrize("column, value, origin, words", [
    ("input_nonfinite", 1.0, "input", "input batch"),
    ("loss", np.inf, "loss", "loss was non-finite"),
    ("nonfinite_forward_layer", "mid", "forward", "output of layer 'mid' in the forward pass"),
    ("nonfinite_backward_layer", "out", "backward", "output gradient of layer 'out'"),
], ids=["input", "loss", "forward", "backward"])
def test_nonfinite_names_the_origin_first_then_the_consequences(column, value, origin, words):
    layers, steps = healthy()
    steps.loc[60:, "grad_norm_total"] = np.nan
    steps.loc[60:, "nonfinite_backward_layer"] = "in"                # consequences reach the first layer
    steps.loc[60, column] = value
    found = run(layers, steps)
    assert [f.kind for f in found] == ["nonfinite"]
    f = found[0]
    assert (f.detail, f.steps, f.severity) == (origin, (60, 79), "problem")
    assert f.message.index(words) < f.message.index("Consequences")
    assert "20 of the 20 recorded steps" in f.message and "never recovered" in f.message


def test_rare_overflows_skipped_by_a_gradient_scaler_are_a_note():
    layers, steps = healthy()
    steps["grad_scale"] = 65536.0
    steps.loc[40, "grad_norm_total"] = np.inf
    found = run(layers, steps)
    assert [(f.kind, f.severity, f.detail) for f in found] == [("nonfinite", "info", "scaler")]


# --- dead units ---------------------------------------------------------------------------------------------

def test_half_of_the_units_dead_is_found_by_the_per_unit_statistic():
    layers, steps = healthy()
    found = run(at(at(layers, "act", "dead_units", 0.5), "act", "act_zero_frac", 0.75), steps)
    assert [(f.kind, f.severity, f.layers, f.detail) for f in found] == [
        ("dead_units", "warning", ("act",), "per_unit")]
    assert "'act' (50%)" in found[0].message and "LeakyReLU" in found[0].fix


def test_a_whole_dead_layer_is_a_problem():
    layers, steps = healthy()
    assert [f.severity for f in run(at(layers, "act2", "dead_units", 1.0), steps)] == ["problem"]


@pytest.mark.parametrize("absent", ["column", "nan"], ids=["no column", "nan while warming up"])
def test_without_the_per_unit_statistic_dead_units_fall_back_to_zero_fractions_and_say_so(absent):
    layers, steps = healthy()
    layers = layers.drop(columns=["dead_units", "units"]) if absent == "column" else layers.assign(dead_units=np.nan)
    assert run(at(layers, "act", "act_zero_frac", 0.75), steps) == []          # half dead: invisible here
    found = run(at(layers, "act", "act_zero_frac", 0.97), steps)
    assert [f.detail for f in found] == ["zero_fraction"] and "unit_activity=True" in found[0].message


# --- update sizes and exact zeros ---------------------------------------------------------------------------

def test_tiny_updates_while_the_loss_stalls_are_too_small():
    layers, steps = healthy()
    steps["loss"] = 2.3
    found = run(layers.assign(update_ratio=np.where(layers["layer"].isin(WEIGHTS), 1e-7, np.nan)), steps)
    assert [(f.kind, f.severity) for f in found] == [("update_small", "warning")]
    assert set(found[0].layers) == {"in", "mid", "out"} and "raise the learning rate" in found[0].fix


def test_tiny_updates_of_a_converged_run_or_of_normalisation_weights_are_no_finding():
    layers, steps = healthy()
    converged = layers.assign(update_ratio=np.where(layers["layer"].isin(WEIGHTS), 1e-7, np.nan))
    assert run(converged, steps) == []                                          # the loss fell
    steps["loss"] = 2.3
    assert run(at(layers, "norm", "update_ratio", 1e-7), steps) == []


def large(layers: pd.DataFrame, names: tuple[str, ...], steps: slice) -> pd.DataFrame:
    for name in names:
        layers = at(layers, name, "update_ratio", 0.5, steps=steps)
    return layers


def test_large_updates_of_most_layers_on_enough_steps_are_too_large():
    layers, steps = healthy()
    assert run(large(layers, ("in", "mid"), slice(0, 4)), steps) == []          # 4 steps: not yet
    assert run(large(layers, ("mid",), slice(0, 5)), steps) == []               # 1 of 3 layers: no lr verdict
    found = run(large(layers, ("in", "mid"), slice(0, 5)), steps)
    assert [(f.kind, f.layers) for f in found] == [("update_large", ("in", "mid"))]
    assert "2 of 3 layer(s)" in found[0].message


def test_a_zero_update_under_a_vanishing_gradient_is_rounding_not_a_lost_update():
    layers, steps = healthy()
    layers = at(at(layers, "in", "update_ratio", 0.0), "in", "weight_grad_norm", 1e-9)     # 2e-10 of ‖W‖
    assert kinds(run(layers, steps)) == set()
    steps["loss"] = 2.3
    assert kinds(run(layers, steps)) == set()                                   # 1 of 3 layers small


def test_a_zero_initialised_parameter_growing_is_not_too_large():
    layers, steps = healthy()
    grows = large(layers, ("in", "mid"), slice(0, 10))
    for name in ("in", "mid"):
        grows = at(at(grows, name, "weight_norm", 0.0, steps=slice(0, 1)), name, "weight_norm", 0.01,
                   steps=slice(1, 10))
    assert run(grows, steps) == []


@pytest.mark.parametrize("change, detail, severity", [
    ({"weight_grad_norm": np.nan, "update_ratio": np.nan, "in_optimizer": False}, "frozen", "info"),
    ({"update_ratio": np.nan, "in_optimizer": False}, "not_in_optimizer", "info"),
    ({"update_ratio": 0.0}, "lost_update", "problem"),
], ids=["frozen", "not in optimizer", "zero_grad between backward and step"])
def test_weights_that_do_not_move_are_told_apart(change, detail, severity):
    layers, steps = healthy()
    for column, value in change.items():
        layers = at(layers, "mid", column, value)
    found = run(layers, steps)
    assert [(f.kind, f.detail, f.severity, f.layers) for f in found] == [("not_updated", detail, severity, ("mid",))]


def test_no_verdict_on_update_sizes_early_in_training():
    layers, steps = healthy(10)
    found = run(at(layers, "mid", "update_ratio", 0.5), steps)
    assert [(f.kind, f.severity) for f in found] == [("no_verdict", "info")]
    assert "10 of the 20 recorded steps" in found[0].message


# --- robustness: every rule on degenerate frames ------------------------------------------------------------

def degenerate(case: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    layers, steps = healthy()
    numeric = ["weight_grad_norm", "weight_norm", "update_ratio", "act_grad_norm", "act_zero_frac", "dead_units"]
    if case == "empty":
        return layers.iloc[:0], steps.iloc[:0]
    if case == "one step":
        return layers[layers["step"] == 0], steps.iloc[:1]
    if case == "all nan":
        return layers.assign(**{c: np.nan for c in numeric}), steps.assign(loss=np.nan, grad_norm_total=np.nan)
    if case == "all zero":
        return layers.assign(**{c: 0.0 for c in numeric}), steps.assign(loss=0.0, grad_norm_total=0.0)
    if case == "constant":
        return layers.assign(**{c: 1.0 for c in numeric}), steps.assign(loss=1.0, grad_norm_total=1.0)
    if case == "no step table":
        return layers, steps.iloc[:0, :0]
    if case == "only weight gradients":
        return layers[["step", "layer", "type", "depth", "weight_grad_norm"]], steps[["step", "grad_norm_total"]]
    if case == "no layers":
        return layers.iloc[:0], steps
    raise ValueError(case)


#: Case -> the kinds it may raise above info (constant 1.0: every update is 100 % of the weights, every output 0).
CASES = {"empty": set(), "one step": set(), "all nan": set(), "all zero": set(),
         "constant": {"update_large", "dead_units"}, "no step table": set(), "only weight gradients": set(),
         "no layers": set()}


@pytest.mark.parametrize("case", CASES)
def test_degenerate_frames_give_sentences_or_nothing_never_an_error(case):
    found = run(*degenerate(case))
    assert kinds(found) == CASES[case]
    for f in found:
        assert f.message.endswith(".") and f.fix.endswith(".")
        json.dumps(f.as_dict())


@pytest.mark.parametrize("column", ["weight_grad_norm", "act_grad_norm", "update_ratio", "in_optimizer",
                                    "act_zero_frac", "dead_units", "weight_norm", "type", "depth"])
def test_a_missing_layer_column_silences_only_the_rules_that_need_it(column):
    layers, steps = healthy()
    layers = at(at(layers, "in", "act_grad_norm", 1e-6), "act", "dead_units", 0.6).drop(columns=[column])
    found = run(layers, steps)
    assert {f.kind for f in found} <= {"vanishing", "dead_units", "not_updated"}
    assert ("dead_units" in kinds(found)) == (column != "dead_units")          # its fallback sees 50 % zeros: none


@pytest.mark.parametrize("column", ["loss", "grad_norm_total", "grad_scale", "nonfinite_forward_layer",
                                    "nonfinite_backward_layer", "input_nonfinite", "loss_nonfinite"])
def test_a_missing_step_column_still_finds_the_nan_from_the_others(column):
    layers, steps = healthy()
    steps.loc[60:, ["loss", "grad_norm_total"]] = np.nan
    steps.loc[60:, "nonfinite_backward_layer"] = "out"
    steps.loc[60, "input_nonfinite"] = 1.0
    found = run(layers, steps.drop(columns=[column]))
    assert [(f.kind, f.steps[0]) for f in found if f.severity == "problem"] == [("nonfinite", 60)]


def test_a_finding_refuses_an_unknown_kind_or_severity():
    with pytest.raises(ValueError, match="severity"):
        Finding("vanishing", "error", "m.", "f.")
    with pytest.raises(ValueError, match="kind"):
        Finding("sad", "problem", "m.", "f.")
