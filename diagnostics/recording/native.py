"""Fused one-pass CPU reductions (``csrc/fused_sums.c``), built on first use with the system C compiler.

The pure-PyTorch reductions in :mod:`diagnostics.stats` read a tensor once per statistic. On CPU, where the
monitor's cost is the bytes it reads, one fused pass per tensor lowers the overhead of recording every
statistic at every step from about 1.34× to 1.10–1.17× on resnet18 (``benchmarks/monitor_overhead.py``).

The library is compiled once per source version into a cache folder (``$DIAGNOSTICS_CACHE_DIR``, else
``$XDG_CACHE_HOME/gradient-flow-diagnostics``, else ``~/.cache/gradient-flow-diagnostics``) and linked against
the libgomp that PyTorch itself loaded, so its parallel loops run on PyTorch's OpenMP threads.

Everything here is optional. Where it cannot be used (no C compiler, not Linux, a PyTorch build without
libgomp, ``DIAGNOSTICS_NATIVE=0``), :func:`kernels` returns None, :func:`status` says why, and the monitor
uses the PyTorch reductions: same statistics, slower. Only contiguous float32/float64 CPU tensors are
reduced here.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "fused_sums.c"

#: Compiler flags; on x86-64, 512-bit vectors where the loader picks the AVX-512 clone (GCC prefers 256).
CFLAGS = ["-O3", "-fopenmp", "-fPIC"] + (["-mprefer-vector-width=512"] if platform.machine() == "x86_64" else [])

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_lock = threading.Lock()
_state: dict[str, object] = {}


def _cache_dir() -> Path:
    if os.environ.get("DIAGNOSTICS_CACHE_DIR"):
        return Path(os.environ["DIAGNOSTICS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gradient-flow-diagnostics"


def _loaded_gomp() -> list[str]:
    """Paths of the libgomp copies mapped into this process (Linux), in load order."""
    paths: list[str] = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if "libgomp" in os.path.basename(path) and path not in paths:
                paths.append(path)
    return paths


def _torch_gomp(loaded: list[str]) -> str:
    """PyTorch's libgomp among those loaded: the copy inside the torch package (pip wheels), else the system's.

    Other packages bring renamed copies of their own (scikit-learn's ``libgomp-<hash>.so``); linking against
    one of those would start a second thread pool.
    """
    torch_dir = Path(torch.__file__).resolve().parent
    own = [p for p in loaded if Path(p).resolve().is_relative_to(torch_dir)]
    system = [p for p in loaded if os.path.basename(p).startswith("libgomp.so")]
    if not (own or system):
        raise RuntimeError(f"PyTorch's libgomp is not among the OpenMP runtimes loaded ({loaded or 'none'})")
    return (own or system)[0]


def _compile(gomp: str, target: Path) -> None:
    """Compile SOURCE and link it against PyTorch's own libgomp (``gomp``), writing ``target`` atomically."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "fused_sums.o", Path(tmp) / target.name
        for cmd in ([cc, *CFLAGS, "-c", str(SOURCE), "-o", str(obj)],
                    # Without -fopenmp at link time: the only OpenMP runtime named is PyTorch's.
                    [cc, "-shared", str(obj), gomp, f"-Wl,-rpath,{Path(gomp).parent}", "-o", str(lib)]):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()[-400:]}")
        os.replace(lib, target)                     # another process may build the same file: last one wins


def _remove_stale_builds(keep: Path) -> None:
    """Delete builds of other sources made over a day ago (a checkout of another version may still use its own)."""
    for old in keep.parent.glob("fused_sums-*.so"):
        try:
            if old != keep and time.time() - old.stat().st_mtime > 86400:
                old.unlink()
        except OSError:
            pass


