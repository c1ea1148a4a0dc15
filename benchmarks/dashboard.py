"""Speed and payload of the Gradient flow page on a synthetic run of 200 layers × 10,000 steps.

Measured side by side in one run:
  * cold: an empty cache, read what the page draws and build every figure of the page;
  * warm: a widget change (another step on the slider) with the data already cached;
  * the same page through Streamlit's AppTest (first run, then a widget change);
  * naive: read the whole table with pandas and plot every point (one line per layer, full heatmap).
Targets on 2 cores: warm < 0.5 s, cold < 2 s, figure payload < 3 MB.

Run: .venv/bin/python benchmarks/dashboard.py [--layers 200] [--steps 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import diagnostics as dx  # noqa: E402
from diagnostics.recording.stats import HIST_EDGES  # noqa: E402
from diagnostics.views.gradient_flow import CachedLoader, FlowOptions, gradient_flow_view  # noqa: E402


def synthetic_run(store: dx.RunStore, layers: int, steps: int, chunk: int = 500) -> str:
    """Write a run shaped like a vanishing-gradient CNN, in chunks as a training process would."""
    rng = np.random.default_rng(0)
    writer = store.create_run("synthetic 200x10000", {"model": "Synthetic", "layers": layers,
                                                      "hist_edges": HIST_EDGES.tolist()}, flush_every=10**9)
    names = [f"blocks.{i}.conv" for i in range(layers)]
    depth = np.arange(layers)
    scale = 10.0 ** (-6 * (1 - depth / (layers - 1)))                      # first layer 1e-6 of the last
    for start in range(0, steps, chunk):
        s = np.arange(start, min(start + chunk, steps))
        n = len(s) * layers
        decay = np.exp(-s / steps)[:, None]
        wg = (scale[None, :] * decay * rng.lognormal(0, 0.3, (len(s), layers))).reshape(-1)
        writer.append("layers", {
            "run": [writer.run_id] * n, "step": np.repeat(s, layers), "layer": names * len(s),
            "type": ["Conv2d"] * n, "depth": np.tile(depth, len(s)), "calls": np.ones(n, dtype=np.int64),
            "weight_grad_norm": wg, "weight_grad_mean_abs": wg / 100, "weight_grad_max_abs": wg / 10,
            "bias_grad_norm": wg / 3, "weight_norm": np.full(n, 5.0), "update_ratio": wg * 1e-3,
            "act_grad_norm": wg * 2, "act_grad_mean_abs": wg / 50, "act_grad_max_abs": wg,
            "act_mean": rng.normal(0, 1, n), "act_std": np.ones(n), "act_zero_frac": rng.uniform(0, 0.6, n),
            "nonfinite": np.zeros(n, dtype=np.int64), "act_nonfinite": np.zeros(n, dtype=np.int64),
            "act_grad_nonfinite": np.zeros(n, dtype=np.int64), "weight_grad_nonfinite": np.zeros(n, dtype=np.int64)})
        writer.append("steps", {"run": [writer.run_id] * len(s), "step": s, "time": s.astype(float),
                                "loss": 2.3 * np.exp(-s / 3000) + 0.1, "grad_norm_total": 1 + 0.1 * np.sin(s),
                                "grad_scale": np.ones(len(s)), "nonfinite_forward_layer": [""] * len(s),
                                "nonfinite_backward_layer": [""] * len(s)})
        hs = s[s % 100 == 0]
        for layer in (names[0], names[layers // 2], names[-1]):
            counts = [np.histogram(rng.normal(-5, 1, 2000), HIST_EDGES)[0].tolist() for _ in hs]
            writer.append("hist", {"run": [writer.run_id] * len(hs), "step": hs, "layer": [layer] * len(hs),
                                   "kind": ["weight_grad"] * len(hs), "counts": counts,
                                   "zeros": np.zeros(len(hs), dtype=np.int64),
                                   "nonfinite": np.zeros(len(hs), dtype=np.int64), "log10_scale": np.zeros(len(hs))})
        writer.meta["steps"] = int(s[-1]) + 1
        writer.flush()
    writer.close()
    return writer.run_id


def payload(figures: dict[str, go.Figure]) -> int:
    return sum(len(fig.to_json()) for fig in figures.values())


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def naive(store: dx.RunStore, run: str) -> tuple[float, int]:
    """Read everything with pandas and plot every point."""
    def build():
        frame = pd.concat([pd.read_parquet(p) for p in sorted((store.root / run / "layers").glob("*.parquet"))])
        lines = go.Figure([go.Scatter(x=g["step"], y=g["weight_grad_norm"], mode="lines", name=name)
                           for name, g in frame.groupby("layer")])
        pivot = frame.pivot(index="layer", columns="step", values="act_grad_norm")
        heat = go.Figure(go.Heatmap(z=np.log10(pivot.to_numpy()).tolist(), x=list(pivot.columns),
                                    y=list(pivot.index)))
        return {"lines": lines, "heat": heat}
    seconds, figures = timed(build)
    return seconds, payload(figures)


def apptest(root: Path, run: str) -> tuple[float, float]:
    from streamlit.testing.v1 import AppTest

    os.environ["GFD_STORE"] = str(root)          # the launcher's store: a typed path outside it is refused
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["selected_runs"] = [run]
    at.run()
    cold, _ = timed(lambda: at.switch_page("pages/gradient_flow.py").run())
    assert not at.exception, at.exception
    warm, _ = timed(lambda: at.slider(key="flow_step").set_value(5000).run())
    assert not at.exception, at.exception
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--steps", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = dx.RunStore(Path(tmp) / "runs")
        t_write, run = timed(lambda: synthetic_run(store, args.layers, args.steps))
        files = sum(1 for _ in (store.root / run).rglob("*.parquet"))
        print(f"synthetic run: {args.layers} layers x {args.steps} steps written in {t_write:.1f} s, "
              f"{files} Parquet files after compaction")
        colors, names = {run: "#0072B2"}, {run: "synthetic"}
        loader = CachedLoader(store)
        cold, view = timed(lambda: gradient_flow_view(loader, FlowOptions([run]), colors, names))
        warm, view2 = timed(lambda: gradient_flow_view(loader, FlowOptions([run], step=args.steps // 2), colors,
                                                       names))
        size = payload(view.figures)
        at_cold, at_warm = apptest(store.root, run)
        n_time, n_size = naive(store, run)
        print(f"findings: {[f.kind for f in view.findings[run]]}")
        print(f"cold  (empty cache, read + all {len(view.figures)} figures): {cold:6.2f} s   target < 2 s:   "
              f"{'met' if cold < 2 else 'NOT met'}")
        print(f"warm  (widget change, cache hit):             {warm:6.2f} s   target < 0.5 s: "
              f"{'met' if warm < 0.5 else 'NOT met'}")
        print(f"payload (all figures as JSON):                {size / 1e6:6.2f} MB  target < 3 MB:  "
              f"{'met' if size < 3e6 else 'NOT met'}")
        print(f"AppTest page: first run {at_cold:.2f} s, widget change {at_warm:.2f} s")
        print(f"naive (read all with pandas, plot every point): {n_time:.2f} s, {n_size / 1e6:.1f} MB for 2 figures")
        print(f"ratio naive/ours: time {n_time / cold:.1f}x (cold) and {n_time / max(warm, 1e-9):.0f}x (warm), "
              f"payload {n_size / size:.1f}x")


if __name__ == "__main__":
    main()
