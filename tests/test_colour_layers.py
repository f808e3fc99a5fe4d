"""The layers colour-image nets need: GlobalAvgPool2D and the Residual block. Gradients
against float64 central differences (cnn_xp.gradcheck), forward/backward against PyTorch
twins with the same weights (skipped without torch), and the Sequential machinery on a
block's flattened keys: optimizers, parameter groups, state_dict, save/load, dtype, flops."""
import numpy as np
import pytest

import cnn_xp
from cnn_xp import gradcheck, optim
from cnn_xp.layers import Affine, BatchNorm, Conv2D, GlobalAvgPool2D, ReLU, Residual
from cnn_xp.layers.base import NoForwardCache
from cnn_xp.model import Sequential

TOL = 1e-6


def rand(shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def assert_small(errors):
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


def randomize_bn(block, seed):
    """Non-trivial gammas and betas (ones and zeros would hide gradient bugs)."""
    rng = np.random.default_rng(seed)
    for key in list(block.params):
        if key.endswith(("gamma", "beta")):
            block.params[key] = rng.standard_normal(block.params[key].shape) * 0.5 + (1.0 if "gamma" in key else 0.0)
    return block


# ---------------------------------------------------------------- GlobalAvgPool2D

def test_global_avg_pool_forward_backward_and_shapes():
    x = rand((3, 4, 5, 6), 1)
    layer = GlobalAvgPool2D()
    out = layer.forward(x)
    np.testing.assert_allclose(out, x.mean(axis=(2, 3)), rtol=1e-12)
    assert out.shape == (3, 4) and out.dtype == x.dtype
    dout = rand((3, 4), 2)
    dx = layer.backward(dout)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(dx, np.broadcast_to(dout[:, :, None, None] / 30, x.shape), rtol=1e-12)
    assert layer.output_shape((4, 5, 6)) == (4,)
    assert layer.forward_flops((4, 5, 6)) == 4 * 5 * 6
    assert GlobalAvgPool2D().forward(x.astype("float32")).dtype == np.float32


def test_global_avg_pool_gradcheck():
    assert_small(gradcheck.check_layer(GlobalAvgPool2D(), rand((2, 3, 4, 5), 3)))


def test_global_avg_pool_refuses_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        GlobalAvgPool2D().forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="H\\*W"):
        GlobalAvgPool2D().forward(np.zeros((2, 3, 0, 4)))
    with pytest.raises(ValueError, match="float32 or float64"):
        GlobalAvgPool2D().forward(np.zeros((2, 3, 2, 2), dtype=np.int64))
    with pytest.raises(NoForwardCache):
        GlobalAvgPool2D().backward(np.zeros((2, 3)))
    GlobalAvgPool2D().forward(np.zeros((2, 3, 4, 4)), train=False)  # inference stores nothing


# ---------------------------------------------------------------- Residual

BLOCKS = {  # id -> (in, out, stride, input shape)
    "identity": (3, 3, 1, (4, 3, 5, 5)),
    "projection_stride2": (2, 4, 2, (3, 2, 6, 5)),
    "projection_channels": (2, 3, 1, (3, 2, 4, 4)),
    "stride2_same_channels": (3, 3, 2, (3, 3, 5, 6)),
}


@pytest.mark.parametrize("case", sorted(BLOCKS))
def test_residual_gradcheck_float64(case):
    c, oc, stride, shape = BLOCKS[case]
    block = randomize_bn(Residual(c, oc, stride, rng=7, dtype="float64"), 8)
    assert block.projection == (stride != 1 or c != oc)
    errors = gradcheck.check_layer(block, rand(shape, 9), seed=10)
    assert set(errors) == {"x", *block.params}
    assert_small(errors)


def test_residual_keys_shapes_and_flops():
    block = Residual(3, 8, stride=2, rng=0)
    assert list(block.params) == ["conv1.W", "bn1.gamma", "bn1.beta", "conv2.W", "bn2.gamma", "bn2.beta",
                                  "proj.W", "proj_bn.gamma", "proj_bn.beta"]
    assert list(block.buffers) == [f"{bn}.{k}" for bn in ("bn1", "bn2", "proj_bn")
                                   for k in ("running_mean", "running_var")]
    assert block.params["conv1.W"].shape == (8, 3, 3, 3) and block.params["proj.W"].shape == (8, 3, 1, 1)
    assert block.params["conv1.W"].dtype == np.float32
    assert block.output_shape((3, 9, 8)) == (8, 5, 4)
    assert block.forward_flops((3, 9, 8)) == 2 * 8 * 5 * 4 * (3 * 9 + 8 * 9 + 3)
    assert not block.batch_sliceable
    out = block.forward(rand((2, 3, 9, 8)).astype("float32"))
    assert out.shape == (2, 8, 5, 4) and out.dtype == np.float32 and (out >= 0).all()
    identity = Residual(4, 4, rng=0)
    assert not identity.projection and "proj.W" not in identity.params
    assert not np.array_equal(identity.params["conv1.W"], identity.params["conv2.W"])  # one stream, two draws
    np.testing.assert_array_equal(Residual(4, 4, rng=0).params["conv2.W"], identity.params["conv2.W"])
    for bad in (dict(stride=3), dict(stride=0), dict(in_channels=0)):
        args = dict(in_channels=2, out_channels=2, stride=1) | bad
        with pytest.raises(ValueError):
            Residual(**args)


