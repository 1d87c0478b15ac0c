"""A fused integrate-and-fire recurrence in C, compiled on first use with the system's C
compiler and called through ctypes (no torch headers, so it builds in well under a second).

The time-batched simulator hands a stage's synaptic current for a whole chunk of steps
``[steps, B, ...]`` to :func:`if_recurrence`, which runs the IF recurrence over the steps
with each membrane potential in a register: one read of the current and one write of the
spikes per neuron and step, instead of the ~8 tensor passes and ~6 Python-dispatched ops
per step of the tensor loop. It also counts the spikes of every (step, image). The
operations are those of :func:`spikeconv.neurons.if_step` in the same order and precision
(``-ffp-contract=off``, no fast-math), so the spikes are bit for bit those of the
step-by-step reference (tested). ctypes releases the GIL, so the batch is split over
``torch.get_num_threads()`` Python threads.

Used for float32/float64 CPU tensors dense per image (contiguous or channels-last); anything else (CUDA, other dtypes), a
missing compiler, or ``SPIKECONV_KERNEL=0`` in the environment falls back to the tensor loop
in :mod:`spikeconv.simulate`. ``available()`` says which path is taken.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "if_recurrence", "MODES"]

# mode: what a neuron does in a step
MODES = {"zero": 0, "subtract": 1, "integrate": 2}

_SOURCE = r"""
#include <stdint.h>

/* One step of one image's n neurons. The flags are compile-time constants at every call
   below, so the compiler emits one branch-free, vectorized loop per combination; the
   spike count is an integer so that its sum vectorizes too. In place (spikes over the
   current) goes through its own pointer, as restrict pointers must not alias. */
#define IF_BLOCK(NAME, T)                                                                    \
static inline __attribute__((always_inline)) int32_t NAME(                                  \
        const T *restrict z, T *restrict s, T *restrict zs, T *restrict v, T *restrict m,  \
        int64_t n, const int inplace, const int mode, const int has_vmin, const int sat,   \
        const int has_m, T threshold, T vmin, T low, T high) {                              \
    int32_t total = 0;                                                                      \
    for (int64_t i = 0; i < n; ++i) {                                                       \
        T u = v[i] + (inplace ? zs[i] : z[i]);                                              \
        T fired = 0;                                                                        \
        if (mode != 2) {                                                                    \
            fired = u >= threshold ? (T)1 : (T)0;                                           \
            total += u >= threshold;                                                        \
            if (mode == 0) u = u >= threshold ? (T)0 : u;                                   \
            else u = u - fired * threshold;                                                 \
            if (has_vmin) u = u < vmin ? vmin : u;                                          \
        }                                                                                   \
        if (sat) { u = u < low ? low : u; u = u > high ? high : u; }                        \
        v[i] = u;                                                                           \
        if (inplace) zs[i] = fired; else s[i] = fired;                                      \
        if (has_m) m[i] = u;                                                                \
    }                                                                                       \
    return total;                                                                           \
}

/* z: current, element (k, b, i) at z[k * z_step + b * n + i] (z_step = 0: the same current
   every step). spikes: [steps, batch, n] out (may be z itself when z_step = batch * n).
   membranes: [steps, batch, n] out or NULL. v: [batch, n] in/out. counts: [steps, batch]
   out, spikes of each image in each step. Images b0 .. b1 - 1. mode: 0 reset to zero,
   1 reset by subtraction, 2 integrate only. */
