"""The same random cases for every implementation of the seam's ops (test code).

``CASES[op]`` is a list of cases (plain dicts: shapes, window, dtype, memory order, seed),
drawn once from a fixed seed, plus hand-picked ones (zoo geometries, ties, NaN).
``run(op, impl, put, case)`` builds the case's inputs on the host, hands them to ``put``
(host array -> array on the device under test; it must keep the memory order), lays them
out in the case's memory order, and runs ``impl``'s functions of ``op`` (forward in training
and in inference, backward; updates for three steps). It returns (outputs, caches): every
result by name, and the forward caches (private to ``impl``; a test may check which
implementation made them). ``run(..., mutate=True)`` overwrites the forward's data inputs
(x, dropout's draws, the loss's scores and labels) in place between the forwards and the
backward -- floats with NaN, labels with other valid labels -- so a backward that reads its
input through the cache instead of its own copy gives another result than without
``mutate`` (the reference's semantics: a cache holds what the backward needs).

Used by tests/test_kernels_cuda.py (the CUDA kernels on the host against the reference) and
tests/gpu/test_gpu_ops.py (GPU reference and GPU accelerated against the CPU reference).
"""
from __future__ import annotations

import math

import numpy as np

ORDERS = ("nchw", "nhwc", "cnhw", "sliced")
UPDATE_RULES = {  # op -> (state slots, hyperparameters of its update function)
    "sgd": (0, (0.1,)),
    "momentum": (1, (0.05, 0.9)),
    "nesterov": (1, (0.05, 0.9)),
    "adagrad": (1, (0.1, 1e-7)),
    "rmsprop": (1, (0.01, 0.99, 1e-7)),
    "adam": (2, None),  # lr_t and v_scale depend on the step
}


