"""Evaluation scores against hand-computed values and brute-force references."""
import numpy as np
import pytest
from scipy import ndimage
import scores
import volumes


def slabs(shape, offset, axis=0):
    """Label 1: a one-voxel-thick plane across the grid at index 2, and at 2 + offset."""
    a, b = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    a[(slice(None),) * axis + (2,)] = 1
    b[(slice(None),) * axis + (2 + offset,)] = 1
    return a, b


def surface(mask):
    """Surface voxels by definition, without erosion: in the mask, a face-neighbour outside."""
    padded = np.pad(mask, 1)
    inside = np.ones_like(mask)
    for axis in range(mask.ndim):
        for step in (1, -1):
            inside &= np.roll(padded, step, axis)[(slice(1, -1),) * mask.ndim]
    return np.argwhere(mask & ~inside)


def brute_force_hd95(a, b, spacing):
    """Max of the two directed 95th percentiles, all pairwise distances by scipy's cdist."""
    from scipy.spatial.distance import cdist

    distances = cdist(surface(a) * spacing, surface(b) * spacing)
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


def random_blobs(shape):
    """Two label maps of random blobs, labels 1 to 3."""
    rng = np.random.default_rng(3)
    maps = []
    for _ in range(2):
        blobs = ndimage.gaussian_filter(rng.random(shape), 1.5)
        maps.append(np.digitize(blobs, np.quantile(blobs, [0.3, 0.7])).astype(np.int32))
    maps[0][0] = 2  # a structure touching the grid's edge
    maps[0][(slice(3, 6),) * len(shape)] = 3  # and a small one inside: its bounding box is small
    maps[1][(slice(5, 9),) * len(shape)] = 3
    return maps


