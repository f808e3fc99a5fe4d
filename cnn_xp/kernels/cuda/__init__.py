"""The CUDA accelerator: hand-written CuPy kernels for the ops where CuPy's generic array
operations take many launches or large temporaries.

It implements the ops in ``OPS`` with exactly the signatures and semantics of the reference
(``cnn_xp.ops``; results equal up to float rounding, max pooling with the same first-maximum
/ NaN rule). ``cnn_xp.dispatch`` chooses it for CuPy arrays in kernel mode ``auto``:

==========================  ===============================================================
op                          how (see the submodules)
==========================  ===============================================================
conv2d                      the book's im2col layout by one kernel + one GEMM; db one GEMV;
                            dx the transposed column gradient folded by a gather kernel
affine                      one kernel packs [x | 1] and [W; b]: one GEMM forward, two backward
maxpool2d                   max + argmax in one kernel; backward a gather from the argmax
avgpool2d                   one kernel; backward the gather kernel over a broadcast share
relu                        backward in one kernel
dropout                     output and mask in one kernel (the draws too: counter-based Philox)
softmax_cross_entropy       one thread per row for softmax and loss; gradient in one kernel
sgd ... adam                one fused kernel per update of a parameter and its state
update_all                  every parameter of a step in one launch (32 per launch)
affine_resample, crop_flip  a batch's augmentation in one kernel (its draws: one copy)
==========================  ===============================================================

A call the kernels cannot serve -- another dtype than float32/float64, mixed dtypes, an
array of 2^31 elements or more, one-hot labels, a CPU array, or a kernel that failed to
compile -- runs the reference for that call, and its cache records that
(``cache.ReferenceCache``), so the backward runs the reference's backward too. Importing
this package imports no cupy; kernels are made on first use (``launch``) and compiled by
CuPy at their first launch.
"""
from __future__ import annotations

from ... import backend
from . import launch
from .affine import affine_backward, affine_forward
from .conv import conv2d_backward, conv2d_forward
from .pointwise import (dropout_backward, dropout_forward, dropout_forward_philox, relu_backward, relu_forward,
                        softmax_cross_entropy_backward, softmax_cross_entropy_forward)
from .pool import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward
from .resample import affine_resample, crop_flip
from .sources import KERNEL_SPECS
from .updates import (adagrad_update, adam_update, momentum_update, nesterov_update,
                      rmsprop_update, sgd_update, update_all)

NAME = "cuda"
OPS = ("conv2d", "affine", "maxpool2d", "avgpool2d", "relu", "dropout", "softmax_cross_entropy",
       "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "update_all",
       "affine_resample", "crop_flip")


def status() -> tuple[bool, str]:
    """(usable, reason): a usable CUDA GPU through CuPy, and no kernel failed to compile in
    this process. Cheap: builds and compiles nothing."""
    usable, reason = backend.gpu_status()
    if usable and launch.failure() is not None:
        return False, launch.failure()
    return usable, reason


def details() -> dict:
    """What doctor and bench report: usability, the ops, dtypes, kernels and limits."""
    usable, reason = status()
    info = {
        "name": NAME, "usable": usable, "reason": reason, "ops": list(OPS),
        "dtypes": list(launch.DTYPES), "index_limit": launch.INDEX_LIMIT,
        "kernels": sorted(KERNEL_SPECS), "built": launch.built(), "failure": launch.failure(),
    }
    if usable:
        info["cupy"] = backend.cupy().__version__
    return info


__all__ = [
    "NAME", "OPS", "status", "details",
    "conv2d_forward", "conv2d_backward", "affine_forward", "affine_backward",
    "maxpool2d_forward", "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
    "relu_forward", "relu_backward", "dropout_forward", "dropout_forward_philox", "dropout_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "sgd_update", "momentum_update", "nesterov_update", "adagrad_update", "rmsprop_update",
    "adam_update", "update_all", "affine_resample", "crop_flip",
]
