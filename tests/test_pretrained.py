"""The shipped brain model: ``main.py register`` without ``--model`` (``pretrained.py``)."""
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # a test requirement (requirements.txt): these tests never skip

import contrast_mapping
import main
import models
import objective
import pose
import pretrained
import sampling
import scores
import synthetic
import transforms
from test_pose import ellipsoid
from test_transforms import sitk_resample, sitk_warp_transform, write

TEMPLATE = np.diag([2.0, 2.0, 2.0, 1.0])  # the default data's grid (80x96x80 at 2 mm)
TEMPLATE[:3, 3] = [-79.5, -112.5, -74.5]


def rigid(degrees: float, shift_mm) -> np.ndarray:
    """``(4, 4)`` rotation about the world's z axis by ``degrees``, then a shift (RAS mm)."""
    matrix = np.eye(4)
    matrix[:3, :3] = transforms.rotation_matrix(np.deg2rad([degrees, 0.0, 0.0]))
    matrix[:3, 3] = shift_mm
    return matrix


def other_contrast(image: np.ndarray) -> np.ndarray:
    """A T2-like image of a skull-stripped T1 in [0, 1]: the brain's intensities reversed."""
    return np.where(image > 0.05, 1.1 - image, 0.0).astype(np.float32)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two default-data subjects as NIfTI scans: the static one on the template's grid, the
    moving one of the other contrast on a 1.6 mm grid, rotated 10 degrees and shifted 12 mm in
    the world (its label map likewise), so that world coordinates do not align them."""
    folder = tmp_path_factory.mktemp("brains")
    subjects = synthetic.default_validation_set(3)
    template = transforms.Grid(subjects.shape, TEMPLATE)
    fine = np.diag([1.6, 1.6, 1.6, 1.0])  # the same field of view, 100x120x100 at 1.6 mm
    fine[:3, 3] = TEMPLATE[:3, 3] + (2.0 * (np.array(subjects.shape) - 1)
                                     - 1.6 * (np.array([100, 120, 100]) - 1)) / 2
    fine = transforms.Grid((100, 120, 100), fine)
    moving = transforms.resample(other_contrast(subjects.vols[1]), template, fine)
    moving_seg = transforms.resample(subjects.segs[1], template, fine, "nearest")
    placed = rigid(10.0, [12.0, -6.0, 4.0]) @ fine.affine
    return {"static": write(folder / "static.nii.gz", subjects.vols[0], TEMPLATE),
            "static_seg": subjects.segs[0],
            "moving": write(folder / "moving.nii.gz", moving, placed),
            "moving_seg": write(folder / "moving_seg.nii.gz", moving_seg.astype(np.int16),
                                placed)}


@pytest.fixture(scope="module")
def registered(scans, tmp_path_factory):
    """``register`` of the pair with the shipped model: the output files."""
    folder = tmp_path_factory.mktemp("registered")
    outputs = {name: str(folder / f"{name}.{kind}") for name, kind in (
        ("moved", "nii.gz"), ("moved_seg", "nii.gz"), ("warp", "nii.gz"), ("affine", "txt"))}
    code = main.main(["register", "--moving", scans["moving"], "--static", scans["static"],
                      "--moving_seg", scans["moving_seg"],
                      *[arg for name, path in outputs.items() for arg in (f"--{name}", path)]])
    assert code == 0
    return outputs


def mean_dice(labels: np.ndarray, static_seg: np.ndarray) -> float:
    return float(np.mean(scores.dice(labels, static_seg, [1, 2, 3])))


def through_world(scans, transform=None) -> np.ndarray:
    """The moving label map on the static grid, through world space (or ``transform``)."""
    return sitk_resample(scans["moving_seg"], scans["static"],
                         transform or sitk.Transform(3, sitk.sitkIdentity), nearest=True)


def test_register_without_a_model_aligns_brains_of_another_grid_pose_and_contrast(
        scans, registered):
    moved_seg = np.asanyarray(nib.load(registered["moved_seg"]).dataobj)
    before = mean_dice(through_world(scans), scans["static_seg"])
    after = mean_dice(moved_seg, scans["static_seg"])
    assert moved_seg.shape == scans["static_seg"].shape
    assert after > before + 0.1, (before, after)  # 0.30 -> 0.45 with brain.keras version 1


def test_simpleitk_applies_the_written_warp_as_register_moved_the_scan(scans, registered):
    transform = sitk_warp_transform(registered["warp"])
    itk_labels = through_world(scans, transform)
    moved_seg = np.asanyarray(nib.load(registered["moved_seg"]).dataobj)
    assert np.mean(itk_labels == moved_seg) >= 0.995
    itk_image = sitk_resample(scans["moving"], scans["static"], transform, nearest=False)
    moved = np.asanyarray(nib.load(registered["moved"]).dataobj)
    assert np.mean(np.abs(moved - itk_image)) < 1e-3


def test_simpleitk_applies_the_affine_stage_alone_closer_than_the_world(scans, registered):
    affine = sitk.ReadTransform(registered["affine"])
    before = mean_dice(through_world(scans), scans["static_seg"])
    assert mean_dice(through_world(scans, affine), scans["static_seg"]) > before + 0.1


def test_a_zero_field_maps_each_brain_centre_onto_the_other():
    """With no displacement, the composition is the shift between the working grids: a scan
    that is the static one shifted in the world comes back onto it."""
    image = np.zeros((40, 44, 36), np.float32)
    image[8:30, 10:34, 6:28] = np.linspace(0.2, 1.0, 22)[:, None, None]
    static_grid = transforms.Grid(image.shape, np.diag([2.5, 2.5, 2.5, 1.0]))
    moving_grid = transforms.Grid(image.shape, rigid(0.0, [17.0, -9.0, 5.0]) @ static_grid.affine)
    centres = [pose.brain_moments(image, grid)[0] for grid in (moving_grid, static_grid)]
    grids = [pretrained.working_grid(centre) for centre in centres]
    out = pretrained.on_static_grid(np.zeros((*pretrained.SHAPE, 3), np.float32), grids, image,
                                    moving_grid, static_grid, None)
    np.testing.assert_allclose(out["warp"][0, 0, 0], [-17.0, 9.0, 5.0], atol=1e-4)  # LPS
    np.testing.assert_allclose(out["moved"], image, atol=1e-5)


def test_a_zero_field_turns_a_turned_brain_back_onto_the_static_one():
    image = ellipsoid((40, 48, 36), (14.0, 20.0, 11.0)) * np.linspace(0.3, 1.0, 40)[:, None, None]
    static_grid = transforms.Grid(image.shape, np.diag([2.0, 2.0, 2.0, 1.0]))
    turn = rigid(0.0, [9.0, 4.0, -6.0])
    turn[:3, :3] = transforms.rotation_matrix(np.radians([6.0, 10.0, -8.0]))  # about every axis
    moving_grid = transforms.Grid(image.shape, turn @ static_grid.affine)
    (moving_centre, moving_spread), (static_centre, static_spread) = [
        pose.brain_moments(image, grid) for grid in (moving_grid, static_grid)]
    world_map = pose.turned_about(pose.principal_rotation(moving_spread, static_spread),
                                  moving_centre, static_centre)
    grids = pretrained.working_grids(static_centre, world_map)
    out = pretrained.on_static_grid(np.zeros((*pretrained.SHAPE, 3), np.float32), grids, image,
                                    moving_grid, static_grid, None)
    assert np.abs(out["moved"] - image).mean() < 0.02 * image.mean()


def test_a_field_onto_a_grid_of_permuted_flipped_axes_is_sampled_as_voxel_by_voxel():
    field = np.random.default_rng(0).random((8, 9, 10, 3)).astype(np.float32)
    to_work = np.array([[0.0, 0.9, 0.0, 7.5], [0.0, 0.0, 1.3, -1.0], [-0.7, 0.0, 0.0, 2.0],
                        [0.0, 0.0, 0.0, 1.0]])  # a scan's axes onto the working grid's
    points = np.moveaxis(pretrained.grid_points(to_work, (11, 12, 9)), 0, -1)
    expected = np.moveaxis(sampling.sample(field, points, edge=True), -1, 0)
    assert (points[..., 0] > 7.5).any()  # beyond the field's grid too: its edge's values
    np.testing.assert_allclose(pretrained.field_on(field, to_work, (11, 12, 9)), expected,
                               atol=1e-6)


def test_the_static_grid_composed_in_slabs_is_the_composition_voxel_by_voxel():
    """``on_static_grid`` computes its slabs on threads; together they are the working grids'
    field and the grids' maps composed at every static voxel at once."""
    rng = np.random.default_rng(3)
    field = rng.normal(0.0, 1.5, (*pretrained.SHAPE, 3)).astype(np.float32)
    moving = rng.random((21, 18, 16)).astype(np.float32)
    static_grid = transforms.Grid((23, 19, 17), np.diag([9.0, 9.0, 9.0, 1.0]))
    moving_grid = transforms.Grid(moving.shape, rigid(0.0, [4.0, -3.0, 2.0]) @ np.diag(
        [10.0, 10.0, 10.0, 1.0]))
    grids = [pretrained.working_grid(np.array([12.0, -8.0, 5.0])),
             pretrained.working_grid(np.array([3.0, 2.0, -1.0]))]
    out = pretrained.on_static_grid(field, grids, moving, moving_grid, static_grid, None)
    voxels = static_grid.coordinates()
    work = np.moveaxis(pretrained.grid_points(np.linalg.inv(grids[1].matrix) @ static_grid.matrix,
                                              static_grid.shape), 0, -1)
    world = grids[0].world(work + sampling.sample(field, work, edge=True))
    np.testing.assert_allclose(out["deformation"], static_grid.voxels(world) - voxels, atol=1e-3)
    np.testing.assert_allclose(out["moved"], sampling.sample(moving, moving_grid.voxels(world)),
                               atol=1e-4)


