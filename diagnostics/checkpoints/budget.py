"""The memory budget every file read by :mod:`diagnostics.checkpoints` is checked against before it is materialised.

A small file can ask for a lot of memory: a deflated zip member of zeros expands a thousandfold, a stride-0
``expand`` view costs its full size the moment anything makes it dense (``.double()``, ``.numpy()``), many
tensors can point at one storage, and a model config can ask for billions of parameters. So, before anything
is built, what each of these would cost is added up and compared with one budget:

* the uncompressed size of every member of a ``torch.save`` zip (what ``torch.load`` allocates), read from
  the zip directory with :mod:`zipfile` before ``torch.load`` runs; the pickle member (the object tree) counts
  :data:`PICKLE_EXPANSION` times its size, since each byte of a pickle can become a Python object;
* each tensor as it would be once made dense: ``numel * element_size``, whatever its strides or storage;
* a model's parameters as its config asks for them (see ``architecture.check_config``).

The budget is ``DIAGNOSTICS_MEMORY_BUDGET_MB`` (read on every call, so a server sets it at launch) or
:data:`DEFAULT_BUDGET_MB`; each function also takes it as an argument.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import CheckpointError

#: Budget when ``DIAGNOSTICS_MEMORY_BUDGET_MB`` is not set: what a laptop can spare for one file.
DEFAULT_BUDGET_MB = 2048
#: Bytes of Python objects one byte of a pickle can become (``]`` alone makes a 56-byte list plus its pointer).
PICKLE_EXPANSION = 64
#: Most tensors one file may hold (a large language model has a few thousand).
MAX_TENSORS = 100_000
#: How deep a loaded object tree is walked looking for tensors (state_dicts nest two or three levels).
MAX_DEPTH = 8


def budget_bytes(budget: int | None = None) -> int:
    """The budget in bytes: ``budget`` if given, else ``DIAGNOSTICS_MEMORY_BUDGET_MB``, else the default.

    Raises:
        CheckpointError: The environment variable is not a positive number.
    """
    if budget is not None:
        return int(budget)
    raw = os.environ.get("DIAGNOSTICS_MEMORY_BUDGET_MB", "").strip()
    if not raw:
        return DEFAULT_BUDGET_MB * 2**20
    try:
        megabytes = float(raw)
    except ValueError:
        megabytes = -1.0
    if not megabytes > 0:
        raise CheckpointError(f"DIAGNOSTICS_MEMORY_BUDGET_MB={raw!r} is not a positive number of megabytes")
    return int(megabytes * 2**20)


def megabytes(nbytes: float) -> str:
    """``nbytes`` as a short human size for messages (``"4096 MB"``, ``"0.5 MB"``)."""
    mb = nbytes / 2**20
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


def over_budget(name: str, what: str, cost: int, budget: int) -> CheckpointError:
    """The error for ``what`` of ``name`` needing ``cost`` bytes, over ``budget``."""
    return CheckpointError(
        f"{name}: {what} would need {megabytes(cost)} of memory, over the {megabytes(budget)} budget; nothing "
        "was loaded. If the file is genuine, raise DIAGNOSTICS_MEMORY_BUDGET_MB on the machine running the app.")


def check_zip_members(data: bytes, name: str, budget: int) -> None:
    """Refuse a ``torch.save`` zip whose members would expand past the budget, before anything is inflated.

    ``torch.load`` allocates each member's uncompressed size as the zip directory declares it; that is what
    is added up here (the pickle member weighted by :data:`PICKLE_EXPANSION`).

    Raises:
        CheckpointError: A member or all of them together would need more than ``budget`` bytes.
    """
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types for damaged directories
        raise CheckpointError(f"{name} is not a readable PyTorch checkpoint (corrupt or truncated?): "
                              f"a damaged zip ({exc})") from None
    if len(members) > MAX_TENSORS:
        raise CheckpointError(f"{name}: the archive has {len(members):,} members, more than the "
                              f"{MAX_TENSORS:,} a checkpoint may hold")
    total = 0
    for info in members:
        cost = info.file_size * (PICKLE_EXPANSION if info.filename.endswith(".pkl") else 1)
        if cost > budget:
            what = (f"the object tree {info.filename!r} ({megabytes(info.file_size)} of pickle)"
                    if info.filename.endswith(".pkl") else
                    f"member {info.filename!r} ({megabytes(info.compress_size)} in the file, "
                    f"{megabytes(info.file_size)} unpacked)")
            raise over_budget(name, what, cost, budget)
        total += cost
    if total > budget:
        raise over_budget(name, f"its {len(members)} archive members unpacked", total, budget)


def dense_bytes(tensor: torch.Tensor) -> int:
    """What ``tensor`` costs once made dense: every element stored once, whatever its strides or storage."""
    return tensor.numel() * tensor.element_size()


def tensors_in(obj: Any, depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a loaded object tree (dicts, lists, tuples, namespaces) with a dotted path to it."""
    if isinstance(obj, torch.Tensor):
        yield "", obj
        return
    if depth >= MAX_DEPTH:
        return
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = vars(obj).items()
    else:
        return
    for key, value in items:
        for path, tensor in tensors_in(value, depth + 1):
            yield f"{key}.{path}" if path else str(key), tensor


def check_dense_cost(obj: Any, name: str, budget: int) -> None:
    """Refuse an object whose tensors, each made dense, would need more than ``budget`` bytes together.

    Stride-0 (``expand``) views and tensors sharing one storage load cheaply but cost their full size in any
    statistic, copy or model; that full size is what counts.

    Raises:
        CheckpointError: Naming the largest tensor and the total.
    """
    total, count, largest = 0, 0, ("", 0, ())
    for path, tensor in tensors_in(obj):
        count += 1
        if count > MAX_TENSORS:
            raise CheckpointError(f"{name} holds more than {MAX_TENSORS:,} tensors")
        cost = dense_bytes(tensor)
        total += cost
        if cost > largest[1]:
            largest = (path, cost, tuple(tensor.shape))
    if total > budget:
        path, cost, shape = largest
        raise over_budget(name, f"its {count} tensors made dense (the largest, {path or 'the tensor'} of shape "
                                f"{shape}, alone {megabytes(cost)})", total, budget)
