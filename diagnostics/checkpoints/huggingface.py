"""Hugging Face model folders read safely, their model rebuilt from ``config.json``, and a batch that fits it.

Nothing from a folder runs. ``config.json`` is parsed as JSON; a config that needs remote code (an
``auto_map``, or a ``model_type`` the installed transformers does not know) is refused; the model class is the
one its ``architectures`` field names, looked up only in transformers' auto mappings (:data:`TASKS`), never by
attribute lookup; the weights (``model.safetensors``, sharded with ``model.safetensors.index.json``, or
``pytorch_model.bin`` read with ``weights_only=True``) go through the same readers and memory budget as a
single file. PEFT adapter folders are refused (see :func:`load_hf_model`). ``transformers`` is imported on use,
so ``import diagnostics`` never imports it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .architecture import BuiltModel
from .budget import dense_bytes, megabytes, over_budget
from .loading import Checkpoint, _is_state_dict, _load_safetensors, detect_format, read_source, safe_torch_load
from .probing import Batch

CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
#: Weight files, in the order they are looked for: an index names the shards of a sharded checkpoint.
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
#: Largest config or index file read (a real one is a few kB; an index of thousands of tensors, a few MB).
MAX_JSON_BYTES = 16 * 2**20
#: Tokens per synthetic sequence (fewer when the model's positions are fewer).
SEQUENCE_LENGTH = 16

#: The auto mappings a config's ``architectures`` class is looked up in (first match wins), with the task it
#: names; the task decides the synthetic batch's labels (:func:`synthetic_batch`).
TASKS: dict[str, str] = {
    "MODEL_FOR_CAUSAL_LM_MAPPING": "causal_lm",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING": "seq2seq_lm",
    "MODEL_FOR_MASKED_LM_MAPPING": "masked_lm",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING": "sequence_classification",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING": "token_classification",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING": "image_classification",
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING": "question_answering",
    "MODEL_FOR_PRETRAINING_MAPPING": "pretraining",
    "MODEL_MAPPING": "base",
}

#: File names that belong to a Hugging Face model (so an upload of several files is read as one model).
HF_FILE = re.compile(r"^(config\.json|adapter_config\.json|generation_config\.json|"
                     r"model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|"
                     r"pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json|"
                     r"adapter_model\.(safetensors|bin)|preprocessor_config\.json|tokenizer.*|special_tokens_map\.json|"
                     r"vocab\.(txt|json)|merges\.txt)$")


def _files(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The folder's files by plain name (a path each, or the uploaded buffers) and a label for messages."""
    if isinstance(source, Mapping):
        return {Path(str(name)).name: data for name, data in source.items()}, "the uploaded model files"
    folder = Path(source).expanduser()
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}, folder.name or str(folder)


