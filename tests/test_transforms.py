"""World-space transforms, checked against SimpleITK, the reader ITK, ANTs and 3D Slicer share."""
import types

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # a test requirement (requirements.txt): these tests never skip
from scipy.ndimage import gaussian_filter

import transforms


def rotation_affine(ndim: int, degrees: float, spacing: float, origin) -> np.ndarray:
    """A NIfTI affine: axes rotated by ``degrees`` about the last world axis, voxels of
    ``spacing`` mm, the first voxel at ``origin`` (RAS mm)."""
    angle = np.deg2rad(degrees)
    affine = np.eye(4)
    affine[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    affine[:3, :3] *= spacing
    affine[:ndim, 3] = origin
    return affine


def smooth_field(shape, amplitude: float, seed: int = 0) -> np.ndarray:
    """``(*shape, ndim)`` random smooth displacement in voxels, largest component ~amplitude."""
    rng = np.random.default_rng(seed)
    field = np.stack([gaussian_filter(rng.normal(size=shape), 3) for _ in shape], axis=-1)
    return (amplitude * field / np.abs(field).max()).astype(np.float32)


def blob_scan(shape, seed: int = 1):
    """A smooth image and its label map (labels 0-3 by intensity), of ``shape``."""
    image = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 2)
    image = (image - image.min()) / np.ptp(image)
    return image.astype(np.float32), np.digitize(image, [0.35, 0.5, 0.65]).astype(np.uint8)


def write(path, volume, affine) -> str:
    nib.save(nib.Nifti1Image(volume, affine), path)
    return str(path)


def sitk_resample(moving_path: str, reference_path: str, transform, nearest: bool) -> np.ndarray:
    """SimpleITK's own resampling of a file onto a reference file's grid, as a nibabel array."""
    moving, reference = sitk.ReadImage(moving_path), sitk.ReadImage(reference_path)
    moved = sitk.Resample(moving, reference, transform,
                          sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(moved).transpose()  # ITK arrays are (z, y, x)


def sitk_warp_transform(path: str):
    """A warp file read as ITK reads it, as a DisplacementFieldTransform."""
    return sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path),
                                                     sitk.sitkVectorFloat64))


@pytest.mark.parametrize("ndim", [2, 3])
def test_grid_world_points_are_itk_physical_points(tmp_path, ndim):
    affine = rotation_affine(ndim, 25, 1.3, [10.0, -20.0, 7.0][:ndim])
    affine[:3, 1] *= -1  # an oblique, left-handed grid
    shape = (5, 6, 7)[:ndim]
    path = write(tmp_path / "image.nii.gz", np.zeros(shape, np.float32), affine)
    image, grid = sitk.ReadImage(path), transforms.Grid(shape, affine)
    for index in [(0, 0, 0), (4, 1, 6), (2, 5, 3)]:
        np.testing.assert_allclose(grid.world(np.array(index[:ndim], float)),
                                   image.TransformIndexToPhysicalPoint(index[:ndim]), atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_applied_by_simpleitk_moves_images_and_labels_as_apply_warp(tmp_path, ndim):
    # Static and moving scans on different grids: the moving grid rotated by 15 degrees, with
    # 1.2 mm voxels against 1 mm, another shape; a smooth field of up to 3 voxels between.
    shape, moving_shape = (24, 26, 22)[:ndim], (22, 24, 20)[:ndim]
    static_grid = transforms.Grid(shape, rotation_affine(ndim, 0, 1.0, [-12, -13, -11][:ndim]))
    moving_grid = transforms.Grid(moving_shape,
                                  rotation_affine(ndim, 15, 1.2, [-11, -15, -12][:ndim]))
    image, labels = blob_scan(moving_shape)
    warp = transforms.to_world(smooth_field(shape, 3.0), static_grid)
    transforms.save_warp(str(tmp_path / "warp.nii.gz"), warp, static_grid)
    paths = {name: write(tmp_path / f"{name}.nii.gz", volume, affine) for name, volume, affine in
             (("image", image, moving_grid.affine), ("labels", labels, moving_grid.affine),
              ("static", np.zeros(shape, np.float32), static_grid.affine))}

    for name, nearest in (("labels", True), ("image", False)):
        ours = transforms.apply_warp(warp, static_grid, {"labels": labels, "image": image}[name],
                                     moving_grid, "nearest" if nearest else "linear")
        itk = sitk_resample(paths[name], paths["static"],
                            sitk_warp_transform(str(tmp_path / "warp.nii.gz")), nearest)
        assert ours.shape == itk.shape == shape
        if nearest:
            assert np.mean(ours == itk) >= 0.995 and len(np.unique(ours)) == 4
        else:
            interior = (slice(2, -2),) * ndim
            assert np.mean(np.abs(ours - itk)[interior]) < 1e-3
            assert np.mean(np.abs(ours - image.mean())) > 0.05  # not a blank image


def test_warp_file_is_an_itk_vector_image_on_the_static_grid(tmp_path):
    affine = rotation_affine(3, 30, 2.0, [5, 6, 7])
    grid = transforms.Grid((4, 5, 6), affine)
    warp = np.random.default_rng(0).normal(size=(4, 5, 6, 3)).astype(np.float32)
    transforms.save_warp(str(tmp_path / "warp.nii.gz"), warp, grid)
    stored = nib.load(tmp_path / "warp.nii.gz")
    assert stored.shape == (4, 5, 6, 1, 3) and stored.header.get_intent()[0] == "vector"
    image = sitk.ReadImage(str(tmp_path / "warp.nii.gz"))
    assert image.GetNumberOfComponentsPerPixel() == 3 and image.GetSize() == (4, 5, 6)
    np.testing.assert_allclose(image.GetOrigin(), grid.world(np.zeros(3)), atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image)[3, 2, 1], warp[1, 2, 3], atol=1e-6)


