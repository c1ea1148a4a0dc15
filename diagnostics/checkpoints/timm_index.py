"""The timm signature index: which timm model a state_dict belongs to, from its keys and shapes, without building
every timm model.

Each indexed model is built once on the meta device (shapes only, no memory) and kept as a short hash of its
sorted ``key:shape`` lines, its classifier head left out (so any ``num_classes`` matches, 0 included). A
state_dict is recognised by hashing it the same way, once per distinct head, and looking the hash up.

The index for the installed timm version ships with the library (``timm_index.json``, written by
``python -m diagnostics.checkpoints.timm_index``); for any other timm version it is built on first use, one
family at a time in :data:`FAMILIES` order until one matches, and kept under :func:`cache_dir`.
``timm`` is imported on use, so ``import diagnostics`` never imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

#: timm families indexed, each with the ``timm.list_models`` patterns of its members.
FAMILIES: dict[str, tuple[str, ...]] = {
    "resnet": ("resnet*", "wide_resnet*", "resnext*"),
    "resnetv2": ("resnetv2*",),
    "efficientnet": ("efficientnet*", "tf_efficientnet*"),
    "mobilenetv3": ("mobilenetv3*", "tf_mobilenetv3*"),
    "convnext": ("convnext*",),
    "vit": ("vit_*",),
    "deit": ("deit*",),
    "swin": ("swin*",),
    "regnet": ("regnet*",),
    "densenet": ("densenet*",),
}
INDEX_FILE = Path(__file__).with_name("timm_index.json")
#: Hex digits kept of each SHA-1 signature (80 bits: no accidental collision among a few thousand models).
SIGNATURE_DIGITS = 20


def cache_dir() -> Path:
    """Where indexes for other timm versions are kept: ``DIAGNOSTICS_CACHE_DIR``, else the user cache folder."""
    explicit = os.environ.get("DIAGNOSTICS_CACHE_DIR", "").strip()
    base = Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) \
        / "gradient-flow-diagnostics"
    return base.expanduser()


def _heads(head: str | Iterable[str] | None) -> tuple[str, ...]:
    if not head:
        return ()
    return (head,) if isinstance(head, str) else tuple(head)


def signature(shapes: dict[str, tuple[int, ...]], head: tuple[str, ...]) -> str:
    """The hash of ``key:shape`` lines, sorted, leaving out the classifier ``head`` (its keys and below)."""
    lines = sorted(f"{k}:{'x'.join(map(str, s))}" for k, s in shapes.items()
                   if not any(k == h or k.startswith(h + ".") for h in head))
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:SIGNATURE_DIGITS]


def model_shapes(name: str, **kwargs) -> tuple[dict[str, tuple[int, ...]], tuple[str, ...], tuple[int, ...]]:
    """A timm model's state_dict shapes, built on the meta device; its classifier head and input size."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    cfg = model.pretrained_cfg or {}
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()}, _heads(cfg.get("classifier")),
            tuple(cfg.get("input_size", (3, 224, 224))))


def build_family(family: str, progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Index entries of every timm model of ``family``: ``{name: {"family", "signature", "head", "input_size"}}``."""
    import timm

    names = sorted({n for pattern in FAMILIES[family] for n in timm.list_models(pattern)})
    entries = {}
    for name in names:
        if progress:
            progress(name)
        shapes, head, input_size = model_shapes(name)
        entries[name] = {"family": family, "signature": signature(shapes, head), "head": list(head),
                         "input_size": list(input_size)}
    return entries


@dataclass
class Index:
    """The signature index of one timm version."""

    timm: str
    families: list[str] = field(default_factory=list)
    models: dict[str, dict] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"timm": self.timm, "families": self.families, "models": self.models},
                                  sort_keys=True, separators=(",", ":")))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> Index | None:
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["timm"]), list(raw["families"]), dict(raw["models"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def load_index(version: str | None = None) -> tuple[Index, Path]:
    """The index of ``version`` (default: the installed timm): the shipped one, else the cached one (maybe partial)."""
    if version is None:
        import timm

        version = timm.__version__
    shipped = Index.read(INDEX_FILE)
    if shipped is not None and shipped.timm == version:
        return shipped, INDEX_FILE
    path = cache_dir() / f"timm-index-{version}.json"
    return Index.read(path) or Index(version), path


@dataclass
class TimmMatch:
    """A timm model whose keys and shapes a state_dict has exactly."""

    name: str
    family: str
    num_classes: int
    input_size: tuple[int, ...]
    alternatives: list[str]                          # other timm models with the same keys and shapes


def _prefer(name: str) -> tuple:
    return (name.startswith("tf_"), len(name), name)


def lookup(index: Index, shapes: dict[str, tuple[int, ...]]) -> TimmMatch | None:
    """The timm model in ``index`` with exactly these keys and shapes (up to its head), or None."""
    by_head: dict[tuple[str, ...], list[str]] = {}
    for name, entry in index.models.items():
        by_head.setdefault(tuple(entry["head"]), []).append(name)
    for head, names in sorted(by_head.items()):
        wanted = signature(shapes, head)
        hits = sorted((n for n in names if index.models[n]["signature"] == wanted), key=_prefer)
        if hits:
            weight = shapes.get(f"{head[0]}.weight") if head else None
            entry = index.models[hits[0]]
            return TimmMatch(hits[0], entry["family"], int(weight[0]) if weight else 0,
                             tuple(entry["input_size"]), hits[1:])
    return None


def recognise_timm(shapes: dict[str, tuple[int, ...]], progress: Callable[[str], None] | None = None) -> TimmMatch | None:
    """The timm model a state_dict's shapes belong to, building missing families of the index (and caching
    them) one at a time until one matches; None when no indexed family has it."""
    index, path = load_index()
    found = lookup(index, shapes)
    if found is not None or path == INDEX_FILE:
        return found
    for family in FAMILIES:
        if family in index.families:
            continue
        index.models.update(build_family(family, progress))
        index.families.append(family)
        index.save(path)
        found = lookup(index, shapes)
        if found is not None:
            return found
    return None


def main() -> None:
    """Write the shipped index for the installed timm (about two minutes on a laptop)."""
    import timm

    index = Index(timm.__version__)
    start = time.perf_counter()
    for family in FAMILIES:
        index.models.update(build_family(family))
        index.families.append(family)
        print(f"{family}: {sum(e['family'] == family for e in index.models.values())} models, "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    index.save(INDEX_FILE)
    print(f"wrote {INDEX_FILE} ({len(index.models)} models, timm {index.timm})", file=sys.stderr)


if __name__ == "__main__":
    main()
