"""``python -m diagnostics check``: manual backward rules vs autograd from the terminal, with exit codes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from diagnostics.views.checks import EXAMPLES
from diagnostics.cli import main
from diagnostics.manual import registry
from diagnostics.experiments.models import build_cnn, save_checkpoint, variant_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", list(EXAMPLES))
def test_check_one_module_type_prints_its_report_and_exits_0(module, capsys):
    assert main(["check", "--module", module]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.lstrip().startswith(f"{module} ")]
    assert rows and all(line.rstrip().endswith("pass") for line in rows), out
    assert {"autograd", "finite_diff"} <= {word for line in rows for word in line.split()}
    assert "comparisons:" in out and "fail" not in out


def test_check_without_arguments_checks_every_module_type(capsys):
    assert main(["check", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    layers = {line.split()[0] for line in out.splitlines() if line.rstrip().endswith("pass")}
    assert layers == set(EXAMPLES)
    assert "seed=3" in out


def test_check_with_the_reference_implementation(capsys):
    assert main(["check", "--module", "MaxPool2d", "--impl", "reference"]) == 0
    out = capsys.readouterr().out
    assert "impl=reference" in out and "maxpool2d" in out


def test_check_exits_1_when_a_rule_is_wrong(monkeypatch, capsys):
    wrong = dataclasses.replace(registry._RULES[nn.Tanh],
                                fast=lambda module, x, state, grad_output: {"input": 3 * grad_output})
    monkeypatch.setitem(registry._RULES, nn.Tanh, wrong)
    assert main(["check", "--module", "tanh"]) == 1
    captured = capsys.readouterr()
    assert "[fail] tanh elementwise input vs autograd: max_rel_err" in captured.out
    assert "FAILED: 2 comparisons exceed their tolerance" in captured.err


@pytest.mark.parametrize("args, message", [
    (["--module", "conv3d"], "unknown --module 'conv3d'; choose one of conv2d, conv1d"),
    (["--model", "not_a_net"], "'not_a_net' is neither a checkpoint file nor a torchvision"),
    (["--model", "missing/model.pt"], "no file at missing/model.pt"),
], ids=["unknown-module", "unknown-model", "missing-file"])
def test_check_reports_bad_arguments_and_exits_2(args, message, capsys):
    assert main(["check", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.err.startswith("error: ")


def test_check_reports_an_unloadable_file_and_exits_2(tmp_path, capsys):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"\x80\x04 certainly not a checkpoint")
    assert main(["check", "--model", str(path)]) == 2
    assert "broken.pt" in capsys.readouterr().err


def test_check_a_torchvision_model_by_name(capsys):
    assert main(["check", "--model", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "torchvision resnet18 (weights=None), on an input of shape (2, 3, 32, 32)" in out
    assert "layer4.1.conv2" in out and "fc" in out and "fail" not in out


def test_check_a_project_checkpoint(tmp_path, capsys):
    config = variant_config("residual+batchnorm", depth=3, width=4, input_size=8, num_classes=3)
    path = tmp_path / "cnn.pt"
    save_checkpoint(build_cnn(config), config, path)
    assert main(["check", "--model", str(path)]) == 0
    out = capsys.readouterr().out
    assert "project CNN (residual+batchnorm, depth 3, relu) from cnn.pt" in out
    assert "(2, 1, 8, 8)" in out
    for layer in ("blocks.0.conv", "blocks.2.bn", "blocks.2.act", "pool", "head"):
        assert f"\n{layer} " in out or f" {layer} " in out, layer


def test_check_a_torchvision_state_dict_file(tmp_path, capsys):
    import torchvision

    path = tmp_path / "weights.pt"
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=7).state_dict(), path)
    assert main(["check", "--model", str(path), "--module", "relu"]) == 0
    out = capsys.readouterr().out
    assert "resnet18 from weights.pt" in out and "relu" in out and "fail" not in out


def test_check_help_lists_every_module_type(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["check", "--help"])
    assert caught.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(f"{key}," in help_text or f"{key} " in help_text for key in EXAMPLES)
    assert "or all" in help_text


def test_check_runs_as_a_module_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "diagnostics", "check", "--module", "conv2d"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "conv2d" in result.stdout and "comparisons:" in result.stdout
    assert " fail" not in result.stdout
