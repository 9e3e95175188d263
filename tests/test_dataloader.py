"""The Keras loaders: pairs drawn by seed, batches of the models' inputs and targets."""

import numpy as np
import pytest

import dataloader
import volumes


def test_registration_loader_pairs_every_moving_image_with_the_atlas():
    moving = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    atlas = np.full((16, 16), 0.5, np.float32)
    loader = dataloader.RegistrationDataLoader(moving, atlas, batch_size=2)
    assert len(loader) == 3
    inputs, targets = loader[2]  # the last, smaller batch
    assert inputs["moving"].shape == inputs["static"].shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(inputs["moving"][0, ..., 0], moving[4])
    np.testing.assert_array_equal(targets["moved"], inputs["static"])
    assert targets["deformation"].shape == (1, 16, 16, 2)
    assert not targets["deformation"].any()


def test_registration_loader_accepts_one_static_image_per_moving_image():
    moving = np.zeros((3, 8, 8, 8), np.float32)
    static = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 8, 8, 8))
    inputs, _ = dataloader.RegistrationDataLoader(moving, static)[1]
    assert inputs["static"].shape == (1, 8, 8, 8, 1)
    assert np.all(inputs["static"] == 1.0)


def test_registration_loader_refuses_mismatched_shapes():
    with pytest.raises(volumes.DataError, match="shapes differ"):
        dataloader.RegistrationDataLoader(np.zeros((2, 16, 16)), np.zeros((16, 32)))


def test_scan_to_scan_loader_yields_pairs_of_the_set():
    vols = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 16, 16), np.float32)
    loader = dataloader.ScanToScanDataLoader(vols, batch_size=4, pairs_per_epoch=8, seed=1)
    inputs, _ = loader[0]
    moving, static = inputs["moving"][:, 0, 0, 0], inputs["static"][:, 0, 0, 0]
    assert len(loader) == 2
    assert np.all(moving != static)


def test_the_smoothness_target_has_the_shape_of_the_models_field():
    # --int_downsize 2: the velocity is trained at half resolution, and so is its zero target.
    targets = {"moved": (32, 32, 1), "velocity": (16, 16, 2)}
    inputs, batch_targets = dataloader.batch(np.zeros((2, 32, 32)), np.zeros((32, 32)), targets)
    assert batch_targets["velocity"].shape == (2, 16, 16, 2) and not batch_targets["velocity"].any()
    assert batch_targets["moved"].shape == inputs["static"].shape == (2, 32, 32, 1)
