"""Compiled CPU fast paths: convolution and max pooling in C (``cpu_kernels.c``), via ctypes.

The CPU twin of ``cuda_kernels``. Where a C compiler is present (``$CC``, else ``cc``), the
first CPU convolution builds ``cpu_kernels.c`` once per dtype (float32, float64) with
``-O3 -march=native`` into a cache folder (``$CNN_XP_KERNEL_CACHE``, else
``~/.cache/cnn_xp``; one file per source, compiler, flags and CPU, written atomically) and
later runs load it. Without a compiler, or with ``CNN_XP_NO_CPU_KERNELS=1``, the portable
im2col + GEMM and offset-view code in ``conv.py`` and ``pool.py`` runs instead (a failed
build warns once). ``cnn-xp doctor`` says which.

What the kernels compute, in channels-last (NHWC) memory, read straight from the image
(no im2col columns: for small-channel convs those are KH*KW times the input, and writing
and re-reading them cost more than the arithmetic):

- ``conv_forward``: out = conv(x, W) + b, any stride, padding below the kernel size.
- ``conv_backward``: dW by ``conv_weight_grad``, db by ``channel_sums``; dx by
  ``conv_input_grad``, which scatters each output pixel's gradient into its window, or,
  for window rows longer than 6 vectors, ``conv_forward`` itself, as the full correlation
  of the stride-spread, padded dout with the flipped kernel.
- ``maxpool_forward`` / ``maxpool_backward``: max and first argmax (NaN wins) in one pass,
  and the gradient routed by it.

Outputs are NCHW views of NHWC memory, which ReLU and pooling keep, so the next layer reads
its input without a copy. ctypes releases the GIL during a call, so the batch slices of
``parallel.py`` run these kernels side by side on every core. Measured on a 2-core CPU (one
thread, float32, batch 100) against the portable code: deep_convnet's 16->16 conv on 26x26
forward 6.8 -> 1.6 ms, backward 12.2 -> 4.2 ms; its 2x2 max pooling of 16x24x24 maps forward
1.0 -> 0.3 ms, backward 0.44 -> 0.16 ms.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

from .. import backend
from ..backend import xp_of
from .im2col import output_shape, pair

ENV_DISABLE = "CNN_XP_NO_CPU_KERNELS"
ENV_CACHE = "CNN_XP_KERNEL_CACHE"
DTYPES = {"float32": "float", "float64": "double"}  # dtype -> the C type of REAL
SOURCE = Path(__file__).with_name("cpu_kernels.c")
# -ffp-contract=fast: a*b + c becomes one fused multiply-add (ISO C modes forbid it).
FLAG_SETS = (["-O3", "-march=native", "-ffp-contract=fast"], ["-O3", "-ffp-contract=fast"])

_libraries: dict[str, object] = {}   # dtype -> loaded library (ctypes.CDLL)
_broken: str | None = None           # why the kernels are off (build failure)
_lock = threading.Lock()

_P, _N = ctypes.c_void_p, ctypes.c_ssize_t   # pointers; sizes (ptrdiff_t)
_SIGNATURES = {
    "conv_forward": [_P, _N, _N, _N, _N, _P, _N, _N, _N, _P, _N, _N, _P, _N, _N],
    "conv_weight_grad": [_P, _N, _N, _N, _N, _P, _N, _N, _N, _N, _N, _N, _N, _P],
    "channel_sums": [_P, _N, _N, _N, _P, _P],
    "conv_input_grad": [_P, _N, _N, _N, _N, _P, _N, _N, _N, _N, _N, _P, _N, _N, _N],
    "maxpool_forward": [_P, _N, _N, _N, _N, _N, _N, _N, _N, _N, _N, _P, _P, _N, _N],
    "maxpool_backward": [_P, _P, _N, _N, _N, _N, _N, _N, _N, _N, _N, _N, _P, _N, _N, _N],
}


def enabled() -> bool:
    return os.environ.get(ENV_DISABLE, "") not in ("1", "true", "yes") and _broken is None


def applies(*arrays) -> bool:
    """True when every array is a NumPy float32/float64 array of one dtype and the kernels
    are on (built, or not yet tried)."""
    return (all(backend.device_of(a) == "cpu" and a.dtype.name in DTYPES for a in arrays)
            and len({a.dtype.name for a in arrays}) == 1 and enabled())


def status() -> dict:
    """For doctor: whether the kernels are on, and why not; builds them to find out."""
    if os.environ.get(ENV_DISABLE, "") in ("1", "true", "yes"):
        return {"enabled": False, "reason": f"{ENV_DISABLE} is set"}
    for dtype in DTYPES:
        _library(dtype)
    if _broken is not None:
        return {"enabled": False, "reason": _broken}
    return {"enabled": True, "reason": "", "files": [str(lib._name) for lib in _libraries.values()],
            "flags": next(iter(_libraries.values())).flags}


def reset() -> None:
    """Forget loaded libraries and any recorded build failure (for tests)."""
    global _broken
    with _lock:
        _libraries.clear()
        _broken = None


def cache_dir() -> Path:
    """Where built libraries are kept: $CNN_XP_KERNEL_CACHE, else ~/.cache/cnn_xp (or
    $XDG_CACHE_HOME/cnn_xp), else, where that cannot be made, the temporary folder."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnn_xp"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return base
    except OSError:
        return Path(tempfile.gettempdir()) / f"cnn_xp-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def _cpu_identity() -> str:
    """The CPU the library is built for (-march=native): model name and feature flags from
    /proc/cpuinfo; where there is none, the host name too, so that a cache folder shared
    by several machines never hands one a library built for another's instruction set."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.machine() + platform.processor() + platform.node()
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return platform.machine() + platform.processor() + "".join(dict.fromkeys(wanted))


def _library(dtype: str):
    """The built library for ``dtype`` (building it the first time), or None when off."""
    global _broken
    if not enabled():
        return None
    lib = _libraries.get(dtype)
    if lib is not None:
        return lib
    with _lock:
        if dtype not in _libraries and _broken is None:
            try:
                _libraries[dtype] = _load(dtype)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _broken = f"cnn_xp's C kernels could not be built ({exc}); using the portable NumPy code"
                warnings.warn(_broken, RuntimeWarning, stacklevel=3)
        return _libraries.get(dtype)


def _load(dtype: str):
    """Load the library for ``dtype`` from the cache, building it first where it is not
    there; each flag set in turn until one builds. RuntimeError if none does."""
    compiler = shlex.split(os.environ.get("CC", "cc"))
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAG_SETS:
        command = [*compiler, *flags, "-shared", "-fPIC", f"-DREAL={DTYPES[dtype]}"]
        key = hashlib.sha256(repr((source, command, _cpu_identity())).encode()).hexdigest()[:20]
        target = cache_dir() / f"cpu_kernels_{dtype}_{key}.so"
        if not target.exists():
            error = _compile(command, target)
            if error:
                errors.append(error)
                continue
        lib = ctypes.CDLL(str(target))
        for name, argtypes in _SIGNATURES.items():
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = None
        lib.lanes = lib.kernel_lanes()
        lib.flags = " ".join(flags)
        return lib
    raise RuntimeError(errors[-1])  # the plainest flags' error


def _compile(command: list[str], target: Path) -> str:
    """Build ``target`` (atomically: into a temporary file, then renamed); '' or the error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([*command, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                                timeout=120, check=False)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines() or ["no message"]
            first_error = next((line for line in lines if "error" in line), lines[-1])
            return f"{shlex.join(command)} failed: {first_error.strip()}"
        os.replace(tmp, target)
        return ""
    except FileNotFoundError as exc:
        return f"no C compiler: {exc.filename or command[0]} not found"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _address(array) -> int:
    return array.ctypes.data


def _with_slack(xp, shape, dtype, slack):
    """An uninitialised C-contiguous array of ``shape`` followed by ``slack`` spare values
    (kernels that store whole vectors may write there)."""
    size = math.prod(shape)
    return xp.empty(size + slack, dtype=dtype)[:size].reshape(shape)


def _nhwc(x, pad):
    """NCHW-shaped ``x`` -> contiguous (N, H + 2*ph, W + 2*pw, C), zero-padded. No copy
    for an unpadded NCHW view of NHWC memory (what the kernels return)."""
    xp = xp_of(x)
    ph, pw = pad
    x_nhwc = x.transpose(0, 2, 3, 1)
    if not (ph or pw):
        return xp.ascontiguousarray(x_nhwc)
    n, h, w, c = x_nhwc.shape
    padded = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
    padded[:, ph : ph + h, pw : pw + w] = x_nhwc
    return padded


def _packed(W, lanes):
    """W (OC, C, KH, KW) -> (OC/lanes, KH, KW*C, lanes), the last channel block zero-filled."""
    xp = xp_of(W)
    oc, c, kh, kw = W.shape
    blocks = -(-oc // lanes)
    padded = xp.zeros((blocks * lanes, kh, kw, c), dtype=W.dtype)
    padded[:oc] = W.transpose(0, 2, 3, 1)
    return xp.ascontiguousarray(padded.reshape(blocks, lanes, kh, kw * c).transpose(0, 2, 3, 1))


def _run_forward(lib, x_nhwc, W, b, stride, out_hw):
    """conv_forward on prepared NHWC input -> (N, OH, OW, OC) contiguous."""
    xp = xp_of(x_nhwc)
    n, h, w, c = x_nhwc.shape
    oc, _, kh, kw = W.shape
    oh, ow = out_hw
    w_packed = _packed(W, lib.lanes)
    bias = xp.zeros(w_packed.shape[0] * lib.lanes, dtype=W.dtype)
    if b is not None:
        bias[:oc] = b
    out = xp.empty((n, oh, ow, oc), dtype=x_nhwc.dtype)
    lib.conv_forward(_address(x_nhwc), n, h, w, c, _address(w_packed), kh, kw, oc,
                     _address(bias), stride[0], stride[1], _address(out), oh, ow)
    return out


def fits(x, W, pad) -> bool:
    """The kernels' geometry: padding smaller than the kernel (dx reads dout padded by
    K-1-pad), non-empty arrays."""
    kh, kw = W.shape[2:]
    ph, pw = pair(pad)
    return ph < kh and pw < kw and x.size > 0 and W.size > 0


SCATTER_MAX_VECTORS = 6  # MAX_RUN_VECTORS in cpu_kernels.c: conv_input_grad's longest window row


def _input_grad_scattered(lib, d_nhwc, W, x_shape, stride, pad):
    """dx (N, H, W, C), possibly a view, by ``conv_input_grad``, for window rows of KW*C
    <= 6 vectors. Measured, one thread, batch 100, float32 (16 lanes), against dx by
    ``conv_forward`` on the spread dout: LeNet-5's 6->16 conv on 14x14 1.6 -> 0.4 ms (a
    6-channel output filled 6 of 16 lanes there), deep_convnet's 16->16 on 26x26 2.0 -> 1.2
    ms, 32->32 on 10x10 1.3 -> 0.7 ms; 32->64 on 4x4 with pad 1 0.5 -> 0.6 ms."""
    xp = xp_of(d_nhwc)
    n, c, h, w = x_shape
    oc, _, kh, kw = W.shape
    (ph, pw), lanes = pad, lib.lanes
    run = kw * c
    padded_run = -(-run // lanes) * lanes
    wt = xp.zeros((oc, kh, padded_run), dtype=W.dtype)
    wt[:, :, :run] = W.transpose(0, 2, 3, 1).reshape(oc, kh, run)
    hp, wp = h + 2 * ph, w + 2 * pw
    dx = _with_slack(xp, (n, hp, wp, c), d_nhwc.dtype, padded_run)  # the last window's vectors
    lib.conv_input_grad(_address(d_nhwc), n, d_nhwc.shape[1], d_nhwc.shape[2], oc, _address(wt),
                        kh, kw, c, stride[0], stride[1], _address(dx), hp, wp, dx.size + padded_run)
    return dx[:, ph : ph + h, pw : pw + w]


def conv_forward(x, W, b, stride, pad):
    """x (N, C, H, W), W (OC, C, KH, KW), b (OC,) -> (out, x_nhwc), or None when the
    kernels are off. out (N, OC, OH, OW) is an NCHW view of NHWC memory; x_nhwc, the padded
    NHWC input, is what ``conv_backward`` needs."""
    lib = _library(x.dtype.name)
    if lib is None or not fits(x, W, pad):
        return None
    stride, pad = pair(stride), pair(pad)
    x_nhwc = _nhwc(x, pad)
    out = _run_forward(lib, x_nhwc, W, b, stride, output_shape(x.shape, *W.shape[2:], stride, pad))
    return out.transpose(0, 3, 1, 2), x_nhwc


def conv_backward(dout, x_nhwc, W, x_shape, stride, pad, need_dx=True):
    """(dx or None, dW, db) for dout (N, OC, OH, OW), from ``conv_forward``'s x_nhwc."""
    # the library of the forward pass, even if the kernels were switched off since
    lib = _libraries.get(dout.dtype.name) or _library(dout.dtype.name)
    if lib is None:
        raise RuntimeError("conv_backward: the CPU kernels of the forward pass are gone")
    xp = xp_of(dout)
    n, c, h, w = x_shape
    oc, _, kh, kw = W.shape
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    oh, ow = dout.shape[2:]
    d_nhwc = xp.ascontiguousarray(dout.transpose(0, 2, 3, 1))
    dw_rows = xp.empty((kh, kw * c, oc), dtype=dout.dtype)
    _, hp, wp, _ = x_nhwc.shape
    lib.conv_weight_grad(_address(x_nhwc), n, hp, wp, c, _address(d_nhwc), oh, ow, oc,
                         kh, kw, sh, sw, _address(dw_rows))
    dW = xp.ascontiguousarray(dw_rows.reshape(kh, kw, c, oc).transpose(3, 2, 0, 1))
    # NumPy's sum(axis=0) of (N*OH*OW, OC) took 1.1 ms for deep_convnet's first conv
    block = math.lcm(oc, lib.lanes)
    db, scratch = xp.empty(oc, dtype=dout.dtype), xp.empty(2 * block, dtype=dout.dtype)
    lib.channel_sums(_address(d_nhwc), n * oh * ow, oc, block, _address(db), _address(scratch))
    if not need_dx:
        return None, dW, db
    if kw * c <= SCATTER_MAX_VECTORS * lib.lanes:
        dx = _input_grad_scattered(lib, d_nhwc, W, x_shape, (sh, sw), (ph, pw))
    else:
        # dx[y, x] = sum over (i, j) of dout[(y + ph - i) / sh, (x + pw - j) / sw] W[i, j]
        # (where those divide): a stride-1 correlation of dout, spread by the stride and
        # shifted by K-1-pad, with the kernel flipped and its channel axes swapped.
        spread = xp.zeros((n, h + kh - 1, w + kw - 1, oc), dtype=dout.dtype)
        top, left = kh - 1 - ph, kw - 1 - pw
        spread[:, top : top + sh * (oh - 1) + 1 : sh, left : left + sw * (ow - 1) + 1 : sw] = d_nhwc
        w_flipped = W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, OC, KH, KW)
        dx = _run_forward(lib, spread, w_flipped, None, (1, 1), (h, w))
    return dx.transpose(0, 3, 1, 2), dW, db


INDEX_DTYPES = {"float32": "int32", "float64": "int64"}  # argmax: as wide as the values


def maxpool_forward(x, kh, kw, stride, pad):
    """Max pooling of ``x`` (N, C, H, W) held in NHWC memory -> (out, argmax), both NCHW
    views of NHWC memory (argmax: row-major window offsets of the first maximum, int32 for
    float32 and int64 for float64), or None: kernels off, or x in another memory order."""
    lib = _library(x.dtype.name)
    x_nhwc = x.transpose(0, 2, 3, 1)
    if lib is None or not x_nhwc.flags.c_contiguous or x.size == 0:
        return None
    xp = xp_of(x)
    n, h, w, c = x_nhwc.shape
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    oh, ow = output_shape(x.shape, kh, kw, (sh, sw), (ph, pw))
    out = _with_slack(xp, (n, oh, ow, c), x.dtype, lib.lanes)
    argmax = _with_slack(xp, (n, oh, ow, c), INDEX_DTYPES[x.dtype.name], lib.lanes)
    lib.maxpool_forward(_address(x_nhwc), n, h, w, c, kh, kw, sh, sw, ph, pw,
                        _address(out), _address(argmax), oh, ow)
    return out.transpose(0, 3, 1, 2), argmax.transpose(0, 3, 1, 2)


def maxpool_backward(dout, argmax, x_shape, kh, kw, stride, pad):
    """dx (N, C, H, W), an NCHW view of NHWC memory, from an argmax of ``maxpool_forward``
    (or any argmax of its dtype in NHWC memory), or None for another argmax (the portable
    path's uint8, or one in another memory order)."""
    lib = _library(dout.dtype.name)
    argmax_nhwc = argmax.transpose(0, 2, 3, 1)
    if (lib is None or argmax.dtype.name != INDEX_DTYPES[dout.dtype.name]
            or not argmax_nhwc.flags.c_contiguous):
        return None
    xp = xp_of(dout)
    n, c, h, w = x_shape
    oh, ow = dout.shape[2:]
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    d_nhwc = xp.ascontiguousarray(dout.transpose(0, 2, 3, 1))
    dx = _with_slack(xp, (n, h, w, c), dout.dtype, lib.lanes)
    lib.maxpool_backward(_address(d_nhwc), _address(argmax_nhwc), n, oh, ow, c, kh, kw, sh, sw,
                         ph, pw, _address(dx), h, w, dx.size + lib.lanes)
    return dx.transpose(0, 3, 1, 2)
