"""Bounded parsing: small crafted files that would ask for gigabytes are refused before anything is made.

Every crafted file is generated here. Where memory matters, the load runs in a fresh subprocess and its peak
resident memory (``VmHWM``, reset after the imports) is measured against a twin that shows what the same file costs without the
check, so a test that passes proves the check, not a measurement too blunt to see the difference.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import diagnostics as dx
from diagnostics.checkpoints.architecture import check_config, load_project_checkpoint, rebuild, weight_summary
from diagnostics.checkpoints.budget import DEFAULT_BUDGET_MB, budget_bytes
from diagnostics.checkpoints.loading import load_checkpoint
from diagnostics.checkpoints.probing import load_batch_file
from diagnostics.experiments.models import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CNNConfig

MB = 2**20


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def zip_bomb(unpacked: int) -> bytes:
    """A genuine ``torch.save`` file of ``unpacked`` bytes of zeros with its members deflated (zeros shrink
    about 230:1), so that ``torch.load`` without the check really materialises all of it."""
    plain = io.BytesIO()
    torch.save({"w": torch.zeros(unpacked // 4)}, plain)
    original = zipfile.ZipFile(plain)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as bomb:
        for info in original.infolist():
            with original.open(info) as source, bomb.open(info.filename, "w", force_zip64=True) as member:
                while chunk := source.read(16 * MB):
                    member.write(chunk)
    return out.getvalue()


def safetensors_file(entries: dict[str, dict], payload: bytes) -> bytes:
    header = json.dumps(entries).encode()
    return struct.pack("<Q", len(header)) + header + payload


def project_checkpoint(config_overrides: dict) -> bytes:
    """This project's checkpoint of a tiny CNN whose recorded config is then changed."""
    config = dx.variant_config("plain", depth=2, width=2)
    return saved({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                  "config": {**config.to_dict(), **config_overrides},
                  "state_dict": dict(dx.build_cnn(config).state_dict()), "extra": {}})


