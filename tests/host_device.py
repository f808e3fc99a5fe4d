"""A whole GPU on the host, counting device operations (test code, no GPU needed).

``HostDevice`` stands in for the cupy module behind ``cnn_xp.backend.cupy()``: its arrays
are ``DeviceArray`` (a NumPy subclass whose type says "cupy", so ``backend.device_of`` calls
them "gpu"), its ``ElementwiseKernel`` runs the kernel bodies compiled as host C++
(``cuda_host``), and every other name is NumPy's. With it installed (``installed``), a
model built with ``device="gpu"`` trains through the very code a GPU runs -- the CUDA
accelerator in kernel mode ``auto``, the reference ops on CuPy in mode ``reference`` --
and each operation that CuPy would queue on the device is counted:

- ``launches``: a kernel launch -- every ElementwiseKernel call, ufunc call or reduction,
  matrix product, ``argmax``, ``astype``/copy, fill, gather/scatter by an index array, and
  a random draw;
- ``transfers``: a copy between host and device (``asarray`` of a host array, ``get``,
  ``float()``/``int()`` of a device scalar).

Views (slices, ``reshape`` of contiguous memory, ``transpose``), ``empty`` and scalar
arithmetic on the host are free, as on CuPy. ``ops`` is their sum: the device operations a
step costs, the number the launch targets bound.
"""
from __future__ import annotations

import contextlib
import operator
from collections import Counter

import numpy as np

import cuda_host


