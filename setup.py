"""Build of cnn_xp's one native part: the CPU kernels, ``cnn_xp.kernels.cpu._native``.

Everything else about the package lives in pyproject.toml. The extension is a plain CPython
module (buffer protocol, no NumPy headers) compiled at install time, never at run time:

* x86-64 only, with a GCC-compatible compiler (GCC or Clang); elsewhere it is not built
  and cnn_xp runs its reference ops.
* ``optional=True``: where it does not compile (no C compiler, no Python headers), the
  package installs without it and ``cnn-xp doctor`` says so.
* No ``-march=native``: the kernels are compiled for baseline x86-64, AVX2 + FMA and
  AVX-512 by target attributes in the source, and the module picks at import what the CPU
  runs, so a built wheel or image can be copied to any x86-64 machine.
"""
import os
import sysconfig

from setuptools import Extension, setup

HERE = "cnn_xp/kernels/cpu"
VARIANTS = [f"{HERE}/kernels_{isa}_{real}.c" for isa in ("baseline", "avx2", "avx512")
            for real in ("float", "double")]


def builds_kernels() -> bool:
    """The target is x86-64 and not Windows' MSVC toolchain (the kernels use GCC's vector
    extensions)."""
    platform = sysconfig.get_platform()
    return platform.endswith(("x86_64", "amd64")) and os.name == "posix"


extensions = []
if builds_kernels():
    extensions.append(Extension(
        "cnn_xp.kernels.cpu._native",
        sources=[f"{HERE}/_native.c", *VARIANTS],
        depends=[f"{HERE}/kernels.h", f"{HERE}/kernels_body.h"],
        # -O3 and FMA contraction (ISO C modes forbid it) in every variant; -fno-wrapv undoes
        # the -fwrapv of Python's CFLAGS, which would hold back the kernels' index arithmetic.
        extra_compile_args=["-O3", "-ffp-contract=fast", "-fno-wrapv", "-std=gnu11", "-g0"],
        optional=True,
    ))

setup(ext_modules=extensions)
