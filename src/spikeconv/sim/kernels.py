"""Compiled kernels of the fast simulator, in C (``kernels.c`` beside this file), built on
first use with the system's C compiler and called through ctypes (no torch headers, so it
builds in about two seconds).

:func:`if_recurrence`: the time-batched simulator hands a stage's synaptic current for a
whole chunk of steps ``[steps, B, ...]`` to it, and it runs the IF recurrence over the
steps with each membrane potential in a register: one read of the current and one write of
the spikes per neuron and step, instead of the ~8 tensor passes and ~6 Python-dispatched
ops per step of the tensor loop. It also counts the spikes of every (step, image). The
operations are those of :func:`spikeconv.sim.neurons.if_step` in the same order and precision
(``-ffp-contract=off``, no fast-math), so the spikes are bit for bit those of the
step-by-step reference (tested).

:func:`event_conv`: a convolution (after an optional average pool) over binary spikes,
computed spike by spike; :mod:`spikeconv.sim.events` says when the simulator may use it.

:func:`maxpool_gate`: the spiking max-pool's rate estimate and window choice over a chunk
of steps, the same spikes as :func:`spikeconv.sim.neurons.maxpool_gate`.

All share the images of a batch out over threads: torch's own OpenMP threads when the
compiler has OpenMP (``-fopenmp`` binds to the libgomp torch has loaded), else Python
threads (ctypes releases the GIL).

Used for float32/float64 CPU tensors dense per image (contiguous or channels-last);
anything else (CUDA, other dtypes), a missing compiler, or ``SPIKECONV_KERNEL=0`` in the
environment falls back to the tensor loop in :mod:`spikeconv.sim.simulate`. ``available()``
says which path is taken.
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
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["available", "if_recurrence", "maxpool_gate", "MODES"]

# mode: what a neuron does in a step
MODES = {"zero": 0, "subtract": 1, "integrate": 2}
# a max-pool gate's rate estimate (spikeconv.sim.neurons.GateParams)
GATE_RATES = {"count": 0, "ewma": 1, "spikes": 2}

_SOURCE = Path(__file__).with_suffix(".c")  # the kernels' C source, beside this file

_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
_OPENMP_FLAGS = ["-fopenmp"]  # dropped when the compiler lacks OpenMP: Python threads then
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


def _build(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compiles (once per source, flags, compiler and CPU) and loads the library.
    ``extra_flags`` are for tests, e.g. ``("-mno-avx512f",)`` for the portable code paths."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    flags = [*_FLAGS, *extra_flags]
    key = hashlib.sha256((_SOURCE.read_text() + " ".join(flags + _OPENMP_FLAGS) + compiler + _cpu_key()).encode()).hexdigest()[:16]
    target = _cache_dir() / f"if_kernel_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / "if_kernel.so"
            try:
                subprocess.run([compiler, *flags, *_OPENMP_FLAGS, str(_SOURCE), "-o", str(built)], check=True, capture_output=True)
            except subprocess.CalledProcessError:
                subprocess.run([compiler, *flags, str(_SOURCE), "-o", str(built)], check=True, capture_output=True)
            os.replace(built, target)  # atomic: concurrent builders agree
    library = ctypes.CDLL(str(target))
    library.spikeconv_openmp.restype = ctypes.c_int
    p, i64, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for name, ctype in (("if_recurrence_f32", ctypes.c_float), ("if_recurrence_f64", ctypes.c_double)):
        fn = getattr(library, name)
        fn.argtypes = [p, i64, p, p, p, p, i64, i64, i64, i64, i64, i, ctype, i, ctype, i, ctype, ctype, i]
        fn.restype = None
    for name, ctype in (("maxpool_gate_f32", ctypes.c_float), ("maxpool_gate_f64", ctypes.c_double)):
        fn = getattr(library, name)
        fn.argtypes = [p, p, p, *[i64] * 19, i, ctype, ctype, i64, i64, i]
        fn.restype = None
    library.event_conv_f32.argtypes = [p, i64, i64, i64, i64, p, p, i64, i64, i64, i64, i64, p, i64, i64, i64, i64, i, i]
    library.event_conv_f32.restype = i
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
    return _dense_blocks(tuple(t.shape), t.stride(), lead)


# The layout checks run several times per stage and time chunk on the same few shapes:
# cached, a check costs ~1 instead of ~2.4 us (a 5-d channels-last current).
@lru_cache(maxsize=1024)
def _dense_blocks(shape: tuple[int, ...], strides: tuple[int, ...], lead: int) -> bool:
    expected = 1
    for size, stride in sorted(zip(shape[lead:], strides[lead:]), key=lambda p: p[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    for d in reversed(range(lead)):
        if shape[d] != 1 and strides[d] != expected:
            return False
        expected *= shape[d]
    return True


def same_layout(a: Tensor, a_lead: int, b: Tensor, b_lead: int) -> bool:
    """Whether two per-image-dense tensors order their per-image elements the same way in
    memory. Size-1 dimensions are ignored: their strides are arbitrary (a 1-channel image
    is both NCHW and channels-last)."""
    return _same_layout(tuple(a.shape[a_lead:]), a.stride()[a_lead:], tuple(b.shape[b_lead:]), b.stride()[b_lead:])


@lru_cache(maxsize=1024)
def _same_layout(a_shape: tuple[int, ...], a_strides: tuple[int, ...], b_shape: tuple[int, ...], b_strides: tuple[int, ...]) -> bool:
    if a_shape != b_shape:
        return False
    dims = [(sa, sb) for n, sa, sb in zip(a_shape, a_strides, b_strides) if n != 1]
    return sorted(range(len(dims)), key=lambda i: dims[i][0]) == sorted(range(len(dims)), key=lambda i: dims[i][1])


def steps_like(v: Tensor, steps: int) -> Tensor:
    """An empty ``[steps, *v.shape]`` tensor whose every step has ``v``'s layout."""
    return torch.empty_strided((steps, *v.shape), (v.numel(), *v.stride()), dtype=v.dtype, device=v.device)


