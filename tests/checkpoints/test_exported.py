""".pt2 archives (torch.export): round trips with float64-checked per-layer norms under the original layer names,
a malicious archive that runs code under torch.export.load and nothing here, refusals, a fuzz, and pins of
the PyTorch internals the reader relies on."""

from __future__ import annotations

import io
import json
import random
import zipfile

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import diagnostics as dx
from diagnostics.checkpoints import exported
from diagnostics.checkpoints.probing import Batch
from tests.checkpoints.roundtrip import assert_norms_match, float64_weight_grad_norms
from tests.checkpoints.test_loading import Exploit


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + torch.relu(self.fc(x)))              # (N, width): the residual add


class Residual(nn.Module):
    """A custom module: conv stem, batch norm, two residual blocks, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(Block(8), Block(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.stem(x)).mean((2, 3))                     # (N, 8)
        return self.head(self.blocks(h))                           # (N, 5)


class TinyTransformer(nn.Module):
    """Token ids in, class logits out: an embedding, one encoder layer, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(1))   # (N, 3)


#: id: (model factory, example input, min layers recorded)
PROGRAMS = {
    "torchvision-resnet18": (lambda: torchvision.models.resnet18(num_classes=4), lambda: torch.randn(4, 3, 64, 64), 20),
    "small-transformer": (TinyTransformer, lambda: torch.randint(0, 50, (2, 6)), 4),
    "custom-residual": (Residual, lambda: torch.randn(4, 3, 8, 8), 6),
}


def archive_of(model: nn.Module, x: torch.Tensor, **export_kwargs) -> bytes:
    model.train()
    program = torch.export.export(model, (x,), **export_kwargs)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def residual_archive() -> bytes:
    torch.manual_seed(0)
    return archive_of(Residual(), torch.randn(4, 3, 8, 8))


@pytest.mark.parametrize("program_id", list(PROGRAMS))
def test_an_archive_round_trips_with_float64_checked_norms_under_the_original_names(program_id, store):
    make, example, min_layers = PROGRAMS[program_id]
    torch.manual_seed(0)
    model, x = make(), example()
    ckpt = dx.load_checkpoint(archive_of(model, x))
    assert ckpt.format == "torch_export" and set(ckpt.state_dict) <= set(model.state_dict())
    built = dx.rebuild(ckpt)
    assert built.family == "torch.export" and built.loss == "cross_entropy"
    assert {n for n, _ in built.model.named_parameters()} == {n for n, _ in model.named_parameters()}
    synthetic = built.make_batch(len(x), 0)
    assert synthetic.synthetic and synthetic.x.shape == x.shape and synthetic.x.dtype == x.dtype
    y = torch.randint(0, 3, (len(x),))
    result = dx.probe(built.model, Batch(synthetic.x, y, synthetic.source, True), "cross_entropy", store=store,
                      check=False)
    inputs = synthetic.x.double() if synthetic.x.is_floating_point() else synthetic.x
    expected = float64_weight_grad_norms(model, lambda m: F.cross_entropy(m(inputs), y))
    assert_norms_match(store, result.run_id, expected, min_layers=min_layers)


# --- archives built to attack the reader -----------------------------------------------------------------------

