"""The spatial transformer against scipy.ndimage.map_coordinates, and its basic laws."""
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

import utils


def scipy_warp(moving: np.ndarray, deformation: np.ndarray, order: int) -> np.ndarray:
    """Reference: ``moved[x] = moving[x + u(x)]``, edge-clamped, per batch item and channel."""
    spatial = moving.shape[1:-1]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in spatial], indexing="ij"), axis=-1)
    out = np.empty_like(moving)
    for b in range(moving.shape[0]):
        coords = np.moveaxis(grid + deformation[b], -1, 0)
        for c in range(moving.shape[-1]):
            out[b, ..., c] = ndimage.map_coordinates(moving[b, ..., c], coords, order=order,
                                                     mode="nearest")
    return out


@pytest.mark.parametrize("shape", [(9, 11), (6, 7, 8)])
@pytest.mark.parametrize("interpolation, order", [("linear", 1), ("nearest", 0)])
def test_warp_matches_scipy(shape, interpolation, order):
    rng = np.random.default_rng(0)
    moving = rng.random((2, *shape, 3)).astype(np.float32)
    # Displacements of several voxels, some pointing outside the image.
    deformation = rng.normal(0.0, 3.0, size=(2, *shape, len(shape))).astype(np.float32)
    moved = utils.warp(moving, deformation, interpolation).numpy()
    np.testing.assert_allclose(moved, scipy_warp(moving, deformation, order), atol=1e-4)


@pytest.mark.parametrize("shape", [(8, 10), (5, 6, 7)])
def test_zero_displacement_is_identity(shape):
    moving = np.random.default_rng(1).random((1, *shape, 2)).astype(np.float32)
    moved = utils.warp(moving, np.zeros((1, *shape, len(shape)), np.float32))
    np.testing.assert_allclose(moved.numpy(), moving, atol=1e-6)


def test_integer_shift_moves_by_exactly_that_many_voxels():
    moving = np.random.default_rng(2).random((1, 8, 9, 10, 1)).astype(np.float32)
    deformation = np.zeros((1, 8, 9, 10, 3), np.float32)
    deformation[..., 0], deformation[..., 2] = 2.0, -3.0  # u = (2, 0, -3) voxels
    moved = utils.warp(moving, deformation).numpy()
    np.testing.assert_allclose(moved[:, :-2, :, 3:], moving[:, 2:, :, :-3], atol=1e-6)


def test_nearest_keeps_label_values():
    rng = np.random.default_rng(3)
    labels = rng.choice([0, 4, 17], size=(1, 7, 7, 1)).astype(np.int32)
    deformation = rng.normal(0.0, 1.5, size=(1, 7, 7, 2)).astype(np.float32)
    moved = utils.warp(labels, deformation, "nearest").numpy()
    assert moved.dtype == np.int32
    assert set(np.unique(moved)) <= {0, 4, 17}


