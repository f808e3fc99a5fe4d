"""The CUDA kernels of cnn_xp.kernels.cuda on the host (test code, no GPU needed).

- ``cuda_source(name, ctype)``: a kernel body wrapped as CuPy wraps it (CArray / CIndexer
  from CuPy's own headers), for nvcc to compile.
- ``host_library(folder)``: every body compiled as host C++ (g++), one ``extern "C"``
  function per kernel, float type T and integer type I, looping over the launch index i.
- ``HostCuPy``: a stand-in for the cupy module whose ``ElementwiseKernel`` runs those host
  functions with CuPy's calling rules (type placeholders bound from the arrays and checked
  to agree, non-raw arguments broadcast and indexed by i, ``size=`` only without non-raw
  arrays, outputs allocated when not given, raw arrays handed over as base pointers), and
  whose other names are NumPy's. With ``launch.cupy`` and ``launch.on_gpu`` pointed at it,
  the whole accelerator runs on NumPy arrays and can be compared with the reference.

A raw array that a body indexes other than at 0 must be C-contiguous here (stricter than
CuPy, which would walk its strides): a caller that forgets ``ascontiguousarray`` fails.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from cnn_xp.kernels.cuda.sources import KERNEL_SPECS

FLOAT_TYPES = {"float32": "float", "float64": "double"}
INT_TYPES = {"int8": "signed char", "int16": "short", "int32": "int", "int64": "long long",
             "uint8": "unsigned char", "uint16": "unsigned short", "uint32": "unsigned int",
             "uint64": "unsigned long long"}
SCALAR_CTYPES = {"int32": "int", "int64": "long long", "uint32": "unsigned int"}
# C types of the fixed-type (not T / I) raw arrays a kernel may take.
RAW_CTYPES = {"int32": "int", "int64": "long long", "float32": "float", "float64": "double"}
PLACEHOLDERS = {"T", "I"}
# Non-raw inputs that are arrays at every call (the others are scalars).
ELEMENTWISE_INPUTS = {"g", "dout", "out", "x", "u", "probs"}


def params(spec: str) -> list[tuple[bool, str, str]]:
    """[(is_raw, type, name)] from an ElementwiseKernel parameter string."""
    out = []
    for part in spec.split(","):
        words = part.split()
        raw = words[0] == "raw"
        typ, name = words[1:] if raw else words
        out.append((raw, typ, name))
    return out


def uses_int_type(name: str) -> bool:
    ins, outs, _ = KERNEL_SPECS[name]
    return any(typ == "I" for _, typ, _ in params(ins) + params(outs))


def indexed_beyond_zero(body: str, var: str) -> bool:
    """True when ``body`` indexes raw array ``var`` anywhere but at (ptrdiff_t)0."""
    hits = re.findall(rf"\b{var}\[([^\]]*)\]", body)
    return any(h.strip() != "(ptrdiff_t)0" for h in hits)


# -- nvcc: the body inside CuPy's generated-kernel shape -----------------------------------------

RAW_NDIM = {"windows": 6, "x": 4, "dout": 4, "argmax": 4, "scores": 2, "labels": 1, "probs": 2,
            "col": 2, "grad": 2, "labels_copy": 1, "row_loss": 1, "row_hit": 1, "loss": 1, "totals": 1,
            "ticket": 1, "unused": 1, "src": 4, "inv": 3, "draws": 2, "W": 2, "b": 1, "w_aug": 2, "x_aug": 2}


def cuda_source(name: str, ctype: str, contiguous: bool = False, itype: str = "long long") -> str:
    """Kernel ``name`` for T = ``ctype`` and I = ``itype`` as a CUDA __global__ function over
    CuPy's CArray: raw arrays as CuPy passes strided ones (``contiguous=False``) or as it
    passes C-contiguous arrays with 32-bit indexing (True), the variant most launches get."""
    flags = "true, true" if contiguous else "false, false"
    ins, outs, body = KERNEL_SPECS[name]
    nd = 1 if name.endswith("_update") else 4
    args, refs = [], []
    for raw, typ, var in params(ins):
        ct = SCALAR_CTYPES.get(typ, typ)
        if raw:  # CuPy passes raw inputs as const CArrays
            args.append(f"const CArray<{RAW_CTYPES.get(typ, typ)}, {RAW_NDIM[var]}, {flags}> {var}")
        elif var in ELEMENTWISE_INPUTS:
            args.append(f"CArray<{ct}, {nd}, false, false> _raw_{var}")
            refs.append(f"const {ct} {var} = _raw_{var}[_ind.get()];")
        else:
            args.append(f"{ct} {var}")
    for raw, typ, var in params(outs):
        if raw:
            args.append(f"CArray<{RAW_CTYPES.get(typ, typ)}, {RAW_NDIM[var]}, {flags}> {var}")
            continue
        args.append(f"CArray<{typ}, {nd}, true, false> _raw_{var}")
        refs.append(f"{typ} &{var} = _raw_{var}[_ind.get()];")
    space = f"{name}_{'c' if contiguous else 's'}_{itype.replace(' ', '_')}"
    return (f"namespace ns_{space} {{ typedef {ctype} T; typedef {itype} I;\n"
            f"extern \"C\" __global__ void k_{name}({', '.join(args)}, CIndexer<{nd}, false> _ind) {{\n"
            f"  CUPY_FOR(i, _ind.size()) {{ _ind.set(i); {' '.join(refs)}\n{body}\n  }}\n}} }}\n")


# -- g++: the body as a host function ------------------------------------------------------------

def host_symbol(name: str, float_dtype: str, int_dtype: str | None) -> str:
    return f"{name}__{float_dtype}__{int_dtype or 'none'}"


def host_function(name: str, float_dtype: str, int_dtype: str | None) -> str:
    """extern "C" void <symbol>(...): the body of kernel ``name`` in a loop over i."""
    ins, outs, body = KERNEL_SPECS[name]
    args, refs = [], []
    for raw, typ, var in params(ins):
        if raw:
            args.append(f"const {RAW_CTYPES.get(typ, typ)}* {var}")
        elif var in ELEMENTWISE_INPUTS:
            args.append(f"const {typ}* _raw_{var}")
            refs.append(f"const {typ} {var} = _raw_{var}[i];")
        else:
            args.append(f"{SCALAR_CTYPES.get(typ, typ)} {var}")
    for raw, typ, var in params(outs):
        if raw:
            args.append(f"{RAW_CTYPES.get(typ, typ)}* {var}")
            continue
        args.append(f"{typ}* _raw_{var}")
        refs.append(f"{typ} &{var} = _raw_{var}[i];")
    symbol = host_symbol(name, float_dtype, int_dtype)
    int_type = INT_TYPES[int_dtype] if int_dtype else "long long"
    return (f"namespace ns_{symbol} {{ typedef {FLOAT_TYPES[float_dtype]} T; typedef {int_type} I;\n"
            f"extern \"C\" void {symbol}({', '.join(args)}, long long size) {{\n"
            f"  for (ptrdiff_t i = 0; i < size; ++i) {{ {' '.join(refs)}\n{body}\n  }}\n}} }}\n")


# CUDA's device functions the bodies use, for one host thread that runs the launch's indices
# in order: an atomic add is a plain add, a memory fence nothing.
HOST_DEVICE_FUNCTIONS = (
    "template <typename X> static X atomicAdd(X* address, X value) { X old = *address; *address = old + value; "
    "return old; }\n"
    "static inline void __threadfence() {}\n")


def host_variants():
    """Every (kernel, float dtype, int dtype or None) the host library provides."""
    for name in KERNEL_SPECS:
        for float_dtype in FLOAT_TYPES:
            for int_dtype in (INT_TYPES if uses_int_type(name) else [None]):
                yield name, float_dtype, int_dtype


def host_library(folder: Path) -> ctypes.CDLL:
    """Compile every kernel body as host C++ into ``folder`` and load it (g++ required)."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise FileNotFoundError("g++ is not installed")
    src = folder / "kernels.cpp"
    src.write_text("#include <cmath>\n#include <cstddef>\nusing std::sqrt; using std::exp; using std::log; using std::floor;\n"
                   + HOST_DEVICE_FUNCTIONS
                   + "".join(host_function(*v) for v in host_variants()))
    lib = folder / "kernels.so"
    proc = subprocess.run([gxx, "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
                           str(src), "-o", str(lib)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return ctypes.CDLL(str(lib))


def _ctype_of(typ: str, bound: dict):
    """ctypes type of a scalar parameter of type ``typ`` (placeholders resolved by ``bound``)."""
    dtype = bound.get(typ, typ)
    return {"float32": ctypes.c_float, "float64": ctypes.c_double, "int32": ctypes.c_int,
            "int64": ctypes.c_longlong, "int8": ctypes.c_byte, "int16": ctypes.c_short,
            "uint8": ctypes.c_ubyte, "uint16": ctypes.c_ushort, "uint32": ctypes.c_uint,
            "uint64": ctypes.c_ulonglong}[str(dtype)]


class CompileException(Exception):
    """Stands in for cupy.cuda.compiler.CompileException."""


class HostElementwiseKernel:
    """A ``cupy.ElementwiseKernel`` whose body runs as host C++ (see the module docstring)."""

    def __init__(self, lib, in_params, out_params, operation, name, fail=frozenset()):
        assert name.startswith("cnn_xp_"), name
        self.kernel = name[len("cnn_xp_"):]
        assert KERNEL_SPECS[self.kernel] == (in_params, out_params, operation), name
        self.lib, self.name, self.fail = lib, name, fail
        self.ins, self.outs, self.body = params(in_params), params(out_params), operation
        self.nin, self.nout = len(self.ins), len(self.outs)
        self.launches = 0

    def __call__(self, *args, size=None):
        if self.kernel in self.fail:
            raise CompileException(f"{self.name}: error: simulated compile failure\n(details)")
        if len(args) not in (self.nin, self.nin + self.nout):
            raise TypeError(f"{self.name}: wrong number of arguments ({len(args)})")
        specs = self.ins + self.outs
        args = list(args) + [None] * (len(specs) - len(args))
        bound: dict = {}
        for (raw, typ, var), a in zip(specs, args):
            if isinstance(a, np.ndarray):
                if typ in PLACEHOLDERS:
                    if bound.setdefault(typ, a.dtype) != a.dtype:
                        raise TypeError(f"{self.name}: type is mismatched ({var}: {a.dtype}, {typ}: {bound[typ]})")
                elif str(a.dtype) != typ:
                    raise TypeError(f"{self.name}: {var} must be {typ}, got {a.dtype}")
        if str(bound.get("T")) not in FLOAT_TYPES:
            raise TypeError(f"{self.name}: T must be a float type, got {bound.get('T')}")
        int_dtype = str(bound["I"]) if "I" in bound else None
        elementwise = [a for (raw, _, _), a in zip(specs, args) if not raw and isinstance(a, np.ndarray)]
        if elementwise:
            if size is not None:
                raise ValueError(f"{self.name}: size given with non-raw array arguments")
            shape = np.broadcast_shapes(*(a.shape for a in elementwise))
            count = int(np.prod(shape))
        else:
            if size is None:
                raise ValueError(f"{self.name}: no non-raw array argument and no size")
            shape, count = None, int(size)
        converted, keep, write_back, results = [], [], [], []
        for k, ((raw, typ, var), a) in enumerate(zip(specs, args)):
            is_out = k >= self.nin
            if a is None:  # an output not given
                if raw:
                    raise ValueError(f"{self.name}: raw output {var} must be given")
                a = np.empty(shape, dtype=bound[typ])
            if is_out:
                results.append(a)
            if raw:
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: raw {var} must be an array")
                if indexed_beyond_zero(self.body, var) and not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: raw {var} is indexed but not C-contiguous")
                buf = a
            elif isinstance(a, np.ndarray):
                if not is_out and var not in ELEMENTWISE_INPUTS:
                    raise TypeError(f"{self.name}: {var} is a scalar parameter, got an array")
                if is_out:
                    if a.shape != shape:
                        raise ValueError(f"{self.name}: output {var} has shape {a.shape}, not {shape}")
                    buf = a if a.flags.c_contiguous else np.ascontiguousarray(a)
                    if buf is not a:
                        write_back.append((a, buf))
                else:  # broadcast, then read element i
                    buf = np.ascontiguousarray(np.broadcast_to(a, shape))
            else:
                if var in ELEMENTWISE_INPUTS:
                    raise TypeError(f"{self.name}: {var} is an array parameter, got {a!r}")
                converted.append(_ctype_of(typ, bound)(a))
                continue
            keep.append(buf)
            converted.append(ctypes.c_void_p(buf.ctypes.data))
        fn = getattr(self.lib, host_symbol(self.kernel, str(bound["T"]), int_dtype))
        fn(*converted, ctypes.c_longlong(count))
        for a, buf in write_back:
            a[...] = buf
        self.launches += 1
        return results[0] if len(results) == 1 else tuple(results)


class _Namespace:
    pass


class HostCuPy:
    """The cupy module as far as cnn_xp.kernels.cuda uses it: ElementwiseKernel on the host,
    everything else NumPy. ``fail``: kernel names whose compilation is made to fail."""

    __version__ = "host-emulation"

    def __init__(self, lib, fail=()):
        self._lib, self.fail = lib, frozenset(fail)
        self.kernels: dict[str, HostElementwiseKernel] = {}
        self.cuda = _Namespace()
        self.cuda.compiler = _Namespace()
        self.cuda.compiler.CompileException = CompileException
        self.cuda.runtime = _Namespace()
        self.cuda.runtime.getDevice = lambda: 0
        stream = _Namespace()
        stream.ptr = 0
        self.cuda.get_current_stream = lambda: stream

    def ElementwiseKernel(self, in_params, out_params, operation, name):  # noqa: N802 (cupy's name)
        kernel = HostElementwiseKernel(self._lib, in_params, out_params, operation, name, self.fail)
        self.kernels[kernel.kernel] = kernel
        return kernel

    def launches(self) -> dict[str, int]:
        return {name: k.launches for name, k in self.kernels.items() if k.launches}

    def __getattr__(self, name):
        return getattr(np, name)
