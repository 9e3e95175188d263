"""The synthetic default data: the template, random subjects, and their loader."""
import numpy as np

import dataloader
import synthetic


def test_default_data_is_the_template_with_three_tissue_labels():
    data3 = synthetic.load_default_data(3)
    assert data3.atlas.shape == (80, 96, 80)
    assert data3.atlas.min() == 0.0 and data3.atlas.max() == 1.0
    assert set(np.unique(data3.atlas_seg)) == {0, 1, 2, 3}
    data2 = synthetic.load_default_data(2)
    np.testing.assert_array_equal(data2.atlas, data3.atlas[..., synthetic.DEFAULT_SLICE])
    assert data3.spacing == (2.0, 2.0, 2.0) and data2.spacing == (2.0, 2.0)  # the 2 mm template


def test_synthetic_subjects_are_reproducible_deformations_of_the_atlas():
    data = synthetic.load_default_data(2)
    vols, segs = synthetic.synthetic_subjects(data.atlas, 3, seed=7, atlas_seg=data.atlas_seg)
    again, _ = synthetic.synthetic_subjects(data.atlas, 3, seed=7)
    assert vols.shape == segs.shape == (3, 80, 96)
    np.testing.assert_array_equal(vols, again)
    assert 0.0 <= vols.min() and vols.max() <= 1.0
    assert set(np.unique(segs)) <= {0, 1, 2, 3}
    assert not np.array_equal(segs[0], data.atlas_seg)  # moved...
    assert np.mean(segs[0] == data.atlas_seg) > 0.5  # ...but still the same brain


def test_random_deformations_are_smooth_and_do_not_fold():
    import scores

    rng = np.random.default_rng(0)
    for shape in ((80, 96), (40, 48, 40)):
        deformation = synthetic.random_deformation(shape, rng)[0]
        assert deformation.shape == (*shape, len(shape))
        assert np.abs(deformation).max() > 1.0  # voxels: large enough to matter
        assert scores.jacobian_determinant(deformation).min() > 0


def test_synthetic_loader_makes_new_pairs_with_the_atlas_as_static():
    data = synthetic.load_default_data(2)
    loader = synthetic.SyntheticDataLoader(data.atlas, batch_size=2, steps=3, seed=0)
    (first, _), (second, _) = loader[0], loader[1]
    assert len(loader) == 3
    assert first["moving"].shape == (2, 80, 96, 1)
    np.testing.assert_array_equal(first["static"][0, ..., 0], data.atlas)
    assert not np.array_equal(first["moving"], second["moving"])


def test_augmented_scan_to_scan_pairs_are_new_reproducible_images():
    data = synthetic.load_default_data(2)
    vols = np.stack([data.atlas, data.atlas[::-1]])
    plain = dataloader.ScanToScanDataLoader(vols, pairs_per_epoch=2, seed=3)
    augmented, again = (dataloader.ScanToScanDataLoader(vols, pairs_per_epoch=2, seed=3,
                                                        augment=synthetic.augment)
                        for _ in range(2))
    (raw, _), (new, _) = plain[0], augmented[0]
    assert raw["moving"][0, ..., 0].tolist() in (vols[0].tolist(), vols[1].tolist())
    assert not np.array_equal(new["moving"], raw["moving"])
    assert new["moving"].shape == raw["moving"].shape
    np.testing.assert_array_equal(new["static"], again[0][0]["static"])
    # Still the same brain: a random smooth deformation and an intensity change of it.
    assert np.corrcoef(new["moving"].ravel(), raw["moving"].ravel())[0, 1] > 0.6
