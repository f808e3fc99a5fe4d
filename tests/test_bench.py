"""Smoke test of ``cnn-xp bench``: a tiny run writes sane JSON and markdown (no timing asserts)."""
import json

import pytest

from cnn_xp import dispatch, models

from cnn_xp.app import bench, bench_common, bench_step


def _run(tmp_path, *extra):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["--models", "simple_convnet", "lenet5", "--dtypes", "float32", "--batch-sizes", "8",
            "--repeats", "3", "--steps", "1", "--quick", "--json", str(out_json), "--markdown", str(out_md),
            *extra]
    assert bench.main(argv) == 0
    return json.loads(out_json.read_text()), out_md.read_text()


def test_tiny_run_writes_json_and_markdown(tmp_path, capsys):
    report, table = _run(tmp_path, "--peer", "none")
    assert report["peer"] is None and report["device"] == "cpu"
    assert set(report["env"]) == {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"}
    assert report["gemm_gflops"]["float32"] > 0
    assert [r["model"] for r in report["results"]] == ["simple_convnet", "lenet5"]
    for r in report["results"]:
        assert r["batch"] == 8 and r["dtype"] == "float32" and r["repeats"] == 3
        for phase in ("train", "infer"):
            s = r[phase]
            assert len(s["runs"]) == 3 and 0 < s["min"] <= s["median"] <= s["max"]
        assert r["peak_train_bytes"] > 0 and r["param_bytes"] > 0
        assert 0 < r["train_fraction_of_gemm"]
        assert "train_ratio" not in r
    lines = table.splitlines()
    assert lines[0].startswith("| model | kernels | dtype | batch | train img/s")
    assert "ratio" not in lines[0]
    mode = dispatch.mode()  # the environment's (CI runs the suite in both modes)
    assert sum(line.startswith(f"| simple_convnet | {mode} | float32 | 8 |") for line in lines) == 1
    assert "cnn-xp bench" in table
    assert f"simple_convnet [{mode}] float32 batch 8" in capsys.readouterr().err
    # which code ran is part of the report: the accelerator (or why none), and per op
    assert report["accelerator"].startswith(("cpu (", "none ("))
    assert f"accelerator: {report['accelerator']}" in table
    for r in report["results"]:
        assert set(r["implementations"]) == set(dispatch.OPS)


def test_both_kernel_modes_side_by_side(tmp_path):
    report, table = _run(tmp_path, "--peer", "none", "--kernels", "both")
    assert [(r["model"], r["kernels"]) for r in report["results"]] == [
        ("simple_convnet", "auto"), ("simple_convnet", "reference"), ("lenet5", "auto"), ("lenet5", "reference")]
    assert all(set(r["implementations"].values()) == {"reference"}
               for r in report["results"] if r["kernels"] == "reference")
    assert "| lenet5 | reference | float32 | 8 |" in table


def test_flops_per_image_follow_the_layer_shapes():
    # simple_convnet: conv 24*24*30 outputs x 25 MACs, FC 4320x100, FC 100x10 (x2 per MAC).
    flops = bench_step.flops_per_image(models.build("simple_convnet"))
    forward = 2 * (24 * 24 * 30 * 25 + 4320 * 100 + 100 * 10)
    assert flops == {"forward": forward, "train": 3 * forward - 2 * 24 * 24 * 30 * 25}
    lenet = bench_step.flops_per_image(models.build("lenet5"))
    conv1 = 2 * 28 * 28 * 6 * 25
    lenet_fwd = conv1 + 2 * (10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10)
    assert lenet == {"forward": lenet_fwd, "train": 3 * lenet_fwd - conv1}


def test_torch_peer_is_timed_alongside(tmp_path):
    pytest.importorskip("torch")
    report, table = _run(tmp_path, "--peer", "torch")
    assert report["peer"] == "torch"
    for r in report["results"]:
        assert r["train_ratio"] > 0 and r["infer_ratio"] > 0
        assert len(r["torch_train"]["runs"]) == 3
    assert "torch train" in table.splitlines()[0]


def test_torch_twin_computes_the_same_scores():
    torch = pytest.importorskip("torch")
    import numpy as np
    for name in ("simple_convnet", "deep_convnet", "lenet5", "one_conv"):
        ours = models.build(name, seed=3, dtype="float64")
        twin = bench_common.torch_twin(torch, ours).double().eval()
        x = np.random.default_rng(0).random((4, 1, 28, 28))
        with torch.no_grad():
            theirs = twin(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours.predict(x), theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("argv, message", [
    (["--models", "nope"], "unknown model 'nope'"),
    (["--repeats", "2"], "--repeats must be at least 3"),
    (["--batch-sizes", "0"], "must be positive"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_gpu_request_without_gpu_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(bench.backend, "cupy", lambda: (_ for _ in ()).throw(
        bench.backend.GPUUnavailableError("GPU requested but unavailable: test")))
    assert bench.main(["--device", "gpu", "--quick", "--peer", "none"]) == 2
    assert "unavailable" in capsys.readouterr().err
