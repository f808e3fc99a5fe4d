"""The GPU suite's own code, proved without a GPU: tests/gpu run with the CPU standing in for
the GPU (CNN_XP_GPU_DRY_RUN=1), so the real run on a GPU machine fails only on GPU behaviour."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_passes_with_the_cpu_standing_in():
    env = dict(os.environ, CNN_XP_GPU_DRY_RUN="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "gpu")],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 100, tail
    assert " failed" not in proc.stdout.splitlines()[-1], tail