def scaling_by_halves(scale_left, scale_right, shape=(6, 8, 5)):
    """``u0 = s * x0`` with ``s`` one value on the first half of axis 1 and another on the rest.

    ``u`` depends on x1 only through ``s`` and ``u1 = 0``, so det J = 1 + s exactly (one-sided
    and central differences of a linear function agree).
    """
    grid = np.indices(shape, dtype=np.float64)
    scale = np.where(grid[1] < shape[1] // 2, scale_left, scale_right)
    return np.stack([scale * grid[0]] + [np.zeros(shape)] * (len(shape) - 1), axis=-1)


def test_dice_matches_hand_counts_and_skips_background():
    a = np.array([[0, 1, 1], [2, 2, 0]])
    b = np.array([[0, 1, 2], [2, 2, 3]])
    # label 1: |A|=2, |B|=1, overlap 1 -> 2/3; label 2: |A|=2, |B|=3, overlap 2 -> 4/5;
    # label 3: |A|=0, |B|=1 -> 0.
    np.testing.assert_allclose(scores.dice(a, b), [2 / 3, 4 / 5, 0.0])
    np.testing.assert_allclose(scores.dice(a, b, labels=[0, 2]), [4 / 5])


def test_dice_of_a_label_absent_from_both_maps_is_nan():
    assert np.isnan(scores.dice(np.zeros((3, 3)), np.zeros((3, 3)), labels=[5])[0])


def test_jacobian_of_an_affine_field_is_its_constant_determinant():
    grid = np.stack(np.meshgrid(*[np.arange(6.0)] * 3, indexing="ij"), axis=-1)
    matrix = np.array([[0.2, 0.1, 0.0], [0.0, -0.3, 0.05], [0.1, 0.0, 0.4]])
    field = grid @ matrix.T + [1.0, -2.0, 0.5]  # u(x) = A x + b
    jacobian = scores.jacobian_determinant(field)
    np.testing.assert_allclose(jacobian, np.linalg.det(np.eye(3) + matrix), rtol=1e-10)


def test_jacobian_of_a_fold_is_negative():
    # u0(x) = -2 x0 maps x -> -x along axis 0: the map is mirrored, determinant 1 - 2 = -1.
    x0, _ = np.meshgrid(np.arange(5.0), np.arange(5.0), indexing="ij")
    field = np.stack([-2.0 * x0, np.zeros_like(x0)], axis=-1)
    np.testing.assert_allclose(scores.jacobian_determinant(field), -1.0)


def test_jacobian_of_zero_displacement_is_one_in_2d():
    np.testing.assert_allclose(scores.jacobian_determinant(np.zeros((4, 5, 2))), 1.0)


@pytest.mark.parametrize("shape", [(12, 10), (10, 8, 9)])
def test_hd95_of_two_planes_k_voxels_apart_is_k(shape):
    # every surface voxel of one plane is exactly 3 voxels from the other plane
    np.testing.assert_allclose(scores.hd95(*slabs(shape, 3)), [3.0])


def test_hd95_scales_with_the_spacing_along_the_offset_axis_only():
    a, b = slabs((10, 8, 9), 3, axis=1)
    np.testing.assert_allclose(scores.hd95(a, b, spacing=2.5), [7.5])
    np.testing.assert_allclose(scores.hd95(a, b, spacing=(3.0, 0.5, 7.0)), [1.5])


@pytest.mark.parametrize("shape, spacing", [((24, 20), (1.0, 1.0)),
                                            ((14, 12, 10), (1.0, 1.5, 0.7))])
def test_hd95_of_random_blobs_matches_a_brute_force_reference(shape, spacing):
    maps = random_blobs(shape)
    expected = [brute_force_hd95(maps[0] == label, maps[1] == label, np.array(spacing))
                for label in (1, 2, 3)]
    np.testing.assert_allclose(scores.hd95(*maps, spacing=spacing), expected, rtol=1e-12)


@pytest.mark.parametrize("spacing", [1.5, (1.0, 1.5, 0.7)], ids=["isotropic", "anisotropic"])
def test_scores_give_hd95_in_voxels_and_mm_of_the_brute_force_reference(spacing):
    # one pass gives both units: shared nearest voxels when isotropic, not when anisotropic
    shape = (14, 12, 10)
    maps, image = random_blobs(shape), np.zeros(shape, np.float32)
    scored = scores.score_registration(image, image, image, np.zeros((*shape, 3)), maps[0],
                                        maps[1], maps[0], spacing=spacing)
    for key, size in (("hd95", np.ones(3)), ("hd95_mm", volumes.voxel_size(spacing, 3))):
        expected = [brute_force_hd95(maps[0] == label, maps[1] == label, size)
                    for label in (1, 2, 3)]
        np.testing.assert_allclose(scored[key], expected, rtol=1e-12)


def test_hd95_of_identical_maps_is_zero():
    labels = np.zeros((9, 9, 9), np.int32)
    labels[2:6, 3:8, 1:4], labels[6:8, 1:3, 5:9] = 4, 9
    np.testing.assert_array_equal(scores.hd95(labels, labels), [0.0, 0.0])


def test_hd95_of_a_label_absent_from_one_map_is_the_grid_diagonal_and_from_both_nan():
    a, b = np.zeros((5, 7, 9), np.int32), np.zeros((5, 7, 9), np.int32)
    a[1, 1, 1] = 3
    scored = scores.hd95(a, b, labels=[3, 5], spacing=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(scored[0], np.sqrt(8.0**2 + 6.0**2 + 8.0**2))
    assert np.isnan(scored[1])


def test_hd95_refuses_a_spacing_that_is_not_positive_per_axis():
    a, b = slabs((6, 6), 1)
    for spacing in (0.0, (1.0, 1.0, 1.0), (1.0, -2.0)):
        with pytest.raises(ValueError, match="spacing must be positive"):
            scores.hd95(a, b, spacing=spacing)


def test_sdlogj_of_zero_and_of_an_affine_field_is_zero():
    assert scores.sdlogj(np.zeros((6, 7, 5, 3))) == 0.0
    grid = np.stack(np.meshgrid(*[np.arange(6.0)] * 2, indexing="ij"), axis=-1)
    assert scores.sdlogj(grid @ np.array([[0.3, 0.2], [-0.1, 0.5]]).T) < 1e-12


def test_sdlogj_of_two_regions_of_det_2_and_one_half_is_log_2():
    # log det is +log 2 on one half of the voxels and -log 2 on the other: std = log 2
    np.testing.assert_allclose(scores.sdlogj(scaling_by_halves(1.0, -0.5)), np.log(2.0))


def test_sdlogj_clips_a_zero_determinant_to_1e_minus_9():
    # det 0 on one half (clipped to 1e-9, log = -9 log 10) and 1 on the other
    np.testing.assert_allclose(scores.sdlogj(scaling_by_halves(-1.0, 0.0, (6, 8))),
                               9 * np.log(10.0) / 2)


def test_mean_hd95_leaves_out_a_structure_one_subject_lacks_as_learn2reg_does():
    moving, static = np.zeros((2, 12, 12, 12), int)
    moving[2:6, 2:6, 2:6], static[3:7, 2:6, 2:6] = 1, 1  # label 1: one voxel apart
    static[8:10, 8:10, 8:10] = 2  # label 2 (e.g. choroid plexus) labelled in the static only
    scored = scores.score_registration(moving * 1.0, static * 1.0, moving * 1.0,
                                       np.zeros((12, 12, 12, 3)), moving, static, moving,
                                       spacing=2.0)
    diagonal = 2.0 * np.sqrt(3 * 11**2)
    np.testing.assert_allclose(scored["hd95_mm"], [2.0, diagonal])  # per label: as before
    assert scored["hd95_mm_mean"] == 2.0 and scored["hd95_mean"] == 1.0
    assert scored["hd95_left_out"] == 1
