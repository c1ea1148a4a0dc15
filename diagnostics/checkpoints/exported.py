"""``torch.export`` archives (``.pt2``) read without running anything from the file, rebuilt as the original modules.

``torch.export.load`` is not used: when its safe load of a pickled entry fails it retries with
``torch.load(weights_only=False)``, which runs code from the file. This reader walks the archive itself:

* the zip directory is checked against the memory budget (:func:`~.budget.check_zip_members`) first;
* ``archive_format`` must be ``pt2`` and ``archive_version`` the one this reader knows
  (:data:`ARCHIVE_VERSION`); legacy archives (weights or constants as one pickled ``<model>.pt``) and
  AOTInductor or ExecuTorch packages (native code) are refused;
* weights and tensor constants stored raw are viewed from their bytes with the archive's sizes, strides and
  offsets, bounds-checked; those stored pickled, and the sample inputs, are read only with
  ``weights_only=True`` (:func:`~.loading.safe_torch_load`) and must be plain tensors; TorchBind and
  opaque Python objects are refused;
* the program's JSON is checked before torch deserialises it: every operator must be an ATen or prims
  overload (:data:`OPERATOR`) or ``operator.getitem``, and none of the few that reach files or global state
  (:data:`DENIED_OPERATORS`); every name an identifier (names become Python code
  when the graph is compiled); no guard code (torch turns it into Python), no symbolic shapes (their
  expressions are parsed by ``sympy``, which evaluates them), no subgraphs and no custom objects;
* after deserialisation the resolved graph is checked again (:func:`check_graph`).

What this relies on of PyTorch's internals (the archive layout, ``_SERIALIZE_TO_TORCH_DTYPE``,
``_bytes_to_dataclass`` and ``ExportedProgramDeserializer``) is pinned by ``tests/checkpoints/test_exported.py``.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CheckpointError
from .budget import check_zip_members, dense_bytes, over_budget
from .loading import Buffer, Checkpoint, safe_torch_load

#: The archive version this reader understands (``torch.export.pt2_archive.constants.ARCHIVE_VERSION_VALUE``).
ARCHIVE_VERSION = "0"
#: Operators a graph may call: ATen and prims overloads (``torch.ops.aten.<op>.<overload>``).
OPERATOR = re.compile(r"^torch\.ops\.(aten|prims)\.[a-z_][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
#: ATen operators refused all the same: they read or write files (``from_file`` maps any file, shared),
#: print, or change global state; none appears in a model's exported forward.
DENIED_OPERATORS = {"from_file", "save", "_print", "set_", "set_data", "set_grad_enabled",
                    "_cufft_set_plan_cache_max_size", "_set_item"}
#: Python operators export itself emits (``getitem`` picks one output of a multi-output op such as batch norm).
PYTHON_OPERATORS = {"_operator.getitem": operator.getitem}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
FQN = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
#: Archive folders that hold native code or programs for other runtimes.
NATIVE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia/")
#: Argument kinds torch would turn into code or objects from the file.
REFUSED_ARGUMENTS = {"as_graph": "a subgraph (a higher-order operator such as cond or a loop)",
                     "as_custom_obj": "a TorchBind object", "as_expr": "a symbolic shape expression",
                     "as_sym_int": "a symbolic shape", "as_sym_float": "a symbolic float",
                     "as_sym_bool": "a symbolic condition", "as_operator": "an operator value"}


@dataclass
class ExportedArchive:
    """What a ``.pt2`` archive held: the exported program and the inputs it was exported with."""

    program: Any                     # torch.export.ExportedProgram
    example_inputs: tuple | None     # (args, kwargs) as saved with the program, or None
    operators: list[str]             # the distinct operators its graph calls


def _refuse(name: str, what: str) -> CheckpointError:
    return CheckpointError(f"{name}: {what}; the archive is refused, nothing from it was run.")


def load_pt2(data: Buffer, name: str, budget: int) -> Checkpoint:
    """Read a ``torch.export`` archive safely (see the module docstring) into a checkpoint whose ``program``
    is an :class:`ExportedArchive`.

    Raises:
        CheckpointError: Every archive that is damaged, over the budget, of another version or kind, or holds
            anything but tensors and an ATen/prims graph.
    """
    check_zip_members(data, name, budget)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {info.filename: info for info in archive.infolist()}
        root = next(n for n in members if n.count("/") == 1 and n.endswith("/archive_format")).split("/")[0]

        def read(path: str) -> bytes:
            return archive.read(f"{root}/{path}")

        return _read(read, set(members), root, name, budget)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, KeyError, StopIteration, OSError, EOFError, ValueError, zipfile.LargeZipFile,
            NotImplementedError, RuntimeError) as exc:
        raise _refuse(name, f"not a readable torch.export archive (damaged or truncated?): {type(exc).__name__}: "
                            f"{str(exc)[:200]}") from None


def _read(read, members: set[str], root: str, name: str, budget: int) -> Checkpoint:
    if read("archive_format") != b"pt2":
        raise _refuse(name, "its archive_format is not pt2")
    version = read("archive_version").decode(errors="replace").strip() if f"{root}/archive_version" in members else ""
    if version != ARCHIVE_VERSION:
        raise _refuse(name, f"archive version {version or 'missing'!r}, while this reader knows {ARCHIVE_VERSION!r}")
    paths = sorted(m[len(root) + 1:] for m in members if m.startswith(f"{root}/"))
    native = [p for p in paths if p.startswith(NATIVE_DIRS) or p.endswith((".so", ".cpp", ".dll", ".dylib"))]
    if native:
        raise _refuse(name, f"it is an AOTInductor/ExecuTorch package ({native[0]}): compiled native code, which "
                            "is never loaded here. Save the exported program alone with torch.export.save")
    models = [p[len("models/"):-len(".json")] for p in paths if p.startswith("models/") and p.endswith(".json")]
    if len(models) != 1:
        raise _refuse(name, f"it holds {len(models)} exported programs; one is supported")
    model = models[0]
    legacy = [p for p in (f"data/weights/{model}.pt", f"data/constants/{model}.pt") if p in paths]
    if legacy:
        raise _refuse(name, f"it is a legacy archive ({legacy[0]} is one pickled file, which PyTorch unpickles "
                            "without weights_only). Export and save it again with a current torch.export.save")
    raw = read(f"models/{model}.json")
    try:
        program_json = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _refuse(name, f"its program is not valid JSON ({type(exc).__name__})") from None
    operators = check_program_json(program_json, name)
    budget_left = [budget, 0]                     # the budget, and what the tensors read so far cost
    state = _payload(read, paths, f"data/weights/{model}_weights_config.json", "data/weights/", name, budget_left)
    constants = _payload(read, paths, f"data/constants/{model}_constants_config.json", "data/constants/", name,
                         budget_left)
    example = None
    if f"data/sample_inputs/{model}.pt" in paths:
        example = safe_torch_load(read(f"data/sample_inputs/{model}.pt"), f"{name} (sample inputs)",
                                  budget_left[0] - budget_left[1])
        if not (isinstance(example, tuple) and len(example) == 2 and isinstance(example[1], dict)):
            raise _refuse(name, "its sample inputs are not an (args, kwargs) pair")
    program = _deserialize(raw, state, constants, example, name)
    check_graph(program.graph_module, name)
    params = {k: v.detach() for k, v in program.state_dict.items()}
    metadata = {"operators": len(operators), "exported program": model,
                "inputs": [list(t.shape) for t in (example[0] if example else ()) if isinstance(t, torch.Tensor)]}
    return Checkpoint("torch_export", params, metadata, None, "", name,
                      program=ExportedArchive(program, example, operators))


def _walk(value: Any, path: str = ""):
    """Every (path, key, value) of a JSON tree."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path, key, item
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def check_program_json(program: Any, name: str) -> list[str]:
    """Check a serialised exported program before torch reads it; the distinct operators it calls.

    Raises:
        CheckpointError: Naming the first operator, name, argument kind or field that is not allowed.
    """
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise _refuse(name, "its program has no graph_module")
    if program.get("guards_code"):
        raise _refuse(name, "its program carries guard code, which torch compiles into Python")
    if program.get("range_constraints"):
        raise _refuse(name, "it was exported with dynamic shapes (their expressions are parsed by sympy, which "
                            "evaluates them); export with static shapes")
    graph = program["graph_module"].get("graph")
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    if not isinstance(nodes, list):
        raise _refuse(name, "its program has no graph nodes")
    operators = []
    for node in nodes:
        target = node.get("target") if isinstance(node, dict) else None
        if not isinstance(target, str) or not (OPERATOR.match(target) or target in PYTHON_OPERATORS):
            raise _refuse(name, f"its graph calls {str(target)[:120]!r}, which is not an ATen or prims operator")
        if target.split(".")[-2] in DENIED_OPERATORS:
            raise _refuse(name, f"its graph calls {target!r}, which reaches files or global state")
        operators.append(target)
        metadata = node.get("metadata") or {}
        for item in str(metadata.get("nn_module_stack", "")).split(";") if metadata.get("nn_module_stack") else []:
            parts = item.split(",")
            if len(parts) < 2 or (parts[1] and not FQN.match(parts[1])):
                raise _refuse(name, f"a module path in its graph is not a dotted name ({item[:120]!r})")
    for path, key, value in _walk(program["graph_module"]):
        if key in REFUSED_ARGUMENTS:
            raise _refuse(name, f"its graph holds {REFUSED_ARGUMENTS[key]} ({path}); only static ATen graphs load")
        if key == "name" and isinstance(value, str) and not NAME.match(value):
            raise _refuse(name, f"its graph has a name that is not an identifier ({value[:120]!r} at {path})")
        if key in ("parameter_name", "buffer_name", "tensor_constant_name", "fqn") and isinstance(value, str) \
                and value and not FQN.match(value):
            raise _refuse(name, f"its graph has a module path that is not a dotted name ({value[:120]!r})")
    return sorted(set(operators))


