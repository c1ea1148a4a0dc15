"""The fused one-pass CPU kernels (diagnostics/csrc/fused_sums.c) against float64 references, and the
fallback to PyTorch reductions when they cannot be built."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import diagnostics as dx
from diagnostics.recording import native

from tests.conftest import require_fused_kernels

CHUNK, BLOCK, LANES = 16384, 2048, 32      # the constants of fused_sums.cpp: lengths around them are the edges
LENGTHS = [1, LANES - 1, LANES, LANES + 1, BLOCK - 1, BLOCK + 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 77]


@pytest.fixture(autouse=True)
def _kernels():
    native.reset()
    require_fused_kernels()
    yield
    native.reset()


def act_reference(x: torch.Tensor) -> list[float]:
    d = x.double()
    finite = torch.isfinite(d)
    return [float(d.sum()), float((d * d).sum()), float((d != 0).sum()), float((~finite).sum())]


def grad_reference(g: torch.Tensor) -> list[float]:
    a = g.double().abs()
    return [float(a.sum()), float((a * a).sum()), float(a.max()), float((~torch.isfinite(a)).sum())]


def sample(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Values over nine decades, a quarter of them exact zeros (ReLU-like), both signs."""
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen, dtype=torch.float64) * torch.logspace(-4, 5, n, dtype=torch.float64)
    x[torch.rand(n, generator=gen) < 0.25] = 0.0
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("n", LENGTHS)
def test_activation_and_gradient_sums_equal_float64(n, dtype):
    x = sample(n, dtype)
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    got = native.activation_sums(x)
    np.testing.assert_allclose(got.numpy(), act_reference(x), rtol=rtol)
    assert got[2] == act_reference(x)[2]                      # counts are exact
    np.testing.assert_allclose(native.gradient_sums(x).numpy(), grad_reference(x), rtol=rtol)


