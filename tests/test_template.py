"""Templates (template.py, template_training.py, template_outputs.py, main.py template): the
layers, the learned template and its outputs, resume, conditional templates, and bad input
refused in one line with nothing written.

Building and tracing a model costs far more than its steps, so most tests inspect the same two
learned runs (module fixtures ``run`` and ``uncentred``) rather than learning their own."""
import csv
import os

import nibabel as nib
import numpy as np
import pytest

import main
import rundir
import template
import template_outputs

SIZE = 32  # 2D images of SIZE x SIZE
# The learning runs: few enough steps to keep the file quick, enough for the template to sharpen.
TRAIN = ["--epochs", "2", "--steps_per_epoch", "50"]
CENTRED = ["--centre_weight", "10"]  # the other flags of the shared run (fixture ``run``)
AFFINE = np.array([[2.0, 0, 0, -30], [0, 2, 0, 10], [0, 0, 2, 5], [0, 0, 0, 1]])  # 2 mm voxels


def disks(radii, centres, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """2D images of one bright disk each, of ``radii`` (voxels) at ``centres`` (offsets from the
    image centre, voxels), on a dark noisy background; label maps: 1 the disk, 2 its core."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:SIZE, :SIZE]
    vols, segs = [], []
    for radius, (down, right) in zip(radii, centres):
        distance = np.hypot(rows - SIZE / 2 - down, cols - SIZE / 2 - right)
        disk = np.clip(radius + 0.5 - distance, 0, 1)
        vols.append(0.1 + 0.8 * disk + 0.02 * rng.standard_normal((SIZE, SIZE)))
        segs.append((distance < radius).astype(np.int32) + (distance < radius / 2))
    return np.array(vols, np.float32), np.array(segs)


def learn(tmp_path, name, data, *flags) -> str:
    """``main.py template`` into ``tmp_path / name``; the run folder."""
    output = str(tmp_path / name)
    assert main.main(["template", "--data", data, "--ndim", "2", "--output", output,
                      *flags]) == 0
    return output


def refused(capsys, *argv) -> str:
    """The one line that ``main.py`` prints for ``argv``, which must exit with status 2."""
    assert main.main(list(argv)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("main.py: error: "), lines
    return lines[0]


def image(path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> dict:
    """Six labelled disks, four shifted right and two left (a template without the centring term
    settles nearer the majority): an .npz, and the same scans as NIfTI files of 2 mm voxels
    (shifted origin) listed with their label maps in a CSV. Returns ``folder``, ``npz``,
    ``csv``."""
    folder = tmp_path_factory.mktemp("shifted")
    vols, segs = disks([6] * 6, [(0, 4)] * 4 + [(0, -4)] * 2)
    np.savez(folder / "shifted.npz", vols=vols, segs=segs)
    rows = []
    for i, (volume, seg) in enumerate(zip(vols, segs)):
        nib.save(nib.Nifti1Image(volume, AFFINE), folder / f"s{i}.nii.gz")
        nib.save(nib.Nifti1Image(seg.astype(np.uint8), AFFINE), folder / f"seg{i}.nii.gz")
        rows.append(f"s{i}.nii.gz,seg{i}.nii.gz\n")
    (folder / "scans.csv").write_text("image,seg\n" + "".join(rows))
    return {"folder": folder, "npz": str(folder / "shifted.npz"),
            "csv": str(folder / "scans.csv")}


@pytest.fixture(scope="module")
def run(shifted):
    """The template of the shifted disks (.npz), with a strong centring term: the run folder
    that most tests inspect."""
    return learn(shifted["folder"], "run", shifted["npz"], *TRAIN, *CENTRED)


@pytest.fixture(scope="module")
def uncentred(shifted):
    """The same scans read from their NIfTI files (CSV), without the centring term."""
    return learn(shifted["folder"], "uncentred", shifted["csv"], *TRAIN, "--centre_weight", "0")


def test_running_mean_updates_in_training_only():
    layer = template.RunningMean(momentum=0.5)
    ones = np.ones((2, 3, 1), np.float32)
    first = np.asarray(layer(ones, training=True))
    np.testing.assert_allclose(first, 0.5 * ones)  # 0.5 * 0 + 0.5 * 1
    np.testing.assert_allclose(np.asarray(layer(3 * ones, training=True)), 1.75 * ones)
    np.testing.assert_allclose(np.asarray(layer(100 * ones, training=False)), 1.75 * ones)


@pytest.mark.parametrize("conditional", [False, True])
def test_template_model_saves_and_loads(tmp_path, conditional):
    scans = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    options = {"loss": "ncc", "lamda": None, "ncc_window": 9, "bidir": True, "int_steps": 7,
               "int_downsize": 1, "centre_weight": 1.0, "momentum": 0.9, "lr": 1e-3}
    model = template.build_template_model(scans.mean(0), options,
                                          np.array([20.0, 50.0, 80.0]) if conditional else None)
    np.testing.assert_allclose(template.template_image(model, 50.0), scans.mean(0), atol=1e-4)
    rundir.save_model(model, str(tmp_path / "model.keras"))
    loaded = rundir.load_model(str(tmp_path / "model.keras"))
    assert isinstance(loaded.get_layer("template"), template.Template)
    batch = {"static": scans[:2, ..., None]}
    if conditional:
        batch["attribute"] = np.array([[20.0], [80.0]], np.float32)
    for key, value in model.predict_on_batch(batch).items():
        np.testing.assert_allclose(loaded.predict_on_batch(batch)[key], value, atol=1e-5)


def test_learned_template_is_sharper_than_the_mean(run):
    metrics = rundir.read_json(os.path.join(run, rundir.METRICS))
    learned = template_outputs.sharpness(image(os.path.join(run, rundir.TEMPLATE)).astype(np.float32))
    assert learned == pytest.approx(metrics["sharpness"]["template"], rel=1e-5)
    assert learned > 1.2 * metrics["sharpness"]["mean"]


def test_label_maps_are_carried_onto_the_template_and_fused(run):
    seg = image(os.path.join(run, rundir.TEMPLATE_SEG))
    probabilities = image(os.path.join(run, rundir.TEMPLATE_PROBABILITIES))
    assert seg.shape == (SIZE, SIZE) and probabilities.shape == (SIZE, SIZE, 1, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(seg, np.argmax(probabilities[:, :, 0], -1))  # labels 0, 1, 2
    bright = image(os.path.join(run, rundir.TEMPLATE)) > 0.5
    assert np.mean((seg > 0) == bright) > 0.95  # the fused disk is the template's disk


def test_the_run_writes_its_curves_figure_and_a_model_that_register_uses(run, tmp_path):
    for name in (rundir.HISTORY, rundir.LOSS_PLOT, rundir.TEMPLATE_PLOT, rundir.TEMPLATE_MODEL):
        assert os.path.isfile(os.path.join(run, name)), name
    scan = tmp_path / "scan.npy"
    np.save(scan, disks([6.5], [(1, 4)])[0][0])  # a new scan like the majority of the disks
    moved = str(tmp_path / "moved.nii.gz")
    assert main.main(["register", "--model", os.path.join(run, rundir.MODEL), "--moving",
                      os.path.join(run, rundir.TEMPLATE), "--static", str(scan),
                      "--moved", moved]) == 0
    before = np.corrcoef(image(os.path.join(run, rundir.TEMPLATE)).ravel(), np.load(scan).ravel())
    after = np.corrcoef(image(moved).ravel(), np.load(scan).ravel())
    assert after[0, 1] > before[0, 1]


def test_centring_term_reduces_the_mean_displacement(run, uncentred):
    """Four disks to the right and two to the left: without the centring term the template
    settles nearer the majority, and the mean displacement to the scans grows."""
    shifts = [rundir.read_json(os.path.join(folder, rundir.METRICS))["mean_displacement"]
              ["voxels"] for folder in (run, uncentred)]
    assert shifts[0] < 0.5 * shifts[1], shifts


def test_resumed_run_ends_as_an_unbroken_one(run, shifted, sigint_in_epoch_2, capsys):
    """``run``'s flags, stopped by SIGINT in the first batch of epoch 2 (nothing but the
    checkpoint written), then resumed: the template, its history and epochs are the unbroken
    run's."""
    broken = str(shifted["folder"] / "broken")
    assert main.main(["template", "--data", shifted["npz"], "--ndim", "2", "--output", broken,
                      *TRAIN, *CENTRED]) == 130
    assert "stopped by SIGINT at epoch 2, batch 1" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(broken, rundir.TEMPLATE))
    sigint_in_epoch_2.undo()
    assert main.main(["template", "--resume", broken]) == 0
    history = rundir.read_history(os.path.join(broken, rundir.HISTORY))
    np.testing.assert_allclose(history["loss"],
                               rundir.read_history(os.path.join(run, rundir.HISTORY))["loss"],
                               rtol=1e-5)
    np.testing.assert_array_equal(
        rundir.read_samples(os.path.join(broken, rundir.TEMPLATE_EPOCHS))["epochs"], [1, 2])
    np.testing.assert_allclose(image(os.path.join(broken, rundir.TEMPLATE)),
                               image(os.path.join(run, rundir.TEMPLATE)), atol=1e-4)


