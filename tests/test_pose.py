"""The pose stage of the shipped model's registration (``pose.py``)."""
import numpy as np
import pytest

import pose
import pretrained
import synthetic
import transforms

TEMPLATE = np.diag([2.0, 2.0, 2.0, 1.0])  # the default data's grid (80x96x80 at 2 mm)
TEMPLATE[:3, 3] = [-79.5, -112.5, -74.5]


def ellipsoid(shape: tuple[int, ...], radii) -> np.ndarray:
    """A bright ellipsoid of ``radii`` voxels (a brain of distinct principal axes), centred."""
    voxels = np.stack(np.meshgrid(*[np.arange(size) - (size - 1) / 2 for size in shape],
                                  indexing="ij"), axis=-1)
    return (np.sum((voxels / radii) ** 2, axis=-1) < 1.0).astype(np.float32)


def rigid(angles_degrees, shift_mm) -> np.ndarray:
    """``(4, 4)`` RAS map: a rotation about the world's axes, then a shift in mm."""
    matrix = np.eye(4)
    matrix[:3, :3] = transforms.rotation_matrix(np.radians(angles_degrees))
    matrix[:3, 3] = shift_mm
    return matrix


def error_mm(world_map: np.ndarray, truth: np.ndarray, image: np.ndarray,
             grid: transforms.Grid) -> float:
    """Mean distance in mm between two ``(4, 4)`` LPS maps over the brain of ``image``."""
    points = grid.world(np.argwhere(image > pose.BRAIN)[::20].astype(float))
    ones = np.ones((len(points), 1))
    found, expected = (np.hstack([points, ones]) @ m.T for m in (world_map, truth))
    return float(np.linalg.norm(found - expected, axis=1).mean())


def posed(moving: np.ndarray, moving_grid: transforms.Grid, static: np.ndarray,
          static_grid: transforms.Grid, compiled: bool = False) -> tuple[np.ndarray, str | None]:
    """``pose.estimate`` on two scans in [0, 1], as ``register`` calls it."""
    images = [moving, static]
    grids = [moving_grid, static_grid]
    moments = [pose.brain_moments(image, grid) for image, grid in zip(images, grids)]
    return pose.estimate(images, grids, moments, pretrained.working_grid(moments[1][0]),
                         compiled)


@pytest.fixture(scope="module")
def template() -> np.ndarray:
    """The default data's T1 template (MNI152, 80x96x80 at 2 mm) in [0, 1]."""
    return synthetic.load_default_data(3).atlas


def test_brain_moments_are_the_mean_and_covariance_of_the_brain_voxels_in_the_world():
    image = np.random.default_rng(0).random((14, 12, 10)).astype(np.float32)
    grid = transforms.Grid(image.shape, rigid([25.0, 0.0, 0.0], [3.0, -8.0, 11.0])
                           @ np.diag([1.5, 2.0, 2.5, 1.0]))
    points = grid.world(np.argwhere(image > pose.BRAIN).astype(float))
    centre, covariance = pose.brain_moments(image, grid)
    np.testing.assert_allclose(centre, points.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(covariance, np.cov(points.T, bias=True), atol=1e-6)


def test_principal_axes_recover_a_turn_between_two_brains_and_refuse_a_large_one():
    image = ellipsoid((40, 48, 36), (14.0, 20.0, 11.0))
    grid = transforms.Grid(image.shape, np.eye(4))
    static = pose.brain_moments(image, grid)[1]
    for degrees, expected in ((12.0, 12.0), (60.0, 0.0)):
        turned = transforms.Grid(image.shape, rigid([degrees, 0.0, 0.0], [5.0, 0.0, 0.0]))
        rotation = pose.principal_rotation(pose.brain_moments(image, turned)[1], static)
        assert pose.degrees(rotation) == pytest.approx(expected, abs=0.5)


def test_a_near_spherical_brain_offers_no_turn():
    grid = transforms.Grid((40, 40, 40), np.eye(4))
    sphere = pose.brain_moments(ellipsoid(grid.shape, (15.0, 15.6, 14.6)), grid)[1]
    brain = pose.brain_moments(ellipsoid(grid.shape, (14.0, 19.0, 11.0)), grid)[1]
    turned = transforms.Grid(grid.shape, rigid([0.0, 0.0, 20.0], [0.0, 0.0, 0.0]))
    brain_turned = pose.brain_moments(ellipsoid(grid.shape, (14.0, 19.0, 11.0)), turned)[1]
    assert not pose.axes_defined(sphere) and pose.axes_defined(brain)
    assert len(pose.candidate_rotations(sphere, brain)) == 1  # none: the identity alone
    assert len(pose.candidate_rotations(brain_turned, brain)) == 2


def test_an_aligned_pair_stays_within_a_millimetre(template):
    grid = transforms.Grid(template.shape, TEMPLATE)
    world_map, _ = posed(template, grid, template, grid)
    assert error_mm(world_map, np.eye(4), template, grid) < 1.0


@pytest.mark.parametrize("contrast", ["T1", "T2-like"])
def test_a_turn_of_28_degrees_and_a_shift_of_18_mm_are_recovered_within_2_mm(template,
                                                                             contrast):
    static_grid = transforms.Grid(template.shape, TEMPLATE)
    moved = rigid([28.0, -10.0, 6.0], [18.0, -12.0, 9.0])  # RAS
    moving_grid = transforms.Grid(template.shape, moved @ TEMPLATE)
    moving = template if contrast == "T1" else np.where(template > 0.05, 1.1 - template, 0.0)
    world_map, note = posed(moving.astype(np.float32), moving_grid, template, static_grid)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert note is None
    assert error_mm(world_map, flip @ moved @ flip, template, static_grid) < 2.0


def test_the_pose_compiled_by_xla_is_the_graphs_within_a_hundredth_of_a_millimetre(template):
    static_grid = transforms.Grid(template.shape, TEMPLATE)
    moving_grid = transforms.Grid(template.shape, rigid([12.0, 0.0, -5.0], [6.0, 4.0, -3.0])
                                  @ TEMPLATE)
    graph, compiled = (posed(template, moving_grid, template, static_grid, compiled)[0]
                       for compiled in (False, True))
    assert error_mm(graph, np.eye(4), template, static_grid) > 5.0  # it had a pose to find
    assert error_mm(compiled, graph, template, static_grid) < 0.01


def test_a_pair_that_nothing_aligns_better_keeps_the_brain_centres_and_says_so():
    image = ellipsoid((64, 64, 64), (20.0, 26.0, 16.0))
    grid = transforms.Grid(image.shape, np.diag([3.0, 3.0, 3.0, 1.0]))
    world_map, note = posed(image, grid, image, grid)
    np.testing.assert_allclose(world_map, np.eye(4), atol=1e-6)
    assert note.startswith("pose: ") and "kept the centres" in note


def test_the_pose_stages_adam_steps_as_keras_adam_does():
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    start = rng.normal(size=12).astype(np.float32)
    variable, keras_adam = tf.Variable(start), keras.optimizers.Adam(pose.LR)
    params, adam = start.copy(), pose.Adam(12)
    for _ in range(30):
        gradient = rng.normal(size=12).astype(np.float32)
        keras_adam.apply_gradients([(tf.constant(gradient), variable)])
        params = adam.step(params, gradient)
    assert np.abs(params - start).max() > 0.1  # it moved
    np.testing.assert_allclose(params, variable.numpy(), atol=1e-5)
