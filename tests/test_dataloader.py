"""The Keras loaders: pairs drawn by seed, batches of the models' inputs (no targets)."""

import numpy as np
import pytest

import dataloader
import volumes


def test_registration_loader_pairs_every_moving_image_with_the_atlas():
    moving = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    atlas = np.full((16, 16), 0.5, np.float32)
    loader = dataloader.RegistrationDataLoader(moving, atlas, batch_size=2)
    assert len(loader) == 3
    inputs = loader[2]  # the last, smaller batch
    assert set(inputs) == {"moving", "static"}
    assert inputs["moving"].shape == inputs["static"].shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(inputs["moving"][0, ..., 0], moving[4])
    np.testing.assert_array_equal(inputs["static"][0, ..., 0], atlas)


def test_registration_loader_accepts_one_static_image_per_moving_image():
    moving = np.zeros((3, 8, 8, 8), np.float32)
    static = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 8, 8, 8))
    inputs = dataloader.RegistrationDataLoader(moving, static)[1]
    assert inputs["static"].shape == (1, 8, 8, 8, 1)
    assert np.all(inputs["static"] == 1.0)


def test_registration_loader_refuses_mismatched_shapes():
    with pytest.raises(volumes.DataError, match="shapes differ"):
        dataloader.RegistrationDataLoader(np.zeros((2, 16, 16)), np.zeros((16, 32)))


def test_scan_to_scan_loader_yields_pairs_of_the_set():
    vols = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 16, 16), np.float32)
    loader = dataloader.ScanToScanDataLoader(vols, batch_size=4, pairs_per_epoch=8, seed=1)
    inputs = loader[0]
    moving, static = inputs["moving"][:, 0, 0, 0], inputs["static"][:, 0, 0, 0]
    assert len(loader) == 2
    assert np.all(moving != static)


def test_with_labels_both_label_maps_are_one_hot_inputs():
    moving_seg = np.array([[[0, 1], [2, 2]]])
    static_seg = np.array([[2, 0], [1, 7]])  # one map for the batch, as an atlas's; 7 unused
    inputs = dataloader.batch(np.zeros((1, 2, 2)), np.zeros((2, 2)), moving_seg, static_seg,
                              labels=[1, 2])
    assert set(inputs) == {"moving", "static", "moving_seg", "static_seg"}
    np.testing.assert_array_equal(inputs["moving_seg"][0, ..., 1], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(inputs["static_seg"][0, ..., 0], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(inputs["static_seg"][0, ..., 1], [[1, 0], [0, 0]])


def test_labels_without_label_maps_are_refused():
    with pytest.raises(volumes.DataError, match="label maps"):
        dataloader.batch(np.zeros((1, 2, 2)), np.zeros((2, 2)), labels=[1])