def test_a_map_of_the_affine_stage_stays_unfolded_beyond_the_working_grid():
    work = transforms.Grid((12, 12, 12), np.diag([3.0, 3.0, 3.0, 1.0]))
    wider = np.diag([3.0, 3.0, 3.0, 1.0])
    wider[:3, 3] = -12.0  # the static scan reaches 4 voxels beyond the working grid each side
    static = transforms.Grid((20, 20, 20), wider)
    voxels = np.stack(np.meshgrid(*[np.arange(12.0)] * 3, indexing="ij"), axis=-1) - 5.5
    rotation = transforms.rotation_matrix(np.radians([20.0, 0.0, 0.0]))
    field = (voxels @ rotation.T - voxels + [2.5, 0.0, 0.0]).astype(np.float32)  # and a shift
    out = pretrained.on_static_grid(field, [work, work], np.ones((20, 20, 20), np.float32),
                                    static, static, None)
    assert scores.folding_fraction(out["deformation"]) == 0.0


def test_refinement_runs_with_mind(scans, tmp_path, capsys):
    moved = tmp_path / "moved.nii.gz"  # fine-tuning: tuning.FineTuner's own tests
    assert main.main(["register", "--moving", scans["moving"], "--static", scans["static"],
                      "--moved", str(moved), "--refine_steps", "2", "--tune_loss", "mind"]) == 0
    assert "refined in 2 steps" in capsys.readouterr().out and moved.exists()


