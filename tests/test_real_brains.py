"""The real-brain benchmark, end to end on a tiny grid; skipped without ../shared/data."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "fstrain9_128.npz")

pytestmark = pytest.mark.skipif(not os.path.exists(DATA),
                                reason="internal benchmark data ../shared/data is absent")


def test_benchmark_trains_and_scores_30_structures_on_a_32_cube(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/real_brains.py", "--downsample", "4", "--models", "vm1",
         "--epochs", "1", "--steps_per_epoch", "2", "--no_ants", "--output", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["grid"] == "32^3 at 6 mm" and len(results["labels"]) == 30
    vm1 = results["methods"]["vm1"]
    assert len(vm1["dice_after"]["per_label"]) == 30
    assert 0.3 < vm1["dice_before"]["mean"] < 0.9  # affinely aligned real brains
    assert np.isfinite(vm1["dice_after"]["mean"]) and np.isfinite(vm1["seconds"]["mean"])
    assert "| affine only |" in result.stdout and "| VoxelMorph-1 |" in result.stdout
    with np.load(tmp_path / "test.npz") as test:
        assert test["vols"].shape == (3, 32, 32, 32)
