"""Fused one-pass CPU reductions (``csrc/fused_sums.cpp``), a PyTorch C++ extension built once per version.

The pure-PyTorch reductions in :mod:`.stats` read a tensor once per statistic. On CPU, where the monitor's cost
is the bytes it reads, one fused pass per tensor lowers the overhead of recording every statistic at every step
from about 1.34× to 1.10–1.17× on resnet18 (``benchmarks/monitor_overhead.py``).

The extension is built with PyTorch's own machinery (``torch.utils.cpp_extension``, ninja) into a cache folder
(``$DIAGNOSTICS_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradient-flow-diagnostics``, else
``~/.cache/gradient-flow-diagnostics``), one folder per source, flags and PyTorch version, under a file lock so
that several processes (DDP ranks, the dashboard's workers) never build it at once: the first builds (about half
a minute), the others wait and load it. ``python -m diagnostics build`` builds it ahead of time. Its loops run
on PyTorch's own thread pool (``at::parallel_for``) and every tensor argument is checked (``TORCH_CHECK``), so a
tensor the kernels cannot read raises instead of corrupting memory.

Everything here is optional. Where it cannot be used (no C++ compiler or ninja, ``DIAGNOSTICS_NATIVE=0``),
:func:`kernels` returns None, :func:`status` says why, and the monitor uses the PyTorch reductions: same
statistics, slower. Only contiguous float32/float64 CPU tensors of the plain tensor type are reduced here, except
by ``GradWatch``: the output-gradient hooks the monitor registers from C++ on plain CPU outputs (no Python runs
for them in backward), which reduce any other gradient from a float64 copy rather than raise into backward.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "fused_sums.cpp"

#: Compiler flags. ``-fopenmp`` compiles ``at::parallel_for`` (inline OpenMP in PyTorch's headers) as parallel; it
#: is not passed to the linker, so the extension names no OpenMP runtime of its own and its ``GOMP_*`` calls
#: resolve to the one PyTorch loaded (one thread pool). On x86-64, 512-bit vectors where the loader picks the
#: AVX-512 clone (GCC prefers 256).
CFLAGS = ["-O3", "-fopenmp"] + (["-mprefer-vector-width=512"] if platform.machine() == "x86_64" else [])

_DTYPES = (torch.float32, torch.float64)
_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where builds are kept."""
    if os.environ.get("DIAGNOSTICS_CACHE_DIR"):
        return Path(os.environ["DIAGNOSTICS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gradient-flow-diagnostics"


def build_key() -> str:
    """A hash of everything the build depends on: source, flags, PyTorch, Python and the machine."""
    parts = [SOURCE.read_text(), *CFLAGS, torch.__version__, sys.version, sys.platform, platform.machine()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class _FileLock:
    """An exclusive lock on a file, held across processes (fcntl; a no-op where fcntl does not exist)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None

    def __enter__(self) -> _FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:                        # pragma: no cover - not POSIX
            return self
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            import fcntl

            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        except ImportError:                        # pragma: no cover - not POSIX
            pass
        self._file.close()


def _build() -> ModuleType:
    """Build (or load the cached build of) the extension; raises RuntimeError/OSError/ImportError with the reason."""
    if os.environ.get("DIAGNOSTICS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise RuntimeError("switched off by DIAGNOSTICS_NATIVE")
    key = build_key()
    folder = cache_dir() / f"fused-{key}"
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)                # its "No CUDA runtime is found" notice is noise on CPU
    try:
        from torch.utils import cpp_extension

        if not cpp_extension.is_ninja_available():
            raise RuntimeError("ninja is not installed (pip install ninja)")
        with _FileLock(cache_dir() / "build.lock"):
            folder.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            built = folder / f"diagnostics_fused_{key}.so"
            if built.exists() and _head(built) != b"\x7fELF":
                built.unlink()                      # a damaged cached build: ninja makes it again
            module = _load(key, folder)
            log.info("fused reductions ready in %.1f s (%s)", time.perf_counter() - started, folder)
    except Exception as exc:                       # the build's own errors (compiler output) as one reason
        if isinstance(exc, RuntimeError) and "ninja is not installed" in str(exc):
            raise
        raise RuntimeError(f"the C++ extension could not be built: {str(exc).strip()[-400:]}") from exc
    finally:
        cpp_log.setLevel(level)
    _remove_stale_builds(folder)
    return module


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _load(key: str, folder: Path) -> ModuleType:
    from torch.utils import cpp_extension

    return cpp_extension.load(name=f"diagnostics_fused_{key}", sources=[str(SOURCE)], extra_cflags=CFLAGS,
                              build_directory=str(folder), verbose=False)


def _remove_stale_builds(keep: Path) -> None:
    """Delete builds of other versions made over a day ago (a checkout of another version may still use its own)."""
    for old in keep.parent.glob("fused-*"):
        try:
            if old != keep and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def kernels() -> ModuleType | None:
    """The loaded extension, building it on first use; None (and :func:`status` says why) when unavailable."""
    module = _state.get("module")
    if module is not None or "reason" in _state:
        return module                               # type: ignore[return-value]
    with _lock:
        if "module" not in _state and "reason" not in _state:
            try:
                _state["module"] = _build()
            except (OSError, RuntimeError, ImportError) as exc:
                _state["reason"] = str(exc)
                log.info("fused reductions unavailable (%s); using PyTorch reductions", exc)
    return _state.get("module")                     # type: ignore[return-value]


def status() -> str:
    """One line for people: whether the fused reductions are in use, and why not."""
    if kernels() is not None:
        return "fused one-pass CPU reductions (C++ extension)"
    return f"PyTorch reductions (fused ones unavailable: {_state['reason']})"


def reset() -> None:
    """Forget the loaded state so the next :func:`kernels` call decides again (tests switch it off and on)."""
    with _lock:
        _state.clear()


def eligible(x: torch.Tensor) -> bool:
    """Whether the kernels can read ``x``: a plain contiguous float32/float64 CPU tensor (no subclass)."""
    return ((type(x) is torch.Tensor or type(x) is torch.nn.Parameter) and x.device.type == "cpu"
            and x.dtype in _DTYPES and x.layout == torch.strided and x.is_contiguous() and not x.is_neg())


def eligible_pair(g: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether a gradient and its weight can go through :func:`param_sums` together."""
    return eligible(g) and eligible(w) and w.dtype == g.dtype and w.numel() == g.numel()


def _reduce_one(x: torch.Tensor, grad: bool) -> torch.Tensor | None:
    module = kernels() if eligible(x) else None
    if module is None:
        return None
    out = torch.empty((1, 4), dtype=torch.float64)
    (module.grad_sums if grad else module.act_sums)(x, out, 0)
    return out[0]


def activation_sums(x: torch.Tensor) -> torch.Tensor | None:
    """``[Σx, Σx², #nonzero, #NaN/Inf]`` as a float64 tensor of shape (4,), or None when not eligible."""
    return _reduce_one(x, grad=False)


def gradient_sums(g: torch.Tensor) -> torch.Tensor | None:
    """``[Σ|g|, Σg², max|g|, #NaN/Inf]`` as a float64 tensor of shape (4,), or None when not eligible."""
    return _reduce_one(g, grad=True)


def param_sums(grads: list[torch.Tensor], weights: list[torch.Tensor | None]) -> torch.Tensor:
    """``[Σ|g|, Σg², max|g|, Σw²]`` of k (gradient, weight) pairs in one parallel pass: float64 (k, 4).

    All of one dtype; a weight of None gives NaN for its Σw². Raises RuntimeError when the extension is
    unavailable or a tensor cannot be read.
    """
    module = kernels()
    if module is None:
        raise RuntimeError(status())
    return module.param_sums(list(grads), list(weights))


def param_sums_of(params: list[torch.Tensor], weight_norms: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``[Σ|g|, Σg², max|g|, Σw²]`` (Σw² NaN without ``weight_norms``) of every parameter whose ``.grad`` (and
    weight) the kernels can read, in one parallel pass: float64 (k, 4), and (k,) bool saying which rows were
    taken (the others are NaN: no gradient, another device or dtype, sparse, a Python-dispatch subclass such as
    DTensor, ...). Raises RuntimeError when the extension is unavailable.
    """
    module = kernels()
    if module is None:
        raise RuntimeError(status())
    return module.param_sums_of(list(params), bool(weight_norms))


def diff_sums(after: list[torch.Tensor], before: list[torch.Tensor]) -> torch.Tensor:
    """``‖a - b‖²`` of k pairs of equal-shaped tensors in one parallel pass, without writing ``a - b``: float64
    (k,). Raises RuntimeError when the extension is unavailable or a tensor cannot be read."""
    module = kernels()
    if module is None:
        raise RuntimeError(status())
    return module.diff_sums(list(after), list(before))
