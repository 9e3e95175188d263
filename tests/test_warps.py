"""``register --warp/--inverse_warp`` and ``apply`` end to end, read by SimpleITK (and ANTs)."""
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # a test requirement (requirements.txt): these tests never skip

import main
import models
from test_transforms import blob_scan, rotation_affine, sitk_resample, sitk_warp_transform, write

SHAPE = (16, 18, 14)


@pytest.fixture(scope="module")
def field_model(tmp_path_factory):
    """A 16^3 VoxelMorph-1 whose field is a shift of (1.3, -0.6, 0.8) voxels plus an
    image-dependent part of up to ~0.3 voxels (the last convolution's weights scaled up from
    N(0, 1e-5); gradients below 0.2, far from folding)."""
    model = models.build_model((16, 16, 16), "vm1")  # with its loss terms, as a trained model
    layer = model.get_layer("deformation")
    kernel = layer.get_weights()[0] * 2e3
    layer.set_weights([kernel, np.array([1.3, -0.6, 0.8], np.float32)])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return str(path)


def scans(tmp_path, moving_affine):
    """Static and moving scans (images, and the moving label map) as NIfTI files."""
    static_affine = rotation_affine(3, 0, 1.0, [-8, -9, -7])
    image, labels = blob_scan(SHAPE)
    static, _ = blob_scan(SHAPE, seed=2)
    moving_shape = image.shape
    return {"static": write(tmp_path / "static.nii.gz", static, static_affine),
            "moving": write(tmp_path / "moving.nii.gz", image, moving_affine),
            "labels": write(tmp_path / "labels.nii.gz", labels, moving_affine),
            "shape": moving_shape}


def register(tmp_path, model, files, *flags) -> int:
    return main.main(["register", "--model", model, "--moving", files["moving"], "--static",
                      files["static"], "--moving_seg", files["labels"],
                      "--moved", str(tmp_path / "moved.nii.gz"),
                      "--moved_seg", str(tmp_path / "moved_seg.nii.gz"),
                      "--warp", str(tmp_path / "warp.nii.gz"), *flags])


@pytest.mark.parametrize("grids", ["same grid", "rotated 15 degrees, 1.2 mm voxels"])
def test_simpleitk_with_the_warp_moves_scans_as_register_does(tmp_path, field_model, grids):
    moving_affine = (rotation_affine(3, 0, 1.0, [-8, -9, -7]) if grids == "same grid" else
                     rotation_affine(3, 15, 1.2, [-7, -12, -8]))
    files = scans(tmp_path, moving_affine)
    assert register(tmp_path, field_model, files) == 0
    transform = sitk_warp_transform(str(tmp_path / "warp.nii.gz"))
    itk_labels = sitk_resample(files["labels"], files["static"], transform, nearest=True)
    itk_image = sitk_resample(files["moving"], files["static"], transform, nearest=False)
    moved_seg = np.asanyarray(nib.load(tmp_path / "moved_seg.nii.gz").dataobj)
    moved = np.asanyarray(nib.load(tmp_path / "moved.nii.gz").dataobj)
    assert moved_seg.shape == moved.shape == SHAPE
    assert np.mean(moved_seg == itk_labels) >= 0.995
    assert np.mean(np.abs(moved - itk_image)) < 1e-3
    warp = np.asanyarray(nib.load(tmp_path / "warp.nii.gz").dataobj)
    assert np.abs(warp).max() > 1.0  # a real displacement (mm), not the identity


def test_apply_with_the_warp_reproduces_the_moved_label_map_and_its_dtype(tmp_path,
                                                                           field_model):
    files = scans(tmp_path, rotation_affine(3, 15, 1.2, [-7, -12, -8]))
    assert register(tmp_path, field_model, files) == 0
    labels = nib.load(files["labels"])
    nib.save(nib.Nifti1Image(np.asanyarray(labels.dataobj).astype(np.uint16) * 300,
                             labels.affine), tmp_path / "labels16.nii.gz")
    assert main.main(["apply", "--warp", str(tmp_path / "warp.nii.gz"), "--moving",
                      str(tmp_path / "labels16.nii.gz"), "--output",
                      str(tmp_path / "applied.nii.gz"), "--reference", files["static"]]) == 0
    applied = nib.load(tmp_path / "applied.nii.gz")
    moved_seg = np.asanyarray(nib.load(tmp_path / "moved_seg.nii.gz").dataobj)
    assert applied.get_data_dtype() == np.uint16  # nearest by default, dtype kept
    assert np.mean(np.asanyarray(applied.dataobj) == moved_seg.astype(np.uint16) * 300) >= 0.999
    np.testing.assert_allclose(applied.affine, nib.load(files["static"]).affine)


