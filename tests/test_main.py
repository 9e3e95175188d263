"""The command line end to end: outputs of a tiny run, and clear errors for bad input."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_npz(path, shape=(12, 16, 16), count=4, **extra):
    """A small labelled 3D set with an atlas; 12 is not divisible by 16, so it gets padded."""
    rng = np.random.default_rng(0)
    vols = rng.random((count, *shape)).astype(np.float32)
    np.savez(path, vols=vols, segs=(vols > 0.5).astype(np.uint8), atlas=vols[0],
             atlas_seg=(vols[0] > 0.5).astype(np.uint8), **extra)
    return str(path)


def test_default_run_writes_every_output(tmp_path):
    assert main.main(["--ndim", "2", "--epochs", "2", "--steps_per_epoch", "2",
                      "--output", str(tmp_path)]) == 0
    for name in ("model.keras", "history.csv", "loss.png", "overlay_0.png", "overlay_2.png",
                 "metrics.json"):
        assert os.path.getsize(tmp_path / name) > 0, name
    scores = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("ncc_before", "ncc_after", "dice_before", "dice_after", "folding_fraction"):
        assert np.isfinite(scores[key]["mean"]), key
    assert len(scores["dice_after"]["per_label"]) == 3  # CSF, grey and white matter
    with open(tmp_path / "history.csv") as file:
        assert len(file.readlines()) == 3  # header and two epochs
    model = keras.models.load_model(tmp_path / "model.keras")
    assert model.get_layer("deformation").output.shape == (None, 80, 96, 2)


def test_3d_npz_run_pads_the_volumes_and_trains(tmp_path, capsys):
    data = tiny_npz(tmp_path / "set.npz")
    output = tmp_path / "run"
    assert main.main(["--data", data, "--model", "vm1", "--loss", "mse", "--epochs", "1",
                      "--steps_per_epoch", "2", "--output", str(output)]) == 0
    assert "Padded the volumes with zeros to (16, 16, 16)" in capsys.readouterr().out
    scores = json.loads((output / "metrics.json").read_text())
    assert scores["shape"] == [16, 16, 16] and scores["pairs"] == "atlas"


def test_scan_to_scan_run_on_a_set_without_atlas(tmp_path):
    np.save(tmp_path / "vols.npy", np.random.default_rng(1).random((5, 16, 32)))
    output = tmp_path / "run"
    assert main.main(["--data", str(tmp_path / "vols.npy"), "--epochs", "1",
                      "--steps_per_epoch", "2", "--output", str(output)]) == 0
    scores = json.loads((output / "metrics.json").read_text())
    assert scores["pairs"] == "scan_to_scan" and scores["validation_pairs"] == 2
    assert "dice_after" not in scores  # no label maps


def run_error(tmp_path, capsys, argv):
    code = main.main(argv + ["--epochs", "1", "--output", str(tmp_path / "run")])
    return code, capsys.readouterr().err


def test_missing_file_is_a_one_line_error(tmp_path, capsys):
    code, err = run_error(tmp_path, capsys, ["--data", str(tmp_path / "nope.npz")])
    assert code == 2
    assert err.strip().splitlines() == [f"main.py: error: no such file or folder: "
                                        f"{tmp_path / 'nope.npz'}"]


@pytest.mark.parametrize("array, message", [
    (np.zeros((16, 16)), "expected volumes of shape (N, H, W) or (N, D, H, W)"),
    (np.full((3, 16, 16), np.nan), "contains NaN or Inf values"),
])
def test_bad_arrays_are_one_line_errors(tmp_path, capsys, array, message):
    np.save(tmp_path / "bad.npy", array)
    code, err = run_error(tmp_path, capsys, ["--data", str(tmp_path / "bad.npy")])
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_moving_and_static_of_different_shapes_are_an_error(tmp_path, capsys):
    data = tiny_npz(tmp_path / "set.npz")
    np.save(tmp_path / "atlas.npy", np.zeros((16, 16, 32)))
    code, err = run_error(tmp_path, capsys, ["--data", data, "--atlas",
                                             str(tmp_path / "atlas.npy")])
    assert code == 2
    assert "moving and static shapes differ" in err


def test_unknown_flag_values_exit_with_argparse_errors(capsys):
    for argv in (["--model", "vm3"], ["--loss", "ssd"], ["--epochs", "ten"], ["--lr", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main.main(argv)
        assert exit_info.value.code == 2
        assert "error: argument" in capsys.readouterr().err


def test_help_runs_from_the_shell():
    result = subprocess.run([sys.executable, "main.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--epochs", "--batch_size", "--lr", "--lamda", "--model", "--loss", "--data",
                 "--atlas", "--steps_per_epoch", "--output", "--seed"):
        assert flag in result.stdout
