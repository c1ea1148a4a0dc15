"""Load a checkpoint file safely (never running code from it) and rebuild its architecture when it is known.

Formats are recognised from the bytes, not the file name:

* ``torch.save`` files (zip or legacy): read with ``torch.load(weights_only=True, map_location="cpu")``, never
  retried without it. Harmless metadata classes (e.g. Lightning's hyper-parameter dict) load through an explicit
  allowlist that maps them to plain containers; anything else the file would need is reported by name.
* safetensors files: parsed here (the format is a JSON header and raw little-endian arrays, nothing to
  execute); the tests check the reader against files written by the ``safetensors`` package.
* TorchScript archives: refused by default (loading one runs its code); ``allow_torchscript=True`` opts in.
* Hugging Face model folders (a directory, or its files uploaded together): see :mod:`.huggingface`.
* ``torch.export`` archives (``.pt2``): read by :mod:`.exported` without ``torch.export.load``.

A safetensors file given as a path is memory-mapped (copy-on-write), so its tensors are pages of the file,
read when touched, never a second copy of it; one given as a writable buffer (an upload's ``getbuffer()``)
is viewed in place.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import mmap
import os
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..experiments.models import CHECKPOINT_FORMAT
from .budget import (MAX_TENSORS, PICKLE_EXPANSION, budget_bytes, check_dense_cost, check_zip_members,
                     megabytes, over_budget)

#: Default largest file accepted (bytes); pass ``max_bytes`` to change it.
DEFAULT_MAX_BYTES = 2 * 1024**3

#: Largest safetensors header read (the official reader's limit); lower when the budget is small.
MAX_SAFETENSORS_HEADER = 100_000_000

#: Keys under which training checkpoints commonly keep the model's weights, in the order they are tried.
STATE_DICT_KEYS = ("state_dict", "state_dict_ema", "model_state_dict", "model", "net", "network", "module", "weights")

_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


#: Classes a training checkpoint's metadata may hold, mapped to harmless stand-ins or themselves. Only these
#: are ever allowed beyond what ``weights_only`` permits on its own; Lightning's attribute dicts become plain
#: dicts (their module is never imported).
SAFE_METADATA_GLOBALS: list[tuple[Any, str]] = [
    (argparse.Namespace, "argparse.Namespace"),
    (dict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (dict, "lightning.pytorch.utilities.parsing.AttributeDict"),
    (Path, "pathlib.PosixPath"),
    (Path, "pathlib.WindowsPath"),
]


@dataclass
class Checkpoint:
    """What was found in a checkpoint file.

    Attributes:
        format: ``"state_dict"``, ``"training_checkpoint"``, ``"project_checkpoint"``, ``"safetensors"``,
            ``"huggingface"``, ``"torch_export"`` or ``"torchscript"``.
        state_dict: Parameter and buffer tensors only, prefixes such as ``module.`` / ``model.`` removed.
        metadata: Everything else that was saved beside the weights (epoch, hyper-parameters, ...), without
            tensors; optimizer state is summarised, not kept.
        architecture: The project's CNN config (a dict) when the file is one of ours, else None.
        stripped_prefix: The prefix removed from every key (``""`` if none).
        source: A description of where it came from (file name).
        hf_config: The ``config.json`` of a Hugging Face model folder (a plain dict), else None.
        program: The :class:`~.exported.ExportedArchive` of a ``.pt2`` file, else None.
    """

    format: str
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] | None = None
    stripped_prefix: str = ""
    source: str = ""
    hf_config: dict[str, Any] | None = None
    program: Any = None

    @property
    def parameter_count(self) -> int:
        return int(sum(t.numel() for t in self.state_dict.values() if t.is_floating_point()))


#: A buffer the readers accept: bytes, a buffer viewed in place (memoryview) or a memory-mapped file.
Buffer = bytes | memoryview | mmap.mmap


def read_source(source: str | os.PathLike[str] | bytes | bytearray | memoryview | io.IOBase,
                max_bytes: int, name: str | None = None) -> tuple[Buffer, str]:
    """The contents of a path, buffer or file object (at most ``max_bytes``) and a name for messages
    (``name`` if given).

    A memoryview is kept as it is (an upload viewed in place, not copied); a path to a safetensors file is
    memory-mapped (:func:`map_file`); anything else is read into bytes.
    """
    data, found = _read_source(source, max_bytes)
    name = name or found
    if len(data) > max_bytes:
        raise CheckpointError(f"{name} is over the {max_bytes / 2**20:.0f} MB limit; raise max_bytes")
    if not len(data):
        raise CheckpointError(f"{name} is empty: save the model with torch.save(model.state_dict(), path)")
    return data, str(name)


def _read_source(source: Any, max_bytes: int) -> tuple[Buffer, str]:
    """The contents and the name a source gives itself, unchecked."""
    if isinstance(source, memoryview):
        data: Buffer = source.cast("B") if source.format != "B" else source
        name = "uploaded bytes"
    elif isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = "uploaded bytes"
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        name = getattr(source, "name", "uploaded file")
    else:
        path = Path(source).expanduser()
        name = path.name
        if not path.is_file():
            raise CheckpointError(f"no file at {path}; check the path (it is read on the machine running the app)")
        size = path.stat().st_size
        if size > max_bytes:
            raise CheckpointError(f"{name} is {size / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit; "
                                  "raise max_bytes (and server.maxUploadSize for uploads)")
        with path.open("rb") as f:
            head = f.read(16)
        data = map_file(path) if _safetensors_head(head, size) else path.read_bytes()
    return data, str(name)


def map_file(path: str | os.PathLike[str]) -> mmap.mmap:
    """``path`` memory-mapped copy-on-write: its pages are read when touched and never written back, so the
    tensors viewing it may even be changed in place without touching the file."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


