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
    assert "Padded the volumes with zeros from (12, 16, 16) to (16, 16, 16)" in capsys.readouterr().out
    scores = json.loads((output / "metrics.json").read_text())
    assert scores["shape"] == [16, 16, 16] and scores["pairs"] == "atlas"


def test_scan_to_scan_run_on_a_set_without_atlas(tmp_path):
    np.save(tmp_path / "vols.npy", np.random.default_rng(1).random((5, 16, 32)))
    output = tmp_path / "run"
    assert main.main(["--data", str(tmp_path / "vols.npy"), "--ndim", "2", "--epochs", "1",
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
    (np.full((3, 4, 4, 4), np.nan), "contains NaN or Inf values"),
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


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory):
    """A 16^3 VoxelMorph-1 whose displacement is exactly zero, saved to disk."""
    model = main.models.VoxelMorph1((16, 16, 16))
    layer = model.get_layer("deformation")
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return str(path)


def brain_like(shape=(12, 16, 14), seed=0):
    """An image (uint16, not in [0, 1]) and a uint8 label map with labels {0, 3, 7}."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 1000, size=shape).astype(np.uint16)
    labels = np.choose(rng.integers(0, 3, size=shape), [0, 3, 7]).astype(np.uint8)
    return image, labels


def test_register_npy_with_zero_displacement_returns_the_input_unchanged(tmp_path,
                                                                         identity_model):
    image, labels = brain_like()
    np.save(tmp_path / "moving.npy", image)
    np.save(tmp_path / "static.npy", brain_like(seed=1)[0])
    np.save(tmp_path / "labels.npy", labels)
    out = {name: str(tmp_path / f"{name}.npy") for name in ("moved", "deformation", "moved_seg")}
    assert main.main(["register", "--model", identity_model,
                      "--moving", str(tmp_path / "moving.npy"),
                      "--static", str(tmp_path / "static.npy"),
                      "--moving_seg", str(tmp_path / "labels.npy"),
                      "--moved", out["moved"], "--deformation", out["deformation"],
                      "--moved_seg", out["moved_seg"]]) == 0
    moved, deformation, moved_seg = (np.load(out[name]) for name in out)
    assert moved.shape == image.shape and moved.dtype == np.float32
    np.testing.assert_array_equal(moved, image.astype(np.float32))
    assert deformation.shape == (*image.shape, 3) and not deformation.any()
    assert moved_seg.dtype == np.uint8
    np.testing.assert_array_equal(moved_seg, labels)


def test_register_nifti_keeps_the_static_affine_and_label_values(tmp_path, identity_model):
    import nibabel as nib

    identity = keras.models.load_model(identity_model)
    layer = identity.get_layer("deformation")  # a smooth non-zero displacement of ~1 voxel
    layer.set_weights([np.zeros_like(layer.get_weights()[0]), np.array([1.3, -0.6, 0.8])])
    model_path = str(tmp_path / "shift.keras")
    identity.save(model_path)

    image, labels = brain_like()
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    affine[:3, 3] = [-9.0, 4.0, 12.0]
    for name, array in (("moving", image), ("static", brain_like(seed=1)[0]), ("seg", labels)):
        nib.save(nib.Nifti1Image(array, np.eye(4) if name != "static" else affine),
                 tmp_path / f"{name}.nii.gz")
    assert main.main(["register", "--model", model_path,
                      "--moving", str(tmp_path / "moving.nii.gz"),
                      "--static", str(tmp_path / "static.nii.gz"),
                      "--moving_seg", str(tmp_path / "seg.nii.gz"),
                      "--moved", str(tmp_path / "moved.nii.gz"),
                      "--deformation", str(tmp_path / "u.nii.gz"),
                      "--moved_seg", str(tmp_path / "moved_seg.nii.gz")]) == 0
    moved, field, moved_seg = (nib.load(tmp_path / f"{name}.nii.gz")
                               for name in ("moved", "u", "moved_seg"))
    for output in (moved, field, moved_seg):
        np.testing.assert_allclose(output.affine, affine)
    assert moved.shape == image.shape and field.shape == (*image.shape, 1, 3)  # vector image
    assert field.header.get_intent()[0] == "vector"
    np.testing.assert_allclose(np.asanyarray(field.dataobj)[2, 3, 4, 0], [1.3, -0.6, 0.8],
                               atol=1e-6)
    warped = np.asanyarray(moved_seg.dataobj)
    assert warped.dtype == np.uint8
    assert set(np.unique(warped)) <= {0, 3, 7}
    assert not np.array_equal(warped, labels)  # it did move


def test_register_refuses_images_larger_than_the_model(tmp_path, capsys, identity_model):
    np.save(tmp_path / "big.npy", np.zeros((20, 16, 16)))
    code = main.main(["register", "--model", identity_model, "--moving",
                      str(tmp_path / "big.npy"), "--static", str(tmp_path / "big.npy"),
                      "--moved", str(tmp_path / "out.npy")])
    assert code == 2
    assert "do not fit the model's input shape (16, 16, 16)" in capsys.readouterr().err


def test_evaluate_scores_a_pair_registered_to_itself_with_dice_one(tmp_path, identity_model):
    image, labels = brain_like(shape=(16, 16, 16))
    np.savez(tmp_path / "test.npz", vols=np.stack([image, image]),
             segs=np.stack([labels, labels]), labels=[3, 7], label_names=["three", "seven"])
    output = tmp_path / "eval"
    assert main.main(["evaluate", "--model", identity_model, "--data",
                      str(tmp_path / "test.npz"), "--output", str(output)]) == 0
    evaluation = json.loads((output / "eval.json").read_text())
    assert evaluation["pairs"] == "scan_to_scan" and len(evaluation["per_pair"]) == 2
    assert evaluation["labels"] == [3, 7] and evaluation["label_names"] == ["three", "seven"]
    for pair in evaluation["per_pair"]:
        assert pair["dice_after"] == [1.0, 1.0] and pair["folding_fraction"] == 0.0
        assert np.isfinite(pair["seconds"]) and np.isfinite(pair["ncc_after"])
    rows = (output / "dice_per_structure.csv").read_text().splitlines()
    assert rows[0].startswith("label,name,dice_before_mean") and rows[1].startswith("3,three,")
    assert os.path.getsize(output / "dice_boxplot.png") > 0


def test_val_data_of_another_shape_is_an_error(tmp_path, capsys):
    data = tiny_npz(tmp_path / "set.npz")
    other = tiny_npz(tmp_path / "other.npz", shape=(16, 16, 16))
    code, err = run_error(tmp_path, capsys, ["--data", data, "--val_data", other])
    assert code == 2
    assert "--val_data volumes are (16, 16, 16), --data volumes (12, 16, 16)" in err


def test_val_data_is_the_validation_set(tmp_path):
    train = tiny_npz(tmp_path / "train.npz", shape=(16, 16, 16), count=3)
    val = tiny_npz(tmp_path / "val.npz", shape=(16, 16, 16), count=3)
    output = tmp_path / "run"
    assert main.main(["--data", train, "--val_data", val, "--pairs", "scan_to_scan",
                      "--model", "vm1", "--epochs", "1", "--steps_per_epoch", "1",
                      "--output", str(output)]) == 0
    scores = json.loads((output / "metrics.json").read_text())
    assert scores["validation_pairs"] == 6  # every ordered pair of the 3 validation volumes
    assert len(scores["dice_after"]["per_label"]) == 1  # the label maps came along
