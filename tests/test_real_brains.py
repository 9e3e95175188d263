"""The real-brain benchmark, end to end on a tiny grid; skipped without ../shared/data."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data", "fstrain9_128.npz")

needs_data = pytest.mark.skipif(not os.path.exists(DATA),
                                reason="internal benchmark data ../shared/data is absent")


def test_ants_scores_are_kept_per_pair_and_dropped_for_other_iterations(tmp_path):
    from benchmarks import ants_syn

    path = str(tmp_path / "ants.json")
    assert ants_syn.stored_scores(path, [4, 2]) == {}
    ants_syn.store_score(path, [4, 2], "0->1", {"dice": [0.5], "made": {"threads": 2}})
    ants_syn.store_score(path, [4, 2], "1->2", {"dice": [0.7]})
    assert list(ants_syn.stored_scores(path, [4, 2])) == ["0->1", "1->2"]
    assert ants_syn.stored_scores(path, [4, 2])["0->1"]["made"] == {"threads": 2}
    assert ants_syn.stored_scores(path, [100, 70]) == {}
    ants_syn.store_score(path, [100, 70], "2->0", {"dice": [0.8]})  # other settings: anew
    assert list(ants_syn.stored_scores(path, [100, 70])) == ["2->0"]
    assert not os.path.exists(path + ".tmp")


def test_t2_like_reverses_the_order_of_the_tissues_and_keeps_the_background():
    from benchmarks import contrasts

    csf, grey, white = 0.37, 0.69, 0.95  # the anchors' T1 intensities
    t2 = contrasts.t2_like(np.array([0.0, 0.01, csf, grey, white]))
    assert t2[0] == t2[1] == 0.0  # outside the brain
    assert t2[2] > t2[3] > t2[4] > 0.0  # CSF brightest, white matter darkest
    assert t2.dtype == np.float32 and t2.max() <= 1.0


def test_test_pairs_are_every_ordered_pair_by_shift():
    from benchmarks import brains

    assert brains.test_pairs(3, None) == [(0, 1), (1, 2), (2, 0), (0, 2), (1, 0), (2, 1)]
    assert brains.test_pairs(4, 5) == [(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)]


def test_an_atlas_label_map_is_the_majority_vote_the_lowest_label_on_a_tie():
    from benchmarks import templates

    maps = [np.array([[3, 2, 0]]), np.array([[3, 5, 2]]), np.array([[4, 5, 7]])]
    np.testing.assert_array_equal(templates.vote(maps), [[3, 5, 0]])


def test_options_that_helped_combine_into_one_command_line():
    from benchmarks import real_brains

    options = [real_brains.OPTIONS["elastic"], ["--seg_weight", "0.1"],
               real_brains.OPTIONS["intensity"]]
    # Two --augment flags would keep the last kind only: both go under one.
    assert real_brains.combined(options) == ["--seg_weight", "0.1", "--augment", "elastic",
                                             "intensity"]


@needs_data
def test_benchmark_trains_on_a_32_cube_and_scores_at_128(tmp_path):
    command = [sys.executable, "benchmarks/real_brains.py", "--downsample", "4", "--methods",
               "vm2", "finetune", "--finetune_steps", "1", "--curve_steps", "0", "--refine_steps",
               "1", "--epochs", "1",
               "--steps_per_epoch", "2", "--max_pairs", "1", "--output", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["network_grid"] == "32^3 at 6 mm"
    assert results["scoring_grid"] == "128^3 at 1.5 mm" and len(results["labels"]) == 30
    # One pair (each is scored at 128^3, the bulk of the time): the first of the cycle; the
    # order of the pairs is test_test_pairs_are_every_ordered_pair_by_shift's.
    assert results["pairs"] == [[0, 1]]
    affine, vm2 = (results["summary"][name] for name in ("affine", "vm2"))
    assert 0.4 < affine["dice"]["mean"] < 0.9  # affinely aligned real brains
    assert np.isfinite(vm2["dice"]["mean"]) and vm2["hd95_mm"]["mean"] > 0
    assert np.isfinite(vm2["sdlogj"]["mean"]) and vm2["seconds"]["mean"] > 0
    assert results["summary"]["finetune"]["finetune_seconds"]["mean"] > 0
    assert results["summary"]["refined"]["refine_seconds"]["mean"] > 0
    curve = json.loads((tmp_path / "finetune.json").read_text())["curve"]
    assert sorted(curve[0]) == ["0+0", "0+1", "1+0", "1+1"]
    assert (tmp_path / "finetune_curve.png").stat().st_size > 10_000
    assert "| affine only |" in result.stdout and "| VM-2 (CVPR), 32^3 |" in result.stdout
    with np.load(tmp_path / "test.npz") as test:
        assert test["vols"].shape == (3, 32, 32, 32)
    # A second run reuses the stored results instead of training again.
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "Epoch 1/1" not in again.stdout


OFFICIAL_PYTHON = os.path.join(ROOT, "..", "vxm-official", "bin", "python")


@needs_data
@pytest.mark.skipif(not os.path.exists(OFFICIAL_PYTHON),
                    reason="the official VoxelMorph's environment ../vxm-official is absent")
def test_official_row_trains_in_its_own_environment_and_is_scored_here(tmp_path):
    command = [sys.executable, "benchmarks/real_brains.py", "--downsample", "4", "--methods",
               "official", "--epochs", "1", "--steps_per_epoch", "2", "--max_pairs", "2",
               "--output", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    official = json.loads((tmp_path / "results.json").read_text())["summary"]["official"]
    assert 0.4 < official["dice"]["mean"] < 0.9 and official["seconds"]["mean"] > 0
    with np.load(tmp_path / "official" / "flows.npz") as stored:
        assert stored["flows"].shape == (6, 32, 32, 32, 3)  # every ordered test pair
    assert "| official VoxelMorph 0.2" in result.stdout


@needs_data
def test_the_shipped_models_label_maps_are_skull_stripped_and_leave_the_test_subjects_out(
        tmp_path):
    script = os.path.join(ROOT, "benchmarks", "brain_model.py")
    subprocess.run([sys.executable, script, "data", "--output", str(tmp_path)], check=True,
                   capture_output=True)
    with np.load(tmp_path / "label_maps.npz") as stored, np.load(DATA) as bench:
        maps, labels = stored["segs"], list(stored["labels"])
        test_maps = bench["segs"][6:, 1::2, 1::2, 1::2]
    assert maps.shape == (26, 64, 64, 64)  # 20 SynthSeg maps and 6 training subjects
    assert maps.max() < 500 and not np.any(maps == 24)
    assert not any(np.array_equal(maps[i] > 0, test > 0) for i in range(26) for test in test_maps)
    assert len(labels) == 27 and not {24, 31, 63} & set(labels)