def rewrite(data: bytes, changes: dict[str, bytes | None]) -> bytes:
    """The archive with members replaced (None removes one, a new name adds one), written by zipfile."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if info.filename not in changes:
                target.writestr(info.filename, source.read(info.filename))
        for name, content in changes.items():
            if content is not None:
                target.writestr(name, content)
    return out.getvalue()


def program_json(data: bytes) -> dict:
    return json.loads(zipfile.ZipFile(io.BytesIO(data)).read("archive/models/model.json"))


def with_program(data: bytes, change) -> bytes:
    program = program_json(data)
    change(program)
    return rewrite(data, {"archive/models/model.json": json.dumps(program).encode()})


def pickled_weight(data: bytes, marker) -> bytes:
    """The archive with its first weight stored 'pickled': a payload that touches ``marker`` when unpickled."""
    config_name = "archive/data/weights/model_weights_config.json"
    config = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    payload = io.BytesIO()
    torch.save(Exploit(str(marker)), payload)
    return rewrite(data, {config_name: json.dumps(config).encode(),
                          f"archive/data/weights/{first['path_name']}": payload.getvalue()})


def test_a_pickle_payload_in_a_weight_runs_under_torch_export_load_and_never_here(residual_archive, tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    with pytest.raises(dx.CheckpointError, match="weights_only|cannot be loaded safely|not allowed"):
        dx.load_checkpoint(pickled_weight(residual_archive, ours))
    assert not ours.exists()
    # The twin: PyTorch's own loader falls back to weights_only=False and runs the payload (pinned: if this
    # stops, torch.export.load became safe and the reasons for this reader should be looked at again).
    try:
        torch.export.load(io.BytesIO(pickled_weight(residual_archive, theirs)))
    except Exception:  # noqa: BLE001 - it fails after running the payload; only the marker matters
        pass
    assert theirs.exists()


def names_first_node(name: str):
    def change(program: dict) -> None:
        node = program["graph_module"]["graph"]["nodes"][0]
        node["outputs"][0]["as_tensor"]["name"] = name
    return change


def sample_inputs_payload(marker) -> bytes:
    buf = io.BytesIO()
    torch.save((Exploit(str(marker)), {}), buf)
    return buf.getvalue()


REFUSALS = {
    "aotinductor-package": (lambda d, m: rewrite(d, {"archive/data/aotinductor/model/model.so": b"\x7fELF"}),
                            "AOTInductor"),
    "legacy-weights": (lambda d, m: rewrite(d, {"archive/data/weights/model.pt": b"PK"}), "legacy archive"),
    "python-operator": (lambda d, m: with_program(d, lambda p: p["graph_module"]["graph"]["nodes"][0].update(
        target="builtins.eval")), "'builtins.eval'.*not an ATen"),
    "custom-namespace": (lambda d, m: with_program(d, lambda p: p["graph_module"]["graph"]["nodes"][0].update(
        target="torch.ops.mylib.evil.default")), "not an ATen"),
    "aten-from-file": (lambda d, m: with_program(d, lambda p: p["graph_module"]["graph"]["nodes"][0].update(
        target="torch.ops.aten.from_file.default")), "reaches files or global state"),
    "guard-code": (lambda d, m: with_program(d, lambda p: p.update(guards_code=["__import__('os').system('x')"])),
                   "guard code"),
    "node-name-code": (lambda d, m: with_program(d, names_first_node("x; __import__('os').system('x')")),
                       "not an identifier"),
    "sample-inputs-payload": (lambda d, m: rewrite(d, {"archive/data/sample_inputs/model.pt": sample_inputs_payload(m)}),
                              "sample inputs"),
    "torchbind-constant": (lambda d, m: rewrite(d, {
        "archive/data/constants/model_constants_config.json": json.dumps({"config": {"obj": {
            "path_name": "custom_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}).encode(),
        "archive/data/constants/custom_obj_0": b"\x80\x02"}), "TorchBind or pickled Python"),
    "other-version": (lambda d, m: rewrite(d, {"archive/archive_version": b"99"}), "archive version '99'"),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_archives_with_code_native_code_or_other_versions_are_refused(refusal, residual_archive, tmp_path):
    make, message = REFUSALS[refusal]
    marker = tmp_path / "pwned"
    with pytest.raises(dx.CheckpointError, match=message):
        dx.load_checkpoint(make(residual_archive, marker))
    assert not marker.exists()


def test_dynamic_shapes_are_refused_since_sympy_would_evaluate_their_expressions():
    batch = torch.export.Dim("batch", min=2, max=64)
    data = archive_of(Residual(), torch.randn(4, 3, 8, 8), dynamic_shapes=({0: batch},))
    with pytest.raises(dx.CheckpointError, match="dynamic shapes"):
        dx.load_checkpoint(data)


def fuzz_cases(data: bytes, n: int = 40) -> list[bytes]:
    rng = random.Random(2015)
    cases = []
    for i in range(n):
        if i % 2:
            cases.append(data[:rng.randrange(len(data))])                       # truncated
        else:
            damaged = bytearray(data)
            for _ in range(rng.randrange(1, 30)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)       # corrupted bytes
            cases.append(bytes(damaged))
    return cases


def test_truncated_and_corrupted_archives_are_checkpoint_errors_and_nothing_unpickles_unsafely(
        residual_archive, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    refused = 0
    for data in fuzz_cases(residual_archive) + fuzz_cases(pickled_weight(residual_archive, marker), 10):
        try:
            ckpt = dx.load_checkpoint(data)
        except dx.CheckpointError:
            refused += 1
        else:                                       # a flipped byte inside a name or weight can leave it valid
            assert ckpt.format == "torch_export" and ckpt.state_dict
    assert refused >= 40 and not marker.exists()
    assert calls and all(w is True for w in calls)


# --- pins: the PyTorch internals this reader depends on ----------------------------------------------------------

def test_the_archive_layout_is_the_one_the_reader_knows():
    from torch.export.pt2_archive import constants

    assert constants.ARCHIVE_FORMAT_VALUE == "pt2"
    assert constants.ARCHIVE_VERSION_VALUE == exported.ARCHIVE_VERSION
    assert constants.MODELS_FILENAME_FORMAT == "models/{}.json"
    assert constants.WEIGHTS_DIR == "data/weights/" and constants.CONSTANTS_DIR == "data/constants/"
    assert constants.WEIGHTS_CONFIG_FILENAME_FORMAT == "data/weights/{}_weights_config.json"
    assert constants.CONSTANTS_CONFIG_FILENAME_FORMAT == "data/constants/{}_constants_config.json"
    assert constants.SAMPLE_INPUTS_FILENAME_FORMAT == "data/sample_inputs/{}.pt"
    assert (constants.WEIGHT_FILENAME_PREFIX, constants.TENSOR_CONSTANT_FILENAME_PREFIX) == ("weight_", "tensor_")
    assert constants.AOTINDUCTOR_DIR.startswith(exported.NATIVE_DIRS)


def test_the_serde_internals_the_reader_calls_keep_their_meaning(residual_archive):
    import inspect

    from torch._export.serde import serialize

    assert serialize._SERIALIZE_TO_TORCH_DTYPE[7] == torch.float32                   # ScalarType.FLOAT
    assert {torch.bfloat16, torch.float16, torch.int64} <= set(serialize._SERIALIZE_TO_TORCH_DTYPE.values())
    parameters = list(inspect.signature(serialize.ExportedProgramDeserializer.deserialize).parameters)
    assert parameters[:5] == ["self", "exported_program", "state_dict", "constants", "example_inputs"]
    example = ((torch.ones(1),), {})
    assert serialize.deserialize_torch_artifact(example) is example                 # given objects: never unpickled
    program = serialize._bytes_to_dataclass(serialize.ExportedProgram,
                                            zipfile.ZipFile(io.BytesIO(residual_archive)).read("archive/models/model.json"))
    assert isinstance(program, serialize.ExportedProgram) and program.guards_code == []
    config = json.loads(zipfile.ZipFile(io.BytesIO(residual_archive)).read(
        "archive/data/weights/model_weights_config.json"))["config"]
    entry = config["stem.weight"]
    assert entry["use_pickle"] is False and entry["tensor_meta"]["sizes"] == [{"as_int": s} for s in (8, 3, 3, 3)]