def test_apply_of_a_warp_simpleitk_wrote_matches_simpleitk(tmp_path):
    # The other way: ITK writes the warp of a known rigid map; main.py apply reads and applies it.
    affine = rotation_affine(3, 10, 1.5, [-14, -16, -13])
    image, labels = blob_scan((20, 22, 18))
    files = {name: write(tmp_path / f"{name}.nii.gz", volume, affine)
             for name, volume in (("image", image), ("labels", labels))}
    reference = sitk.ReadImage(files["image"])
    transform = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.1, -0.05, 0.15, (2.0, -1.5, 3.0))
    to_field = sitk.TransformToDisplacementFieldFilter()
    to_field.SetReferenceImage(reference)
    sitk.WriteImage(sitk.Cast(to_field.Execute(transform), sitk.sitkVectorFloat32),
                    str(tmp_path / "itk_warp.nii.gz"))
    for name, nearest in (("labels", True), ("image", False)):
        output = str(tmp_path / f"applied_{name}.nii.gz")
        assert main.main(["apply", "--warp", str(tmp_path / "itk_warp.nii.gz"),
                          "--moving", files[name], "--output", output]) == 0
        ours = np.asanyarray(nib.load(output).dataobj)
        itk = sitk_resample(files[name], files["image"], transform, nearest)
        if nearest:
            assert np.mean(ours == itk) >= 0.995 and not np.array_equal(ours, labels)
        else:
            assert np.mean(np.abs(ours - itk)[2:-2, 2:-2, 2:-2]) < 1e-3


def test_inverse_warp_read_by_simpleitk_undoes_the_warp(tmp_path, field_model, capsys):
    files = scans(tmp_path, rotation_affine(3, 15, 1.2, [-7, -12, -8]))
    assert register(tmp_path, field_model, files, "--inverse_warp",
                    str(tmp_path / "inverse.nii.gz")) == 0
    assert "inverse consistency |x - inv(phi(x))|: mean" in capsys.readouterr().out
    inverse = sitk.ReadImage(str(tmp_path / "inverse.nii.gz"))
    assert inverse.GetSize() == files["shape"]  # on the moving grid
    forward = sitk_warp_transform(str(tmp_path / "warp.nii.gz"))
    backward = sitk_warp_transform(str(tmp_path / "inverse.nii.gz"))
    static = sitk.ReadImage(files["static"])
    errors = []
    for index in np.ndindex(*(size - 8 for size in SHAPE)):  # the interior, 4 voxels in
        point = static.TransformIndexToPhysicalPoint([int(i) + 4 for i in index])
        errors.append(np.linalg.norm(np.subtract(backward.TransformPoint(
            forward.TransformPoint(point)), point)))
    assert np.mean(errors) < 0.1  # mm, on 1 mm static voxels


def test_ants_applies_the_warp_as_register_does(tmp_path, field_model):
    ants = pytest.importorskip("ants")  # optional: antspyx is a benchmark dependency
    files = scans(tmp_path, rotation_affine(3, 15, 1.2, [-7, -12, -8]))
    assert register(tmp_path, field_model, files) == 0
    moved = ants.apply_transforms(ants.image_read(files["static"]),
                                  ants.image_read(files["labels"]),
                                  [str(tmp_path / "warp.nii.gz")],
                                  interpolator="nearestNeighbor").numpy()
    moved_seg = np.asanyarray(nib.load(tmp_path / "moved_seg.nii.gz").dataobj)
    assert np.mean(np.rint(moved) == moved_seg) >= 0.995