#define IF_KERNEL(NAME, BLOCK, T)                                                            \
void NAME(const T *z, int64_t z_step, T *spikes, T *membranes, T *v, double *counts,        \
          int64_t steps, int64_t batch, int64_t n, int64_t b0, int64_t b1, int mode,        \
          T threshold, int has_vmin, T vmin, int saturate, T low, T high) {                 \
    const int inplace = (const void *)z == (const void *)spikes;                            \
    const int fast = !membranes && !saturate && mode != 2;                                  \
    for (int64_t b = b0; b < b1; ++b) {                                                     \
        T *vb = v + b * n;                                                                  \
        for (int64_t k = 0; k < steps; ++k) {                                               \
            const T *zk = z + k * z_step + b * n;                                           \
            T *sk = spikes + (k * batch + b) * n;                                           \
            T *mk = membranes ? membranes + (k * batch + b) * n : 0;                        \
            int32_t total;                                                                  \
            if (fast && inplace)                                                            \
                total = mode == 0                                                           \
                    ? (has_vmin ? BLOCK(0, 0, sk, vb, 0, n, 1, 0, 1, 0, 0, threshold, vmin, 0, 0)      \
                                : BLOCK(0, 0, sk, vb, 0, n, 1, 0, 0, 0, 0, threshold, vmin, 0, 0))     \
                    : (has_vmin ? BLOCK(0, 0, sk, vb, 0, n, 1, 1, 1, 0, 0, threshold, vmin, 0, 0)      \
                                : BLOCK(0, 0, sk, vb, 0, n, 1, 1, 0, 0, 0, threshold, vmin, 0, 0));    \
            else if (fast)                                                                  \
                total = mode == 0                                                           \
                    ? (has_vmin ? BLOCK(zk, sk, 0, vb, 0, n, 0, 0, 1, 0, 0, threshold, vmin, 0, 0)     \
                                : BLOCK(zk, sk, 0, vb, 0, n, 0, 0, 0, 0, 0, threshold, vmin, 0, 0))    \
                    : (has_vmin ? BLOCK(zk, sk, 0, vb, 0, n, 0, 1, 1, 0, 0, threshold, vmin, 0, 0)     \
                                : BLOCK(zk, sk, 0, vb, 0, n, 0, 1, 0, 0, 0, threshold, vmin, 0, 0));   \
            else if (inplace) /* output layers and fixed point: one general loop */          \
                total = BLOCK(0, 0, sk, vb, mk, n, 1, mode, has_vmin, saturate, mk != 0,    \
                              threshold, vmin, low, high);                                  \
            else                                                                            \
                total = BLOCK(zk, sk, 0, vb, mk, n, 0, mode, has_vmin, saturate, mk != 0,   \
                              threshold, vmin, low, high);                                  \
            counts[k * batch + b] = (double)total;                                          \
        }                                                                                   \
    }                                                                                       \
}
IF_BLOCK(if_block_f32, float)
IF_BLOCK(if_block_f64, double)
IF_KERNEL(if_recurrence_f32, if_block_f32, float)
IF_KERNEL(if_recurrence_f64, if_block_f64, double)
"""

_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failed: str | None = None
_pool: ThreadPoolExecutor | None = None


def _cache_dir() -> Path:
    root = os.environ.get("SPIKECONV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "spikeconv"
    )
    return Path(root)


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    key = hashlib.sha256((_SOURCE + " ".join(_FLAGS) + compiler + _cpu_key()).encode()).hexdigest()[:16]
    target = _cache_dir() / f"if_kernel_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            source = Path(tmp) / "if_kernel.c"
            source.write_text(_SOURCE)
            built = Path(tmp) / "if_kernel.so"
            subprocess.run([compiler, *_FLAGS, str(source), "-o", str(built)], check=True, capture_output=True)
            os.replace(built, target)  # atomic: concurrent builders agree
    library = ctypes.CDLL(str(target))
    for name, ctype in (("if_recurrence_f32", ctypes.c_float), ("if_recurrence_f64", ctypes.c_double)):
        fn = getattr(library, name)
        p, i64, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        fn.argtypes = [p, i64, p, p, p, p, i64, i64, i64, i64, i64, i, ctype, i, ctype, i, ctype, ctype]
        fn.restype = None
    return library


def _load() -> ctypes.CDLL | None:
    global _library, _failed
    if _library is not None or _failed is not None:
        return _library
    with _lock:
        if _library is None and _failed is None:
            if os.environ.get("SPIKECONV_KERNEL", "1") == "0":
                _failed = "disabled by SPIKECONV_KERNEL=0"
            else:
                try:
                    _library = _build()
                except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
                    detail = getattr(error, "stderr", b"") or b""
                    _failed = f"{error} {detail.decode(errors='replace')[:500]}".strip()
                    warnings.warn(
                        f"spikeconv: the fused IF kernel could not be built ({_failed}); "
                        "simulating with the slower tensor loop",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    return _library


def available() -> bool:
    """Whether the compiled kernel is in use (builds it on the first call)."""
    return _load() is not None


def supports(current: Tensor) -> bool:
    return current.device.type == "cpu" and current.dtype in (torch.float32, torch.float64) and _load() is not None


def dense_blocks(t: Tensor, lead: int) -> bool:
    """Whether ``t`` is a row-major sequence over its first ``lead`` dimensions of dense
    blocks (the remaining dimensions, in any memory order, e.g. channels-last), so that
    image ``b`` of step ``k`` is the flat range ``[(k * B + b) * n, (k * B + b + 1) * n)``."""
    expected = 1
    for size, stride in sorted(zip(t.shape[lead:], t.stride()[lead:]), key=lambda p: p[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    for d in reversed(range(lead)):
        if t.shape[d] != 1 and t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def same_layout(a: Tensor, a_lead: int, b: Tensor, b_lead: int) -> bool:
    """Whether two per-image-dense tensors order their per-image elements the same way in
    memory. Size-1 dimensions are ignored: their strides are arbitrary (a 1-channel image
    is both NCHW and channels-last)."""
    if a.shape[a_lead:] != b.shape[b_lead:]:
        return False
    dims = [(sa, sb) for n, sa, sb in zip(a.shape[a_lead:], a.stride()[a_lead:], b.stride()[b_lead:]) if n != 1]
    return sorted(range(len(dims)), key=lambda i: dims[i][0]) == sorted(range(len(dims)), key=lambda i: dims[i][1])


def steps_like(v: Tensor, steps: int) -> Tensor:
    """An empty ``[steps, *v.shape]`` tensor whose every step has ``v``'s layout."""
    return torch.empty_strided((steps, *v.shape), (v.numel(), *v.stride()), dtype=v.dtype, device=v.device)


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < threads:  # noqa: SLF001
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="spikeconv-if")
    return _pool