def test_the_shipped_refiner_takes_the_smoothness_weight_of_its_similarity():
    model = pretrained.load()
    for similarity in ("ncc", "mind"):
        refiner = pretrained.refiner(model, 1, similarity=similarity)
        assert refiner.lamda == pytest.approx(objective.DEFAULT_LAMBDA[similarity])


def test_the_shipped_model_integrates_its_field_so_its_maps_are_invertible():
    network = models.registration_model(pretrained.load())
    deformable = models.stages(network) or [network]  # a cascade's one network, or itself
    assert [models.integration(part) for part in deformable] == [(7, 1)]


def test_the_moving_scan_comes_out_in_the_static_scans_contrast():
    static = ellipsoid((24, 24, 24), (10.0, 9.0, 8.0)) * np.linspace(0.3, 1.0, 24)[:, None, None]
    moving = np.where(static > 0, 1.2 - static, 0.0).astype(np.float32)  # reversed in the brain
    mapped = contrast_mapping.in_contrast_of(moving, static, pretrained.SPACING_MM)
    brain = static > pose.BRAIN
    assert np.corrcoef(moving[brain], static[brain])[0, 1] < -0.9
    assert np.corrcoef(mapped[brain], static[brain])[0, 1] > 0.98
    assert np.all(mapped[static == 0] == 0)


@pytest.mark.parametrize("case", ["2D", "small"])
def test_scans_the_shipped_model_cannot_take_exit_2_writing_nothing(tmp_path, capsys, case):
    shape, spacing = ((64, 64), 3.0) if case == "2D" else ((32, 32, 32), 2.0)
    path = write(tmp_path / "scan.nii.gz", np.random.default_rng(0).random(shape, np.float32),
                 np.diag([spacing] * 3 + [1.0]))
    moved = tmp_path / "moved.nii.gz"
    assert main.main(["register", "--moving", path, "--static", path, "--moved",
                      str(moved)]) == 2
    error = capsys.readouterr().err
    assert ("shipped brain model is 3D" if case == "2D" else "at least 80 mm") in error
    assert len(error.strip().splitlines()) == 1 and not moved.exists()


def test_evaluate_without_a_model_scores_the_shipped_model(tmp_path):
    assert main.main(["evaluate", "--max_pairs", "1", "--output", str(tmp_path)]) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["model"] == pretrained.FILE and len(evaluation["per_pair"]) == 1
    assert 0.0 < evaluation["summary"]["dice_after"]["mean"] <= 1.0


def test_evaluate_without_a_model_or_output_is_one_line(capsys):
    assert main.main(["evaluate"]) == 2
    assert capsys.readouterr().err.strip().endswith("needs --output, the folder to write its "
                                                    "scores in")