class DeviceArray(np.ndarray):
    """An ndarray that ``cnn_xp.backend`` takes for a CuPy array; every operation on it is
    counted on the device that made it (``HostDevice.current``)."""

    __module__ = "cupy_host"  # backend._is_cupy_array looks at the type's module

    def __array_finalize__(self, obj):
        pass

    # -- NumPy's protocols: every ufunc and array function on device arrays -------------
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        plain = [_plain(a) for a in inputs]
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        HostDevice.count(f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        name = func.__name__
        result = func(*_plain_tree(args), **_plain_tree(kwargs))
        cost = FUNCTION_COST.get(name, 1)
        if callable(cost):
            cost = cost(args, kwargs, result)
        if cost:
            HostDevice.count(name, cost)
        return _wrap(result)

    # -- methods that are device work on CuPy -------------------------------------------
    def get(self):
        HostDevice.count("get", kind="transfers")
        return np.array(_plain(self))

    def argmax(self, *args, **kwargs):
        HostDevice.count("argmax")
        return _wrap(_plain(self).argmax(*args, **kwargs))

    def argmin(self, *args, **kwargs):
        HostDevice.count("argmin")
        return _wrap(_plain(self).argmin(*args, **kwargs))

    def astype(self, dtype, *args, copy=True, **kwargs):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        HostDevice.count("astype")
        return _wrap(_plain(self).astype(dtype, *args, **kwargs))

    def copy(self, *args, **kwargs):
        HostDevice.count("copy")
        return _wrap(_plain(self).copy(*args, **kwargs))

    def fill(self, value):
        HostDevice.count("fill")
        _plain(self).fill(value)

    def reshape(self, *shape, **kwargs):
        plain = _plain(self)
        result = plain.reshape(*shape, **kwargs)
        if not np.shares_memory(result, plain) and result.size:
            HostDevice.count("reshape_copy")
        return _wrap(result)

    def ravel(self, *args, **kwargs):
        plain = _plain(self)
        result = plain.ravel(*args, **kwargs)
        if not np.shares_memory(result, plain) and result.size:
            HostDevice.count("ravel_copy")
        return _wrap(result)

    def flatten(self, *args, **kwargs):
        HostDevice.count("flatten")
        return _wrap(_plain(self).flatten(*args, **kwargs))

    def take(self, *args, **kwargs):
        HostDevice.count("take")
        return _wrap(_plain(self).take(*args, **_plain_tree(kwargs)))

    def __getitem__(self, key):
        result = _plain(self)[_plain_tree(key)]
        if _is_fancy(key):
            HostDevice.count("gather")
        return _wrap(result)

    def __setitem__(self, key, value):
        HostDevice.count("scatter" if _is_fancy(key) else "setitem")
        _plain(self)[_plain_tree(key)] = _plain(value)

    def _scalar(self, convert):
        HostDevice.count("to_host_scalar", kind="transfers")
        return convert(_plain(self))

    def __float__(self):
        return self._scalar(float)

    def __int__(self):
        return self._scalar(int)

    def __index__(self):
        return self._scalar(operator.index)

    def __bool__(self):
        return self._scalar(bool)

    def item(self):
        return self._scalar(lambda a: a.item())

    def tolist(self):
        return self._scalar(lambda a: a.tolist())

    def sum(self, *args, **kwargs):  # NumPy's method goes through add.reduce, counted there
        return np.add.reduce(self, *args, **kwargs) if args or kwargs else np.add.reduce(self, axis=None)


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _plain_tree(obj):
    if isinstance(obj, DeviceArray):
        return obj.view(np.ndarray)
    if isinstance(obj, tuple):
        return tuple(_plain_tree(o) for o in obj)
    if isinstance(obj, list):
        return [_plain_tree(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _plain_tree(v) for k, v in obj.items()}
    return obj


def _wrap(result):
    """Device results stay on the device; NumPy scalars become 0-d device arrays (as CuPy's
    reductions return)."""
    if isinstance(result, tuple):
        return tuple(_wrap(r) for r in result)
    if isinstance(result, np.ndarray):
        return result.view(DeviceArray)
    if isinstance(result, np.generic):
        return np.asarray(result).view(DeviceArray)
    return result


def _is_fancy(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) for k in keys)


def _copies(args, kwargs, result) -> int:
    """1 when an array function made new memory from a device array (a copy), else 0."""
    sources = [a for a in args if isinstance(a, np.ndarray)]
    if not isinstance(result, np.ndarray) or not sources or not result.size:
        return 0
    return 0 if np.shares_memory(result, _plain(sources[0])) else 1


# What each array function costs on the device (default 1): views 0, copies 1 when they copy.
FUNCTION_COST = {
    "empty_like": 0, "reshape": _copies, "transpose": 0, "broadcast_to": 0, "expand_dims": 0,
    "squeeze": 0, "swapaxes": 0, "moveaxis": 0, "ascontiguousarray": _copies, "asarray": _copies,
    "shape": 0, "ndim": 0, "size": 0, "result_type": 0, "may_share_memory": 0, "shares_memory": 0,
    "ravel": _copies, "atleast_1d": 0, "atleast_2d": 0, "ones_like": 1, "zeros_like": 1,
    "copyto": 1, "concatenate": 1, "stack": 1, "pad": 1, "where": 1,
}


class HostRandomState:
    """cupy.random.RandomState on the host: one launch per draw."""

    def __init__(self, seed=None):
        self._gen = np.random.Generator(np.random.PCG64(seed))

    def random_sample(self, size=None, dtype=float):
        HostDevice.count("random_sample")
        return _wrap(self._gen.random(size, dtype=np.dtype(dtype)))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        HostDevice.count("uniform")
        return _wrap(self._gen.uniform(low, high, size).astype(dtype))

    def randint(self, low, high=None, size=None, dtype="l"):
        HostDevice.count("randint")
        return _wrap(self._gen.integers(low, high, size, dtype=dtype))


class _Random:
    RandomState = HostRandomState


class _Device:
    def __init__(self, *args):
        pass

    def synchronize(self):
        HostDevice.count("synchronize", kind="syncs")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Runtime:
    @staticmethod
    def getDeviceCount():  # noqa: N802 (CUDA's name)
        return 1

    @staticmethod
    def getDevice():  # noqa: N802 (CUDA's name)
        return 0


class HostDevice(cuda_host.HostCuPy):
    """The cupy module on the host (see the module docstring). ``counts``: a Counter of
    (kind, name) -> operations since ``reset_counts``."""

    __version__ = "host-device"
    current: "HostDevice | None" = None
    ndarray = DeviceArray

    def __init__(self, lib, fail=()):
        super().__init__(lib, fail)
        self.counts: Counter = Counter()
        self.random = _Random()
        self.cuda.Device = _Device
        self.cuda.runtime = _Runtime()
        self.cuda.compiler.CompileException = cuda_host.CompileException

    # -- counting -----------------------------------------------------------------------
    @classmethod
    def count(cls, name: str, n: int = 1, kind: str = "launches") -> None:
        if cls.current is not None:
            cls.current.counts[(kind, name)] += n

    def reset_counts(self) -> None:
        self.counts.clear()

    def totals(self) -> dict:
        """{"launches", "transfers", "syncs", "ops"} since ``reset_counts``."""
        out = {kind: sum(v for (k, _), v in self.counts.items() if k == kind)
               for kind in ("launches", "transfers", "syncs")}
        out["ops"] = out["launches"] + out["transfers"]
        return out

    def breakdown(self) -> dict:
        return {f"{kind}:{name}": v for (kind, name), v in sorted(self.counts.items())}

    # -- the cupy names that make device arrays -------------------------------------------
    def asarray(self, a, dtype=None, order=None):
        if isinstance(a, DeviceArray):
            if dtype is not None and np.dtype(dtype) != a.dtype:
                return a.astype(dtype)
            if order == "C" and not a.flags.c_contiguous:
                return self.ascontiguousarray(a)
            return a
        HostDevice.count("asarray", kind="transfers")
        return np.array(a, dtype=dtype, order=order or "K").view(DeviceArray)

    def array(self, a, dtype=None, copy=True, order="K", **kwargs):
        if isinstance(a, DeviceArray):
            HostDevice.count("array_copy")
        else:
            HostDevice.count("array", kind="transfers")
        return np.array(_plain(a), dtype=dtype, order=order, copy=True).view(DeviceArray)

    def ascontiguousarray(self, a, dtype=None):
        if isinstance(a, DeviceArray) and a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        return self.asarray(a, dtype=dtype, order="C") if not isinstance(a, DeviceArray) else \
            _counted_copy("ascontiguousarray", np.ascontiguousarray(_plain(a), dtype=dtype))

    def empty(self, shape, dtype=float, order="C"):
        return np.empty(shape, dtype=dtype, order=order).view(DeviceArray)

    def empty_like(self, a, dtype=None, order="K", shape=None):
        return np.empty_like(_plain(a), dtype=dtype, order=order, shape=shape).view(DeviceArray)

    def zeros(self, shape, dtype=float, order="C"):
        HostDevice.count("zeros")
        return np.zeros(shape, dtype=dtype, order=order).view(DeviceArray)

    def zeros_like(self, a, dtype=None, order="K", shape=None):
        HostDevice.count("zeros_like")
        return np.zeros_like(_plain(a), dtype=dtype, order=order, shape=shape).view(DeviceArray)

    def ones(self, shape, dtype=float, order="C"):
        HostDevice.count("ones")
        return np.ones(shape, dtype=dtype, order=order).view(DeviceArray)

    def full(self, shape, fill_value, dtype=None, order="C"):
        HostDevice.count("full")
        return np.full(shape, fill_value, dtype=dtype, order=order).view(DeviceArray)

    def arange(self, *args, **kwargs):
        HostDevice.count("arange")
        return np.arange(*args, **kwargs).view(DeviceArray)

    def ElementwiseKernel(self, in_params, out_params, operation, name):  # noqa: N802 (cupy's name)
        kernel = _CountedKernel(self._lib, in_params, out_params, operation, name, self.fail)
        self.kernels[kernel.kernel] = kernel
        return kernel


def _counted_copy(name, result):
    HostDevice.count(name)
    return result.view(DeviceArray)


class _CountedKernel(cuda_host.HostElementwiseKernel):
    """A host kernel that takes and gives device arrays, one launch per call."""

    def __call__(self, *args, size=None):
        HostDevice.count(f"kernel:{self.kernel}")
        result = super().__call__(*[_plain(a) for a in args], size=size)
        return _wrap(result)


@contextlib.contextmanager
def installed(device: HostDevice):
    """Make ``device`` the GPU of ``cnn_xp`` for the block: ``backend.cupy()`` returns it and
    the CUDA accelerator's kernels run on it; everything is put back after."""
    from cnn_xp import backend, dispatch
    from cnn_xp.kernels.cuda import launch

    saved_probe = backend._gpu_probe
    backend._gpu_probe = (device, "")
    launch.reset()
    dispatch.reset()
    HostDevice.current = device
    try:
        yield device
    finally:
        HostDevice.current = None
        backend._gpu_probe = saved_probe
        launch.reset()
        dispatch.reset()