def _payload(read, paths: list[str], config_path: str, folder: str, name: str,
             budget_left: list[int]) -> dict[str, torch.Tensor]:
    """The tensors a weights or constants config lists: raw ones viewed from their bytes (bounds-checked),
    pickled ones read with ``weights_only=True``; anything else refused."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    if config_path not in paths:
        raise _refuse(name, f"{config_path} is missing")
    try:
        config = json.loads(read(config_path))["config"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise _refuse(name, f"{config_path} is not a payload config ({type(exc).__name__})") from None
    storages: dict[str, torch.Tensor] = {}
    tensors = {}
    for fqn, entry in config.items():
        path = str(entry.get("path_name", "")) if isinstance(entry, dict) else ""
        if not FQN.match(fqn) or not NAME.match(path) or f"{folder}{path}" not in paths:
            raise _refuse(name, f"{config_path} has an invalid entry {fqn[:80]!r} -> {path[:80]!r}")
        if not path.startswith(("weight_", "tensor_")):
            raise _refuse(name, f"{fqn} is a {path.split('_')[0]} object (TorchBind or pickled Python), not a tensor")
        if entry.get("use_pickle"):
            tensor = safe_torch_load(read(f"{folder}{path}"), f"{name} ({fqn})",
                                     budget_left[0] - budget_left[1])
            if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
                raise _refuse(name, f"{fqn} is a {type(tensor).__name__}, not a plain tensor")
        else:
            tensor = _raw_tensor(read, f"{folder}{path}", entry.get("tensor_meta"), storages, fqn, name,
                                 _SERIALIZE_TO_TORCH_DTYPE)
        budget_left[1] += dense_bytes(tensor)
        if budget_left[1] > budget_left[0]:
            raise over_budget(name, "its weights and constants made dense", budget_left[1], budget_left[0])
        tensor = tensor.detach()
        tensors[fqn] = torch.nn.Parameter(tensor, requires_grad=tensor.is_floating_point()) \
            if entry.get("is_param") else tensor
    return tensors


def _ints(values: Any, what: str, fqn: str, name: str) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, dict) and isinstance(v.get("as_int"), int)
                                               for v in values):
        raise _refuse(name, f"{fqn} has {what} that are not plain integers (symbolic shapes are not supported)")
    return [v["as_int"] for v in values]


def _raw_tensor(read, member: str, meta: Any, storages: dict[str, torch.Tensor], fqn: str, name: str,
                dtypes: dict) -> torch.Tensor:
    if not isinstance(meta, dict) or meta.get("dtype") not in dtypes:
        raise _refuse(name, f"{fqn} has no valid tensor metadata")
    dtype = dtypes[meta["dtype"]]
    sizes = _ints(meta.get("sizes"), "sizes", fqn, name)
    strides = _ints(meta.get("strides"), "strides", fqn, name)
    offset = _ints([meta.get("storage_offset")], "a storage offset", fqn, name)[0]
    if member not in storages:
        raw = bytearray(read(member))
        if len(raw) % dtype.itemsize:
            raise _refuse(name, f"{member} holds {len(raw)} bytes, not a whole number of {dtype} elements")
        storages[member] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    storage = storages[member]
    if storage.dtype != dtype:
        raise _refuse(name, f"{fqn} reads {member} as {dtype}, another entry as {storage.dtype}")
    if len(sizes) != len(strides) or any(s < 0 for s in sizes + strides) or offset < 0:
        raise _refuse(name, f"{fqn} has sizes {sizes}, strides {strides}, offset {offset}")
    if math.prod(sizes) == 0:
        return torch.zeros(sizes, dtype=dtype)
    last = offset + sum((s - 1) * st for s, st in zip(sizes, strides))
    if last >= storage.numel():
        raise _refuse(name, f"{fqn} reaches element {last} of {member}, which holds {storage.numel()} (truncated?)")
    return torch.as_strided(storage, sizes, strides, offset)


def _deserialize(raw: bytes, state: dict, constants: dict, example: Any, name: str) -> Any:
    """torch's own deserialiser on the checked JSON, given tensors already read (so it unpickles nothing)."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass

    try:
        serialized = _bytes_to_dataclass(schema.ExportedProgram, raw)
        return ExportedProgramDeserializer().deserialize(serialized, state, constants, example)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for programs it cannot rebuild
        raise _refuse(name, f"torch could not rebuild its program ({type(exc).__name__}: {str(exc)[:300]})") from None