def _safetensors_head(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes starting with ``head`` (16 bytes) is laid out as a safetensors file."""
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= size - 8


def detect_format(data: Buffer) -> str:
    """``"zip"`` (torch.save or TorchScript), ``"torchscript"``, ``"pt2"`` (a ``torch.export`` archive),
    ``"legacy_torch"``, ``"safetensors"``, ``"pickle"`` or ``"unknown"`` — from the bytes alone."""
    if data[:4] == b"PK\x03\x04":
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except Exception:  # noqa: BLE001 - a damaged zip directory; torch.load then reports it as corrupt
            return "zip"
        if any(n.count("/") == 1 and n.endswith("/archive_format") for n in names):
            return "pt2"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "zip"
    if len(data) >= 10 and data[0] == 0x80 and data[1] in (2, 3, 4, 5):
        # torch's legacy format starts with a pickled magic number; anything else is a bare pickle.
        return "legacy_torch" if b"\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8" in data[:32] or data[2:3] == b"\x8a" \
            else "pickle"
    if len(data) >= 10 and _safetensors_head(bytes(data[:9]), len(data)):
        return "safetensors"
    return "unknown"


def _load_safetensors(data: Buffer, name: str, budget: int) -> dict[str, torch.Tensor]:
    """Read a safetensors file: an 8-byte header length, a JSON header, then raw little-endian arrays.

    Like the official reader, every entry must lie inside the file and no two may overlap; the header and
    the tensors together are checked against ``budget`` before any tensor is made. From immutable bytes each
    tensor is one copy of its bytes; from a memory map or a writable memoryview each tensor views the buffer
    in place (no copy), unless it is not aligned to its element size.
    """
    (header_len,) = struct.unpack("<Q", data[:8])
    limit = min(MAX_SAFETENSORS_HEADER, budget // PICKLE_EXPANSION)
    if header_len > limit:
        raise over_budget(name, f"a safetensors header of {megabytes(header_len)}", header_len * PICKLE_EXPANSION,
                          budget)
    try:
        header = json.loads(bytes(data[8:8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{name}: the safetensors header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{name}: the safetensors header is not a JSON object")
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"{name} holds {len(header):,} tensors, more than {MAX_TENSORS:,}")
    base = 8 + header_len
    entries = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            start, end = (int(v) for v in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{name}: tensor {key!r} has an invalid header entry ({exc})") from None
        if not 0 <= start <= end <= len(data) - base:
            raise CheckpointError(f"{name}: tensor {key!r} points outside the file (truncated?)")
        if any(s < 0 for s in shape) or math.prod(shape) * dtype.itemsize != end - start:
            raise CheckpointError(f"{name}: tensor {key!r} has {end - start} bytes for shape {shape} of {dtype}")
        entries.append((start, end, key, dtype, shape))
    by_offset = sorted(entries, key=lambda e: (e[0], e[1]))
    for (_, end, key, *_), (start, _, other, *_) in zip(by_offset, by_offset[1:]):
        if start < end:
            raise CheckpointError(f"{name}: tensors {key!r} and {other!r} overlap in the file; a safetensors file "
                                  "stores each tensor once (the official reader refuses this too)")
    total = sum(end - start for start, end, *_ in entries)
    if total > budget:
        raise over_budget(name, f"its {len(entries)} tensors", total, budget)
    view = memoryview(data)
    in_place = not view.readonly
    tensors = {}
    for start, end, key, dtype, shape in entries:
        if end == start:
            flat = torch.empty(0, dtype=dtype)
        elif in_place and (base + start) % dtype.itemsize == 0:
            flat = torch.frombuffer(data, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        else:
            flat = torch.frombuffer(bytearray(view[base + start:base + end]), dtype=dtype)
        tensors[key] = flat.reshape(shape)
    return tensors


def safe_torch_load(data: bytes, name: str, budget: int | None = None) -> Any:
    """The library's only ``torch.load``: ``weights_only=True`` and the metadata allowlist, never anything looser.

    Every reader of a ``torch.save`` file (checkpoints, this project's CNN checkpoints, uploaded batches) goes
    through here, so nothing in a file ever runs.

    Args:
        data: The file's bytes.
        name: The file's name, for messages.
        budget: Memory budget in bytes (default: :func:`~.budget.budget_bytes`). The zip's members are
            checked against it before ``torch.load``, the loaded tensors made dense after it, before anything
            copies them.

    Raises:
        CheckpointError: The file cannot be loaded safely (a pickled model, unknown classes), is corrupt, or
            would need more memory than the budget; the message says what to save instead.
    """
    budget = budget_bytes(budget)
    if data[:4] == b"PK\x03\x04":
        check_zip_members(data, name, budget)
    obj = _torch_load(data, name)
    check_dense_cost(obj, name, budget)
    return obj


def _torch_load(data: bytes, name: str) -> Any:
    try:
        with torch.serialization.safe_globals(SAFE_METADATA_GLOBALS):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt or unsafe files
        message = str(exc)
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - a corrupt file cannot even be scanned
            needed = []
        allowed = {n for _, n in SAFE_METADATA_GLOBALS}
        needed = [n for n in needed if n not in allowed]
        if needed:
            model_classes = [n for n in needed if n.startswith("torch.nn.modules.") or ".nn." in n
                             or re.search(r"\.(Net|Model|ResNet|VGG|DenseNet|MobileNet)\w*$", n)]
            if model_classes:
                raise CheckpointError(
                    f"{name} holds a whole pickled model ({', '.join(needed[:5])}), and unpickling it would run "
                    "code from the file, so it is refused. Save the weights instead: "
                    "torch.save(model.state_dict(), 'weights.pt') and upload that.") from None
            raise CheckpointError(
                f"{name} needs classes that are not allowed to load safely: {', '.join(needed[:8])}"
                f"{' ...' if len(needed) > 8 else ''}. Only tensors and plain containers are read; save the "
                "weights with torch.save(model.state_dict(), path), or keep metadata as plain dicts.") from None
        if "weights_only" in message or "Unsupported global" in message or "Unsupported operand" in message:
            raise CheckpointError(f"{name} contains objects that cannot be loaded safely ({message.splitlines()[0]}); "
                                  "save only tensors: torch.save(model.state_dict(), path)") from None
        raise CheckpointError(f"{name} is not a readable PyTorch checkpoint (corrupt or truncated?): "
                              f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and \
        sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def _strip_prefix(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove a prefix every key shares (``module.`` from DDP, ``model.`` from Lightning), repeatedly."""
    removed = ""
    while state:
        for prefix in ("module.", "model.", "_orig_mod.", "net."):
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                removed += prefix
                break
        else:
            break
    return state, removed


def _plain(value: Any, depth: int = 0) -> Any:
    """Metadata without tensors, for display."""
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    if depth > 3:
        return "..."
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in list(value)[:50]]
    if isinstance(value, argparse.Namespace):
        return _plain(vars(value), depth + 1)
    if isinstance(value, str):
        return value if len(value) <= 1000 else value[:1000] + f"... ({len(value):,} characters)"
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return repr(value)[:200]


def load_checkpoint(source: str | os.PathLike[str] | bytes | memoryview | io.IOBase | Mapping[str, Any], *,
                    max_bytes: int = DEFAULT_MAX_BYTES, allow_torchscript: bool = False,
                    memory_budget: int | None = None, name: str | None = None) -> Checkpoint:
    """Load a checkpoint safely and find the model weights in it.

    Args:
        source: A path on this machine (a file, or a Hugging Face model folder), the file's bytes (a
            memoryview is read in place), a binary file object (e.g. an upload), or the files of a Hugging
            Face model uploaded together as ``{file name: bytes or memoryview}``.
        max_bytes: Largest file accepted.
        allow_torchscript: Load TorchScript archives (this runs code from the file: only for trusted files).
        memory_budget: Bytes the file may cost once loaded (default ``DIAGNOSTICS_MEMORY_BUDGET_MB``, see
            :mod:`~diagnostics.checkpoints.budget`); checked before anything is materialised.
        name: What messages call the source (e.g. an upload's file name); default: the file or folder name.

    Raises:
        CheckpointError: For every file that cannot be loaded safely, with what to do instead.
    """
    budget = budget_bytes(memory_budget)
    if isinstance(source, Mapping) or (isinstance(source, (str, os.PathLike)) and Path(source).expanduser().is_dir()):
        from .huggingface import load_hf_model

        return load_hf_model(source, max_bytes=max_bytes, budget=budget, name=name)
    data, name = read_source(source, max_bytes, name)
    if isinstance(data, memoryview) and not _safetensors_head(bytes(data[:16]), len(data)):
        data = bytes(data)      # one copy that every reader below shares (io.BytesIO copies a memoryview each time)
    kind = detect_format(data)
    if kind == "pt2":
        from .exported import load_pt2

        return load_pt2(data, name, budget)
    if kind == "safetensors":
        state = _load_safetensors(data, name, budget)
        state, prefix = _strip_prefix(state)
        return Checkpoint("safetensors", state, {}, None, prefix, name)
    if kind == "torchscript":
        if not allow_torchscript:
            raise CheckpointError(f"{name} is a TorchScript archive; loading one runs code from the file, so it is "
                                  "refused. Save the weights with torch.save(model.state_dict(), path) instead.")
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{name}: TorchScript archive could not be loaded ({exc})") from None
        return Checkpoint("torchscript", dict(module.state_dict()), {}, None, "", name)
    if kind in ("pickle", "unknown"):
        hint = "a bare pickle, which is never unpickled here" if kind == "pickle" else "not a format we know"
        raise CheckpointError(f"{name} is {hint}. Supported: torch.save files (a state_dict or a training "
                              "checkpoint holding one) and safetensors files.")
    obj = safe_torch_load(data, name, budget)
    return _interpret(obj, name)


def _interpret(obj: Any, name: str) -> Checkpoint:
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = obj.get("state_dict")
        if not _is_state_dict(state):
            raise CheckpointError(f"{name}: a project checkpoint without weights")
        metadata = {k: _plain(v) for k, v in obj.items() if k not in ("state_dict",)}
        return Checkpoint("project_checkpoint", dict(state), metadata, dict(obj.get("config") or {}), "", name)
    if _is_state_dict(obj):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        state, prefix = _strip_prefix(tensors)
        return Checkpoint("state_dict", state, {}, None, prefix, name)
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            candidate = obj.get(key)
            if isinstance(candidate, nn.Module):  # pragma: no cover - weights_only never builds modules
                candidate = candidate.state_dict()
            if _is_state_dict(candidate):
                tensors = {k: v for k, v in candidate.items() if isinstance(v, torch.Tensor)}
                state, prefix = _strip_prefix(tensors)
                metadata = {}
                for k, v in obj.items():
                    if k == key:
                        continue
                    if k in ("optimizer", "optimizer_states", "optimizer_state_dict", "lr_schedulers"):
                        metadata[k] = "(optimizer state, not loaded into the model)"
                    else:
                        metadata[k] = _plain(v)
                return Checkpoint("training_checkpoint", state, metadata, None, prefix, name)
        keys = ", ".join(map(str, list(obj)[:12]))
        raise CheckpointError(f"{name} is a dict without model weights under any of {', '.join(STATE_DICT_KEYS)} "
                              f"(its keys: {keys}). Save torch.save(model.state_dict(), path), or a dict with "
                              "the weights under 'state_dict'.")
    raise CheckpointError(f"{name} holds a {type(obj).__name__}, not model weights. Save "
                          "torch.save(model.state_dict(), path).")
