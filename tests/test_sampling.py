"""Sampling numpy volumes at voxel coordinates (``sampling``)."""
import numpy as np

import sampling


def test_sampling_axis_by_axis_equals_sampling_point_by_point():
    volume = np.random.default_rng(0).random((7, 9, 5)).astype(np.float32)
    coords = [np.linspace(-1.2, 7.3, 11), np.linspace(8.6, -0.6, 13),
              np.array([0.0, 1.5, 4.49, 4.51, -0.49])]  # some outside the volume, reversed
    expected = sampling.sample(volume, np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1))
    assert (expected == 0).any() and (expected > 0).any()
    np.testing.assert_allclose(sampling.sample_axes(volume, coords), expected, atol=1e-6)
    extended = sampling.sample(volume, np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1),
                                 edge=True)
    assert (extended > 0).all()  # the edge's values beyond the edge
    np.testing.assert_allclose(sampling.sample_axes(volume, coords, edge=True), extended,
                               atol=1e-6)


def test_sampling_axis_by_axis_along_an_axis_of_one_voxel():
    volume = np.random.default_rng(1).random((4, 1, 3)).astype(np.float32)
    coords = [np.array([0.5, 2.0]), np.array([-0.4, 0.0, 0.3]), np.array([1.0, 1.7])]
    expected = sampling.sample(volume, np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1))
    np.testing.assert_allclose(sampling.sample_axes(volume, coords), expected, atol=1e-6)
