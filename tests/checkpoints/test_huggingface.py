"""Hugging Face model folders: tiny models built from configs (no downloads) round-trip through save_pretrained,
load, rebuild and probe, with per-layer norms checked in float64; remote code, adapters, malicious and
damaged files are refused."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
import transformers

import diagnostics as dx
from diagnostics.checkpoints.architecture import recognise
from diagnostics.checkpoints.huggingface import HF_FILE
from tests.checkpoints.roundtrip import assert_norms_match, float64_weight_grad_norms
from tests.checkpoints.test_loading import Exploit

VOCAB = 100
TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

#: id: (model class, config) — each tiny, every dropout 0 so the float64 recompute sees the same network.
MODELS = {
    "gpt2": (transformers.GPT2LMHeadModel,
             transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                     eos_token_id=0)),
    "bert-masked-lm": (transformers.BertForMaskedLM, transformers.BertConfig(**TEXT)),
    "bert-sequence-classification": (transformers.BertForSequenceClassification,
                                     transformers.BertConfig(**TEXT, num_labels=3)),
    "vit-image-classification": (transformers.ViTForImageClassification,
                                 transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32,
                                                        num_hidden_layers=2, num_attention_heads=2,
                                                        intermediate_size=64, num_labels=3, hidden_dropout_prob=0.0,
                                                        attention_probs_dropout_prob=0.0)),
    "t5-encoder-decoder": (transformers.T5ForConditionalGeneration,
                           transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                 num_heads=2, dropout_rate=0.0, decoder_start_token_id=0)),
}


def tiny(model_id: str) -> transformers.PreTrainedModel:
    cls, config = MODELS[model_id]
    torch.manual_seed(0)
    return cls(config)


def as_double(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}


@pytest.mark.parametrize("model_id", list(MODELS))
def test_a_saved_model_folder_round_trips_with_float64_checked_norms(model_id, tmp_path, store):
    model = tiny(model_id)
    model.save_pretrained(tmp_path / "model")
    ckpt = dx.load_checkpoint(tmp_path / "model")
    assert ckpt.format == "huggingface" and ckpt.hf_config["architectures"] == [type(model).__name__]
    built = dx.rebuild(ckpt)
    assert built.architecture.startswith(type(model).__name__) and built.matched == len(ckpt.state_dict)
    batch = built.make_batch(4, 0)
    assert batch.synthetic and "synthetic" in batch.source
    if "input_ids" in batch.x:
        assert int(batch.x["input_ids"].max()) < VOCAB and int(batch.x["input_ids"].min()) >= 0
    assert ("decoder_input_ids" in batch.x) == (model_id == "t5-encoder-decoder")
    result = dx.probe(built.model, batch, built.loss, store=store, run_name=model_id)
    assert store.meta(result.run_id)["synthetic_batch"] is True
    expected = float64_weight_grad_norms(model, lambda m: m(**as_double(batch.x)).loss)
    assert_norms_match(store, result.run_id, expected, min_layers=8)


def write_folder(model: transformers.PreTrainedModel, folder, weights: str) -> None:
    """``model``'s folder with its weights as one safetensors file, safetensors shards, or pytorch_model.bin."""
    if weights == "bin":
        folder.mkdir()
        (folder / "config.json").write_text(model.config.to_json_string())
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="20KB" if weights == "sharded" else "5GB")