def event_conv(
    spikes: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    *,
    pool: int,
    stride: int,
    padding: int,
    out: Tensor | None = None,
    scatter: bool = False,
) -> Tensor:
    """The synapse ``conv2d(avg_pool2d(spikes, pool), ...)`` computed event by event: for
    each output pixel, the sum of the weights of the spikes in its receptive field, written
    to ``out`` when given (a float32 channels-last ``[N, CO, OH, OW]``, e.g. a buffer reused
    over time chunks). ``spikes`` ``[N, C, H, W]`` float32 0/1, channels-last; ``weight`` ``[KH, KW, C, CO]``
    contiguous, already divided by ``pool ** 2``. Returns ``[N, CO, OH, OW]`` channels-last.
    Equal to the dense synapse only where all partial sums are exact (the caller checks).
    ``scatter``: each spike adds its weight rows to the outputs it feeds, instead of each
    output summing its spikes; faster at low spike rates, and taken only for 16 outputs,
    stride 1 and padding < kernel size (otherwise ignored)."""
    library = _load()
    assert library is not None
    n, c, h, w = spikes.shape
    kh, kw, _, co = weight.shape
    if not spikes.is_contiguous(memory_format=torch.channels_last) or spikes.dtype != torch.float32:
        raise ValueError(
            f"event_conv takes float32 channels-last spikes, got {spikes.dtype} with strides {spikes.stride()}: "
            "pass spikes.float().contiguous(memory_format=torch.channels_last)"
        )
    if co % 16 or not weight.is_contiguous() or weight.shape[2] != c:
        raise ValueError(
            f"event_conv needs a contiguous [KH, KW, {c}, C_out] weight with C_out a multiple of 16, got "
            f"{list(weight.shape)}: permute a conv weight with .permute(2, 3, 1, 0).contiguous()"
        )
    if not event_lists_fit(w, c, co, pool, kh * kw):
        raise ValueError(
            f"event_conv's int32 spike lists cannot index a {kh}x{kw} kernel over {w // pool} pooled columns x {c} "
            f"channels x {co} outputs: use the dense layer"
        )
    oh, ow = event_output_size(h, w, kh, kw, pool=pool, stride=stride, padding=padding)
    if out is None:
        out = torch.empty((n, co, oh, ow), dtype=torch.float32, memory_format=torch.channels_last)
    elif out.shape != (n, co, oh, ow) or out.dtype != torch.float32 or not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(
            f"event_conv's out must be a float32 channels-last tensor of shape {[n, co, oh, ow]}, "
            f"got {out.dtype} {list(out.shape)} with strides {out.stride()}"
        )
    bias_ptr = None if bias is None else bias.contiguous().data_ptr()
    args = (spikes.data_ptr(), h, w, c, pool, weight.data_ptr(), bias_ptr, kh, kw, stride, padding, co, out.data_ptr(), oh, ow)
    failed = _split_over_threads(library, library.event_conv_f32, args, (int(scatter),), n, min(torch.get_num_threads(), n))
    if failed:
        raise MemoryError("event_conv could not allocate its spike lists")
    return out