def check_graph(module: torch.nn.Module, name: str) -> None:
    """Check every graph of ``module`` (and its submodules) once more, on the resolved nodes.

    Raises:
        CheckpointError: A node calls anything but an ATen/prims overload or ``operator.getitem``, has a name
            that is not an identifier, or is of a kind other than inputs, calls, attributes and outputs.
    """
    allowed_python = set(PYTHON_OPERATORS.values())
    for sub in module.modules():
        graph = getattr(sub, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if not NAME.match(node.name):
                raise _refuse(name, f"the graph node {node.name[:80]!r} is not an identifier")
            if node.op == "call_function":
                target = node.target
                ok = target in allowed_python or (isinstance(target, torch._ops.OpOverload)
                                                  and target.namespace in ("aten", "prims")
                                                  and target._opname not in DENIED_OPERATORS)
                if not ok:
                    raise _refuse(name, f"its graph calls {target!r}, which is not an ATen or prims operator")
            elif node.op not in ("placeholder", "get_attr", "output", "call_module"):
                raise _refuse(name, f"its graph has a {node.op} node")


def rebuild_exported(archive: ExportedArchive, name: str) -> torch.nn.Module:
    """The exported program as modules again (``torch.export.unflatten``): the original hierarchy and layer
    names, each submodule running its part of the checked ATen graph, differentiable end to end."""
    try:
        module = torch.export.unflatten(archive.program)
    except Exception as exc:  # noqa: BLE001 - unflatten raises many types on programs it cannot split
        raise CheckpointError(f"{name}: the exported program could not be unflattened into modules "
                              f"({type(exc).__name__}: {str(exc)[:300]})") from None
    check_graph(module, name)
    return module
