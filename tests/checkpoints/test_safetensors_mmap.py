"""A large safetensors file given as a path is memory-mapped: loading it costs no second copy of it, measured as
the peak resident memory of a fresh process against a twin that reads the same file into bytes first.

The file here is 256 MB (a 500 MB one behaves the same and is measured in the README; 256 MB keeps the test at a
few seconds)."""

from __future__ import annotations

import pytest
import torch

from tests.checkpoints.test_budget import peak_growth_mb

SIZE_MB = 256


@pytest.fixture(scope="module")
def large_file(tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("large") / "model.safetensors"
    rows = SIZE_MB * 2**20 // (1024 * 4 * 16)
    save_file({f"h.{i}.weight": torch.full((rows, 1024), float(i)) for i in range(16)}, str(path))   # 16 x 16 MB
    return path


def test_a_large_safetensors_path_loads_without_a_second_copy_while_its_bytes_would_cost_two(large_file):
    mapped, out = peak_growth_mb("ckpt = load_checkpoint(path)\nprint('tensors', len(ckpt.state_dict))\n",
                                 large_file, budget_mb=4096)
    assert "tensors 16" in out
    copied, _ = peak_growth_mb("data = open(path, 'rb').read()\nckpt = load_checkpoint(data)\n",
                               large_file, budget_mb=4096)
    print(f"{SIZE_MB} MB file: peak growth {mapped:.1f} MB memory-mapped, {copied:.1f} MB through bytes")
    assert copied > 1.5 * SIZE_MB              # the twin: the bytes and one copy per tensor
    assert mapped < 0.1 * SIZE_MB              # mapped: pages are read only when a tensor is used


def test_the_mapped_tensors_hold_the_file_and_can_change_without_touching_it(large_file):
    import diagnostics as dx

    ckpt = dx.load_checkpoint(large_file)
    weight = ckpt.state_dict["h.3.weight"]
    assert float(weight[0, 0]) == 3.0 and float(weight[-1, -1]) == 3.0
    weight.zero_()                              # copy-on-write: this process's pages only
    assert float(dx.load_checkpoint(large_file).state_dict["h.3.weight"][0, 0]) == 3.0
