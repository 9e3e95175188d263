"""Losses and evaluation measures against hand-computed values."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

import metrics


def smooth_image(shape, seed=0):
    """A random image with structure at several scales, in [0, 1]."""
    rng = np.random.default_rng(seed)
    image = rng.random(shape)
    for axis in range(len(shape)):
        image = (image + np.roll(image, 1, axis) + np.roll(image, -1, axis)) / 3
    return ((image - image.min()) / np.ptp(image))[None, ..., None].astype(np.float32)


@pytest.mark.parametrize("shape", [(24, 20), (12, 14, 10)])
def test_local_ncc_of_an_image_with_itself_is_minus_one(shape):
    image = smooth_image(shape)
    loss = metrics.local_normalized_cross_correlation_loss()(image, image)
    np.testing.assert_allclose(float(loss), -1.0, atol=1e-3)


def test_local_ncc_ignores_intensity_scaling_but_not_noise():
    image = smooth_image((24, 24))
    ncc = metrics.local_normalized_cross_correlation_loss(window=5)
    np.testing.assert_allclose(float(ncc(image, 0.5 * image)), -1.0, atol=1e-3)
    noise = np.random.default_rng(1).random(image.shape).astype(np.float32)
    assert float(ncc(image, noise)) > -0.2


@pytest.mark.parametrize("loss", [metrics.local_normalized_cross_correlation_loss(),
                                  metrics.global_normalized_cross_correlation_loss()])
def test_ncc_and_its_gradient_are_finite_on_all_zero_images(loss):
    zeros = tf.zeros((2, 10, 10, 10, 1))
    moved = tf.Variable(zeros)
    with tf.GradientTape() as tape:
        value = loss(zeros, moved)
    gradient = tape.gradient(value, moved)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(gradient.numpy()))


def test_local_ncc_is_finite_with_a_flat_background_around_an_object():
    static = np.zeros((1, 20, 20, 1), np.float32)
    static[0, 6:14, 6:14, 0] = smooth_image((8, 8))[0, ..., 0]
    moved = tf.Variable(np.roll(static, 1, axis=1))
    with tf.GradientTape() as tape:
        value = metrics.local_normalized_cross_correlation_loss()(static, moved)
    assert -1.0 <= float(value) <= 0.0
    assert np.all(np.isfinite(tape.gradient(value, moved).numpy()))


def test_global_ncc_is_minus_one_for_equal_and_plus_one_for_inverted_images():
    image = smooth_image((16, 16))
    ncc = metrics.global_normalized_cross_correlation_loss()
    np.testing.assert_allclose(float(ncc(image, image)), -1.0, atol=1e-4)
    np.testing.assert_allclose(float(ncc(image, 1.0 - image)), 1.0, atol=1e-4)


def test_mse_matches_hand_value():
    a, b = np.zeros((1, 4, 4, 1), np.float32), np.full((1, 4, 4, 1), 0.5, np.float32)
    np.testing.assert_allclose(float(metrics.mse_loss()(a, b)), 0.25, atol=1e-7)


def test_gradient_loss_of_a_constant_field_is_zero():
    field = np.full((1, 6, 7, 8, 3), 2.5, np.float32)
    assert float(metrics.gradient_loss()(np.zeros_like(field), field)) == 0.0


@pytest.mark.parametrize("norm", [1, 2])
def test_gradient_loss_of_a_linear_field_matches_hand_value(norm):
    # u(x) = (0.5 * x0, -2 * x1): forward differences are 0.5 and 0 along axis 0 (channels 0, 1),
    # 0 and -2 along axis 1. Mean over voxels and channels per axis, then over the two axes.
    x0, x1 = np.meshgrid(np.arange(5.0), np.arange(6.0), indexing="ij")
    field = np.stack([0.5 * x0, -2.0 * x1], axis=-1)[None].astype(np.float32)
    per_axis = [(0.5**norm + 0.0) / 2, (0.0 + 2.0**norm) / 2]
    expected = sum(per_axis) / 2
    loss = metrics.gradient_loss(norm)(np.zeros_like(field), field)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_losses_return_one_value_per_sample():
    image = np.concatenate([smooth_image((16, 16), 0), smooth_image((16, 16), 1)])
    field = np.random.default_rng(0).random((2, 16, 16, 2)).astype(np.float32)
    assert metrics.LocalNCC().call(image, image[::-1]).shape == (2,)
    assert metrics.GlobalNCC().call(image, image[::-1]).shape == (2,)
    assert metrics.MSE().call(image, image[::-1]).shape == (2,)
    assert metrics.Grad().call(None, field).shape == (2,)


def test_losses_survive_keras_serialization():
    loss = metrics.local_normalized_cross_correlation_loss(window=7, eps=1e-3)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, metrics.LocalNCC)
    assert (restored.window, restored.eps) == (7, 1e-3)


def test_dice_matches_hand_counts_and_skips_background():
    a = np.array([[0, 1, 1], [2, 2, 0]])
    b = np.array([[0, 1, 2], [2, 2, 3]])
    # label 1: |A|=2, |B|=1, overlap 1 -> 2/3; label 2: |A|=2, |B|=3, overlap 2 -> 4/5;
    # label 3: |A|=0, |B|=1 -> 0.
    np.testing.assert_allclose(metrics.dice(a, b), [2 / 3, 4 / 5, 0.0])
    np.testing.assert_allclose(metrics.dice(a, b, labels=[0, 2]), [4 / 5])


def test_dice_of_a_label_absent_from_both_maps_is_nan():
    assert np.isnan(metrics.dice(np.zeros((3, 3)), np.zeros((3, 3)), labels=[5])[0])


def test_jacobian_of_an_affine_field_is_its_constant_determinant():
    grid = np.stack(np.meshgrid(*[np.arange(6.0)] * 3, indexing="ij"), axis=-1)
    matrix = np.array([[0.2, 0.1, 0.0], [0.0, -0.3, 0.05], [0.1, 0.0, 0.4]])
    field = grid @ matrix.T + [1.0, -2.0, 0.5]  # u(x) = A x + b
    jacobian = metrics.jacobian_determinant(field)
    np.testing.assert_allclose(jacobian, np.linalg.det(np.eye(3) + matrix), rtol=1e-10)


def test_jacobian_of_a_fold_is_negative():
    # u0(x) = -2 x0 maps x -> -x along axis 0: the map is mirrored, determinant 1 - 2 = -1.
    x0, _ = np.meshgrid(np.arange(5.0), np.arange(5.0), indexing="ij")
    field = np.stack([-2.0 * x0, np.zeros_like(x0)], axis=-1)
    np.testing.assert_allclose(metrics.jacobian_determinant(field), -1.0)


def test_jacobian_of_zero_displacement_is_one_in_2d():
    np.testing.assert_allclose(metrics.jacobian_determinant(np.zeros((4, 5, 2))), 1.0)


def test_soft_dice_is_zero_for_equal_maps_and_one_for_disjoint_maps():
    a = np.zeros((1, 4, 4, 2), np.float32)
    a[0, :2, :, 0], a[0, 2:, :, 1] = 1, 1
    swapped = a[..., ::-1]
    loss = metrics.SoftDice()
    assert float(loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(a, swapped)) == pytest.approx(1.0, abs=1e-6)


def test_soft_dice_matches_hand_value_and_skips_labels_absent_from_both():
    true = np.zeros((1, 4, 1, 2), np.float32)
    pred = np.zeros((1, 4, 1, 2), np.float32)
    true[0, :2, 0, 0], pred[0, 1:3, 0, 0] = 1, 1  # overlap 1 of 2 + 2: Dice 0.5; label 2 absent
    assert float(metrics.SoftDice()(true, pred)) == pytest.approx(0.5, abs=1e-5)
def slabs(shape, offset, axis=0):
    """Label 1: a one-voxel-thick plane across the grid at index 2, and at 2 + offset."""
    a, b = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    a[(slice(None),) * axis + (2,)] = 1
    b[(slice(None),) * axis + (2 + offset,)] = 1
    return a, b


@pytest.mark.parametrize("shape", [(12, 10), (10, 8, 9)])
def test_hd95_of_two_planes_k_voxels_apart_is_k(shape):
    # every surface voxel of one plane is exactly 3 voxels from the other plane
    np.testing.assert_allclose(metrics.hd95(*slabs(shape, 3)), [3.0])


def test_hd95_scales_with_the_spacing_along_the_offset_axis_only():
    a, b = slabs((10, 8, 9), 3, axis=1)
    np.testing.assert_allclose(metrics.hd95(a, b, spacing=2.5), [7.5])
    np.testing.assert_allclose(metrics.hd95(a, b, spacing=(3.0, 0.5, 7.0)), [1.5])


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


@pytest.mark.parametrize("shape, spacing", [((24, 20), (1.0, 1.0)),
                                            ((14, 12, 10), (1.0, 1.5, 0.7))])
def test_hd95_of_random_blobs_matches_a_brute_force_reference(shape, spacing):
    maps = random_blobs(shape)
    expected = [brute_force_hd95(maps[0] == label, maps[1] == label, np.array(spacing))
                for label in (1, 2, 3)]
    np.testing.assert_allclose(metrics.hd95(*maps, spacing=spacing), expected, rtol=1e-12)


@pytest.mark.parametrize("spacing", [1.5, (1.0, 1.5, 0.7)], ids=["isotropic", "anisotropic"])
def test_scores_give_hd95_in_voxels_and_mm_of_the_brute_force_reference(spacing):
    # one pass gives both units: shared nearest voxels when isotropic, not when anisotropic
    shape = (14, 12, 10)
    maps, image = random_blobs(shape), np.zeros(shape, np.float32)
    scores = metrics.score_registration(image, image, image, np.zeros((*shape, 3)), maps[0],
                                        maps[1], maps[0], spacing=spacing)
    for key, size in (("hd95", np.ones(3)), ("hd95_mm", metrics.voxel_size(spacing, 3))):
        expected = [brute_force_hd95(maps[0] == label, maps[1] == label, size)
                    for label in (1, 2, 3)]
        np.testing.assert_allclose(scores[key], expected, rtol=1e-12)


def test_hd95_of_identical_maps_is_zero():
    labels = np.zeros((9, 9, 9), np.int32)
    labels[2:6, 3:8, 1:4], labels[6:8, 1:3, 5:9] = 4, 9
    np.testing.assert_array_equal(metrics.hd95(labels, labels), [0.0, 0.0])


def test_hd95_of_a_label_absent_from_one_map_is_the_grid_diagonal_and_from_both_nan():
    a, b = np.zeros((5, 7, 9), np.int32), np.zeros((5, 7, 9), np.int32)
    a[1, 1, 1] = 3
    scores = metrics.hd95(a, b, labels=[3, 5], spacing=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(scores[0], np.sqrt(8.0**2 + 6.0**2 + 8.0**2))
    assert np.isnan(scores[1])


def test_hd95_refuses_a_spacing_that_is_not_positive_per_axis():
    a, b = slabs((6, 6), 1)
    for spacing in (0.0, (1.0, 1.0, 1.0), (1.0, -2.0)):
        with pytest.raises(ValueError, match="spacing must be positive"):
            metrics.hd95(a, b, spacing=spacing)


def test_sdlogj_of_zero_and_of_an_affine_field_is_zero():
    assert metrics.sdlogj(np.zeros((6, 7, 5, 3))) == 0.0
    grid = np.stack(np.meshgrid(*[np.arange(6.0)] * 2, indexing="ij"), axis=-1)
    assert metrics.sdlogj(grid @ np.array([[0.3, 0.2], [-0.1, 0.5]]).T) < 1e-12


def scaling_by_halves(scale_left, scale_right, shape=(6, 8, 5)):
    """``u0 = s * x0`` with ``s`` one value on the first half of axis 1 and another on the rest.

    ``u`` depends on x1 only through ``s`` and ``u1 = 0``, so det J = 1 + s exactly (one-sided
    and central differences of a linear function agree).
    """
    grid = np.indices(shape, dtype=np.float64)
    scale = np.where(grid[1] < shape[1] // 2, scale_left, scale_right)
    return np.stack([scale * grid[0]] + [np.zeros(shape)] * (len(shape) - 1), axis=-1)


def test_sdlogj_of_two_regions_of_det_2_and_one_half_is_log_2():
    # log det is +log 2 on one half of the voxels and -log 2 on the other: std = log 2
    np.testing.assert_allclose(metrics.sdlogj(scaling_by_halves(1.0, -0.5)), np.log(2.0))


def test_sdlogj_clips_a_zero_determinant_to_1e_minus_9():
    # det 0 on one half (clipped to 1e-9, log = -9 log 10) and 1 on the other
    np.testing.assert_allclose(metrics.sdlogj(scaling_by_halves(-1.0, 0.0, (6, 8))),
                               9 * np.log(10.0) / 2)