def _json(files: dict[str, Any], name: str, label: str) -> dict[str, Any]:
    entry = files[name]
    if isinstance(entry, Path):
        if entry.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{label}/{name} is over {megabytes(MAX_JSON_BYTES)}; not a config or index")
        raw = entry.read_bytes()
    else:
        raw = bytes(entry[:MAX_JSON_BYTES + 1])
        if len(raw) > MAX_JSON_BYTES:
            raise CheckpointError(f"{label}/{name} is over {megabytes(MAX_JSON_BYTES)}; not a config or index")

    def no_constants(value: str) -> None:
        raise ValueError(f"{value} is not JSON")

    try:
        value = json.loads(raw, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{label}/{name} is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{label}/{name} is not a JSON object")
    return value


def check_remote_code(config: dict[str, Any], label: str) -> None:
    """Refuse a config that would need code from the folder (``trust_remote_code``), saying why.

    Raises:
        CheckpointError: The config has an ``auto_map``, or its ``model_type`` is missing or unknown to the
            installed transformers.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if "auto_map" in config:
        raise CheckpointError(
            f"{label}: config.json has an auto_map ({', '.join(map(str, config['auto_map']))[:200]}), so its model "
            "is Python code shipped in the folder (trust_remote_code). Running code from a checkpoint is what "
            "this tool never does, so it is refused. Use a model built into transformers, or export yours with "
            "torch.export.save and upload the .pt2 archive.")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        import transformers

        raise CheckpointError(
            f"{label}: config.json's model_type {model_type!r} is not one transformers {transformers.__version__} "
            "builds, so it would need the folder's own code (trust_remote_code), which is refused. Upgrade "
            "transformers if the model type is newer, or export the model with torch.export and upload the .pt2.")


def load_hf_model(source: str | os.PathLike[str] | Mapping[str, Any], *, max_bytes: int, budget: int,
                  name: str | None = None) -> Checkpoint:
    """Read a Hugging Face model folder (a directory, or its files uploaded together) without running its code.

    PEFT adapter folders (``adapter_config.json``) are refused: an adapter holds only low-rank deltas of a base
    model that is not in the folder; merge it first (``peft``'s ``merge_and_unload()``, then
    ``save_pretrained``) and give the merged folder.

    Raises:
        CheckpointError: No config, a config that needs remote code, an adapter, missing or damaged weights, or
            weights over the memory budget (all shards together).
    """
    files, label = _files(source)
    label = name or label
    if ADAPTER_CONFIG in files:
        raise CheckpointError(
            f"{label} is a PEFT adapter (adapter_config.json): it holds only the adapter's low-rank weights, not "
            "the base model they change, so there is nothing complete to probe; adapters are not supported. "
            "Merge it into its base model (model = peft_model.merge_and_unload(); model.save_pretrained(folder)) "
            "and give that folder.")
    if CONFIG not in files:
        raise CheckpointError(
            f"{label}: no config.json (files: {', '.join(sorted(files)[:10]) or 'none'}). A Hugging Face model "
            "folder holds config.json beside model.safetensors or pytorch_model.bin; save_pretrained writes both.")
    config = _json(files, CONFIG, label)
    check_remote_code(config, label)
    state = _weights(files, label, max_bytes, budget)
    metadata = {"model_type": config["model_type"], "architectures": config.get("architectures"),
                "dtype": config.get("dtype", config.get("torch_dtype")), "files": sorted(files)}
    return Checkpoint("huggingface", state, metadata, None, "", label, hf_config=config)


def _weights(files: dict[str, Any], label: str, max_bytes: int, budget: int) -> dict[str, torch.Tensor]:
    index = next((name for name in (SAFETENSORS_INDEX, BIN_INDEX) if name in files), None)
    if index is not None:
        weight_map = _json(files, index, label).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{label}/{index} has no weight_map from tensor names to shard files")
        shards = sorted(set(weight_map.values()))
    else:
        weight_map = None
        shards = [name for name in ("model.safetensors", "pytorch_model.bin") if name in files][:1]
    if not shards:
        raise CheckpointError(f"{label}: config.json but no weights (files: {', '.join(sorted(files)[:10])}); "
                              "expected model.safetensors (or its shards with model.safetensors.index.json) or "
                              "pytorch_model.bin")
    state: dict[str, torch.Tensor] = {}
    used = 0
    for shard in shards:
        if shard not in files:
            raise CheckpointError(f"{label}: the index lists the shard {shard!r}, which is not among the files")
        name = f"{label}/{shard}"
        data, _ = read_source(files[shard], max_bytes, name)
        if shard.endswith(".safetensors"):
            if detect_format(data) != "safetensors":
                raise CheckpointError(f"{name} is not a safetensors file (damaged or truncated?)")
            part = _load_safetensors(data, name, budget - used)
        else:
            loaded = safe_torch_load(data, name, budget - used)
            if not _is_state_dict(loaded):
                raise CheckpointError(f"{name} does not hold a state_dict of tensors")
            part = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        used += sum(dense_bytes(t) for t in part.values())
        if used > budget:
            raise over_budget(label, f"its weights ({len(shards)} files)", used, budget)
        twice = sorted(set(part) & set(state))
        if twice:
            raise CheckpointError(f"{name} repeats tensors of another shard (e.g. {twice[:3]})")
        state.update(part)
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise CheckpointError(f"{label}: {len(absent)} tensors the index lists are in no shard (e.g. {absent[:3]})")
    return state


def resolve_class(config_dict: dict[str, Any], label: str) -> tuple[type, str, Any]:
    """The model class the config's ``architectures`` names, its task and the config object.

    The class is found only as a value of one of transformers' auto mappings (:data:`TASKS`) for the config's
    own config class; with no ``architectures``, the base model (``MODEL_MAPPING``).

    Raises:
        CheckpointError: The named class is in none of those mappings.
    """
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    check_remote_code(config_dict, label)
    config_class = CONFIG_MAPPING[config_dict["model_type"]]
    try:
        config = config_class.from_dict(dict(config_dict))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{label}: config.json does not make a {config_class.__name__} ({exc})") from None
    wanted = (config_dict.get("architectures") or [None])[0]
    for mapping_name, task in TASKS.items():
        mapping = getattr(modeling_auto, mapping_name)
        if (wanted is None and task != "base") or config_class not in mapping:
            continue
        found = mapping[config_class]
        for cls in found if isinstance(found, (tuple, list)) else (found,):
            if wanted is None or cls.__name__ == wanted:
                return cls, task, config
    raise CheckpointError(
        f"{label}: config.json names the architecture {wanted!r}, which is not a {config_dict['model_type']} "
        f"class of the tasks the probe supports ({', '.join(sorted(set(TASKS.values())))}); the weight-only "
        "views still work.")


def _max_positions(config: Any) -> int:
    sizes = [getattr(config, name, None) for name in ("max_position_embeddings", "n_positions", "max_length")]
    return min([s for s in sizes if isinstance(s, int) and s > 0] or [SEQUENCE_LENGTH])


def synthetic_batch(model: torch.nn.Module, config: Any, task: str, batch_size: int = 4, seed: int = 0) -> Batch:
    """A synthetic batch that fits a transformers model, with labels for its own loss where its task has them.

    Text models get token ids drawn uniformly from the vocabulary (an attention mask of ones; encoder-decoder
    models also decoder ids); vision models get N(0, 1) pixel values of the config's image size. Labels:
    the ids themselves for language modelling, random classes for classification, random spans for question
    answering; a base model gets none (the probe then uses the sum of squares of its first output).

    Raises:
        CheckpointError: The model takes another kind of input (audio, ...): give a batch file instead.
    """
    gen = torch.Generator().manual_seed(seed)
    main = getattr(model, "main_input_name", "input_ids")
    n = batch_size
    labels: dict[str, torch.Tensor] = {}
    classes = int(getattr(config, "num_labels", 2) or 2)
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        x = {"pixel_values": torch.randn(n, int(getattr(config, "num_channels", 3)), h, w, generator=gen)}  # (N, C, H, W)
        if task == "image_classification":
            labels["labels"] = torch.randint(0, classes, (n,), generator=gen)                 # (N,)
        what = f"synthetic N(0, 1) pixel values {tuple(x['pixel_values'].shape[1:])}"
    elif main == "input_ids":
        vocab = int(config.vocab_size)
        length = min(SEQUENCE_LENGTH, _max_positions(config))
        ids = torch.randint(0, vocab, (n, length), generator=gen)                              # (N, L)
        x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if getattr(config, "is_encoder_decoder", False):
            x["decoder_input_ids"] = torch.randint(0, vocab, (n, length), generator=gen)     # (N, L)
        if task in ("causal_lm", "masked_lm"):
            labels["labels"] = ids
        elif task == "seq2seq_lm":
            labels["labels"] = x["decoder_input_ids"]
        elif task == "sequence_classification":
            labels["labels"] = (torch.randn(n, generator=gen) if classes == 1
                                else torch.randint(0, classes, (n,), generator=gen))           # (N,)
        elif task == "token_classification":
            labels["labels"] = torch.randint(0, classes, (n, length), generator=gen)           # (N, L)
        elif task == "question_answering":
            labels["start_positions"] = torch.randint(0, length, (n,), generator=gen)          # (N,)
            labels["end_positions"] = torch.randint(0, length, (n,), generator=gen)            # (N,)
        what = f"synthetic token ids ({n}×{length}, uniform over the {vocab:,}-token vocabulary)"
    else:
        raise CheckpointError(f"the model takes {main!r} inputs, for which no synthetic batch is made; upload a "
                              "batch file of named inputs instead")
    what += f" with {', '.join(labels)} for the model's own loss" if labels else " (no labels: sum-of-squares loss)"
    return Batch({**x, **labels}, None, what, True)


def rebuild_hf(ckpt: Checkpoint, budget: int) -> BuiltModel:
    """The transformers model of a Hugging Face checkpoint, built from its config with its weights loaded.

    The model is first built on the meta device (no memory) and its size checked against ``budget``. The
    weights already read are then handed to transformers' own loader (``from_pretrained(None, config=...,
    state_dict=...)``: it reads no file, and it applies the renamings and tied weights of the checkpoint
    format); any key it reports missing, unexpected or of another shape is refused, so no layer is left at
    its random initialisation. The model keeps the weights' dtype (bf16 weights give a bf16 model; the probe
    runs a float32 copy, see :func:`~.probing.float_copy`).

    Raises:
        CheckpointError: Remote code, an unknown class, a model over the budget, or weights that do not fit.
    """
    config_dict = ckpt.hf_config or {}
    cls, task, config = resolve_class(config_dict, ckpt.source)
    if hasattr(config, "use_cache"):
        config.use_cache = False                    # the probe wants outputs and gradients, not a KV cache
    #: What transformers raises for a config or weights it cannot build (an option this install lacks, a
    #: quantisation backend that is not installed, a shape that does not fit).
    failures = (RuntimeError, ValueError, KeyError, TypeError, AttributeError, ImportError, OSError)
    try:
        with torch.device("meta"):
            shapes = cls(config)
    except failures as exc:
        raise CheckpointError(f"{ckpt.source}: transformers cannot build {cls.__name__} from this config.json "
                              f"({type(exc).__name__}: {str(exc)[:300]}). The weight-only views still work.") from None
    cost = sum(dense_bytes(v) for v in shapes.state_dict().values())
    if cost > budget:
        raise over_budget(ckpt.source, f"the {cls.__name__} its config asks for", cost, budget)
    floats = [t.dtype for t in ckpt.state_dict.values() if t.is_floating_point()]
    dtype = max(set(floats), key=floats.count) if floats else torch.float32
    try:
        model, info = cls.from_pretrained(None, config=config, state_dict=ckpt.state_dict, dtype=dtype,
                                          output_loading_info=True)
    except failures as exc:
        raise CheckpointError(f"{ckpt.source}: the weights do not fit {cls.__name__} built from config.json "
                              f"({str(exc)[:300]}). The weight-only views still work.") from None
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info["mismatched_keys"])
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{ckpt.source}: the weights do not fit {cls.__name__} built from config.json: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(mismatched)} with "
            f"other shapes (e.g. {mismatched[:3]}). The weight-only views still work.")

    def make_batch(batch_size: int, seed: int) -> Batch:
        return synthetic_batch(model, config, task, batch_size, seed)

    return BuiltModel(model, f"{cls.__name__} (transformers {config_dict['model_type']}, {task})", (),
                      family=f"transformers {config_dict['model_type']}", make_batch=make_batch,
                      loss="model_loss" if task not in ("base", "pretraining") else "sum_of_squares",
                      matched=len(ckpt.state_dict))
