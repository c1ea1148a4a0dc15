"""Run data from files is bounded and inert: a crafted diagonal ``layers`` table and a kernel-snapshot zip bomb stay
far below a dense copy (peak memory measured in a subprocess), and names from run metadata stay text in the
Compare and Kernel figures, the Compare reading and error messages."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import diagnostics as dx
from diagnostics.views import matrices
from diagnostics.views.kernels import kernel_view
from diagnostics.views.sweep import RATIO_COLUMNS, sweep_figure
from diagnostics.views.text import message_text
from diagnostics.views.training_comparison import describe

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "![x](http://host/p.png) [Re-login](https://evil.example/) <a href='x'>y</a>"
#: A link, image or tag character that Markdown would act on (not preceded by a backslash).
UNESCAPED = re.compile(r"(?<!\\)[\[\]<>]")


def diagonal(n: int) -> pd.DataFrame:
    """A ``layers`` table whose layer i is recorded at step i only: n rows that pivot to an n × n matrix."""
    return pd.DataFrame({"step": np.arange(n), "layer": [f"l{i}" for i in range(n)], "depth": np.arange(n),
                         "type": "Conv2d", "weight_grad_norm": np.ones(n)})


def peak_growth_mb(setup: str, code: str) -> float:
    """Run ``setup`` then ``code`` in a fresh interpreter; the growth of the peak RSS during ``code`` (MB)."""
    script = textwrap.dedent(setup) + textwrap.dedent("""
        def peak_kb():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        with open("/proc/self/clear_refs", "w") as f:      # reset the high-water mark left by the setup
            f.write("5")
        before = peak_kb()
    """) + textwrap.dedent(code) + '\nprint("growth_mb", (peak_kb() - before) / 1024)\n'
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return float(result.stdout.rsplit("growth_mb", 1)[1])


def test_a_large_matrix_has_its_steps_bucketed_before_it_is_made_dense(monkeypatch):
    monkeypatch.setattr(matrices, "MAX_CELLS", 1000)
    frame = pd.concat([diagonal(100).assign(weight_grad_norm=float(k)) for k in (1, 3)]).reset_index(drop=True)
    frame.loc[100:, "step"] += 1                    # each layer at steps i (value 1) and i + 1 (value 3)
    m = matrices.stat_matrix_from_frame(frame, "r", "weight_grad_norm")
    assert m.values.shape == (100, 10) and m.values.size <= 1000 and m.bucketed
    assert list(m.steps) == list(range(0, 100, 10))                 # each bucket labelled by its first step
    assert m.values[0, 0] == 2.0 and m.values[9, 0] == 1.0 and m.values[9, 1] == 3.0   # means per bucket


def test_a_small_matrix_is_kept_exactly():
    m = matrices.stat_matrix_from_frame(diagonal(50), "r", "weight_grad_norm")
    assert m.values.shape == (50, 50) and np.nansum(m.values) == 50 and list(m.steps) == list(range(50))
    assert not m.bucketed


def test_a_crafted_diagonal_table_pivots_far_below_its_dense_size():
    n = 20_000                                      # dense: 20,000² float64 = 3.2 GB
    growth = peak_growth_mb(
        f"""
        import numpy as np, pandas as pd
        from diagnostics.views.matrices import stat_matrix_from_frame
        frame = pd.DataFrame({{"step": np.arange({n}), "layer": [f"l{{i}}" for i in range({n})],
                              "depth": np.arange({n}), "type": "Conv2d", "weight_grad_norm": np.ones({n})}})
        """,
        "m = stat_matrix_from_frame(frame, 'r', 'weight_grad_norm')\nassert m.values.size <= 4_000_000\n")
    assert growth < 300, f"{growth:.0f} MB"


def npz_bomb(path: Path, side: int = 12_000) -> None:
    """A kernel snapshot of one (side, side) float64 array of zeros: ~1 MB on disk, side² · 8 bytes inflated."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1)))
    header["shape"] = (side, side)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("features.0|grad.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, header)
        chunk = bytes(8 * side * 100)
        for _ in range(side // 100):
            member.write(chunk)


def test_a_kernel_snapshot_zip_bomb_is_refused_before_it_is_inflated(tmp_path):
    runs = dx.compare(variants=["plain"], depth=2, steps=1, dataset="synthetic", width=2, batch_size=8,
                      store=str(tmp_path), workers=1)
    store = dx.RunStore(tmp_path)
    run = runs["plain"]
    step = store.kernel_steps(run)[0]
    snapshot = tmp_path / run / "kernels" / f"step-{step:08d}.npz"
    npz_bomb(snapshot)
    assert snapshot.stat().st_size < 2_000_000
    growth = peak_growth_mb(
        f"import diagnostics as dx\nstore = dx.RunStore({str(tmp_path)!r})\n",
        f"""
        try:
            store.kernel_snapshot({run!r}, {step})
        except dx.StoreError as exc:
            print("refused:", exc)
        """)
    assert growth < 100, f"{growth:.0f} MB"                  # inflated: 12,000² float64 = 1.1 GB
    with pytest.raises(dx.StoreError, match="would take 1,099 MB in memory, more than the 256 MB"):
        store.kernel_snapshot(run, step)


def test_a_layer_name_is_text_in_the_kernel_figures():
    arrays = {"grad": np.ones((2, 2, 3, 3)), "weight": np.ones((2, 2, 3, 3))}
    view = kernel_view(arrays, HOSTILE, 3)
    titles = [fig.layout.title.text for fig in view.figures.values()]
    assert titles and all("<a" not in t and "&lt;a" in t for t in titles)


def test_series_and_variant_names_are_text_in_the_sweep_figure_and_the_reading():
    ratios = pd.DataFrame([[HOSTILE + f" d{d}", HOSTILE, d, "he", "relu", 0.1, 0.2, 0.3, 0.9] for d in (5, 10)],
                          columns=RATIO_COLUMNS)
    fig = sweep_figure(ratios)
    assert all("<a" not in (t.name or "") and "<a" not in (t.hovertemplate or "").replace("<br>", "")
               .replace("<extra>", "").replace("</extra>", "") for t in fig.data)
    summary = pd.DataFrame([{"variant": HOSTILE, "run": "r", "steps": 10, "final_loss": 0.5, "accuracy": 0.9,
                             "ratio_median": 1.0, "ratio_final": 1.0, "diverged_step": np.nan,
                             "diverged_layer": np.nan}])
    reading = describe(summary)
    assert HOSTILE not in reading and not UNESCAPED.search(reading)          # every [ ] < > escaped


def test_error_messages_quote_names_as_text():
    shown = message_text(f"Could not read run x: {HOSTILE}\n# heading")
    assert not UNESCAPED.search(shown) and "\n" not in shown
    assert message_text("no run 'x' (h, w) padding='same'") == "no run 'x' (h, w) padding='same'"