def event_output_size(h: int, w: int, kh: int, kw: int, *, pool: int, stride: int, padding: int) -> tuple[int, int]:
    """The output map of :func:`event_conv` on ``h`` x ``w`` inputs: a ``kh`` x ``kw``
    convolution after a ``pool`` x ``pool`` average pool."""
    return (h // pool + 2 * padding - kh) // stride + 1, (w // pool + 2 * padding - kw) // stride + 1


def event_lists_fit(width: int, channels: int, c_out: int, pool: int, taps: int) -> bool:
    """Whether :func:`event_conv`'s int32 spike lists, which hold weight offsets
    ((kernel row * KW + pooled column) * channels + channel) * C_out, can index a layer of
    this size (``taps``: KH * KW)."""
    return (taps + width // pool) * channels * c_out < 2**31


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
    _split_over_threads(library, fn, args, tail, batch, min(torch.get_num_threads(), batch, (steps * batch * n) // 65536))
    return counts


def maxpool_gate(
    spikes: Tensor, estimate: Tensor | None, *, kernel_size: tuple[int, int], stride: tuple[int, int],
    padding: tuple[int, int], rate: str, decay: float, out: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """:func:`spikeconv.sim.neurons.maxpool_gate` over ``spikes`` ``[steps, B, C, H, W]``
    (dense per image, contiguous or channels-last): the same passed spikes
    ``[steps, B, C, H', W']`` (into ``out`` when given) and the same new estimate, both in
    the spikes' layout. Unlike the tensor code it updates ``estimate`` in place (a new one
    when ``None`` or in another layout): a copy of it per step cost as much as the gate."""
    library = _load()
    assert library is not None
    steps, batch, channels, height, width = spikes.shape
    if not dense_blocks(spikes, 2):
        raise ValueError("spikes must be dense per image (contiguous or channels-last)")
    if estimate is None:
        estimate = torch.zeros_like(spikes[0])
    elif estimate.dtype != spikes.dtype or not dense_blocks(estimate, 1) or not same_layout(estimate, 1, spikes, 2):
        estimate = torch.zeros_like(spikes[0]).copy_(estimate)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    rows, cols = (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1
    layout = torch.channels_last if spikes.stride(2) == 1 and channels > 1 else torch.contiguous_format
    shape = (steps * batch, channels, rows, cols)
    if out is None or out.shape != (steps, batch, *shape[1:]) or out.dtype != spikes.dtype or not out.flatten(0, 1).is_contiguous(memory_format=layout):
        out = torch.empty(shape, dtype=spikes.dtype, memory_format=layout).unflatten(0, (steps, batch))
    fn = library.maxpool_gate_f32 if spikes.dtype == torch.float32 else library.maxpool_gate_f64
    head = (
        spikes.data_ptr(), estimate.data_ptr(), out.data_ptr(), steps, batch, channels, height, width,
        *spikes.stride()[2:], rows, cols, *out.stride()[2:], kh, kw, sh, sw, ph, pw, GATE_RATES[rate], decay, 1.0 - decay,
    )  # fmt: skip
    threads = min(torch.get_num_threads(), batch, (steps * batch * spikes[0, 0].numel()) // 65536)
    _split_over_threads(library, fn, head, (), batch, threads)
    return out, estimate


@cache
def _has_openmp(library: ctypes.CDLL) -> bool:
    return bool(library.spikeconv_openmp())


def _split_over_threads(library: ctypes.CDLL, fn: Any, head: tuple, tail: tuple, images: int, threads: int) -> int:
    """Call ``fn(*head, i0, i1, *tail, nthreads)`` over images 0 .. images - 1: once, on
    OpenMP threads, when the library has OpenMP; else on Python threads (ctypes releases
    the GIL), one slice each. Returns the calls' results or-ed (non-zero: failure)."""
    threads = max(1, threads)
    if threads == 1 or _has_openmp(library):
        return int(fn(*head, 0, images, *tail, threads) or 0)
    bounds = [images * j // threads for j in range(threads + 1)]
    futures = [_executor(threads).submit(partial(fn, *head, bounds[j], bounds[j + 1], *tail, 1)) for j in range(threads)]
    return int(any(f.result() for f in futures))
