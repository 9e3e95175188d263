"""A cohort registered in one process: ``main.py register --output DIR`` (``cohort.py``)."""
import csv
import os

import nibabel as nib
import numpy as np
import pytest

import cohort
import main
import models
import pose
import pretrained
import registration
from test_pose import ellipsoid

SHAPE, SPACING = (40, 44, 36), 2.5  # 100 x 110 x 90 mm: a brain's field of view, quickly read
AFFINE = np.diag([SPACING] * 3 + [1.0])


def brain(seed: int) -> np.ndarray:
    """A brain-like scan: an ellipsoid of graded intensity, a little noise."""
    image = ellipsoid(SHAPE, (15.0, 18.0, 12.0)) * np.linspace(0.3, 1.0, SHAPE[0])[:, None, None]
    noise = 0.02 * np.random.default_rng(seed).random(SHAPE) * (image > 0)
    return (image + noise).astype(np.float32)


def write(path, volume, affine=AFFINE) -> str:
    nib.save(nib.Nifti1Image(np.asarray(volume), affine), path)
    return str(path)


def centres_only(images, grids, moments, static_work, compiled=False):
    """``pose.estimate`` without its search: the brain centres' shift (its tests are its own)."""
    return pose.turned_about(np.eye(3), moments[0][0], moments[1][0]), None