def test_load_warp_refuses_a_scalar_image(tmp_path):
    write(tmp_path / "scalar.nii.gz", np.zeros((4, 5, 6), np.float32), np.eye(4))
    with pytest.raises(transforms.volumes.DataError, match="not a displacement field"):
        transforms.load_warp(str(tmp_path / "scalar.nii.gz"))


@pytest.mark.parametrize("affine", [np.diag([1.0, 0.0, 1.0, 1.0]), np.full((4, 4), np.nan)])
def test_a_singular_or_undefined_affine_is_refused(affine):
    image = types.SimpleNamespace(shape=(4, 5, 6), affine=affine)  # as nibabel images hold it
    with pytest.raises(transforms.volumes.DataError, match="affine is not usable"):
        transforms.Grid.of(image, (4, 5, 6))


def test_invert_a_smooth_field_to_a_tenth_of_a_voxel():
    deformation = smooth_field((24, 24, 24), 3.0)
    grid = transforms.spacing_grid((24, 24, 24), 1.5)
    error = transforms.inverse_consistency(deformation, transforms.invert(deformation), grid)
    first_order = transforms.inverse_consistency(deformation, -deformation, grid)
    assert error["mean_voxels"] < 0.1 and error["mean_voxels"] < first_order["mean_voxels"] / 3
    np.testing.assert_allclose(error["mean_mm"], 1.5 * error["mean_voxels"], rtol=1e-5)


def test_resample_onto_the_same_grid_returns_the_volume():
    image, labels = blob_scan((8, 9, 10))
    grid = transforms.Grid((8, 9, 10), rotation_affine(3, 40, 1.7, [1, 2, 3]))
    np.testing.assert_allclose(transforms.resample(image, grid, grid), image, atol=1e-5)
    np.testing.assert_array_equal(transforms.resample(labels, grid, grid, "nearest"), labels)


def test_inverse_consistency_of_a_map_that_leaves_the_grid_is_nan_not_an_error():
    grid = transforms.spacing_grid((6, 7), (2.0, 1.0))
    far = np.full((6, 7, 2), 100.0)  # every voxel mapped outside: nothing to measure
    error = transforms.inverse_consistency(far, -far, grid)
    assert set(error) == {"mean_mm", "p95_mm", "mean_voxels", "p95_voxels"}
    assert all(np.isnan(value) for value in error.values())