def _load() -> ctypes.CDLL:
    if os.environ.get("DIAGNOSTICS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise RuntimeError("switched off by DIAGNOSTICS_NATIVE")
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"only built on Linux (this is {sys.platform})")
    if "OpenMP" not in torch.__config__.parallel_info():
        raise RuntimeError("this PyTorch build does not use OpenMP")
    before = _loaded_gomp()
    gomp = _torch_gomp(before)
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *CFLAGS, gomp, sys.platform, platform.machine()])
                         .encode()).hexdigest()[:16]
    target = _cache_dir() / f"fused_sums-{key}.so"
    if not target.exists():
        _compile(gomp, target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError:                                 # a damaged cached build: make it again, once
        _compile(gomp, target)
        lib = ctypes.CDLL(str(target))
    _remove_stale_builds(target)
    added = sorted(set(_loaded_gomp()) - set(before))
    if added:                                       # it brought an OpenMP runtime of its own: never use it
        raise RuntimeError(f"the built library loaded another libgomp ({added}) instead of PyTorch's ({gomp})")
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    for suffix in _SUFFIX.values():
        for name in ("act_sums", "grad_sums"):
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes, fn.restype = [ptr, i64, ptr], None
        for name in ("param_sums", "diff_sums"):
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes, fn.restype = [i64, ptr, ptr, ptr, ptr], ctypes.c_int
    return lib


def kernels() -> ctypes.CDLL | None:
    """The loaded library, building it on first use; None (and :func:`status` says why) when unavailable."""
    lib = _state.get("lib")
    if lib is not None or "reason" in _state:
        return lib                                  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state and "reason" not in _state:
            try:
                _state["lib"] = _load()
                log.debug("fused reductions loaded")
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _state["reason"] = str(exc)
                log.info("fused reductions unavailable (%s); using PyTorch reductions", exc)
    return _state.get("lib")                        # type: ignore[return-value]


def status() -> str:
    """One line for people: whether the fused reductions are in use, and why not."""
    if kernels() is not None:
        return "fused one-pass CPU reductions (native)"
    return f"PyTorch reductions (fused ones unavailable: {_state['reason']})"


def reset() -> None:
    """Forget the loaded state so the next :func:`kernels` call decides again (tests switch it off and on)."""
    with _lock:
        _state.clear()


def _eligible(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in _SUFFIX and x.layout == torch.strided and x.is_contiguous()
            and not x.is_neg())


def reducers(dtype: torch.dtype) -> tuple[ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    """The raw ``(act_sums, grad_sums)`` kernels for a dtype, or None: for callers that keep their own output
    buffer. Each is called as ``fn(data_ptr, numel, out_ptr)`` on a contiguous CPU tensor and writes four
    float64 values at ``out_ptr``: ``[Σx, Σx², #nonzero, #NaN/Inf]`` or ``[Σ|g|, Σg², max|g|, #NaN/Inf]``.
    """
    lib = kernels() if dtype in _SUFFIX else None
    if lib is None:
        return None
    return getattr(lib, f"act_sums_{_SUFFIX[dtype]}"), getattr(lib, f"grad_sums_{_SUFFIX[dtype]}")


def _reduce_one(x: torch.Tensor, kind: int) -> torch.Tensor | None:
    fns = reducers(x.dtype) if _eligible(x) else None
    if fns is None:
        return None
    out = torch.empty(4, dtype=torch.float64)
    fns[kind](x.data_ptr(), x.numel(), out.data_ptr())
    return out


def activation_sums(x: torch.Tensor) -> torch.Tensor | None:
    """``[Σx, Σx², #nonzero, #NaN/Inf]`` as a float64 tensor of shape (4,), or None when not eligible."""
    return _reduce_one(x, 0)


def gradient_sums(g: torch.Tensor) -> torch.Tensor | None:
    """``[Σ|g|, Σg², max|g|, #NaN/Inf]`` as a float64 tensor of shape (4,), or None when not eligible."""
    return _reduce_one(g, 1)


def param_sums(grads: list[torch.Tensor], weights: list[torch.Tensor | None]) -> torch.Tensor:
    """``[Σ|g|, Σg², max|g|, Σw²]`` of k (gradient, weight) pairs in one parallel pass: float64 (k, 4).

    Every gradient must be eligible (see :func:`eligible_pair`), all of one dtype; a weight of None gives NaN
    for its Σw². Raises RuntimeError when the library is unavailable or out of memory.
    """
    lib = kernels()
    if lib is None:
        raise RuntimeError(status())
    k = len(grads)
    out = torch.empty((k, 4), dtype=torch.float64)
    if k == 0:
        return out
    g_ptrs = np.fromiter((g.data_ptr() for g in grads), dtype=np.uintp, count=k)
    # An empty tensor's data_ptr is 0, which would read as "no weight": any non-null address does (n is 0).
    w_ptrs = np.fromiter((0 if w is None else w.data_ptr() or out.data_ptr() for w in weights), dtype=np.uintp,
                         count=k)
    sizes = np.fromiter((g.numel() for g in grads), dtype=np.int64, count=k)
    fn = getattr(lib, f"param_sums_{_SUFFIX[grads[0].dtype]}")
    if fn(k, g_ptrs.ctypes.data, w_ptrs.ctypes.data, sizes.ctypes.data, out.data_ptr()) != 0:
        raise RuntimeError("fused parameter reduction ran out of memory")
    return out


def diff_sums(after: list[torch.Tensor], before: list[torch.Tensor]) -> torch.Tensor:
    """``‖a - b‖²`` of k pairs of equal-shaped tensors in one parallel pass, without writing ``a - b``:
    float64 (k,). Every pair must pass :func:`eligible_pair`, all of one dtype. Raises RuntimeError when the
    library is unavailable or out of memory.
    """
    lib = kernels()
    if lib is None:
        raise RuntimeError(status())
    k = len(after)
    out = torch.empty(k, dtype=torch.float64)
    if k == 0:
        return out
    a_ptrs = np.fromiter((t.data_ptr() for t in after), dtype=np.uintp, count=k)
    b_ptrs = np.fromiter((t.data_ptr() for t in before), dtype=np.uintp, count=k)
    sizes = np.fromiter((t.numel() for t in after), dtype=np.int64, count=k)
    fn = getattr(lib, f"diff_sums_{_SUFFIX[after[0].dtype]}")
    if fn(k, a_ptrs.ctypes.data, b_ptrs.ctypes.data, sizes.ctypes.data, out.data_ptr()) != 0:
        raise RuntimeError("fused difference reduction ran out of memory")
    return out


def eligible_pair(g: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether a gradient and its weight can go through :func:`param_sums` together."""
    return _eligible(g) and _eligible(w) and w.dtype == g.dtype and w.numel() == g.numel()
