"""The command line end to end: outputs of a tiny run, and clear errors for bad input."""
import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import datasets
import distribution
import main
import metrics
import training

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
    for key in ("ncc_before", "ncc_after", "dice_before", "dice_after", "folding_fraction",
                "hd95", "hd95_mm", "sdlogj"):
        assert np.isfinite(scores[key]["mean"]), key
    assert len(scores["dice_after"]["per_label"]) == 3  # CSF, grey and white matter
    # the default data is at 2 mm: HD95 in mm is twice that in voxels, label by label
    np.testing.assert_allclose(scores["hd95_mm"]["per_label"],
                               2 * np.array(scores["hd95"]["per_label"]))
    with open(tmp_path / "history.csv") as file:
        assert len(file.readlines()) == 3  # header and two epochs
    model = keras.models.load_model(tmp_path / "model.keras")
    assert model.get_layer("deformation").output.shape == (None, 80, 96, 2)


def test_3d_npz_run_pads_the_volumes_and_trains(tmp_path, capsys):
    data = tiny_npz(tmp_path / "set.npz")
    output = tmp_path / "run"
    assert main.main(["--data", data, "--model", "vm1", "--loss", "mse", "--epochs", "1",
                      "--steps_per_epoch", "2", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "Padded the volumes with zeros from (12, 16, 16) to (16, 16, 16)" in printed
    assert "HD95" in printed and "SDlogJ" in printed
    scores = json.loads((output / "metrics.json").read_text())
    assert scores["shape"] == [16, 16, 16] and scores["pairs"] == "atlas"
    assert "hd95" in scores and "hd95_mm" not in scores  # the .npz gives no spacing
    with np.load(output / "samples.npz") as samples:  # scored on the volumes' own grid
        assert samples["moving"].shape[1:] == samples["moved_seg"].shape[1:] == (12, 16, 16)
        assert samples["deformation"].shape[1:] == (12, 16, 16, 3)


def test_scan_to_scan_run_on_a_set_without_atlas(tmp_path):
    np.save(tmp_path / "vols.npy", np.random.default_rng(1).random((5, 16, 32)))
    output = tmp_path / "run"
    assert main.main(["--data", str(tmp_path / "vols.npy"), "--ndim", "2", "--epochs", "1",
                      "--steps_per_epoch", "2", "--output", str(output)]) == 0
    scores = json.loads((output / "metrics.json").read_text())
    assert scores["pairs"] == "scan_to_scan" and scores["validation_pairs"] == 2
    assert "dice_after" not in scores  # no label maps


def save_slice_files(folder, count=5, shape=(16, 20)):
    """``count`` 2D NIfTI images with label maps in ``folder``: their names."""
    import nibabel as nib

    folder.mkdir()
    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        image = rng.random(shape).astype(np.float32)
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image((image > 0.5).astype(np.uint8), np.eye(4)),
                 folder / f"seg{i}.nii.gz")
        names.append((f"{folder.name}/img{i}.nii.gz", f"{folder.name}/seg{i}.nii.gz"))
    return names


def test_a_csv_list_of_images_and_label_maps_trains_with_the_segmentation_loss(tmp_path):
    """The soft-Dice loss of the warped label maps is logged (in [0, 1], train and validation)
    and is in the loss that training minimises with weight --seg_weight."""
    names = save_slice_files(tmp_path / "subjects")
    (tmp_path / "set.csv").write_text("image,seg\n" + "".join(f"{image},{seg}\n"
                                                              for image, seg in names))
    output = tmp_path / "run"
    assert main.main(["--data", str(tmp_path / "set.csv"), "--model", "vm1", "--epochs", "1",
                      "--steps_per_epoch", "2", "--seg_weight", "0.1", "--lamda", "0.5",
                      "--val_fraction", "0.4", "--output", str(output)]) == 0
    scores = json.loads((output / "metrics.json").read_text())
    assert scores["pairs"] == "scan_to_scan" and scores["shape"] == [16, 32]
    assert scores["validation_pairs"] == 2
    with open(output / "history.csv") as file:
        [row] = [{key: float(value) for key, value in line.items()}
                 for line in csv.DictReader(file)]
    for prefix in ("", "val_"):
        seg = row[f"{prefix}moved_seg_loss"]
        assert 0.0 < seg < 1.0  # 1 - soft Dice of overlapping (not identical) label maps
        np.testing.assert_allclose(row[f"{prefix}loss"], row[f"{prefix}moved_loss"]
                                   + 0.5 * row[f"{prefix}deformation_loss"] + 0.1 * seg,
                                   rtol=1e-5, atol=1e-6)


def test_a_pairs_file_trains_and_evaluate_scores_exactly_its_pairs_in_order(tmp_path):
    names = save_slice_files(tmp_path / "scans")
    rows = [(3, 1), (0, 4), (2, 2), (4, 0)]
    (tmp_path / "pairs.csv").write_text("moving,static,moving_seg,static_seg\n" + "".join(
        f"{names[m][0]},{names[s][0]},{names[m][1]},{names[s][1]}\n" for m, s in rows))
    output = tmp_path / "run"
    assert main.main(["--pairs_file", str(tmp_path / "pairs.csv"), "--model", "vm1",
                      "--epochs", "1", "--output", str(output)]) == 0
    scores = json.loads((output / "metrics.json").read_text())
    assert scores["pairs"] == "listed" and scores["validation_pairs"] == 1  # the last pair
    assert main.main(["evaluate", "--model", str(output / "model.keras"), "--pairs_file",
                      str(tmp_path / "pairs.csv"), "--output", str(tmp_path / "eval")]) == 0
    evaluation = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert evaluation["pairs"] == "listed"
    assert [(pair["moving"], pair["static"]) for pair in evaluation["per_pair"]] == [
        (str(tmp_path / names[m][0]), str(tmp_path / names[s][0])) for m, s in rows]
    assert evaluation["per_pair"][2]["dice_before"] == [1.0]  # a scan paired with itself


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
    np.save(tmp_path / "atlas.npy", np.random.default_rng(0).random((16, 16, 32)))
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
    # the network's moved image, scaled back from [0, 1]: the input within float32 round-off
    np.testing.assert_allclose(moved, image.astype(np.float32), rtol=1e-6, atol=1e-3)
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


def test_register_takes_images_larger_than_the_model(tmp_path, identity_model):
    # A 16^3 model registers a 20x24x18 pair: rebuilt for 32x32x32 with its (zero-field) weights.
    image, _ = brain_like(shape=(20, 24, 18))
    np.save(tmp_path / "big.npy", image)
    out = {name: str(tmp_path / f"{name}.npy") for name in ("moved", "deformation")}
    assert main.main(["register", "--model", identity_model, "--moving", str(tmp_path / "big.npy"),
                      "--static", str(tmp_path / "big.npy"), "--moved", out["moved"],
                      "--deformation", out["deformation"]]) == 0
    moved, deformation = np.load(out["moved"]), np.load(out["deformation"])
    assert deformation.shape == (20, 24, 18, 3) and not deformation.any()
    np.testing.assert_allclose(moved, image.astype(np.float32), rtol=1e-6, atol=1e-3)


def test_evaluate_scores_a_pair_registered_to_itself_with_dice_one(tmp_path, identity_model):
    image, labels = brain_like(shape=(16, 16, 16))
    np.savez(tmp_path / "test.npz", vols=np.stack([image, image]),
             segs=np.stack([labels, labels]), labels=[3, 7], label_names=["three", "seven"],
             spacing=[1.0, 1.0, 2.5])
    output = tmp_path / "eval"
    assert main.main(["evaluate", "--model", identity_model, "--data",
                      str(tmp_path / "test.npz"), "--output", str(output)]) == 0
    evaluation = json.loads((output / "eval.json").read_text())
    assert evaluation["pairs"] == "scan_to_scan" and len(evaluation["per_pair"]) == 2
    assert evaluation["labels"] == [3, 7] and evaluation["label_names"] == ["three", "seven"]
    assert evaluation["spacing"] == [1.0, 1.0, 2.5]
    for pair in evaluation["per_pair"]:
        assert pair["dice_after"] == [1.0, 1.0] and pair["folding_fraction"] == 0.0
        assert pair["hd95"] == pair["hd95_mm"] == [0.0, 0.0] and pair["sdlogj"] == 0.0
        assert np.isfinite(pair["seconds"]) and np.isfinite(pair["ncc_after"])
        assert pair["inverse_error"] == pair["inverse_error_p95_mm"] == 0.0  # identity
    rows = (output / "dice_per_structure.csv").read_text().splitlines()
    assert rows[0] == ("label,name,dice_before_mean,dice_before_std,dice_after_mean,"
                       "dice_after_std,hd95_mean,hd95_std,hd95_mm_mean,hd95_mm_std")
    assert rows[1].startswith("3,three,")
    assert os.path.getsize(output / "dice_boxplot.png") > 0


def test_evaluate_scores_on_the_data_grid_and_skips_a_label_in_no_map(
        tmp_path, identity_model, capsys):
    images, labels = zip(*(brain_like(seed=seed) for seed in (0, 1)))  # (12, 16, 14): padded
    np.savez(tmp_path / "test.npz", vols=np.stack(images), segs=np.stack(labels),
             labels=[3, 7, 9])
    output = tmp_path / "eval"
    assert main.main(["evaluate", "--model", identity_model, "--data",
                      str(tmp_path / "test.npz"), "--output", str(output)]) == 0
    printed = capsys.readouterr()
    assert "HD95" in printed.out
    assert ("main.py: warning: skipped labels [9] of 'labels': in none of the label maps"
            in printed.err.splitlines())  # label 9 is in no map: skipped, said in one line
    text = (output / "eval.json").read_text()
    evaluation = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    first = evaluation["per_pair"][0]
    assert evaluation["labels"] == [3, 7] and len(first["hd95"]) == 2
    assert evaluation["spacing"] is None and "hd95_mm" not in first
    # NCC before registration on the unpadded grid, not on the zero-padded 16^3 one
    static, moving = (datasets.normalize(image)[None, ..., None] for image in images)
    np.testing.assert_allclose(first["ncc_before"],
                               -float(metrics.LocalNCC()(static, moving)), rtol=1e-5)


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


def test_diffeomorphic_bidirectional_segmentation_run_then_finetuned_evaluation(tmp_path):
    data = tiny_npz(tmp_path / "set.npz")
    run = tmp_path / "run"
    assert main.main(["--data", data, "--model", "vm1", "--int_steps", "3", "--int_downsize",
                      "2", "--bidir", "--seg_weight", "0.1", "--epochs", "1",
                      "--steps_per_epoch", "1", "--output", str(run)]) == 0
    history = (run / "history.csv").read_text().splitlines()[0]
    for loss in ("moved_loss", "moved_static_loss", "moved_seg_loss", "velocity_loss"):
        assert loss in history
    output = tmp_path / "eval"
    assert main.main(["evaluate", "--model", str(run / "model.keras"), "--data", data,
                      "--finetune_steps", "2", "--max_pairs", "1", "--output", str(output)]) == 0
    pair = json.loads((output / "eval.json").read_text())["per_pair"][0]
    assert pair["finetune_seconds"] > 0 and pair["folding_fraction"] == 0.0


@pytest.mark.parametrize("flags, message", [
    (["--seg_weight", "0.1"], "--seg_weight needs label maps"),
    (["--int_downsize", "2"], "--int_downsize 2 needs --int_steps"),
])
def test_option_errors_are_one_line(tmp_path, capsys, flags, message):
    np.save(tmp_path / "vols.npy", np.random.default_rng(1).random((4, 16, 16)))
    code = main.main(["--data", str(tmp_path / "vols.npy"), "--ndim", "2", *flags,
                      "--output", str(tmp_path / "run")])
    assert code == 2 and message in capsys.readouterr().err


def test_more_gpus_than_visible_is_a_one_line_error(capsys):
    visible = len(tf.config.list_logical_devices("GPU"))  # 0 on a CPU machine
    assert main.main(["--ndim", "2", "--gpus", str(visible + 1)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"main.py: error: --gpus {visible + 1}, but {visible} GPU device(s) are visible"]


def compute_dtypes(model) -> dict[str, str]:
    """The dtype each layer of ``model`` computes in, by name (inputs left out)."""
    return {layer.name: layer.dtype_policy.compute_dtype for layer in model.layers
            if not isinstance(layer, keras.layers.InputLayer)}


def test_mixed_precision_on_a_cpu_is_a_one_line_warning_and_stays_float32(capsys):
    distribution.use_mixed_precision("CPU")
    assert capsys.readouterr().err == ("main.py: warning: --mixed_precision is ignored on a CPU "
                                       "(float16 is slower there); training in float32\n")
    assert keras.mixed_precision.global_policy().name == "float32"
    dtypes = compute_dtypes(main.models.build_model((16, 16), "vm1"))
    assert set(dtypes.values()) == {"float32"}, dtypes  # the model built next: all float32


def test_mixed_precision_on_a_gpu_builds_float16_convolutions_and_a_float32_field():
    before = keras.mixed_precision.global_policy()
    try:
        distribution.use_mixed_precision("GPU")  # as on a machine with a GPU
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        dtypes = compute_dtypes(main.models.build_model((16, 16), "vm1"))
    finally:
        keras.mixed_precision.set_global_policy(before)  # for the tests that follow
    convolutions = [name for name in dtypes if name.startswith("conv")]
    assert convolutions and all(dtypes[name] == "float16" for name in convolutions), dtypes
    assert dtypes["deformation"] == dtypes["moved"] == "float32"


def _save_npz(path, **arrays):
    np.savez(path, **arrays)


def _write_bytes(data: bytes):
    return lambda path: open(path, "wb").write(data)


def _truncated(writer, keep: float = 0.5):
    """A file made by ``writer``, cut to ``keep`` of its length (a crash mid-write)."""
    def write(path):
        writer(path)
        data = open(path, "rb").read()
        open(path, "wb").write(data[:int(len(data) * keep)])
    return write


def _nifti(array, affine=np.eye(4), vector: bool = False):
    import nibabel as nib

    def write(path):
        image = nib.Nifti1Image(array, None if affine is None else affine)
        if affine is None:  # only a singular sform: no usable affine
            image.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
        image.header.set_intent("vector" if vector else "none")
        nib.save(image, path)
    return write


def _damaged_member(path):
    """A zip archive whose 'vols.npy' is cut short."""
    import zipfile
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("vols.npy", b"\x93NUMPY\x01\x00" + bytes(40))


def _text(text: str):
    return lambda path: open(path, "w").write(text)


SLICE = np.random.default_rng(1).random((16, 16)).astype(np.float32)
PAIR_FILES = {"a.nii": _nifti(SLICE), "b.nii": _nifti(SLICE), "c.nii": _nifti(SLICE)}
PAIRS_CSV = "moving,static\na.nii,b.nii\nb.nii,c.nii\n"

RNG = np.random.default_rng(0)
GOOD_4D = RNG.random((4, 16, 16, 16)).astype(np.float32)
GOOD_NPZ = dict(vols=GOOD_4D, segs=(GOOD_4D > 0.5).astype(np.uint8), atlas=GOOD_4D[0],
                atlas_seg=(GOOD_4D[0] > 0.5).astype(np.uint8))

# (case, files to write {name: writer}, arguments ({tmp} is the folder), part of the message).
# Every case must end with exit status 2, one line on stderr, and no output file.
BAD_INPUTS = [
    ("npy truncated", {"d.npy": _truncated(lambda p: np.save(p, GOOD_4D))},
     ["--data", "{tmp}/d.npy"], "cannot read {tmp}/d.npy as .npy"),
    ("npy empty file", {"d.npy": _write_bytes(b"")}, ["--data", "{tmp}/d.npy"],
     "{tmp}/d.npy is not an .npy file"),
    ("npy of another format", {"d.npy": _write_bytes(b"1 2 3\n")}, ["--data", "{tmp}/d.npy"],
     "{tmp}/d.npy is not an .npy file"),
    ("npz truncated", {"d.npz": _truncated(lambda p: _save_npz(p, **GOOD_NPZ))},
     ["--data", "{tmp}/d.npz"], "{tmp}/d.npz is not an .npz file"),
    ("npz empty file", {"d.npz": _write_bytes(b"")}, ["--data", "{tmp}/d.npz"],
     "{tmp}/d.npz is not an .npz file"),
    ("npz random bytes", {"d.npz": _write_bytes(bytes(range(256)) * 8)},
     ["--data", "{tmp}/d.npz"], "{tmp}/d.npz is not an .npz file"),
    ("npz with a damaged member", {"d.npz": _damaged_member}, ["--data", "{tmp}/d.npz"],
     "cannot read {tmp}/d.npz as .npz"),
    ("npz without vols", {"d.npz": lambda p: _save_npz(p, images=GOOD_4D)},
     ["--data", "{tmp}/d.npz"], "no array named 'vols'"),
    ("nifti random bytes", {"d.nii.gz": _write_bytes(b"\x1f\x8b" + bytes(300))},
     ["--data", "{tmp}/d.nii.gz"], "cannot read {tmp}/d.nii.gz"),
    ("nifti truncated", {"d.nii.gz": _truncated(_nifti(GOOD_4D[0]), 0.3)},
     ["--data", "{tmp}/d.nii.gz"], "cannot read {tmp}/d.nii.gz"),
    ("nifti 4D", {"d.nii": _nifti(GOOD_4D[..., None])}, ["--data", "{tmp}/d.nii"],
     "expected a 2D or 3D volume"),
    ("strings", {"d.npy": lambda p: np.save(p, np.full((2, 4, 4, 4), "a"))},
     ["--data", "{tmp}/d.npy"], "must hold real numbers, not <U1"),
    ("complex", {"d.npy": lambda p: np.save(p, GOOD_4D.astype(np.complex64))},
     ["--data", "{tmp}/d.npy"], "must hold real numbers, not complex64"),
    ("pickled objects", {"d.npy": lambda p: np.save(p, np.array([{}, {}]), allow_pickle=True)},
     ["--data", "{tmp}/d.npy"], "cannot read {tmp}/d.npy as .npy"),
    ("empty set", {"d.npy": lambda p: np.save(p, np.zeros((0, 16, 16, 16)))},
     ["--data", "{tmp}/d.npy"], "is empty (shape (0, 16, 16, 16))"),
    ("lone 3D volume", {"d.npy": lambda p: np.save(p, GOOD_4D[0])},
     ["--data", "{tmp}/d.npy"], "pass --ndim 2 or --ndim 3"),
    ("3D volumes with --ndim 2", {"d.npy": lambda p: np.save(p, GOOD_4D)},
     ["--data", "{tmp}/d.npy", "--ndim", "2"], "holds 3D volumes, not 2D ones"),
    ("rank 5", {"d.npy": lambda p: np.save(p, GOOD_4D[..., None])},
     ["--data", "{tmp}/d.npy"], "expected volumes of shape (N, H, W) or (N, D, H, W)"),
    ("NaN values", {"d.npy": lambda p: np.save(p, np.full((3, 4, 4, 4), np.nan))},
     ["--data", "{tmp}/d.npy"], "contains NaN or Inf values"),
    ("atlas of another shape", {"d.npz": lambda p: _save_npz(p, **GOOD_NPZ),
                                "a.npy": lambda p: np.save(p, RNG.random((16, 16, 32)))},
     ["--data", "{tmp}/d.npz", "--atlas", "{tmp}/a.npy"], "moving and static shapes differ"),
    ("segs of another shape", {"d.npz": lambda p: _save_npz(p, vols=GOOD_4D,
                                                            segs=np.zeros((4, 16, 16, 8)))},
     ["--data", "{tmp}/d.npz"], "segs shape (4, 16, 16, 8) differs"),
    ("fractional labels", {"d.npz": lambda p: _save_npz(p, vols=GOOD_4D, segs=GOOD_4D)},
     ["--data", "{tmp}/d.npz"], "must hold integer labels"),
    ("label_names without labels", {"d.npz": lambda p: _save_npz(p, **GOOD_NPZ,
                                                                 label_names=["a"])},
     ["--data", "{tmp}/d.npz"], "'label_names' needs 'labels' of the same length"),
    ("val_data of another shape", {"d.npz": lambda p: _save_npz(p, **GOOD_NPZ),
                                   "v.npy": lambda p: np.save(p, RNG.random((2, 16, 16, 32)))},
     ["--data", "{tmp}/d.npz", "--val_data", "{tmp}/v.npy"], "must have the same shape"),
    ("too few after the split", {"d.npy": lambda p: np.save(p, GOOD_4D[:3])},
     ["--data", "{tmp}/d.npy"], "holds 3 volumes: 2 go to validation"),
    ("more steps than subjects", {"d.npz": lambda p: _save_npz(p, **GOOD_NPZ)},
     ["--data", "{tmp}/d.npz", "--steps_per_epoch", "50"], "ask for at most 3"),
    ("augment with atlas pairs", {"d.npz": lambda p: _save_npz(p, **GOOD_NPZ)},
     ["--data", "{tmp}/d.npz", "--augment"], "--augment applies to scan_to_scan pairs"),
    ("val_fraction and val_data", {"d.npz": lambda p: _save_npz(p, **GOOD_NPZ)},
     ["--data", "{tmp}/d.npz", "--val_data", "{tmp}/d.npz", "--val_fraction", "0.5"],
     "exclude each other"),
    ("val_data without data", {}, ["--val_data", "x.npz"], "--val_data needs --data"),
    ("val_fraction without data", {}, ["--val_fraction", "0.5"], "--val_fraction needs --data"),
    ("output is a file", {"out": _write_bytes(b"x")}, ["--output", "{tmp}/out"],
     "--output {tmp}/out is a file"),
    ("output under a file", {"out": _write_bytes(b"x")}, ["--output", "{tmp}/out/run"],
     "{tmp}/out is a file"),
    ("output holds a run", {"run/args.json": _write_bytes(b"{}")},
     ["--output", "{tmp}/run"], "continue it with --resume {tmp}/run"),
    ("image list naming a missing file", {**PAIR_FILES, "l.txt": _text("a.nii\n\nno.nii\n")},
     ["--data", "{tmp}/l.txt"], "{tmp}/l.txt line 3: no such file: {tmp}/no.nii"),
    ("folder of two shapes", {"f/a.nii": _nifti(SLICE), "f/b.nii": _nifti(SLICE[:8])},
     ["--data", "{tmp}/f"], "shape (8, 16) of {tmp}/f/b.nii differs from (16, 16)"),
    ("image CSV without an image column", {**PAIR_FILES, "l.csv": _text("path\na.nii\n")},
     ["--data", "{tmp}/l.csv"], "{tmp}/l.csv: no column image"),
    ("pairs file without a static column", {**PAIR_FILES, "p.csv": _text("moving\na.nii\n")},
     ["--pairs_file", "{tmp}/p.csv"],
     "{tmp}/p.csv: no column static in the header, which has moving (expected"),
    ("pairs file whose header hides a character",
     {**PAIR_FILES, "p.csv": _text("\u200bmoving,static\na.nii,b.nii\n")},
     ["--pairs_file", "{tmp}/p.csv"], "which has '\\u200bmoving', static (expected"),
    ("a training volume of one intensity",
     {"t.npz": lambda p: np.savez(p, vols=np.concatenate([GOOD_4D[:3], GOOD_4D[:1] * 0 + 3]))},
     ["--data", "{tmp}/t.npz"], "{tmp}/t.npz volume 3 has no intensity range (every voxel is 3)"),
    ("--loss mi on a volume of one intensity",
     {"t.npz": lambda p: np.savez(p, vols=np.concatenate([GOOD_4D[:3], GOOD_4D[:1] * 0 + 3]))},
     ["--data", "{tmp}/t.npz", "--loss", "mi"],
     "{tmp}/t.npz volume 3 has no intensity range (every voxel is 3)"),
    ("pairs file naming a missing file",
     {**PAIR_FILES, "p.csv": _text(PAIRS_CSV + "\nc.nii,no.nii\n")},
     ["--pairs_file", "{tmp}/p.csv"], "{tmp}/p.csv line 5: no such file: {tmp}/no.nii"),
    ("pairs file: moving and static of two shapes",
     {**PAIR_FILES, "d.nii": _nifti(SLICE[:, :8]), "p.csv": _text(PAIRS_CSV + "a.nii,d.nii\n")},
     ["--pairs_file", "{tmp}/p.csv"],
     "{tmp}/p.csv line 4: moving and static shapes differ: (16, 16) vs (16, 8)"),
    ("pairs file: a pair of another shape",
     {**PAIR_FILES, "d.nii": _nifti(SLICE[:8]), "p.csv": _text(PAIRS_CSV + "d.nii,d.nii\n")},
     ["--pairs_file", "{tmp}/p.csv"], "shape (8, 16) of {tmp}/d.nii differs from (16, 16)"),
    ("pairs file: label maps on some rows only",
     {**PAIR_FILES, "p.csv": _text("moving,static,moving_seg,static_seg\n"
                                   "a.nii,b.nii,a.nii,b.nii\nb.nii,c.nii,,\n")},
     ["--pairs_file", "{tmp}/p.csv"], "{tmp}/p.csv line 3: no moving_seg (a column of label maps "
                                      "is given on every row or none)"),
    ("pairs file and --pairs", {**PAIR_FILES, "p.csv": _text(PAIRS_CSV)},
     ["--pairs_file", "{tmp}/p.csv", "--pairs", "scan_to_scan"],
     "--pairs_file lists the pairs to train on: drop --pairs"),
    ("pairs file and --atlas", {**PAIR_FILES, "p.csv": _text(PAIRS_CSV)},
     ["--pairs_file", "{tmp}/p.csv", "--atlas", "{tmp}/a.nii"],
     "--pairs_file lists the pairs to train on: drop --atlas"),
    ("pairs file of one pair", {**PAIR_FILES, "p.csv": _text("moving,static\na.nii,b.nii\n")},
     ["--pairs_file", "{tmp}/p.csv"], "{tmp}/p.csv lists 1 pair: too few to hold out 1"),
    ("resume with flags", {}, ["--resume", "{tmp}", "--lr", "1", "--seed", "1"], "drop --seed"),
    ("resume of no run", {}, ["--resume", "{tmp}"], "not a training run folder"),
    ("resume of a broken checkpoint", {"args.json": _write_bytes(b"{}"),
                                       "checkpoint.json": _write_bytes(b"{\"epoch\": 2"),
                                       "train.lock": _write_bytes(b"")},
     ["--resume", "{tmp}"], "cannot read {tmp}/checkpoint.json"),
]


@pytest.mark.parametrize("case, files, argv, message", BAD_INPUTS,
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_training_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case, files,
                                                                  argv, message):
    for name, write in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write(str(tmp_path / name))
    before = sorted(p for p in tmp_path.rglob("*"))
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    if "--output" not in argv and "--resume" not in argv:
        argv += ["--output", str(tmp_path / "run")]
    code = main.main(argv + ([] if "--resume" in argv else ["--epochs", "1"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("main.py: error: "), err
    assert message.replace("{tmp}", str(tmp_path)) in err[0]
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed: must be in [0, 4294967296)"),
    (["--lamda", "-1"], "--lamda: must be non-negative"),
    (["--lamda", "nan"], "--lamda: must be non-negative"),
    (["--val_fraction", "1.5"], "--val_fraction: must be in (0, 1)"),
    (["--val_fraction", "0"], "--val_fraction: must be in (0, 1)"),
    (["--epochs", "0"], "--epochs: must be positive"),
    (["--batch_size", "0"], "--batch_size: must be positive"),
    (["--ncc_window", "0"], "--ncc_window: must be positive"),
    (["--lr", "inf"], "--lr: must be positive"),
    (["--ndim", "4"], "--ndim: invalid choice"),
])
def test_flags_out_of_range_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


IMAGE = RNG.random((16, 16, 16)).astype(np.float32)
PAIR = {"m.npy": lambda p: np.save(p, IMAGE), "s.npy": lambda p: np.save(p, IMAGE[::-1])}
REGISTER = ["register", "--model", "{model}", "--moving", "{tmp}/m.npy", "--static", "{tmp}/s.npy"]
APPLY = ["apply", "--warp", "{tmp}/w.nii.gz", "--moving", "{tmp}/m.npy", "--output", "{tmp}/o.npy"]

# Bad input of ``register`` and ``evaluate``: as BAD_INPUTS, checked before the forward pass.
BAD_COMMANDS = [
    ("moving image of one intensity", {**PAIR, "z.npy": lambda p: np.save(p, IMAGE * 0)},
     REGISTER[:4] + ["{tmp}/z.npy"] + REGISTER[5:] + ["--moved", "{tmp}/o.npy"],
     "moving image has no intensity range (every voxel is 0)"),
    ("missing output folder", PAIR, REGISTER + ["--moved", "{tmp}/no/moved.npy"],
     "--moved {tmp}/no/moved.npy: no such folder {tmp}/no"),
    ("second output into a missing folder", PAIR,
     REGISTER + ["--moved", "{tmp}/moved.npy", "--deformation", "{tmp}/no/u.nii.gz"],
     "--deformation {tmp}/no/u.nii.gz: no such folder"),
    ("output is a folder", {**PAIR, "out/x": _write_bytes(b"")},
     REGISTER + ["--moved", "{tmp}/out"], "unsupported file type"),
    ("output is a folder named like a file", {**PAIR, "out.npy/x": _write_bytes(b"")},
     REGISTER + ["--moved", "{tmp}/out.npy"], "--moved {tmp}/out.npy is a folder"),
    ("output of unknown type", PAIR, REGISTER + ["--moved", "{tmp}/moved.png"],
     "{tmp}/moved.png: unsupported file type"),
    ("two outputs on one file", PAIR,
     REGISTER + ["--moved", "{tmp}/o.npy", "--deformation", "{tmp}/o.npy"],
     "--moved, --deformation must be different files"),
    ("output over an input", PAIR, REGISTER + ["--moved", "{tmp}/m.npy"],
     "--moved {tmp}/m.npy would overwrite an input file"),
    ("moving_seg without moved_seg", {**PAIR, "l.npy": lambda p: np.save(p, IMAGE > 0.5)},
     REGISTER + ["--moved", "{tmp}/o.npy", "--moving_seg", "{tmp}/l.npy"],
     "--moving_seg and --moved_seg go together"),
    ("missing model", PAIR, ["register", "--model", "{tmp}/none.keras", "--moving",
                             "{tmp}/m.npy", "--static", "{tmp}/s.npy", "--moved", "{tmp}/o.npy"],
     "no such model file"),
    ("truncated model", {**PAIR, "bad.keras": _write_bytes(b"PK\x03\x04" + bytes(64))},
     ["register", "--model", "{tmp}/bad.keras", "--moving", "{tmp}/m.npy", "--static",
      "{tmp}/s.npy", "--moved", "{tmp}/o.npy"], "{tmp}/bad.keras is not a complete .keras file"),
    ("label map on another grid than the moving image",
     {**PAIR, "l.npy": lambda p: np.save(p, IMAGE[:8] > 0.5)},
     REGISTER + ["--moved", "{tmp}/o.npy", "--moving_seg", "{tmp}/l.npy", "--moved_seg",
                 "{tmp}/ls.npy"], "{tmp}/l.npy is not on the moving image's grid"),
    ("moving image 3D, static image 2D",
     {"m.npy": lambda p: np.save(p, IMAGE), "s.npy": lambda p: np.save(p, IMAGE[0])},
     REGISTER + ["--moved", "{tmp}/o.npy"], "the moving image is 3D and the static image 2D"),
    ("warp output that is not NIfTI", PAIR,
     REGISTER + ["--moved", "{tmp}/o.npy", "--warp", "{tmp}/w.npy"],
     "--warp {tmp}/w.npy: a warp is written as NIfTI"),
    ("moving image without a usable affine",
     {"m.nii.gz": _nifti(IMAGE, affine=None), "s.npy": lambda p: np.save(p, IMAGE)},
     ["register", "--model", "{model}", "--moving", "{tmp}/m.nii.gz", "--static", "{tmp}/s.npy",
      "--moved", "{tmp}/o.npy"], "moving {tmp}/m.nii.gz: its affine is not usable"),
    ("apply: the warp is not a vector image", {"w.nii.gz": _nifti(IMAGE), **PAIR},
     APPLY, "{tmp}/w.nii.gz: not a displacement field"),
    ("apply: the reference is on another grid",
     {"w.nii.gz": _nifti(np.zeros((16, 16, 16, 1, 3), np.float32), vector=True), **PAIR,
      "r.nii.gz": _nifti(IMAGE, np.diag([2.0, 2.0, 2.0, 1.0]))},
     APPLY + ["--reference", "{tmp}/r.nii.gz"], "is not the grid of --reference"),
    ("apply: a 2D image with a 3D warp",
     {"w.nii.gz": _nifti(np.zeros((16, 16, 16, 1, 3), np.float32), vector=True),
      "m.npy": lambda p: np.save(p, IMAGE[0])},
     APPLY, "{tmp}/m.npy is 2D but the warp {tmp}/w.nii.gz is 3D"),
    ("2D pair for a 3D model",
     {"m.npy": lambda p: np.save(p, IMAGE[0]), "s.npy": lambda p: np.save(p, IMAGE[1])},
     REGISTER + ["--moved", "{tmp}/o.npy"], "but the model registers 3D images"),
    ("evaluate: labels in no label map",
     {"t.npz": lambda p: _save_npz(p, vols=GOOD_4D[:2], segs=(GOOD_4D[:2] > 0.5) * 3)},
     ["evaluate", "--model", "{model}", "--data", "{tmp}/t.npz", "--labels", "3", "5",
      "--output", "{tmp}/e"], "--labels [5] are in none of the label maps (present: [3])"),
    ("evaluate: labels without label maps", {"t.npz": lambda p: _save_npz(p, vols=GOOD_4D[:2])},
     ["evaluate", "--model", "{model}", "--data", "{tmp}/t.npz", "--labels", "1",
      "--output", "{tmp}/e"], "the data has no label maps"),
    ("evaluate: output is a file", {"t.npz": lambda p: _save_npz(p, vols=GOOD_4D[:2]),
                                    "e": _write_bytes(b"")},
     ["evaluate", "--model", "{model}", "--data", "{tmp}/t.npz", "--output", "{tmp}/e"],
     "--output {tmp}/e is a file"),
    ("evaluate: pairs file and --data", {**PAIR_FILES, "p.csv": _text(PAIRS_CSV)},
     ["evaluate", "--model", "{model}", "--pairs_file", "{tmp}/p.csv", "--data", "{tmp}/a.nii",
      "--output", "{tmp}/e"], "--pairs_file lists the pairs to evaluate: drop --data"),
    ("evaluate: the default data and --pairs scan_to_scan", {},
     ["evaluate", "--model", "{model}", "--pairs", "scan_to_scan", "--output", "{tmp}/e"],
     "--pairs scan_to_scan needs --data: the default data has its own atlas"),
    ("evaluate: 2D pairs for a 3D model", {**PAIR_FILES, "p.csv": _text(PAIRS_CSV)},
     ["evaluate", "--model", "{model}", "--pairs_file", "{tmp}/p.csv", "--output", "{tmp}/e"],
     "{tmp}/p.csv lists 2D volumes, not 3D ones"),
    ("evaluate: one 3D volume (3 axes)", {"t.npy": lambda p: np.save(p, GOOD_4D[0])},
     ["evaluate", "--model", "{model}", "--data", "{tmp}/t.npy", "--output", "{tmp}/e"],
     "scan-to-scan pairs need at least 2 volumes, got 1"),
]


@pytest.mark.parametrize("case, files, argv, message", BAD_COMMANDS,
                         ids=[case[0] for case in BAD_COMMANDS])
def test_bad_register_and_evaluate_input_is_one_line_and_writes_nothing(
        tmp_path, capsys, identity_model, case, files, argv, message):
    for name, write in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write(str(tmp_path / name))
    before = sorted(p for p in tmp_path.rglob("*"))
    argv = [arg.replace("{tmp}", str(tmp_path)).replace("{model}", identity_model)
            for arg in argv]
    code = main.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("main.py: error: "), err
    assert message.replace("{tmp}", str(tmp_path)) in err[0]
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_register_writes_a_bool_label_map_as_uint8_nifti(tmp_path, identity_model):
    import nibabel as nib

    for name, write in {**PAIR, "l.npy": lambda p: np.save(p, IMAGE > 0.5)}.items():
        write(str(tmp_path / name))
    argv = [arg.replace("{tmp}", str(tmp_path)).replace("{model}", identity_model)
            for arg in REGISTER]
    assert main.main(argv + ["--moved", str(tmp_path / "o.nii.gz"), "--moving_seg",
                             str(tmp_path / "l.npy"), "--moved_seg",
                             str(tmp_path / "ls.nii.gz")]) == 0
    saved = nib.load(tmp_path / "ls.nii.gz")
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), IMAGE > 0.5)  # zero field


def test_eval_json_holds_null_not_nan_for_labels_absent_from_a_pair(tmp_path, identity_model):
    segs = np.zeros((3, 16, 16, 16), np.uint8)
    segs[0, :8], segs[1, 8:] = 1, 2  # label 1 only in volume 0, label 2 only in volume 1:
    np.savez(tmp_path / "t.npz", vols=GOOD_4D[:3], segs=segs)
    assert main.main(["evaluate", "--model", identity_model, "--data", str(tmp_path / "t.npz"),
                      "--labels", "1", "2", "--output", str(tmp_path / "e")]) == 0
    text = (tmp_path / "e" / "eval.json").read_text()
    assert "NaN" not in text
    pairs = json.loads(text)["per_pair"]
    assert [0.0, None] in [pair["dice_after"] for pair in pairs]  # pair 0-2 lacks label 2
