"""The Checkpoint page under AppTest: upload, recognition, probe, comparison, and friendly errors."""

from __future__ import annotations

import io
from pathlib import Path

import torch
import torchvision
from streamlit.testing.v1 import AppTest

import diagnostics as dx

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def checkpoint_page(store_root: Path) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["store_root"] = str(store_root)
    at.run()
    at.switch_page("pages/checkpoint.py").run()
    assert not at.exception
    return at


def project_checkpoint(seed: int, tmp_path: Path = Path("/tmp")) -> bytes:
    import tempfile

    config = dx.variant_config("residual", depth=4, width=4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.pt"
        dx.save_checkpoint(dx.build_cnn(config, seed=seed), config, path)
        return path.read_bytes()


def architectures(at: AppTest) -> list[str]:
    return [m.value.split("**Architecture:** ")[1] for m in at.markdown if "**Architecture:**" in m.value]


def test_empty_page_explains_what_to_upload(tmp_path):
    at = checkpoint_page(tmp_path / "runs")
    assert any("Drop a checkpoint" in i.value for i in at.info)


def test_two_uploaded_project_checkpoints_are_probed_and_compared(tmp_path):
    at = checkpoint_page(tmp_path / "runs")
    at.file_uploader(key="ckpt_files").set_value([("epoch1.pt", project_checkpoint(1), "application/octet-stream"),
                                                   ("epoch50.pt", project_checkpoint(2), "application/octet-stream")])
    at.run()
    assert not at.exception and not at.error
    assert architectures(at) == ["project CNN (residual, depth 4, relu)"] * 2
    at.button(key="ckpt_run").click().run()
    assert not at.exception and not at.error
    store = dx.RunStore(tmp_path / "runs")
    assert len(store.run_ids()) == 2                                    # both probes recorded
    depth = at.get("plotly_chart")[0]
    assert len(depth.proto.spec) > 0
    assert any("failure(s)" in s.value and s.value.startswith("Manual backward") for s in at.success)
    assert not at.warning or not any("synthetic" in w.value for w in at.warning)   # digits fit 1x8x8


def test_a_torchvision_upload_is_recognised_and_probed_on_synthetic_data(tmp_path):
    at = checkpoint_page(tmp_path / "runs")
    model = torchvision.models.resnet18(num_classes=4)
    at.file_uploader(key="ckpt_files").upload("resnet.pth", saved({"model": model.state_dict(), "epoch": 3})).run()
    assert architectures(at) == ["resnet18"]
    at.select_slider(key="ckpt_size").set_value(32).run()
    at.button(key="ckpt_run").click().run()
    assert not at.exception
    assert any("synthetic" in w.value for w in at.warning)


def test_bad_files_give_friendly_errors_and_the_page_keeps_working(tmp_path):
    store = dx.RunStore(tmp_path / "runs")
    at = checkpoint_page(store.root)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    at.file_uploader(key="ckpt_files").set_value([
        ("model.pt", saved(model), "application/octet-stream"),            # a whole pickled model
        ("random.bin", bytes(range(256)) * 10, "application/octet-stream"),
        ("empty.pt", b"", "application/octet-stream"),
        ("good.pt", project_checkpoint(0), "application/octet-stream")])
    at.run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error).replace("\\", "")    # as rendered: file names are escaped
    assert "model.pt" in errors and "state_dict" in errors and "random.bin" in errors and "empty.pt" in errors
    assert architectures(at) == ["project CNN (residual, depth 4, relu)"]


def test_an_unknown_architecture_still_shows_weight_views(tmp_path):
    at = checkpoint_page(tmp_path / "runs")
    weights = {"encoder.conv.weight": torch.randn(8, 3, 3, 3), "encoder.conv.bias": torch.randn(8),
               "decoder.weight": torch.randn(3, 8)}
    at.file_uploader(key="ckpt_files").upload("custom.pt", saved(weights)).run()
    assert not at.exception
    assert any("match no known architecture" in w.value for w in at.warning)
    assert len(at.get("plotly_chart")) == 1 and len(at.dataframe) >= 1
    assert not at.button                                              # nothing to probe


# --- Hugging Face folders, torch.export archives, timm state dicts (issue 15) ---------------------------------

def hf_files(tmp_path: Path) -> list[tuple[str, bytes, str]]:
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    return [(p.name, p.read_bytes(), "application/octet-stream") for p in sorted((tmp_path / "gpt2").iterdir())]


def test_a_hugging_face_model_a_pt2_archive_and_a_timm_state_dict_uploaded_together_are_probed(tmp_path):
    import timm

    from tests.checkpoints.test_exported import Residual, archive_of

    at = checkpoint_page(tmp_path / "runs")
    timm_model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=3)
    at.file_uploader(key="ckpt_files").set_value([
        *hf_files(tmp_path),
        ("residual.pt2", archive_of(Residual(), torch.randn(4, 3, 8, 8)), "application/octet-stream"),
        ("mobilenet.pth", saved(timm_model.state_dict()), "application/octet-stream")])
    at.run()
    assert not at.exception and not at.error
    assert architectures(at) == ["GPT2LMHeadModel (transformers gpt2, causal_lm)",
                                 "torch.export program (8 ATen/prims operators)", "timm mobilenetv3_small_050"]
    assert any("Family: timm mobilenetv3" in c.value for c in at.caption)
    at.select_slider(key="ckpt_size").set_value(32).run()
    at.button(key="ckpt_run").click().run()
    assert not at.exception and not at.error
    assert len(dx.RunStore(tmp_path / "runs").run_ids()) == 3
    synthetic = [w.value for w in at.warning if "synthetic" in w.value]
    assert len(synthetic) == 3 and any("token ids" in w for w in synthetic)


def test_a_model_folder_typed_as_a_path_and_a_timm_model_picked_by_name(tmp_path, monkeypatch):
    import timm
    import transformers

    monkeypatch.setenv("GFD_ROOTS", str(tmp_path))
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "bert")
    at = checkpoint_page(tmp_path / "runs")
    at.text_input(key="ckpt_path").set_value(str(tmp_path / "bert")).run()
    assert not at.exception and not at.error
    assert architectures(at) == ["BertForSequenceClassification (transformers bert, sequence_classification)"]
    at.text_input(key="ckpt_path").set_value("").run()
    at.file_uploader(key="ckpt_files").upload("lcnet.pt", saved(timm.create_model("lcnet_050", num_classes=3)
                                                                .state_dict())).run()
    assert architectures(at) == ["unknown"]
    at.selectbox(key="ckpt_timm_lcnet.pt").set_value("lcnet_050").run()
    assert not at.exception and architectures(at) == ["timm lcnet_050"]