def write_condition(path, names, values, column="age") -> str:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["scan", column])
        writer.writerows(zip(names, values))
    return f"{path}:{column}"


def test_conditional_template_follows_the_attribute(tmp_path):
    """Disks whose radius grows with the age: the area of the template's disk grows with the
    value asked for. MSE, which fixes the intensities (NCC would leave them free), and a stiff
    field, so that the attribute's decoder, not the registration, makes the size."""
    ages = np.linspace(20, 80, 8)
    vols, segs = disks(3 + 0.08 * ages, [(0, 0)] * 8)
    np.savez(tmp_path / "ages.npz", vols=vols, segs=segs)
    condition = write_condition(tmp_path / "ages.csv", range(8), ages)
    run_dir = learn(tmp_path, "run", str(tmp_path / "ages.npz"), "--condition", condition,
                    "--epochs", "2", "--steps_per_epoch", "25", "--loss", "mse", "--lamda", "1",
                    "--int_steps", "1")  # one squaring: a graph half as costly to trace
    areas = []
    for value in (20, 35, 50, 65, 80):
        output = str(tmp_path / f"t{value}.nii.gz")
        assert main.main(["template", "--model", run_dir, "--value", str(value),
                          "--output", output]) == 0
        areas.append(int(np.sum(image(output) > 0.5)))
    assert all(np.diff(areas) > 0), areas