def peak_growth_mb(code: str, path: Path, budget_mb: float) -> tuple[float, str]:
    """Run ``code`` (with ``path`` bound) in a fresh interpreter; the growth of its peak RSS in MB over what it
    held after the imports, and what the code printed.

    The peak is the process's ``VmHWM``, reset after the imports through ``/proc/self/clear_refs``. (This is
    the counter ``ru_maxrss`` reports, but once one of torch's threads has exited ``getrusage`` also keeps the
    imports' peak, which would hide a load smaller than the imports.)
    """
    script = textwrap.dedent(f"""
        import sys
        import torch, pandas
        import diagnostics as dx
        from diagnostics.checkpoints.architecture import rebuild, weight_summary
        from diagnostics.checkpoints.loading import load_checkpoint
        from diagnostics.checkpoints.probing import load_batch_file
        path = {str(path)!r}
        def peak_kb():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        with open("/proc/self/clear_refs", "w") as f:   # reset the high-water mark left by the imports
            f.write("5")
        before = peak_kb()
        try:
    """) + textwrap.indent(textwrap.dedent(code), "    ") + textwrap.dedent("""
        except dx.DiagnosticsError as exc:
            print("refused:", exc)
        after = peak_kb()
        print("growth_mb", (after - before) / 1024)
    """)
    env = {"DIAGNOSTICS_MEMORY_BUDGET_MB": str(budget_mb), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    growth = float(result.stdout.rsplit("growth_mb", 1)[1])
    print(f"peak growth {growth:.1f} MB at a {budget_mb} MB budget: {result.stdout.splitlines()[0][:160]}")
    return growth, result.stdout


# --- the budget itself ----------------------------------------------------------------------------------------

def test_the_budget_defaults_to_a_laptop_size_and_reads_the_environment(monkeypatch):
    monkeypatch.delenv("DIAGNOSTICS_MEMORY_BUDGET_MB", raising=False)
    assert budget_bytes() == DEFAULT_BUDGET_MB * MB == 2048 * MB
    monkeypatch.setenv("DIAGNOSTICS_MEMORY_BUDGET_MB", "64")
    assert budget_bytes() == 64 * MB
    assert budget_bytes(5) == 5


@pytest.mark.parametrize("raw", ["lots", "0", "-3", "nan"])
def test_a_budget_that_is_not_a_positive_number_is_refused(raw, monkeypatch):
    monkeypatch.setenv("DIAGNOSTICS_MEMORY_BUDGET_MB", raw)
    with pytest.raises(dx.CheckpointError, match="DIAGNOSTICS_MEMORY_BUDGET_MB"):
        budget_bytes()


# --- torch.save zips ------------------------------------------------------------------------------------------

def test_a_deflated_member_that_would_expand_past_the_budget_is_refused_before_torch_load():
    data = zip_bomb(64 * MB)
    assert len(data) < MB
    with pytest.raises(dx.CheckpointError, match=r"data/0.*64 MB unpacked.*over the 16 MB budget"):
        load_checkpoint(data, memory_budget=16 * MB)


def test_a_large_object_tree_pickle_counts_as_the_objects_it_can_become():
    data = saved({"w": torch.zeros(2), "notes": ["x"] * 200_000})
    with pytest.raises(dx.CheckpointError, match=r"object tree .*data.pkl"):
        load_checkpoint(data, memory_budget=16 * MB)
    assert load_checkpoint(data, memory_budget=256 * MB).state_dict.keys() == {"w"}


def test_the_zip_bomb_load_stays_far_under_the_budget_while_without_the_check_it_would_not(tmp_path):
    path = tmp_path / "bomb.pt"
    path.write_bytes(zip_bomb(256 * MB))
    code = "load_checkpoint(path)\n"
    refused, out = peak_growth_mb(code, path, budget_mb=64)
    assert "refused:" in out and "256 MB unpacked" in out
    unchecked, _ = peak_growth_mb(code, path, budget_mb=4096)
    assert unchecked > 200                     # the twin: torch.load inflates the member
    assert refused < 16                        # the check: nothing inflated (budget 64 MB)


# --- dense cost: stride-0 views and shared storages -----------------------------------------------------------

def test_a_stride_0_view_counts_as_its_dense_size_under_the_default_budget(monkeypatch):
    monkeypatch.delenv("DIAGNOSTICS_MEMORY_BUDGET_MB", raising=False)
    data = saved({"w": torch.zeros(1, 1).expand(24_000, 24_000)})
    assert len(data) < 4000
    with pytest.raises(dx.CheckpointError, match=r"w of shape \(24000, 24000\).*2197 MB.*over the 2048 MB budget"):
        load_checkpoint(data)


def test_many_tensors_sharing_one_storage_count_once_each():
    region = torch.zeros(MB // 4)                                    # 1 MB
    data = saved({f"w{i}": region[i:] for i in range(40)})           # 40 views of one storage
    assert len(data) < 2 * MB
    with pytest.raises(dx.CheckpointError, match="its 40 tensors made dense"):
        load_checkpoint(data, memory_budget=32 * MB)


def test_the_weight_summary_of_a_stride_0_tensor_is_computed_in_chunks(tmp_path):
    path = tmp_path / "expanded.pt"
    path.write_bytes(saved({"w": torch.full((1, 1), 2.0).expand(8000, 8000)}))   # 256 MB once dense
    code = "s = weight_summary(load_checkpoint(path).state_dict); print(float(s['norm'][0]), float(s['max_abs'][0]))\n"
    growth, out = peak_growth_mb(code, path, budget_mb=2048)
    assert out.splitlines()[0] == f"{2.0 * 8000} 2.0"
    assert growth < 128                        # dense it is 256 MB (float32), a float64 copy 512 MB; chunks
    #                                            of 8 MB and their temporaries measured 42-78 MB


def test_the_chunked_weight_summary_matches_float64_statistics():
    t = torch.randn(37, 300, 5)
    t[3, 4, 1] = float("nan")
    summary = weight_summary({"a.weight": t}).iloc[0]
    x = t.double()
    finite = x[torch.isfinite(x)]
    assert summary["nonfinite"] == 1 and summary["numel"] == t.numel()
    assert torch.isnan(torch.tensor(summary["norm"]))
    clean = weight_summary({"a.weight": torch.where(torch.isfinite(t), t, 0.0)}).iloc[0]
    torch.testing.assert_close(torch.tensor(clean["norm"]), finite.norm())
    torch.testing.assert_close(torch.tensor(clean["mean_abs"]), finite.abs().sum() / t.numel())
    torch.testing.assert_close(torch.tensor(clean["max_abs"]), finite.abs().max())


# --- safetensors ----------------------------------------------------------------------------------------------

def test_safetensors_entries_that_overlap_are_refused_before_any_tensor_is_made():
    entries = {f"w{i}": {"dtype": "F32", "shape": [MB // 4], "data_offsets": [0, MB]} for i in range(300)}
    with pytest.raises(dx.CheckpointError, match="overlap"):
        load_checkpoint(safetensors_file(entries, bytes(MB)))


@pytest.mark.parametrize("offsets, shape", [([0, 2 * MB], [MB // 2]), ([-4, 0], [0]), ([0, 8], [3])],
                         ids=["past-the-end", "negative", "size-mismatch"])
def test_safetensors_offsets_out_of_range_or_of_the_wrong_size_are_refused(offsets, shape):
    entries = {"w": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}
    with pytest.raises(dx.CheckpointError, match="w"):
        load_checkpoint(safetensors_file(entries, bytes(MB)))


def test_safetensors_tensors_over_the_budget_are_refused():
    entries = {"a": {"dtype": "F32", "shape": [MB // 4], "data_offsets": [0, MB]},
               "b": {"dtype": "F32", "shape": [MB // 4], "data_offsets": [MB, 2 * MB]}}
    data = safetensors_file(entries, bytes(2 * MB))
    with pytest.raises(dx.CheckpointError, match=r"its 2 tensors would need 2 MB .*over the 1 MB budget"):
        load_checkpoint(data, memory_budget=MB)
    assert load_checkpoint(data, memory_budget=4 * MB).state_dict["b"].shape == (MB // 4,)


def test_a_deeply_nested_safetensors_header_is_a_checkpoint_error():
    header = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(dx.CheckpointError, match="header is not valid JSON"):
        load_checkpoint(struct.pack("<Q", len(header)) + header + b"\0")


def test_the_overlapping_safetensors_file_stays_far_under_the_budget(tmp_path):
    path = tmp_path / "overlap.safetensors"
    entries = {f"w{i}": {"dtype": "F32", "shape": [10 * MB // 4], "data_offsets": [0, 10 * MB]} for i in range(300)}
    path.write_bytes(safetensors_file(entries, bytes(10 * MB)))
    growth, out = peak_growth_mb("load_checkpoint(path)\n", path, budget_mb=2048)
    assert "refused:" in out and "overlap" in out
    assert growth < 64                         # the file is 10 MB; without the check, 3000 MB of copies


# --- a config asking for a large model ------------------------------------------------------------------------

def test_a_config_asking_for_width_4096_beside_tiny_weights_is_refused_before_building(tmp_path):
    data = project_checkpoint({"width": 4096, "depth": 100})
    assert len(data) < 20_000
    ckpt = load_checkpoint(data)
    with pytest.raises(dx.CheckpointError, match=r"parameters and buffers, depth 100, width 4096.*over the 2048 MB"):
        rebuild(ckpt)
    path = tmp_path / "wide.pt"
    path.write_bytes(data)
    with pytest.raises(dx.CheckpointError, match="width 4096"):
        load_project_checkpoint(path)


def test_a_config_that_does_not_fit_the_files_tensors_is_refused_before_building():
    ckpt = load_checkpoint(project_checkpoint({"width": 64}))
    with pytest.raises(dx.CheckpointError, match=r"does not fit the file's weights .*Nothing was built"):
        rebuild(ckpt)


def test_a_fitting_config_is_still_checked_against_the_budget():
    ckpt = load_checkpoint(project_checkpoint({}))
    assert rebuild(ckpt).model is not None
    with pytest.raises(dx.CheckpointError, match="over the"):
        check_config(CNNConfig.from_dict(ckpt.architecture), ckpt.state_dict, "tiny.pt", budget=100)


def test_the_width_4096_checkpoint_stays_far_under_the_budget(tmp_path):
    path = tmp_path / "wide.pt"
    path.write_bytes(project_checkpoint({"width": 4096, "depth": 20}))
    growth, out = peak_growth_mb("rebuild(load_checkpoint(path))\n", path, budget_mb=2048)
    assert "refused:" in out and "depth 20, width 4096" in out and "over the 2048 MB budget" in out
    assert growth < 64                         # the model it asks for would take about 11 GB


# --- probe batches --------------------------------------------------------------------------------------------

def test_a_stride_0_probe_batch_is_refused_by_its_dense_size(tmp_path):
    path = tmp_path / "batch.pt"
    path.write_bytes(saved({"x": torch.zeros(1, 1, 1, 1).expand(16_000, 1, 128, 128)}))   # 1000 MB dense
    with pytest.raises(dx.ProbeError, match=r"x of shape \(16000, 1, 128, 128\)"):
        load_batch_file(path)
    growth, out = peak_growth_mb("load_batch_file(path)\n", path, budget_mb=2048)
    assert "refused:" in out
    assert growth < 16


def test_a_small_probe_batch_still_loads():
    batch = load_batch_file(saved({"x": torch.randn(4, 1, 8, 8), "y": torch.arange(4)}))
    assert batch.x.shape == (4, 1, 8, 8) and batch.y.tolist() == [0, 1, 2, 3]
