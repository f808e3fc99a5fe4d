"""The GPU suite's own code, proved without a GPU: tests/gpu run with the CPU standing in for
the GPU (CNN_XP_GPU_DRY_RUN=1), in both kernel modes, so the real run on a GPU machine fails
only on GPU behaviour."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_passes_with_the_cpu_standing_in():
    env = dict(os.environ, CNN_XP_GPU_DRY_RUN="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", str(ROOT / "tests" / "gpu")],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 250, tail
    assert " failed" not in summary and " error" not in summary, tail
    for mode in ("reference", "auto"):  # both kernel modes of the device side ran
        ran = sum(1 for line in proc.stdout.splitlines()
                  if " PASSED" in line and re.search(rf"[\[-]{mode}[\]-]", line))
        assert ran >= 100, f"only {ran} tests passed in mode {mode}\n{tail}"
    skipped = re.findall(r"(\S+) SKIPPED", proc.stdout)
    assert all("test_gpu_kernels_cuda.py" in s or "doctor" in s for s in skipped), skipped