def test_scans_of_different_shapes_are_refused(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    for i, shape in enumerate([(16, 16), (16, 20)]):
        nib.save(nib.Nifti1Image(np.random.default_rng(i).random(shape).astype(np.float32),
                                 np.eye(4)), tmp_path / "scans" / f"s{i}.nii.gz")
    line = refused(capsys, "template", "--data", str(tmp_path / "scans"), "--output",
                   str(tmp_path / "run"))
    assert "shape" in line and not (tmp_path / "run").exists()


def test_one_scan_is_refused(tmp_path, capsys):
    np.save(tmp_path / "one.npy", disks([6], [(0, 0)])[0])
    line = refused(capsys, "template", "--data", str(tmp_path / "one.npy"), "--ndim", "2",
                   "--output", str(tmp_path / "run"))
    assert "two or more" in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize("names, values, expected", [
    ([0, 1, 2], [20, 30, 40], "no row for scan 3"),
    ([0, 1, 2, 3], [20, 30, "old", 40], "'old' is not a number")])
def test_bad_condition_files_are_refused(tmp_path, capsys, names, values, expected):
    np.savez(tmp_path / "disks.npz", vols=disks([6] * 4, [(0, 0)] * 4)[0])
    condition = write_condition(tmp_path / "ages.csv", names, values)
    line = refused(capsys, "template", "--data", str(tmp_path / "disks.npz"), "--ndim", "2",
                   "--condition", condition, "--output", str(tmp_path / "run"))
    assert expected in line and not (tmp_path / "run").exists()


def test_value_of_a_template_that_is_not_conditional_is_refused(run, tmp_path, capsys):
    output = tmp_path / "t70.nii.gz"
    line = refused(capsys, "template", "--model", run, "--value", "70", "--output", str(output))
    assert "not conditional" in line and not output.exists()


def test_scans_read_from_files_give_a_template_in_their_world_space(uncentred):
    """A CSV list of NIfTI scans and label maps, read as batches need them: the template and
    its label map take the first scan's affine (2 mm voxels, shifted origin)."""
    for name in (rundir.TEMPLATE, rundir.TEMPLATE_SEG):
        np.testing.assert_allclose(nib.load(os.path.join(uncentred, name)).affine, AFFINE)
    shift = rundir.read_json(os.path.join(uncentred, rundir.METRICS))["mean_displacement"]
    assert shift["voxels"] > 0 and shift["mm"] == pytest.approx(2 * shift["voxels"], rel=1e-4)


def test_3d_scans_give_a_3d_template_and_label_maps(tmp_path):
    rng = np.random.default_rng(0)
    vols = rng.random((3, 12, 16, 16)).astype(np.float32)  # 12: padded to 16 for the network
    np.savez(tmp_path / "cubes.npz", vols=vols, segs=(vols > 0.5).astype(np.int32))
    assert main.main(["template", "--data", str(tmp_path / "cubes.npz"), "--output",
                      str(tmp_path / "run"), "--epochs", "1", "--steps_per_epoch", "2",
                      "--int_steps", "1"]) == 0  # one squaring: half the cost of tracing 3D
    assert image(tmp_path / "run" / rundir.TEMPLATE).shape == (12, 16, 16)
    assert image(tmp_path / "run" / rundir.TEMPLATE_SEG).shape == (12, 16, 16)
    assert image(tmp_path / "run" / rundir.TEMPLATE_PROBABILITIES).shape == (12, 16, 16, 2)