@pytest.mark.parametrize("position", [0, LANES + 3, CHUNK, 3 * CHUNK - 1], ids=["first", "lane", "chunk", "last"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_values_are_counted_and_propagate(bad, position):
    x = torch.zeros(3 * CHUNK)
    x[1::7] = 2.0
    x[position] = bad
    a, g = native.activation_sums(x), native.gradient_sums(x)
    assert a[3] == 1 and g[3] == 1
    assert a[2] == float((x != 0).sum())                      # NaN counts as non-zero, as `x != 0` says
    assert not math.isfinite(a[1]) and not math.isfinite(g[1])
    if math.isnan(bad):
        assert math.isnan(g[2])                               # max|g| is NaN when g holds NaN, like torch.amax
    else:
        assert g[2] == math.inf


def test_negative_zero_is_a_zero():
    x = torch.tensor([-0.0, 0.0, 1.0, -0.0])
    assert native.activation_sums(x)[2] == 1


def test_results_do_not_depend_on_the_number_of_threads():
    x = sample(40 * CHUNK + 5, torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (native.activation_sums(x), native.gradient_sums(x))
        torch.set_num_threads(2)
        two = (native.activation_sums(x), native.gradient_sums(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_param_sums_reduce_every_pair_in_one_call(dtype):
    grads = [sample(n, dtype) for n in (3, 700, CHUNK + 9, 4 * CHUNK)] + [torch.zeros(0, dtype=dtype)]
    weights = [sample(g.numel() + 1, dtype)[1:] for g in grads]
    weights[1] = None                                         # no weight norm wanted for this one
    out = native.param_sums(grads, weights)
    assert out.shape == (5, 4) and out.dtype == torch.float64
    for i, (g, w) in enumerate(zip(grads[:4], weights[:4])):
        np.testing.assert_allclose(out[i, :3].numpy(), grad_reference(g)[:3], rtol=1e-6)
        if w is None:
            assert math.isnan(out[i, 3])
        else:
            np.testing.assert_allclose(float(out[i, 3]), float((w.double() ** 2).sum()), rtol=1e-6)
    assert out[4].tolist() == [0.0, 0.0, 0.0, 0.0]            # an empty gradient
    assert native.param_sums([], []).shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_diff_sums_are_squared_distances(dtype):
    after = [sample(n, dtype) for n in (5, CHUNK + 3, 3 * CHUNK)] + [torch.zeros(0, dtype=dtype)]
    before = [a + sample(a.numel() + 2, dtype)[2:] * 1e-3 for a in after]
    got = native.diff_sums(after, before)
    want = [float(((a.double() - b.double()) ** 2).sum()) for a, b in zip(after, before)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert got[3] == 0 and native.diff_sums([], []).shape == (0,)


@pytest.mark.parametrize("weight_norms", [True, False])
def test_param_sums_of_read_the_gradients_they_can_and_leave_the_rest(weight_norms):
    require_fused_kernels()
    readable = []
    for n, dtype in ((3, torch.float32), (CHUNK + 9, torch.float64), (4 * CHUNK, torch.float32), (0, torch.float64)):
        p = torch.nn.Parameter(sample(n + 1, dtype)[1:].clone())
        p.grad = sample(n + 2, dtype)[2:].clone()
        readable.append(p)
    no_grad = torch.nn.Parameter(torch.ones(4))
    half = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    half.grad = torch.ones(4, dtype=torch.float16)
    strided = torch.nn.Parameter(torch.ones(3, 4))
    strided.grad = torch.ones(4, 3).t()
    sparse = torch.nn.Parameter(torch.ones(5))
    sparse.grad = torch.ones(5).to_sparse()
    strided_weight = torch.nn.Parameter(torch.ones(4, 3).t())       # its gradient readable, its weight not
    strided_weight.grad = torch.ones(3, 4)
    params = readable + [no_grad, half, strided, sparse, strided_weight]
    sums, taken = native.param_sums_of(params, weight_norms)
    assert taken.tolist() == [True] * 4 + [False, False, False, False, not weight_norms]
    for i, p in enumerate(readable[:3]):
        np.testing.assert_allclose(sums[i, :3].numpy(), grad_reference(p.grad)[:3], rtol=1e-6)
        if weight_norms:
            np.testing.assert_allclose(float(sums[i, 3]), float((p.detach().double() ** 2).sum()), rtol=1e-6)
        else:
            assert math.isnan(sums[i, 3])
    assert sums[3, :3].tolist() == [0.0, 0.0, 0.0]                # an empty gradient
    assert torch.isnan(sums[4:8]).all()                           # left to the caller
    assert native.param_sums_of([], True)[0].shape == (0, 4)


def test_param_sums_mark_a_nan_gradient():
    g = torch.ones(2 * CHUNK)
    g[CHUNK + 1] = float("nan")
    out = native.param_sums([g], [torch.ones(2 * CHUNK)])
    assert math.isnan(out[0, 1]) and math.isnan(out[0, 2]) and out[0, 3] == 2 * CHUNK


def test_tensors_the_kernels_cannot_read_are_left_to_pytorch():
    x = torch.randn(8, 6)
    assert native.activation_sums(x.t()) is None              # strided
    assert native.activation_sums(x.half()) is None           # half precision
    assert native.activation_sums(torch.randn(4, dtype=torch.complex64)) is None
    assert native.eligible_pair(x, x) and not native.eligible_pair(x, x.t())


def _fresh_python(env: dict[str, str], code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


STATUS = "from diagnostics.recording import native; print(native.kernels() is not None, '|', native.status())"


def test_the_extension_loads_after_another_openmp_runtime(tmp_path):
    # scikit-learn loads a renamed libgomp of its own first; the extension runs on PyTorch's thread pool anyway.
    code = ("import sklearn.datasets, torch\nfrom diagnostics.recording import native\n"
            "assert native.kernels() is not None, native.status()\n"
            "x = torch.randn(100000)\nprint(float(native.activation_sums(x)[0]) - float(x.double().sum()))")
    assert abs(float(_fresh_python({}, code))) < 1e-3          # float32 blocks over 1e5 normal values


def test_a_missing_compiler_falls_back_to_pytorch_with_the_reason(tmp_path):
    out = _fresh_python({"CXX": str(tmp_path / "no-such-cxx"), "DIAGNOSTICS_CACHE_DIR": str(tmp_path)}, STATUS)
    available, reason = out.split("|")
    assert available.strip() == "False"
    assert "PyTorch reductions" in reason and "could not be built" in reason


def test_the_switch_turns_the_kernels_off(tmp_path):
    out = _fresh_python({"DIAGNOSTICS_NATIVE": "0", "DIAGNOSTICS_CACHE_DIR": str(tmp_path)}, STATUS)
    assert out.startswith("False") and "DIAGNOSTICS_NATIVE" in out
    assert not list(tmp_path.iterdir())                       # nothing was built


@pytest.mark.slow
def test_concurrent_first_uses_build_once_reuse_it_and_rebuild_a_damaged_build(tmp_path):
    """Two processes start at once on an empty cache (as DDP ranks would): one builds under the file lock, the
    other waits and loads the same build; a later process reuses it; a damaged build is made again."""
    env = {**os.environ, "DIAGNOSTICS_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", STATUS], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(o.startswith("True") for o in outs), outs
    (folder,) = tmp_path.glob("fused-*")
    (built,) = folder.glob("*.so")
    stamp = built.stat().st_mtime_ns
    assert _fresh_python({"DIAGNOSTICS_CACHE_DIR": str(tmp_path)}, STATUS).startswith("True")
    assert built.stat().st_mtime_ns == stamp                  # reused, not rebuilt
    built.write_bytes(b"not a shared library")
    assert _fresh_python({"DIAGNOSTICS_CACHE_DIR": str(tmp_path)}, STATUS).startswith("True")
    assert built.read_bytes()[:4] == b"\x7fELF"


def _record(model: torch.nn.Module, x: torch.Tensor, steps: int = 2, arena_rows: int | None = None,
            **options) -> dx.GradientMonitor:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = dx.GradientMonitor(model, **options)
    if arena_rows is not None:
        mon._live.arena_rows = arena_rows
    with mon:
        for _ in range(steps):
            model(x).square().mean().backward()
            mon.step()
            opt.step()
            opt.zero_grad()
    return mon


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 36, 4))


#: atol: a BN output's mean and a bias gradient ahead of BN are 0 up to float32 rounding (~1e-9 here), where
#: any two summation orders disagree in relative terms.
STAT_COLUMNS = ["weight_grad_norm", "weight_grad_mean_abs", "weight_grad_max_abs", "bias_grad_norm",
                "weight_norm", "act_grad_norm", "act_grad_mean_abs", "act_grad_max_abs", "act_mean", "act_std",
                "act_zero_frac", "nonfinite"]


@pytest.mark.parametrize("switch", ["option", "environment"])
def test_the_monitor_records_the_same_statistics_through_either_path(switch, monkeypatch, tmp_path):
    x = torch.randn(4, 3, 6, 6)
    torch.manual_seed(1)
    fused = _record(_net(), x, store=dx.RunStore(tmp_path / "a"))
    options = {"store": dx.RunStore(tmp_path / "b")}
    if switch == "option":
        options["fused"] = False
    else:
        monkeypatch.setenv("DIAGNOSTICS_NATIVE", "0")
        native.reset()
    torch.manual_seed(1)
    plain = _record(_net(), x, **options)
    assert fused.store.meta(fused.run_id)["reductions"] == "fused"
    assert plain.store.meta(plain.run_id)["reductions"] == "pytorch"
    assert_same_statistics(fused.frame(), plain.frame())


def assert_same_statistics(got, want, rtol: float = 1e-5) -> None:
    assert list(got["layer"]) == list(want["layer"])
    np.testing.assert_allclose(got[STAT_COLUMNS].to_numpy(float), want[STAT_COLUMNS].to_numpy(float),
                               rtol=rtol, atol=1e-7)


def test_a_full_arena_hands_the_rest_of_the_step_to_pytorch_and_grows():
    x = torch.randn(4, 3, 6, 6)
    torch.manual_seed(1)
    reference = _record(_net(), x).frame()
    torch.manual_seed(1)
    mon = _record(_net(), x, arena_rows=3)   # room for 3 of the 14 reductions per step
    assert mon._live.arena_rows == 12             # doubled after each overflowing step: 3 -> 6 -> 12
    assert_same_statistics(mon.frame(), reference)


def test_channels_last_outputs_take_the_pytorch_path_with_the_same_values():
    x = torch.randn(4, 3, 6, 6)
    torch.manual_seed(1)
    reference = _record(_net(), x).frame()
    torch.manual_seed(1)
    model = _net().to(memory_format=torch.channels_last)
    got = _record(model, x.to(memory_format=torch.channels_last)).frame()
    assert_same_statistics(got, reference, rtol=1e-4)


def test_a_nan_through_the_fused_path_is_reported_at_its_layer():
    model = _net()
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="3"):
        mon = _record(model, torch.randn(2, 3, 6, 6), steps=1)
    steps = mon.step_frame()
    assert steps["nonfinite_forward_layer"].iloc[0] == "3"


def test_the_extension_runs_on_pytorchs_threads_and_brings_no_openmp_runtime():
    code = ("from diagnostics.recording import native\nmodule = native.kernels()\nassert module, native.status()\n"
            "gomp = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l})\n"
            "print(module.__file__, len(gomp), all('torch' in g for g in gomp))")
    path, count, in_torch = _fresh_python({}, code).split()
    assert int(count) <= 1 and in_torch == "True"             # PyTorch's own libgomp, no second runtime
    symbols = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True, text=True).stdout
    assert "GOMP_parallel" in symbols                         # at::parallel_for compiled as parallel loops
    needed = subprocess.run(["objdump", "-p", path], capture_output=True, text=True).stdout
    assert "gomp" not in "".join(line for line in needed.splitlines() if "NEEDED" in line)