def if_recurrence(
    current: Tensor,
    v: Tensor,
    *,
    mode: str,
    threshold: float,
    v_min: float | None,
    saturate: tuple[float, float] | None,
    spikes: Tensor,
    membranes: Tensor | None,
) -> Tensor:
    """Run the recurrence over ``current`` ``[steps, B, ...]`` (dense per image in any
    layout, or a step-broadcast view of one such ``[B, ...]``), updating ``v`` ``[B, ...]`` in place, writing
    ``spikes`` (may be ``current`` itself) and ``membranes``. Returns the spikes of each
    image in each step, ``[steps, B]`` float64."""
    library = _load()
    assert library is not None
    steps, batch = current.shape[0], current.shape[1]
    n = v[0].numel() if batch else 0
    broadcast = current.stride(0) == 0
    if not dense_blocks(current[0] if broadcast else current, 1 if broadcast else 2):
        raise ValueError("current must be dense per image (contiguous or channels-last)")
    z_step = 0 if broadcast else batch * n
    for t, lead in ((v, 1), (spikes, 2)) + (((membranes, 2),) if membranes is not None else ()):
        if not dense_blocks(t, lead) or t.dtype != current.dtype:
            raise ValueError("state and outputs must be dense per image and of the current's dtype")
        if not same_layout(t, lead, current, 2):
            raise ValueError("current, state and outputs must share one layout per image")
    counts = torch.empty(steps, batch, dtype=torch.float64)
    fn = library.if_recurrence_f32 if current.dtype == torch.float32 else library.if_recurrence_f64
    low, high = saturate if saturate is not None else (0.0, 0.0)
    args = (
        current.data_ptr(), z_step, spikes.data_ptr(), membranes.data_ptr() if membranes is not None else None,
        v.data_ptr(), counts.data_ptr(), steps, batch, n,
    )  # fmt: skip
    tail = (MODES[mode], threshold, int(v_min is not None), v_min or 0.0, int(saturate is not None), low, high)
    threads = max(1, min(torch.get_num_threads(), batch, (steps * batch * n) // 65536))
    if threads == 1:
        fn(*args, 0, batch, *tail)
    else:
        bounds = [batch * j // threads for j in range(threads + 1)]
        futures = [_executor(threads).submit(fn, *args, bounds[j], bounds[j + 1], *tail) for j in range(threads)]
        for future in futures:
            future.result()
    return counts
