"""Training augmentations: random deformations and intensity changes, random affine maps."""
import functools

import numpy as np

import augmentation
import dataloader
import synthetic


def test_random_deformations_are_smooth_and_do_not_fold():
    import scores

    rng = np.random.default_rng(0)
    for shape in ((80, 96), (40, 48, 40)):
        deformation = augmentation.random_deformation(shape, rng)[0]
        assert deformation.shape == (*shape, len(shape))
        assert np.abs(deformation).max() > 1.0  # voxels: large enough to matter
        assert scores.jacobian_determinant(deformation).min() > 0


def test_augmented_scan_to_scan_pairs_are_new_reproducible_images():
    data = synthetic.load_default_data(2)
    vols = np.stack([data.atlas, data.atlas[::-1]])
    plain = dataloader.ScanToScanDataLoader(vols, pairs_per_epoch=2, seed=3)
    augmented, again = (dataloader.ScanToScanDataLoader(vols, pairs_per_epoch=2, seed=3,
                                                        augment=augmentation.random_subject)
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
    intensity, _ = augmentation.random_subject(image, np.random.default_rng(0), kinds=("intensity",))
    elastic, _ = augmentation.random_subject(image, np.random.default_rng(0), kinds=("elastic",))
    assert not np.allclose(intensity, image) and not np.allclose(elastic, image)
    # A bias field, gamma and noise leave the background dark and the brain where it was.
    assert np.corrcoef(intensity.ravel(), image.ravel())[0, 1] > 0.9
    assert np.mean(intensity[image == 0]) < 0.05
    # A deformation only resamples: no value leaves the image's range, the histogram stays.
    assert elastic.min() >= image.min() and elastic.max() <= image.max() + 1e-6
    assert abs(elastic.mean() - image.mean()) < 0.02
    unchanged, _ = augmentation.random_subject(image, np.random.default_rng(0), kinds=())
    np.testing.assert_array_equal(unchanged, image)


def test_elastic_augmentation_deforms_each_label_map_with_its_image():
    data = synthetic.load_default_data(2)
    vols, segs = np.stack([data.atlas] * 2), np.stack([data.atlas_seg] * 2)
    loader = dataloader.ScanToScanDataLoader(
        vols, pairs_per_epoch=1, seed=5, segs=segs, labels=[1, 2, 3],
        augment=functools.partial(augmentation.random_subject, kinds=("elastic",)))
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
    assert augmentation.augmentations([]) == augmentation.AUGMENTATIONS  # --augment alone
    assert augmentation.augmentations(True) == augmentation.AUGMENTATIONS
    assert augmentation.augmentations(["intensity"]) == ("intensity",)
    assert augmentation.augmentations(None) == () and augmentation.augmentations(False) == ()


def test_random_affine_draws_maps_within_its_ranges():
    rng = np.random.default_rng(5)
    for _ in range(20):
        matrix = augmentation.random_affine(rng, (64, 64, 64), spacing=3.0, rotation=0,
                                          scaling=(1, 1), shear=0, translation=15)
        np.testing.assert_allclose(matrix[:, :3], np.eye(3))
        assert np.abs(matrix[:, 3]).max() <= 5.0  # 15 mm in 3 mm voxels
        matrix = augmentation.random_affine(rng, (64, 64, 64))
        assert 0.85**3 * 0.99 < np.linalg.det(matrix[:, :3]) < 1.15**3 * 1.01