@pytest.mark.parametrize("weights", ["sharded", "bin"])
def test_sharded_safetensors_and_pytorch_model_bin_load_the_same_weights(weights, tmp_path):
    model = tiny("gpt2")
    write_folder(model, tmp_path / "model", weights)
    if weights == "sharded":
        assert (tmp_path / "model" / "model.safetensors.index.json").exists()
        assert len(list((tmp_path / "model").glob("model-*.safetensors"))) > 2
    built = dx.rebuild(dx.load_checkpoint(tmp_path / "model"))
    ids = torch.randint(0, VOCAB, (2, 8))
    model.eval()
    built.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(built.model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_files_uploaded_together_are_read_in_place_as_one_model(tmp_path):
    model = tiny("bert-sequence-classification")
    model.save_pretrained(tmp_path / "model")
    uploads = {p.name: memoryview(bytearray(p.read_bytes())) for p in (tmp_path / "model").iterdir()}
    assert all(HF_FILE.match(name) for name in uploads)
    ckpt = dx.load_checkpoint(uploads)
    assert ckpt.format == "huggingface" and ckpt.source == "the uploaded model files"
    key = "classifier.weight"
    ckpt.state_dict[key].zero_()                                       # viewed in place: the upload changes
    assert dx.load_checkpoint(uploads).state_dict[key].abs().sum() == 0


@pytest.mark.parametrize("change, message", [
    ({"auto_map": {"AutoModel": "modeling_evil.EvilModel"}}, "auto_map.*trust_remote_code"),
    ({"model_type": "evil_model"}, "model_type 'evil_model'.*trust_remote_code"),
    ({"architectures": ["GPT2Attention"]}, "GPT2Attention.*not a gpt2 class"),
    ({"architectures": ["os.system"]}, "'os.system'.*not a gpt2 class"),
], ids=["auto-map", "unknown-model-type", "not-a-model-class", "dotted-name"])
def test_configs_that_would_need_remote_code_or_another_class_are_refused_with_the_reason(change, message, tmp_path):
    model = tiny("gpt2")
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(dx.CheckpointError, match=message):
        dx.rebuild(dx.load_checkpoint(tmp_path / "model"))


def test_a_peft_adapter_folder_is_refused_with_how_to_merge_it(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "gpt2"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(dx.CheckpointError, match=r"PEFT adapter.*merge_and_unload"):
        dx.load_checkpoint(folder)


def test_a_pickle_payload_in_pytorch_model_bin_never_runs(tmp_path):
    folder = tmp_path / "model"
    write_folder(tiny("gpt2"), folder, "bin")
    marker = tmp_path / "pwned"
    torch.save({"transformer.wte.weight": torch.ones(1), "evil": Exploit(str(marker))}, folder / "pytorch_model.bin")
    with pytest.raises(dx.CheckpointError):
        dx.load_checkpoint(folder)
    assert not marker.exists()


def test_weights_that_do_not_fit_the_config_keep_the_weight_only_views(tmp_path):
    model = tiny("gpt2")
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    rec = recognise(dx.load_checkpoint(tmp_path / "model"))
    assert rec.built is None and "do not fit GPT2LMHeadModel" in rec.problem
    assert "transformer.h.2" in rec.problem and "weight-only views" in rec.problem


def test_a_shard_the_index_lists_but_the_folder_lacks_is_named(tmp_path):
    write_folder(tiny("gpt2"), tmp_path / "model", "sharded")
    shard = sorted((tmp_path / "model").glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(dx.CheckpointError, match=f"shard '{shard.name}'"):
        dx.load_checkpoint(tmp_path / "model")


def fuzzed_folders(tmp_path, n: int = 30):
    rng = random.Random(15)
    good = tmp_path / "good"
    tiny("gpt2").save_pretrained(good)
    for i in range(n):
        folder = tmp_path / f"fuzz{i}"
        shutil.copytree(good, folder)
        target = folder / ("config.json" if i % 3 == 0 else "model.safetensors")
        data = bytearray(target.read_bytes())
        if i % 2:
            data = data[:rng.randrange(len(data))]                              # truncated
        else:
            for _ in range(rng.randrange(1, 20)):
                data[rng.randrange(min(len(data), 4096))] = rng.randrange(256)  # corrupted header bytes
        target.write_bytes(bytes(data))
        yield folder


def test_truncated_and_corrupted_folders_give_checkpoint_errors_only(tmp_path, monkeypatch):
    unsafe = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: unsafe.append(k) or real_load(*a, **k))
    outcomes = []
    for folder in fuzzed_folders(tmp_path):
        try:
            dx.rebuild(dx.load_checkpoint(folder))
            outcomes.append("loaded")
        except dx.CheckpointError:
            outcomes.append("refused")
    assert outcomes.count("refused") >= 20, outcomes
    assert all(k.get("weights_only") is True for k in unsafe)


def test_bf16_weights_stay_bf16_in_the_model_and_the_probe_says_it_ran_a_float32_copy(tmp_path):
    tiny("gpt2").to(torch.bfloat16).save_pretrained(tmp_path / "model")
    ckpt = dx.load_checkpoint(tmp_path / "model")
    assert {t.dtype for t in ckpt.state_dict.values()} == {torch.bfloat16}
    built = dx.rebuild(ckpt)
    assert {p.dtype for p in built.model.parameters()} == {torch.bfloat16}
    result = dx.probe(built.model, built.make_batch(2, 0), built.loss)
    assert any("bfloat16" in note and "float32 copy" in note for note in result.notes)
    assert {p.dtype for p in built.model.parameters()} == {torch.bfloat16}          # the model is untouched


def test_a_batch_file_of_named_inputs_feeds_the_models_own_loss(tmp_path, store):
    import io

    from diagnostics.checkpoints.probing import ProbeError, load_batch_file

    model = tiny("bert-sequence-classification")
    model.save_pretrained(tmp_path / "model")
    built = dx.rebuild(dx.load_checkpoint(tmp_path / "model"))
    ids = torch.randint(0, VOCAB, (3, 10))
    buf = io.BytesIO()
    torch.save({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 2, 1])}, buf)
    batch = load_batch_file(buf.getvalue())
    assert not batch.synthetic and batch.source.startswith("uploaded batch of named inputs")
    result = dx.probe(built.model, batch, built.loss, store=store)
    expected = float64_weight_grad_norms(model, lambda m: m(**batch.x).loss)
    assert_norms_match(store, result.run_id, expected, min_layers=8)
    buf = io.BytesIO()
    torch.save({"input_ids": ids, "labels": torch.tensor([0, 1])}, buf)
    with pytest.raises(ProbeError, match="share their batch size"):
        load_batch_file(buf.getvalue())