def _out(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _window_cases(rng, count, with_channels_out=False):
    cases = []
    while len(cases) < count:
        n, c = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        h, w = int(rng.integers(4, 12)), int(rng.integers(4, 12))
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        ph, pw = int(rng.integers(0, 3)), int(rng.integers(0, 3))
        if _out(h, kh, sh, ph) < 1 or _out(w, kw, sw, pw) < 1:
            continue
        case = {"x_shape": (n, c, h, w), "k": (kh, kw), "stride": (sh, sw), "pad": (ph, pw),
                "dtype": ("float32", "float64")[len(cases) % 2], "order": ORDERS[len(cases) % 4],
                "seed": len(cases)}
        if with_channels_out:
            case["oc"] = int(rng.integers(1, 6))
        cases.append(case)
    return cases


def _conv_cases():
    rng = np.random.default_rng(1401)
    cases = _window_cases(rng, 12, with_channels_out=True)
    for i, (x_shape, oc, k, s, p) in enumerate([  # zoo-like geometries
            ((4, 1, 28, 28), 30, (5, 5), (1, 1), (0, 0)),   # simple_convnet's conv
            ((3, 16, 12, 12), 32, (3, 3), (1, 1), (1, 1)),  # a deep_convnet conv
            ((2, 6, 14, 14), 16, (5, 5), (1, 1), (0, 0)),   # LeNet-5's second conv
            ((2, 3, 9, 8), 4, (3, 2), (2, 1), (1, 0))]):
        cases.append({"x_shape": x_shape, "oc": oc, "k": k, "stride": s, "pad": p,
                      "dtype": "float32", "order": ORDERS[i % 4], "seed": 100 + i})
    cases.append(dict(cases[-1], order="nchw", dtype="float64", int_stride=True))
    # no padding on NHWC memory (a conv or pool output): kernels may read x in place
    cases.append({"x_shape": (2, 6, 14, 14), "oc": 16, "k": (5, 5), "stride": (1, 1), "pad": (0, 0),
                  "dtype": "float64", "order": "nhwc", "seed": 110})
    return cases


def _pool_cases(kind):
    rng = np.random.default_rng(1402 if kind == "max" else 1403)
    cases = [dict(c, stride=None if i % 3 == 0 else c["stride"])
             for i, c in enumerate(_window_cases(rng, 10))]
    cases += [{"x_shape": (4, 30, 24, 24), "k": (2, 2), "stride": None, "pad": (0, 0),
               "dtype": "float32", "order": "nhwc", "seed": 200},  # simple_convnet's pool
              {"x_shape": (2, 3, 7, 7), "k": (2, 2), "stride": (2, 2), "pad": (0, 0),
               "dtype": "float64", "order": "nchw", "seed": 201},  # an uneven map
              {"x_shape": (2, 3, 7, 6), "k": (3, 3), "stride": (2, 2), "pad": (1, 1),
               "dtype": "float32", "order": "cnhw", "seed": 202}]
    if kind == "max":
        cases += [dict(c, ties=True, seed=300 + i) for i, c in enumerate(cases[:4])]
        cases.append({"x_shape": (1, 2, 4, 4), "k": (2, 2), "stride": (1, 1), "pad": (1, 1),
                      "dtype": "float32", "order": "nchw", "seed": 400, "nan": True})
    return cases


CASES: dict[str, list[dict]] = {
    "conv2d": _conv_cases(),
    "maxpool2d": _pool_cases("max"),
    "avgpool2d": _pool_cases("avg"),
    "relu": [{"shape": s, "dtype": d, "order": o, "seed": i}
             for i, (s, d, o) in enumerate([((2, 3, 5, 4), "float32", "nchw"),
                                            ((3, 4, 6, 6), "float64", "nhwc"),
                                            ((2, 5, 3, 3), "float32", "cnhw"),
                                            ((4, 7), "float32", "nchw"),
                                            ((2, 3, 5, 4), "float64", "sliced")])],
    "dropout": [{"shape": s, "dtype": d, "p": p, "order": o, "seed": i}
                for i, (s, d, p, o) in enumerate([((8, 50), "float32", 0.5, "nchw"),
                                                  ((4, 3, 6, 6), "float64", 0.3, "nhwc"),
                                                  ((6, 10), "float32", 0.0, "nchw"),
                                                  ((3, 2, 5, 5), "float32", 0.9, "sliced")])],
    "softmax_cross_entropy": [
        {"n": n, "k": k, "dtype": d, "labels": lab, "scale": sc, "dout": dout, "seed": i}
        for i, (n, k, d, lab, sc, dout) in enumerate([
            (6, 10, "float32", "int64", 30.0, 1.0),
            (100, 10, "float64", "int64", 3.0, 0.5),
            (7, 3, "float32", "int32", 5.0, 2),
            (5, 4, "float64", "uint8", 1.0, 1.0),
            (6, 10, "float32", "one_hot", 3.0, 1.0),
            (1, 1, "float64", "int64", 1.0, 1.0),
        ])],
    **{op: [{"shape": s, "dtype": d, "order": o, "seed": i}
            for i, (s, d, o) in enumerate([((30, 7), "float32", "nchw"),
                                           ((12,), "float64", "nchw"),
                                           ((4, 3, 3, 3), "float32", "sliced")])]
       for op in UPDATE_RULES},
    # every rule of update_all on three parameters (three learning rates), with L2 weight
    # decay, with AdamW's shrink factors, in both dtypes
    "update_all": [{"rule": rule, "dtype": dtype, "weight_decay": wd, "shrink": shrink, "seed": i}
                   for i, (rule, dtype, wd, shrink) in enumerate(
                       [(r, d, 0.0, False) for r in UPDATE_RULES for d in ("float32", "float64")]
                       + [(r, "float32", 0.01, False) for r in UPDATE_RULES]
                       + [("adam", "float32", 0.0, True), ("adam", "float64", 0.0, True)])],
    # the fully connected op: 2-D and 4-D inputs in every memory order, with and without dx
    "affine": [{"shape": s, "out": k, "dtype": d, "order": o, "need_dx": nd, "seed": i}
               for i, (s, k, d, o, nd) in enumerate([((6, 20), 7, "float32", "nchw", True),
                                                     ((5, 3, 4, 4), 10, "float64", "nhwc", True),
                                                     ((4, 2, 3, 5), 3, "float32", "cnhw", False),
                                                     ((3, 12), 1, "float64", "sliced", True),
                                                     ((100, 16, 4, 4), 10, "float32", "sliced", True)])],
    # augmentation: random maps (identity, strong, beyond the image) and crops / flips
    "affine_resample": [{"shape": s, "dtype": d, "order": o, "strength": k, "seed": i}
                        for i, (s, d, o, k) in enumerate([((3, 1, 28, 28), "float32", "nchw", 1.0),
                                                          ((2, 3, 7, 9), "float64", "nhwc", 0.0),
                                                          ((2, 2, 8, 6), "float32", "sliced", 3.0),
                                                          ((4, 3, 5, 5), "float64", "cnhw", 1.0)])],
    "crop_flip": [{"shape": s, "dtype": d, "order": o, "pad": pad, "seed": i}
                  for i, (s, d, o, pad) in enumerate([((5, 3, 8, 8), "float32", "nchw", 2),
                                                      ((3, 1, 6, 9), "float64", "nhwc", 4),
                                                      ((4, 2, 5, 5), "float32", "sliced", 0),
                                                      ((6, 3, 4, 4), "float32", "cnhw", 1)])],
}


def case_id(op: str, case: dict) -> str:
    keys = [k for k in case if k not in ("seed",)]
    return op + "-" + "-".join(f"{case[k]}".replace(" ", "") for k in keys)


# -- building inputs -----------------------------------------------------------------------

def laid_out(host, order, put):
    """``host`` (an NCHW-shaped float array) on the device, as a view of memory in ``order``:
    nchw (C-contiguous), nhwc, cnhw (4-D only), or sliced (every other element of a wider
    last axis). Other ranks: nchw or sliced."""
    if order in ("nhwc", "cnhw") and host.ndim == 4:
        axes = (0, 2, 3, 1) if order == "nhwc" else (1, 0, 2, 3)
        inverse = tuple(int(a) for a in np.argsort(axes))
        return put(np.ascontiguousarray(host.transpose(axes))).transpose(inverse)
    if order == "sliced":
        wide = np.repeat(host, 2, axis=-1)
        wide[..., 1::2] = np.nan  # never read
        return put(wide)[..., ::2]
    return put(np.ascontiguousarray(host))


def _normal(shape, seed, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _to_pair(value):
    return value if isinstance(value, tuple) else (value, value)


def scribble(*arrays, classes=None):
    """Overwrite ``arrays`` in place (see ``run``'s ``mutate``): floats with NaN, integer
    labels (``classes`` given) with the next class, one-hot rows rolled by one class."""
    for a in arrays:
        if a.dtype.kind == "f":
            if classes is not None and a.ndim == 2:  # one-hot rows
                a[...] = a[:, ::-1].copy()
            else:
                a[...] = np.nan
        else:
            a[...] = (a + 1) % classes


# -- running one case ------------------------------------------------------------------------

def run_conv2d(impl, put, case, mutate=False):
    dtype, seed = case["dtype"], case["seed"]
    kh, kw = case["k"]
    stride, pad = case["stride"], case["pad"]
    if case.get("int_stride"):
        stride, pad = stride[0], pad[0]
    x = laid_out(_normal(case["x_shape"], seed, dtype), case["order"], put)
    W = put(_normal((case["oc"], case["x_shape"][1], kh, kw), seed + 1, dtype, 0.3))
    b = put(_normal((case["oc"],), seed + 2, dtype))
    out, cache = impl.conv2d_forward(x, W, b, stride, pad)
    infer, infer_cache = impl.conv2d_forward(x, W, b, stride, pad, train=False)
    if mutate:
        scribble(x)
    dout = laid_out(_normal(tuple(out.shape), seed + 3, dtype), case["order"], put)
    dx, dW, db = impl.conv2d_backward(dout, cache, need_dx=True)
    no_dx, dW2, db2 = impl.conv2d_backward(dout, cache, need_dx=False)
    return ({"out": out, "out_infer": infer, "dx": dx, "dW": dW, "db": db, "no_dx": no_dx,
             "dW_no_dx": dW2, "db_no_dx": db2, "infer_cache": infer_cache}, [cache])


def _pool(kind):
    def run(impl, put, case, mutate=False):
        dtype, seed = case["dtype"], case["seed"]
        kh, kw = case["k"]
        host = _normal(case["x_shape"], seed, dtype)
        if case.get("ties"):
            host = np.random.default_rng(seed).integers(-2, 3, case["x_shape"]).astype(dtype)
        if case.get("nan"):
            host.reshape(-1)[[0, 5, 6, 17]] = np.nan
        x = laid_out(host, case["order"], put)
        forward = getattr(impl, f"{kind}pool2d_forward")
        backward = getattr(impl, f"{kind}pool2d_backward")
        out, cache = forward(x, kh, kw, case["stride"], case["pad"])
        infer, infer_cache = forward(x, kh, kw, case["stride"], case["pad"], train=False)
        if mutate:
            scribble(x)
        dout = laid_out(_normal(tuple(out.shape), seed + 1, dtype), case["order"], put)
        dx = backward(dout, cache)
        return {"out": out, "out_infer": infer, "dx": dx, "infer_cache": infer_cache}, [cache]
    return run


def run_relu(impl, put, case, mutate=False):
    host = _normal(case["shape"], case["seed"], case["dtype"])
    host.reshape(-1)[:4] = [np.nan, 0.0, -0.0, np.inf]
    x = laid_out(host, case["order"], put)
    out, cache = impl.relu_forward(x)
    infer, infer_cache = impl.relu_forward(x, train=False)
    if mutate:
        scribble(x)
    dout = laid_out(_normal(case["shape"], case["seed"] + 1, case["dtype"]), case["order"], put)
    return {"out": out, "out_infer": infer, "dx": impl.relu_backward(dout, cache),
            "infer_cache": infer_cache}, [cache]


def run_dropout(impl, put, case, mutate=False):
    dtype, seed, p = case["dtype"], case["seed"], case["p"]
    x = laid_out(_normal(case["shape"], seed, dtype), case["order"], put)
    draws = put(np.random.default_rng(seed + 1).random(case["shape"]).astype(dtype))
    out, cache = impl.dropout_forward(x, draws, p)
    infer, infer_cache = impl.dropout_forward(x, draws, p, train=False)
    # the counter-based draws (the layer's): a 64-bit seed, a counter past 2^32 blocks
    keyed, keyed_cache = impl.dropout_forward_philox(x, 2**40 + 977 * seed, 2**33 + seed, p)
    keyed = keyed.copy()  # p = 0: x itself
    if mutate:
        out = out.copy()  # p = 0: out is x itself
        infer = infer.copy()
        scribble(x, draws)
    dout = put(_normal(case["shape"], seed + 2, dtype))
    keyed_dx = impl.dropout_backward(dout, keyed_cache)
    return {"out": out, "out_infer": infer, "dx": impl.dropout_backward(dout, cache),
            "philox_out": keyed, "philox_dx": keyed_dx,
            "infer_cache": infer_cache}, [cache]


def run_softmax_cross_entropy(impl, put, case, mutate=False):
    n, k, dtype, seed = case["n"], case["k"], case["dtype"], case["seed"]
    scores = put(_normal((n, k), seed, dtype, case["scale"]))
    labels = np.random.default_rng(seed + 1).integers(0, k, n)
    if case["labels"] == "one_hot":
        labels = np.eye(k, dtype=dtype)[labels]
    else:
        labels = labels.astype(case["labels"])
    labels = put(labels)
    loss, cache = impl.softmax_cross_entropy_forward(scores, labels)
    if mutate:
        scribble(scores)
        scribble(labels, classes=k)
    grad = impl.softmax_cross_entropy_backward(cache, case["dout"])
    grad_default = impl.softmax_cross_entropy_backward(cache)  # the cache is reusable
    return {"loss": loss, "dscores": grad, "dscores_default": grad_default}, [cache]


def _update(op):
    def run(impl, put, case, mutate=False):  # no cache: nothing to mutate
        slots, hyper = UPDATE_RULES[op]
        dtype, seed = case["dtype"], case["seed"]
        rng = np.random.default_rng(seed)
        param = laid_out(rng.standard_normal(case["shape"]).astype(dtype), case["order"], put)
        state = [laid_out(np.zeros(case["shape"], dtype), case["order"], put) for _ in range(slots)]
        rule = getattr(impl, f"{op}_update")
        for t in range(1, 4):
            # bounded away from 0: AdaGrad and Adam divide by |g|
            g = rng.uniform(0.1, 1.0, case["shape"]) * rng.choice([-1.0, 1.0], case["shape"])
            grad = laid_out(g.astype(dtype), case["order"], put)
            if op == "adam":
                b1, b2 = 0.9, 0.999
                hyper = (0.01 / (1 - b1 ** t), b1, b2, 1 / math.sqrt(1 - b2 ** t), 1e-8)
            assert rule(param, grad, *state, *hyper) is None
        return {"param": param, **{f"state{i}": s for i, s in enumerate(state)}}, []
    return run


UPDATE_ALL_SHAPES = ((30, 7), (12,), (4, 3, 3, 3))


def run_update_all(impl, put, case, mutate=False):  # no cache: nothing to mutate
    """Three steps of ``update_all`` on three C-contiguous parameters with their own rates."""
    rule, dtype = case["rule"], case["dtype"]
    rng = np.random.default_rng(case["seed"])
    slots = UPDATE_RULES[rule][0]
    params = [put(rng.standard_normal(s).astype(dtype)) for s in UPDATE_ALL_SHAPES]
    states = [tuple(put(np.zeros(s, dtype)) for _ in range(slots)) for s in UPDATE_ALL_SHAPES]
    rates = [0.05, 0.1, 0.02]
    for t in range(1, 4):
        grads = [put((rng.uniform(0.1, 1.0, s) * rng.choice([-1.0, 1.0], s)).astype(dtype)) for s in UPDATE_ALL_SHAPES]
        if rule != "adam":
            lrs, hyper = rates, UPDATE_RULES[rule][1][1:]
        else:
            b1, b2 = 0.9, 0.999
            lrs, hyper = [r / (1 - b1 ** t) for r in rates], (b1, b2, 1 / math.sqrt(1 - b2 ** t), 1e-8)
        shrink = [1.0 - r * 0.01 for r in rates] if case["shrink"] else None
        assert impl.update_all(rule, params, grads, states, lrs, hyper, case["weight_decay"], shrink) is None
    out = {f"param{k}": p for k, p in enumerate(params)}
    out.update({f"state{k}_{i}": s for k, st in enumerate(states) for i, s in enumerate(st)})
    return out, []


def run_affine(impl, put, case, mutate=False):
    rng = np.random.default_rng(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    d = int(np.prod(shape[1:]))
    x = laid_out(rng.standard_normal(shape).astype(dtype), case["order"], put)
    W = put((rng.standard_normal((d, case["out"])) * 0.3).astype(dtype))
    b = put(rng.standard_normal(case["out"]).astype(dtype))
    dout = put(rng.standard_normal((shape[0], case["out"])).astype(dtype))
    out, cache = impl.affine_forward(x, W, b)
    infer_out, infer_cache = impl.affine_forward(x, W, b, train=False)
    dx, dW, db = impl.affine_backward(dout, cache, case["need_dx"])
    return {"out": out, "infer_out": infer_out, "infer_cache": infer_cache, "dx": dx, "dW": dW, "db": db}, [cache]


def run_affine_resample(impl, put, case, mutate=False):  # no cache
    """Per-image maps: rotation, shear, zoom and shift scaled by the case's strength (0:
    the identity, which returns x exactly; 3: reads far outside the image)."""
    rng = np.random.default_rng(case["seed"])
    n, _, h, w = case["shape"]
    x = laid_out(rng.standard_normal(case["shape"]).astype(case["dtype"]), case["order"], put)
    k = case["strength"]
    angle, shear, zoom = rng.uniform(-0.5, 0.5, n) * k, rng.uniform(-0.3, 0.3, n) * k, 1 + rng.uniform(-0.2, 0.2, n) * k
    inverse = np.zeros((n, 2, 3))
    inverse[:, 0, 0], inverse[:, 0, 1] = np.cos(angle) / zoom, (np.sin(angle) - shear) / zoom
    inverse[:, 1, 0], inverse[:, 1, 1] = -np.sin(angle) / zoom, np.cos(angle) / zoom
    inverse[:, 0, 2], inverse[:, 1, 2] = rng.uniform(-0.3, 0.3, n) * w * k, rng.uniform(-0.3, 0.3, n) * h * k
    return {"out": impl.affine_resample(x, inverse)}, []


def run_crop_flip(impl, put, case, mutate=False):  # no cache
    rng = np.random.default_rng(case["seed"])
    n, pad = case["shape"][0], case["pad"]
    x = laid_out(rng.standard_normal(case["shape"]).astype(case["dtype"]), case["order"], put)
    rows, cols = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    flips = rng.random(n) < 0.5
    return {"out": impl.crop_flip(x, rows, cols, flips, pad)}, []


RUNNERS = {
    "conv2d": run_conv2d, "maxpool2d": _pool("max"), "avgpool2d": _pool("avg"),
    "relu": run_relu, "dropout": run_dropout, "softmax_cross_entropy": run_softmax_cross_entropy,
    **{op: _update(op) for op in UPDATE_RULES},
    "update_all": run_update_all,
    "affine": run_affine,
    "affine_resample": run_affine_resample,
    "crop_flip": run_crop_flip,
}


def run(op, impl, put, case, mutate=False):
    """(outputs, caches) of ``impl``'s functions of ``op`` on ``case`` (see the docstring)."""
    return RUNNERS[op](impl, put, case, mutate)


CACHED_OPS = ("conv2d", "maxpool2d", "avgpool2d", "relu", "dropout", "softmax_cross_entropy")  # forward + backward


def compare(got: dict, want: dict, dtype: str, to_host, where: str = ""):
    """Every output of ``got`` equals ``want``'s: same keys, None where None, same shape and
    dtype (no silent upcast), values within float32 1e-4 / float64 1e-10 of the array's
    scale; NaN where NaN."""
    assert got.keys() == want.keys(), where
    tol = 1e-4 if dtype == "float32" else 1e-10
    for key, w in want.items():
        g = got[key]
        if key == "infer_cache" or w is None:
            assert g is None, f"{where} {key}: expected None"
            continue
        g, w = to_host(g), to_host(w)
        assert g.shape == w.shape, f"{where} {key}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype == np.dtype(dtype), f"{where} {key}: dtype {g.dtype} / {w.dtype}"
        finite = np.isfinite(w)
        scale = max(1.0, float(np.abs(w[finite]).max())) if finite.any() else 1.0
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale, equal_nan=True,
                                   err_msg=f"{where} {key}")