def test_residual_is_relu_of_main_path_plus_shortcut():
    """The forward from its parts: a plain Conv2D (zero bias) + BatchNorm + ReLU stack."""
    block = randomize_bn(Residual(2, 3, 2, rng=1, dtype="float64"), 2)
    x = rand((4, 2, 6, 6), 3)

    def conv(key, stride, pad):
        layer = Conv2D(*block.params[key].shape[1::-1], block.params[key].shape[2], stride, pad, dtype="float64")
        layer.params["W"] = block.params[key]
        return layer

    def bn(prefix):
        layer = BatchNorm(3, dtype="float64")
        layer.params["gamma"], layer.params["beta"] = block.params[f"{prefix}.gamma"], block.params[f"{prefix}.beta"]
        return layer

    main = x
    for layer in (conv("conv1.W", 2, 1), bn("bn1"), ReLU(), conv("conv2.W", 1, 1), bn("bn2")):
        main = layer.forward(main)
    short = bn("proj_bn").forward(conv("proj.W", 2, 0).forward(x))
    np.testing.assert_allclose(block.forward(x), np.maximum(main + short, 0), rtol=1e-12, atol=1e-12)


def test_residual_first_layer_skips_dx_and_inference_stores_nothing():
    block = Residual(2, 3, 2, rng=0, dtype="float64")
    block.need_input_grad = False
    assert not block.parts["conv1"].need_input_grad and not block.parts["proj"].need_input_grad
    x = rand((2, 2, 4, 4))
    out = block.forward(x)
    assert block.backward(np.ones_like(out)) is None
    assert set(block.grads) == set(block.params)
    fresh = Residual(2, 3, rng=0)
    fresh.forward(x.astype("float32"), train=False)
    with pytest.raises(NoForwardCache):
        fresh.backward(np.ones((2, 3, 4, 4), dtype="float32"))


def resnet(dtype="float64", seed=0):
    return Sequential([Conv2D(3, 4, 3, pad=1, rng=seed, dtype=dtype), Residual(4, 4, rng=seed + 1, dtype=dtype),
                       Residual(4, 6, 2, rng=seed + 2, dtype=dtype), GlobalAvgPool2D(),
                       Affine(6, 5, rng=seed + 3, dtype=dtype)], dtype=dtype)


def test_model_of_blocks_gradcheck_through_sequential():
    model = resnet()
    for _, layer, key in model.params_and_grads():
        if key.endswith(("gamma", "beta")):
            layer.params[key] = layer.params[key] + rand(layer.params[key].shape, 4, 0.3)
    x, t = rand((3, 3, 6, 6), 5), np.array([0, 3, 4])
    model.loss(x, t)
    model.backward()
    for name, layer, key in model.params_and_grads():
        if name.startswith(("1.", "2.")):
            p = layer.params[key]
            numeric = gradcheck.numerical_gradient(lambda: model.loss(x, t), p)
            assert gradcheck.relative_error(layer.grads[key], numeric) < TOL, name


def test_optimizers_groups_and_state_dict_use_the_flattened_names():
    model = resnet("float32")
    names = [name for name, _, _ in model.params_and_grads()]
    assert "1.conv1.W" in names and "2.proj.W" in names and "2.proj_bn.gamma" in names
    x, t = rand((4, 3, 6, 6), 1).astype("float32"), np.array([0, 1, 2, 3])
    opt = optim.Adam(model, lr=1e-2, param_groups=[{"params": ["2.*"], "lr_scale": 0.5}], weight_decay=1e-3)
    assert opt.param_groups[0]["params"] == [n for n in names if n.startswith("2.")]
    before = {k: v.copy() for k, v in model.state_dict().items()}
    for _ in range(2):
        model.loss(x, t)
        model.backward()
        opt.step()
    state = model.state_dict()
    assert set(state) == set(before) and "2.proj_bn.running_var" in state
    assert all(not np.array_equal(state[n], before[n]) for n in names)
    assert not np.array_equal(state["1.bn1.running_mean"], before["1.bn1.running_mean"])
    saved_opt = opt.state_dict()
    assert "m/2.proj.W" in saved_opt

    twin = resnet("float32", seed=9)
    twin.load_state_dict(state)
    twin_opt = optim.Adam(twin, lr=1e-2, param_groups=[{"params": ["2.*"], "lr_scale": 0.5}])
    twin_opt.load_state_dict(saved_opt)
    for m, o in ((model, opt), (twin, twin_opt)):
        m.loss(x, t)
        m.backward()
        o.step()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(twin.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(model.predict(x), twin.predict(x))


def test_astype_to_and_replica_follow_the_sublayers():
    block = Residual(2, 3, 2, rng=0)
    block.astype("float64")
    assert all(v.dtype == np.float64 for v in block.params.values())
    assert all(v.dtype == np.float64 for v in block.buffers.values())
    assert block.parts["bn1"].params["gamma"] is block.params["bn1.gamma"]
    block.to("cpu")
    twin = block.replica()
    assert twin.params["conv1.W"] is block.params["conv1.W"]
    x = rand((2, 2, 4, 4))
    out = twin.forward(x)
    twin.backward(np.ones_like(out))
    assert set(twin.grads) == set(block.params) and len(block.grads) == 0


def test_save_and_load_round_trip(tmp_path):
    model = resnet("float32")
    x, t = rand((4, 3, 6, 6), 1).astype("float32"), np.array([0, 1, 2, 3])
    model.loss(x, t)  # moves the running statistics
    path = tmp_path / "resnet.npz"
    model.save(path, class_names=list("abcde"))
    loaded = cnn_xp.load(path)
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in model.layers]
    assert repr(loaded.layers[2]) == repr(model.layers[2]) == "Residual(4, 6, stride=2, projection)"
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value, err_msg=key)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.class_names == list("abcde")