@pytest.fixture
def counted(monkeypatch):
    """The calls of the shipped model's load, static preparation and registration, by name;
    the pose stage reduced to :func:`centres_only`, so that a scan takes a second."""
    calls = {}
    for name in ("load", "prepared_static", "register_prepared"):
        def wrapper(*args, function=getattr(pretrained, name), name=name, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return function(*args, **kwargs)
        monkeypatch.setattr(pretrained, name, wrapper)
    monkeypatch.setattr(pose, "estimate", centres_only)
    return calls


@pytest.fixture
def scans(tmp_path):
    """Three moving scans and a static one, as NIfTI files in ``tmp_path/in``."""
    folder = tmp_path / "in"
    folder.mkdir()
    return {name: write(folder / f"{name}.nii.gz", brain(seed))
            for seed, name in enumerate(("static", "a", "b", "c"))}


def files(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_a_cohort_loads_the_model_and_prepares_the_static_scan_once(tmp_path, scans, counted,
                                                                     capsys):
    out = tmp_path / "out"
    assert main.main(["register", "--moving", scans["a"], scans["b"], scans["c"], "--static",
                      scans["static"], "--output", str(out), "--warp"]) == 0
    assert counted == {"load": 1, "prepared_static": 1, "register_prepared": 3}
    assert files(out) == [f"{name}_{kind}.nii.gz" for name in "abc" for kind in ("moved", "warp")]
    moved = nib.load(out / "b_moved.nii.gz")
    assert moved.shape == SHAPE and np.allclose(moved.affine, AFFINE)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["[1/3]", "[2/3]", "[3/3]"]
    assert all("s left)" in line for line in lines[:3])
    assert lines[-1].startswith("registered 3 moving scans to 1 static scan in")


def test_a_cohort_of_compile_from_scans_compiles_the_pose_and_traces_the_network(
        tmp_path, scans, counted, monkeypatch):
    seen = {"pose": [], "network": [], "networks": []}

    def posed(images, grids, moments, static_work, compiled=False):
        seen["pose"].append(compiled)
        return centres_only(images, grids, moments, static_work)

    def forward(network, *args, traced=True):
        seen["network"].append(traced)
        seen["networks"].append(network)  # one object: one traced graph for every scan
        return register(network, *args, traced=False)  # the graph's speed is not tested here
    register = registration.register
    monkeypatch.setattr(pose, "estimate", posed)
    monkeypatch.setattr(registration, "register", forward)
    monkeypatch.setattr(cohort, "COMPILE_FROM", 3)
    for moving in ("ab", "abc"):
        assert main.main(["register", "--moving", *(scans[name] for name in moving),
                          "--static", scans["static"], "--output", str(tmp_path / moving)]) == 0
    assert seen["pose"] == [False, False, True, True, True]
    assert seen["network"] == seen["pose"]
    assert len({id(network) for network in seen["networks"][2:]}) == 1


def test_a_bad_scan_is_one_line_and_the_others_are_written(tmp_path, scans, counted, capsys):
    folder = tmp_path / "in"
    bad = {"unreadable": str(folder / "unreadable.nii.gz"),
           "flat": write(folder / "flat.nii.gz", np.ones((48, 48), np.float32)),
           "small": write(folder / "small.nii.gz", brain(5), np.diag([1.0, 1.0, 1.0, 1.0]))}
    (folder / "unreadable.nii.gz").write_bytes(b"not a NIfTI file")
    out = tmp_path / "out"
    assert main.main(["register", "--moving", scans["a"], bad["unreadable"], bad["flat"],
                      scans["b"], bad["small"], "--static", scans["static"],
                      "--output", str(out)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    for name, path in bad.items():
        assert sum(f"skipped {path}: " in line for line in errors) == 1, name
    assert "3 of 5 moving scans could not be registered" in errors[-1]
    assert files(out) == ["a_moved.nii.gz", "b_moved.nii.gz"]  # no temporary file left
    assert counted["prepared_static"] == 1


def test_an_output_over_an_input_is_refused_before_any_work(tmp_path, counted, capsys):
    moving = write(tmp_path / "a.nii.gz", brain(1))
    static = write(tmp_path / "a_moved.nii.gz", brain(0))  # what a's moved scan would be
    assert main.main(["register", "--moving", moving, "--static", static, "--output",
                      str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(f"{static} would overwrite an input file") and "\n" not in error
    assert counted == {} and files(tmp_path) == ["a.nii.gz", "a_moved.nii.gz"]


def labelled(blocks: dict) -> np.ndarray:
    """A label map with each label of ``blocks`` in a 10^3 block at its first corner voxel."""
    labels = np.zeros(SHAPE, np.int16)
    for label, (x, y, z) in blocks.items():
        labels[x:x + 10, y:y + 10, z:z + 10] = label
    return labels


def copied(model, moving, moving_grid, static, moving_seg, *options):
    """A registration that moves nothing (the moving scan on the static grid): a zero field."""
    return {"moved": moving, "moved_seg": moving_seg, "deformation": np.zeros((*SHAPE, 3)),
            "warp": np.zeros((*SHAPE, 3)), "affine_world": np.eye(4), "finetune_fallback": None,
            "refine_fallback": None}


def test_a_pairs_file_scores_each_scan_against_its_static_label_map(tmp_path, counted,
                                                                    monkeypatch):
    for name, seed in (("s1", 0), ("s2", 1), ("m1", 2), ("m2", 3), ("m3", 4)):
        write(tmp_path / f"{name}.nii.gz", brain(seed))
    static_seg = labelled({1: (0, 0, 0), 2: (20, 20, 20)})
    write(tmp_path / "s1_seg.nii.gz", static_seg)
    write(tmp_path / "s2_seg.nii.gz", static_seg)
    write(tmp_path / "m1_seg.nii.gz", labelled({1: (5, 0, 0), 2: (20, 20, 20)}))  # half of 1
    write(tmp_path / "m2_seg.nii.gz", labelled({1: (0, 0, 0)}))  # 2 missing
    (tmp_path / "m3.nii.gz").write_bytes(b"damaged")
    write(tmp_path / "m3_seg.nii.gz", static_seg)
    (tmp_path / "pairs.csv").write_text(
        "moving,static,moving_seg,static_seg\n" + "".join(
            f"{m}.nii.gz,{s}.nii.gz,{m}_seg.nii.gz,{s}_seg.nii.gz\n"
            for m, s in (("m1", "s1"), ("m2", "s2"), ("m3", "s1"))))
    monkeypatch.setattr(pretrained, "register_prepared", copied)
    out = tmp_path / "out"
    assert main.main(["register", "--pairs_file", str(tmp_path / "pairs.csv"), "--output",
                      str(out)]) == 2  # m3 is damaged
    assert counted == {"load": 1, "prepared_static": 2}  # once per static scan
    with open(out / cohort.SCORES) as file:
        rows = list(csv.DictReader(file))
    assert [row["name"] for row in rows] == ["m1", "m2", "m3"]  # the file's order
    assert list(rows[0])[-1] == "error" and rows[2]["error"].startswith("cannot read")
    assert [float(rows[0][key]) for key in ("dice_1", "dice_2", "dice_mean")] == [0.5, 1.0, 0.75]
    assert [float(rows[1][key]) for key in ("dice_1", "dice_2", "dice_mean")] == [1.0, 0.0, 0.5]
    assert float(rows[0]["folding_share"]) == 0.0 and rows[2]["dice_mean"] == ""
    assert "m1_moved_seg.nii.gz" in files(out) and "m3_moved.nii.gz" not in files(out)


def test_a_trained_model_registers_a_cohort_too(tmp_path):
    model = models.VoxelMorph1((16, 16, 16))  # its displacement exactly zero
    layer = model.get_layer("deformation")
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    model.save(tmp_path / "model.keras")
    images = np.random.default_rng(0).random((3, 12, 16, 14), np.float32)
    for name, image in zip(("s", "m1", "m2"), images):
        np.save(tmp_path / f"{name}.npy", image)
    assert main.main(["register", "--model", str(tmp_path / "model.keras"), "--moving",
                      str(tmp_path / "m1.npy"), str(tmp_path / "m2.npy"), "--static",
                      str(tmp_path / "s.npy"), "--output", str(tmp_path / "out")]) == 0
    moved = np.asanyarray(nib.load(tmp_path / "out" / "m2_moved.nii.gz").dataobj)
    np.testing.assert_allclose(moved, images[2], atol=1e-5)


def test_scans_of_one_file_name_are_told_apart_by_their_folders():
    assert cohort.output_names(["d/sub-01/T1w.nii.gz", "d/sub-02/T1w.nii.gz", "e/x.mgz"]) == \
        ["sub-01_T1w", "sub-02_T1w", "x"]
    with pytest.raises(main.volumes.UsageError, match="listed twice"):
        cohort.output_names(["a.nii.gz", "./a.nii.gz"])


@pytest.mark.parametrize("flags, message", [
    (["--moving", "{a}", "{b}", "--static", "{s}"], "give --output DIR"),
    (["--moving", "{a}", "--static", "{s}", "--output", "{o}", "--moved", "{o}/x.nii.gz"],
     "--moved: with --output"),
    (["--moving", "{a}", "--static", "{s}", "--output", "{o}", "--warp", "{o}/w.nii.gz"],
     "with --output give --warp alone"),
    (["--moving", "{a}", "--static", "{s}", "--moved", "{o}.nii.gz", "--warp"],
     "--warp without a file name"),
    (["--moving", "{a}", "--moving_seg", "{a}", "--static", "{s}", "--moved", "{o}.nii.gz",
      "--static_seg", "{s}"], "--static_seg scores a cohort"),
    (["--moving", "{a}", "{b}", "--moving_seg", "{a}", "--static", "{s}", "--output", "{o}"],
     "2 --moving scans but 1 --moving_seg"),
    (["--pairs_file", "{o}.csv", "--static", "{s}", "--output", "{o}"], "drop --moving"),
    (["--static", "{s}", "--moved", "{o}.nii.gz"], "register needs --moving and --static"),
])
def test_flags_that_do_not_fit_a_pair_or_a_cohort_are_one_line(tmp_path, counted, capsys, flags,
                                                              message):
    names = {"a": tmp_path / "a.nii.gz", "b": tmp_path / "b.nii.gz", "s": tmp_path / "s.nii.gz",
             "o": tmp_path / "out"}
    assert main.main(["register", *[flag.format(**names) for flag in flags]]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and counted == {}
    assert not (tmp_path / "out").exists()