def test_gradients_flow_to_the_displacement():
    rng = np.random.default_rng(4)
    moving = tf.constant(rng.random((1, 6, 7, 8, 1)), tf.float32)
    deformation = tf.Variable(rng.normal(0.0, 0.5, size=(1, 6, 7, 8, 3)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(utils.warp(moving, deformation))
    gradient = tape.gradient(loss, deformation).numpy()
    assert np.all(np.isfinite(gradient))
    # Wherever the sampling point stays inside the image, every component gets a gradient
    # (outside, the coordinate is clamped to the edge and its gradient is zero).
    coords = utils.regular_grid((6, 7, 8)).numpy() + deformation.numpy()
    inside = np.all((coords > 0) & (coords < np.array([5, 6, 7])), axis=-1)
    assert inside.sum() > 100
    assert np.all(gradient[inside] != 0)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    moving = tf.constant(rng.random((1, 6, 6, 1)), tf.float32)
    deformation = tf.Variable(rng.uniform(-1.0, 1.0, size=(1, 6, 6, 2)) + 0.3, dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(utils.warp(moving, deformation) ** 2)
    gradient = tape.gradient(loss, deformation).numpy()
    step = np.zeros((1, 6, 6, 2), np.float32)
    step[0, 2, 3, 1] = 1e-2
    plus = tf.reduce_sum(utils.warp(moving, deformation + step) ** 2)
    minus = tf.reduce_sum(utils.warp(moving, deformation - step) ** 2)
    numeric = (plus - minus).numpy() / 2e-2
    np.testing.assert_allclose(gradient[0, 2, 3, 1], numeric, rtol=1e-2, atol=1e-3)


def test_regular_grid_holds_voxel_coordinates_in_ij_order():
    grid = utils.regular_grid((2, 3)).numpy()
    assert grid.shape == (2, 3, 2)
    np.testing.assert_array_equal(grid[1, 2], [1.0, 2.0])


def test_resize_keeps_linear_functions_and_corners():
    x = np.arange(5, dtype=np.float32)
    image = (2.0 * x[:, None] + x[None, :])[None, ..., None]  # linear in both axes
    resized = utils.resize(image, (9, 9)).numpy()[0, ..., 0]
    fine = np.linspace(0.0, 4.0, 9)
    np.testing.assert_allclose(resized, 2.0 * fine[:, None] + fine[None, :], atol=1e-5)


def test_integrating_a_constant_velocity_gives_that_translation():
    velocity = np.full((1, 6, 7, 5, 3), [0.5, -1.25, 2.0], np.float32)
    displacement = utils.integrate_velocity(velocity).numpy()
    np.testing.assert_allclose(displacement, velocity, atol=1e-5)


def rotation_velocity(shape: tuple[int, int], angle: float) -> np.ndarray:
    """Stationary velocity of a rotation by ``angle`` radians about the image centre, in voxels."""
    x = utils.regular_grid(shape).numpy() - (np.array(shape) - 1) / 2
    return (angle * np.stack([-x[..., 1], x[..., 0]], axis=-1))[None].astype(np.float32)


def test_integrated_rotation_stays_invertible():
    import scores

    displacement = utils.integrate_velocity(rotation_velocity((33, 33), 0.5)).numpy()[0]
    # Centre voxel (16, 16) is fixed; (16, 26) turns by 0.5 rad about it.
    np.testing.assert_allclose(displacement[16, 16], [0, 0], atol=1e-4)
    expected = 10 * np.array([-np.sin(0.5), np.cos(0.5) - 1])
    np.testing.assert_allclose(displacement[16, 26], expected, atol=0.1)
    assert scores.jacobian_determinant(displacement).min() > 0


def test_integrating_the_negated_velocity_inverts_the_field():
    velocity = rotation_velocity((33, 33), 0.3)
    forward = utils.integrate_velocity(velocity)
    inverse = utils.integrate_velocity(-velocity)
    # (inverse o forward)(x) - x = u_f(x) + u_i(x + u_f(x)), away from the clamped edges
    composed = (forward + utils.warp(inverse, forward)).numpy()[0, 8:-8, 8:-8]
    assert np.abs(composed).max() < 0.05
    assert np.abs(forward.numpy()[0, 8:-8, 8:-8]).max() > 2  # a real motion was undone


def test_resize_displacement_rescales_vectors_to_the_new_voxels():
    field = np.full((1, 4, 6, 2), [1.0, -0.5], np.float32)
    resized = utils.resize_displacement(field, (8, 3)).numpy()
    assert resized.shape == (1, 8, 3, 2)
    np.testing.assert_allclose(resized[..., 0], 2.0)  # twice as many voxels along axis 0
    np.testing.assert_allclose(resized[..., 1], -0.25)  # half as many along axis 1


def test_resize_displacement_maps_voxel_centres_as_block_averaging():
    # A linear field in coarse voxels, u(x) = x, seen on the 2x finer grid: the fine voxel y
    # lies at coarse x = (y + 0.5) / 2 - 0.5, and one coarse voxel is two fine ones.
    x = np.arange(8, dtype=np.float32)
    field = x[None, :, None]
    fine = utils.resize_displacement(field, (16,)).numpy()[0, :, 0]
    y = np.arange(16)
    coarse = np.clip((y + 0.5) / 2 - 0.5, 0, 7)
    np.testing.assert_allclose(fine, 2 * coarse, atol=1e-5)


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_non_finite_coordinates_read_defined_voxels(interpolation):
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4, 1)  # image[i, j] = 4 i + j
    coords = np.array([[np.nan, 2.0], [1.0, np.nan], [np.inf, -np.inf], [-np.inf, np.inf]],
                      np.float32).reshape(1, 4, 1, 2)
    sampled = utils.interpolate(image, coords, interpolation).numpy().ravel()
    # NaN reads index 0 along its axis; +-Inf clamp to the last / first voxel.
    np.testing.assert_array_equal(sampled, [2.0, 4.0, 8.0, 3.0])


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(coords=hnp.arrays(np.float32, (1, 5, 3, 3),
                                    elements=st.floats(width=32, allow_nan=True,
                                                       allow_infinity=True)),
                  interpolation=st.sampled_from(["linear", "nearest"]))
def test_any_coordinates_sample_values_of_the_image(coords, interpolation):
    image = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4, 1) + 1.0
    sampled = utils.interpolate(image, coords, interpolation).numpy()
    assert np.all(np.isfinite(sampled))
    assert sampled.min() >= 1.0 - 1e-5 and sampled.max() <= image.max() + 1e-5


def test_labels_are_sampled_as_int32_with_nearest_and_everything_else_as_float32():
    assert utils.sampling_dtype(np.uint8, "nearest") == np.int32
    assert utils.sampling_dtype(np.bool_, "nearest") == np.int32
    assert utils.sampling_dtype(np.uint8, "linear") == np.float32
    assert utils.sampling_dtype(np.float64, "nearest") == np.float32


@pytest.mark.parametrize("source, target", [((4, 6, 5), (8, 12, 10)), ((9, 8, 7), (4, 5, 11)),
                                            ((5, 7), (9, 3))])
def test_linear_resize_matches_scipy_at_block_averaging_centres(source, target):
    volume = np.random.default_rng(2).normal(size=(2, *source, 3)).astype(np.float32)
    axes = [np.clip((np.arange(o) + 0.5) * i / o - 0.5, 0, i - 1) for i, o in zip(source, target)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    expected = np.stack([[ndimage.map_coordinates(item[..., c], coords, order=1)
                          for c in range(3)] for item in volume])
    resized = utils.linear_resize(volume, target).numpy()
    np.testing.assert_allclose(resized, np.moveaxis(expected, 1, -1), atol=1e-5)