# ---------------------------------------------------------------- PyTorch twins

def torch_block(torch, block):
    """A PyTorch twin of ``block`` (float64) with the same weights."""
    nn = torch.nn
    oc, ic = block.params["conv1.W"].shape[:2]

    def conv(key, stride, pad):
        w = block.params[key]
        mod = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride=stride, padding=pad, bias=False).double()
        mod.weight.data = torch.from_numpy(np.array(w, dtype=np.float64))
        return mod

    def bn(prefix):
        mod = nn.BatchNorm2d(oc, momentum=0.1, eps=1e-5).double()
        mod.weight.data = torch.from_numpy(np.array(block.params[f"{prefix}.gamma"], dtype=np.float64))
        mod.bias.data = torch.from_numpy(np.array(block.params[f"{prefix}.beta"], dtype=np.float64))
        return mod

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = conv("conv1.W", block.stride, 1), bn("bn1")
            self.conv2, self.bn2 = conv("conv2.W", 1, 1), bn("bn2")
            self.proj = nn.Sequential(conv("proj.W", block.stride, 0), bn("proj_bn")) if block.projection else None

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (x if self.proj is None else self.proj(x)))

    return Twin()


TORCH_NAMES = {"conv1.W": "conv1.weight", "bn1.gamma": "bn1.weight", "bn1.beta": "bn1.bias",
               "conv2.W": "conv2.weight", "bn2.gamma": "bn2.weight", "bn2.beta": "bn2.bias",
               "proj.W": "proj.0.weight", "proj_bn.gamma": "proj.1.weight", "proj_bn.beta": "proj.1.bias"}


@pytest.mark.parametrize("case", sorted(BLOCKS))
def test_residual_matches_pytorch(case):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'cnn_xp[bench]')")
    c, oc, stride, shape = BLOCKS[case]
    block = randomize_bn(Residual(c, oc, stride, rng=3, dtype="float64"), 4)
    twin = torch_block(torch, block).train()
    x, n = rand(shape, 5), shape[0]
    out = block.forward(x)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out_t = twin(xt)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    dout = rand(out.shape, 6)
    dx = block.backward(dout)
    out_t.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    torch_params = dict(twin.named_parameters())
    for key in block.params:
        np.testing.assert_allclose(block.grads[key], torch_params[TORCH_NAMES[key]].grad.numpy(),
                                   rtol=1e-9, atol=1e-11, err_msg=key)
    # running statistics: the same mean; PyTorch keeps the unbiased variance, we the biased one
    count = n * out.shape[2] * out.shape[3]
    for prefix in ("bn1", "bn2") + (("proj_bn",) if block.projection else ()):
        mod = {"bn1": twin.bn1, "bn2": twin.bn2, "proj_bn": twin.proj[1] if twin.proj else None}[prefix]
        np.testing.assert_allclose(block.buffers[f"{prefix}.running_mean"], mod.running_mean.numpy(), atol=1e-12)
        biased = 0.9 + (mod.running_var.numpy() - 0.9) * (count - 1) / count
        np.testing.assert_allclose(block.buffers[f"{prefix}.running_var"], biased, rtol=1e-10)
        mod.running_var.copy_(torch.from_numpy(np.array(block.buffers[f"{prefix}.running_var"])))
    with torch.no_grad():
        infer_t = twin.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(block.forward(x, train=False), infer_t, rtol=1e-10, atol=1e-12)


def test_global_avg_pool_matches_pytorch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'cnn_xp[bench]')")
    x = rand((2, 3, 5, 4), 1)
    layer = GlobalAvgPool2D()
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out_t = torch.nn.AdaptiveAvgPool2d(1)(xt).flatten(1)
    np.testing.assert_allclose(layer.forward(x), out_t.detach().numpy(), rtol=1e-12)
    dout = rand((2, 3), 2)
    out_t.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-12)
