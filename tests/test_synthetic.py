"""The synthetic default data: the template, random subjects, and their loader."""
import functools

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
    first, second = loader[0], loader[1]
    assert len(loader) == 3
    assert first["moving"].shape == (2, 80, 96, 1)
    np.testing.assert_array_equal(first["static"][0, ..., 0], data.atlas)
    assert not np.array_equal(first["moving"], second["moving"])


def test_augmented_scan_to_scan_pairs_are_new_reproducible_images():
    data = synthetic.load_default_data(2)
    vols = np.stack([data.atlas, data.atlas[::-1]])
    plain = dataloader.ScanToScanDataLoader(vols, pairs_per_epoch=2, seed=3)
    augmented, again = (dataloader.ScanToScanDataLoader(vols, pairs_per_epoch=2, seed=3,
                                                        augment=synthetic.random_subject)
                        for _ in range(2))
    raw, new = plain[0], augmented[0]
    assert raw["moving"][0, ..., 0].tolist() in (vols[0].tolist(), vols[1].tolist())
    assert not np.array_equal(new["moving"], raw["moving"])
    assert new["moving"].shape == raw["moving"].shape
    np.testing.assert_array_equal(new["static"], again[0]["static"])
    # Still the same brain: a random smooth deformation and an intensity change of it.
    assert np.corrcoef(new["moving"].ravel(), raw["moving"].ravel())[0, 1] > 0.6


def test_intensity_augmentation_keeps_the_geometry_and_elastic_keeps_the_intensities():
    data = synthetic.load_default_data(2)
    image = data.atlas
    intensity, _ = synthetic.random_subject(image, np.random.default_rng(0), kinds=("intensity",))
    elastic, _ = synthetic.random_subject(image, np.random.default_rng(0), kinds=("elastic",))
    assert not np.allclose(intensity, image) and not np.allclose(elastic, image)
    # A bias field, gamma and noise leave the background dark and the brain where it was.
    assert np.corrcoef(intensity.ravel(), image.ravel())[0, 1] > 0.9
    assert np.mean(intensity[image == 0]) < 0.05
    # A deformation only resamples: no value leaves the image's range, the histogram stays.
    assert elastic.min() >= image.min() and elastic.max() <= image.max() + 1e-6
    assert abs(elastic.mean() - image.mean()) < 0.02
    unchanged, _ = synthetic.random_subject(image, np.random.default_rng(0), kinds=())
    np.testing.assert_array_equal(unchanged, image)


def test_elastic_augmentation_deforms_each_label_map_with_its_image():
    data = synthetic.load_default_data(2)
    vols, segs = np.stack([data.atlas] * 2), np.stack([data.atlas_seg] * 2)
    loader = dataloader.ScanToScanDataLoader(
        vols, pairs_per_epoch=1, seed=5, segs=segs, labels=[1, 2, 3],
        augment=functools.partial(synthetic.random_subject, kinds=("elastic",)))
    inputs = loader[0]
    moving, moving_seg = inputs["moving"][0, ..., 0], inputs["moving_seg"][0]
    assert not np.array_equal(moving, data.atlas)
    # The warped labels still pick out the warped tissues: white matter (3) is the brightest.
    labels = np.argmax(moving_seg, axis=-1) + 1
    inside = moving_seg.sum(axis=-1) > 0
    means = [moving[inside & (labels == label)].mean() for label in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    # Moving and static sides are deformed independently.
    static_seg = np.argmax(inputs["static_seg"][0], axis=-1) + 1
    assert np.mean(static_seg[inside] != labels[inside]) > 0.01


def test_augmentation_kinds_of_the_flag_and_of_runs_recorded_before_kinds():
    assert synthetic.augmentations([]) == synthetic.AUGMENTATIONS  # --augment alone
    assert synthetic.augmentations(True) == synthetic.AUGMENTATIONS
    assert synthetic.augmentations(["intensity"]) == ("intensity",)
    assert synthetic.augmentations(None) == () and synthetic.augmentations(False) == ()