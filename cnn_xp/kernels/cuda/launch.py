"""Building and launching the CUDA kernels of ``sources.KERNEL_SPECS``.

The kernels are ``cupy.ElementwiseKernel`` objects, made on first use (making one needs no
GPU; CuPy compiles each at its first launch, per dtype, and caches the binary). cupy is
reached only through ``backend.cupy()``.

``serves(*arrays)`` is the one test of whether a call can run on the kernels: every array a
CuPy array of one float dtype (float32 or float64) with fewer than 2^31 elements (the
kernels index with 32-bit ints), and no kernel has failed to compile in this process.
Where it is False the op runs the reference for that call. A kernel that fails to compile
(``launch`` returns None) is reported once, as a RuntimeWarning, and switches the kernels
off for the rest of the process; ``failure()`` says why.
"""
from __future__ import annotations

import warnings

from ... import backend
from .sources import KERNEL_SPECS

DTYPES = ("float32", "float64")
INDEX_LIMIT = 2**31 - 1  # the kernels index elements with 32-bit ints

_kernels: dict | None = None  # name -> ElementwiseKernel, made on first use
_failure: str | None = None   # why the kernels were switched off (a compile failure)


def cupy():
    """The cupy module (``backend.cupy()``)."""
    return backend.cupy()


def on_gpu(array) -> bool:
    """True for a CuPy array (decided by its type: no cupy import)."""
    return backend.device_of(array) == "gpu"


def serves(*arrays) -> bool:
    """True when the kernels can run a call on ``arrays`` (see the module docstring)."""
    if _failure is not None or not arrays:
        return False
    dtype = getattr(arrays[0], "dtype", None)
    return all(on_gpu(a) and a.dtype == dtype and a.dtype.name in DTYPES and a.size <= INDEX_LIMIT
               for a in arrays)


def fits(*sizes: int) -> bool:
    """True when every size (of an array a call would make) is within 32-bit indexing."""
    return all(size <= INDEX_LIMIT for size in sizes)


def build_kernels(cp) -> dict:
    """name -> ``cp.ElementwiseKernel`` for every spec, made with the cupy module ``cp``
    (construction compiles nothing, so this runs without a GPU)."""
    return {name: cp.ElementwiseKernel(in_params, out_params, body, "cnn_xp_" + name)
            for name, (in_params, out_params, body) in KERNEL_SPECS.items()}


# CuPy's errors of a kernel launch that mean "these kernels cannot run here", as paths below
# the cupy module, looked up with getattr (a CuPy without one still works): NVRTC's compile
# errors, then the driver's and the runtime's (a PTX newer than the driver, a launch asking
# for too many resources). cupy.cuda's driver, runtime and nvrtc are cupy_backends.cuda's
# api.driver, api.runtime and libs.nvrtc re-exported: the same classes. Not OutOfMemoryError
# (a MemoryError): it says nothing about the kernels (the reference needs that memory too),
# so it propagates instead of switching the kernels off for the whole process.
COMPILE_ERRORS = ("cuda.compiler.CompileException", "cuda.nvrtc.NVRTCError")
LAUNCH_ERRORS = ("cuda.driver.CUDADriverError", "cuda.runtime.CUDARuntimeError")
# A launch error switches the kernels off only when it says that this kernel cannot run on
# this device (no binary for it, bad PTX, too many resources, a bad argument). Any other --
# an illegal address or a failed launch left by earlier work, which CUDA reports at the next
# call whatever that is -- is raised as it is: the reference would meet it too.
UNRUNNABLE = ("nobinaryforgpu", "nokernelimage", "invalidptx", "unsupportedptx", "invalidimage",
              "invalidkernelimage", "invalidsource", "outofresources", "invalidvalue", "toomanyresources")


def _classes(module, paths) -> tuple:
    """The exception classes at the dotted ``paths`` below ``module`` that exist."""
    found = []
    for path in paths:
        value = module
        for part in path.split("."):
            value = getattr(value, part, None)
        if isinstance(value, type) and issubclass(value, BaseException):
            found.append(value)
    return tuple(found)


def launch(name: str, *args, **kwargs):
    """Run kernel ``name`` on ``args`` (inputs, then outputs) and return its result; None
    when it failed with one of COMPILE_ERRORS or LAUNCH_ERRORS (the kernels are then off
    for this process, ``failure()`` naming the error's class) or the kernels are already
    off."""
    global _kernels, _failure
    if _failure is not None:
        return None
    cp = cupy()
    if _kernels is None:
        _kernels = build_kernels(cp)
    try:
        return _kernels[name](*args, **kwargs)
    except Exception as exc:
        compile_errors = (cp.cuda.compiler.CompileException, *_classes(cp, COMPILE_ERRORS[1:]))
        if not isinstance(exc, compile_errors + _classes(cp, LAUNCH_ERRORS)):
            raise
        said = str(exc).replace("_", "").lower()
        if not isinstance(exc, compile_errors) and not any(token in said for token in UNRUNNABLE):
            raise
        lines = str(exc).strip().splitlines() or [""]
        verb = "compile" if isinstance(exc, compile_errors) else "launch"
        _failure = f"CUDA kernel {name} failed to {verb} ({type(exc).__name__}): {lines[0]}"
        warnings.warn(f"cnn_xp: {_failure}; running the reference ops on the GPU instead",
                      RuntimeWarning, stacklevel=3)
        return None


def channels_last(array) -> bool:
    """True for an (N, C, H, W) view of NHWC memory (what the conv forward returns and the
    element-wise ops keep); decided from the strides, no copy."""
    return array.ndim == 4 and array.transpose(0, 2, 3, 1).flags.c_contiguous and not array.flags.c_contiguous


def empty_nchw(shape, dtype, nhwc_memory: bool):
    """A new (N, C, H, W) array, laid out as NHWC memory when ``nhwc_memory`` (so that a
    backward hands its gradient on in the layout its forward received: no transpose copy
    downstream), else C-contiguous."""
    cp = cupy()
    if not nhwc_memory:
        return cp.empty(shape, dtype=dtype)
    n, c, h, w = shape
    return cp.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)


def row_layout(array) -> tuple[int, int] | None:
    """(cols, ld): ``array`` as rows of ``cols`` contiguous elements ``ld`` elements apart
    (C-contiguous: (size, size)); None when its memory is laid out otherwise."""
    if array.flags.c_contiguous:
        return max(array.size, 1), max(array.size, 1)
    strides = element_strides(array)
    if strides is None or array.ndim == 0:
        return None
    cols = 1
    for extent, stride in zip(reversed(array.shape[1:]), reversed(strides[1:])):
        if extent != 1 and stride != cols:
            return None
        cols *= extent
    ld = strides[0] if array.shape[0] > 1 else cols
    return (cols, ld) if ld >= cols else None


def address(array) -> int:
    """The device address of a CuPy array's first element (a NumPy array's, on the host
    emulation of the tests)."""
    data = array.data
    return int(data.ptr) if hasattr(data, "ptr") else int(array.ctypes.data)


def element_strides(array) -> list[int] | None:
    """The strides of ``array`` in elements, or None when one is negative or not a whole
    number of elements (the caller then hands over a contiguous copy)."""
    size = array.itemsize
    if any(s % size or s < 0 for s in array.strides):
        return None
    return [s // size for s in array.strides]


def strided(array):
    """(array, its element strides): ``array`` itself where its strides are usable, else a
    C-contiguous copy."""
    strides = element_strides(array)
    if strides is None:
        array = cupy().ascontiguousarray(array)
        strides = element_strides(array)
    return array, strides


_constants: dict = {}  # (name, shape, dtype) -> a device array made once per process


def constant(name: str, shape, dtype):
    """A device array of zeros made once per process, device and stream, reused by
    every launch that asks for it by ``name`` (a kernel's ticket counter, a placeholder).
    Callers must leave its values as they found them."""
    cp = cupy()
    where = (cp.cuda.runtime.getDevice(), cp.cuda.get_current_stream().ptr)
    key = (name, tuple(shape) if isinstance(shape, tuple) else (int(shape),), str(dtype), where)
    array = _constants.get(key)
    if array is None:
        array = cp.zeros(key[1], dtype=dtype)
        _constants[key] = array
    return array


def failure() -> str | None:
    """Why the kernels were switched off in this process (None: they are on)."""
    return _failure


def built() -> bool:
    """Whether the kernel objects have been made in this process."""
    return _kernels is not None


def reset() -> None:
    """Forget the kernel objects and any recorded failure (for tests)."""
    global _kernels, _failure
    _kernels, _failure = None, None
    _constants.clear()
