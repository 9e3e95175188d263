"""Any contrast on either side of the shipped model, and refinement that cannot fold: the bias
field divided out, which scans count as T1, the pair in one contrast, the benchmark's realistic
contrasts, and a velocity refined in place of a displacement."""
import numpy as np
from scipy import ndimage

import contrast_mapping
import models
import pose
import pretrained
import scores
import tuning
from benchmarks import contrasts
from test_pose import ellipsoid
from test_tuning import shifted_pair

SHAPE = (32, 32, 32)
SPACING = pretrained.SPACING_MM  # the working grid's, mm


def deep_bright() -> np.ndarray:
    """A T1-like brain on the working grid (3 mm voxels): an ellipsoid brighter the deeper."""
    brain = ellipsoid(SHAPE, (13.0, 12.0, 10.0)) > 0
    depth = ndimage.distance_transform_edt(brain)
    return np.where(brain, 0.3 + 0.7 * np.minimum(depth / 8.0, 1.0), 0.0).astype(np.float32)


def test_a_smooth_bias_field_is_divided_out_before_the_mapping():
    static = deep_bright()
    bias = 1.0 + 0.25 * np.linspace(-1.0, 1.0, SHAPE[0])[:, None, None]
    moving = (static * bias).astype(np.float32)
    brain = static > pose.BRAIN
    corrected = contrast_mapping.bias_corrected(moving, static, brain, SPACING)
    spread = (np.std(corrected[brain] / static[brain]), np.std(moving[brain] / static[brain]))
    assert spread[0] < 0.5 * spread[1]


def test_scans_with_white_matter_deep_and_bright_count_as_t1():
    t1 = deep_bright()
    assert contrast_mapping.t1_like(t1, SPACING)
    t2 = np.where(t1 > 0, 1.3 - t1, 0.0).astype(np.float32)
    assert not contrast_mapping.t1_like(t2, SPACING)


def test_a_t1_side_keeps_its_contrast_and_the_other_is_mapped_onto_it():
    t1 = deep_bright()
    t2 = np.where(t1 > 0, 1.3 - t1, 0.0).astype(np.float32)
    brain = t1 > pose.BRAIN
    for moving, static, kept in ((t2, t1, 1), (t1, t2, 0)):
        pair = contrast_mapping.in_common_contrast(moving, static, SPACING)
        np.testing.assert_array_equal(pair[kept], (moving, static)[kept])
        assert np.corrcoef(pair[1 - kept][brain], t1[brain])[0, 1] > 0.95


def test_two_scans_that_are_not_t1_both_come_out_in_a_t1_like_contrast():
    t1 = deep_bright()
    t2 = np.where(t1 > 0, 1.3 - t1, 0.0).astype(np.float32)
    flair = np.where(t1 > 0, 0.5 + 0.5 * np.abs(t1 - 0.55), 0.0).astype(np.float32)
    moving, static = contrast_mapping.in_common_contrast(flair, t2, SPACING)
    assert contrast_mapping.t1_like(static, SPACING) and contrast_mapping.t1_like(moving, SPACING)


def test_realistic_contrasts_are_drawn_from_their_seed_and_no_lookup_of_t1_gives_them():
    t1 = deep_bright()
    seg = np.where(t1 > 0, 1 + (np.arange(SHAPE[0]) // 8)[:, None, None], 0)
    first, again = (contrasts.realistic(t1, seg, "T2-like", np.random.default_rng(4))
                    for _ in range(2))
    np.testing.assert_array_equal(first, again)
    assert np.all(first[t1 == 0] == 0) and 0.0 <= first.min() and first.max() <= 1.0
    clean = contrasts.remapped(t1, "T2-like")
    one_level = np.isclose(t1, 1.0)  # the deep voxels: one T1 intensity
    assert np.std(first[one_level]) > 5 * np.std(clean[one_level]) + 0.02


def test_a_refined_velocity_recovers_a_known_shift():
    moving, static = shifted_pair()
    model = models.build_model(moving.shape, "vm1", "mse", lr=1e-3)
    refined = tuning.Refiner(model, steps=150, lr=0.1, int_steps=5).refine(
        moving, static, np.zeros((32, 32, 2)))
    inner = refined[6:-6, 6:-6].reshape(-1, 2)
    np.testing.assert_allclose(np.median(inner, axis=0), [1.5, -1.0], atol=0.25)


def test_the_shipped_refiners_coarse_velocity_does_not_fold_where_a_displacement_does():
    rng = np.random.default_rng(0)
    moving, static = (rng.random((32, 32), np.float32) for _ in range(2))  # nothing to match
    model = models.build_model(moving.shape, "vm1", "mse", lamda=0.0, lr=1e-3)
    start = np.zeros((32, 32, 2), np.float32)
    folded = [scores.folding_fraction(tuning.Refiner(model, steps=40, lr=0.3, int_steps=k,
                                                     int_downsize=d).refine(moving, static,
                                                                            start))
              for k, d in ((0, 1), (pretrained.REFINE_INT_STEPS, pretrained.REFINE_DOWNSIZE))]
    assert folded[0] > 0.1 and folded[1] == 0.0


def test_a_velocity_refiner_traces_once_for_pair_after_pair():
    moving, static = shifted_pair()
    other, _ = shifted_pair((-1.0, 0.5))
    model = models.build_model(moving.shape, "vm1", "ncc", lr=1e-3)
    refiner = tuning.Refiner(model, steps=2, int_steps=5, int_downsize=2)
    first = refiner.refine(other, static, np.zeros((32, 32, 2)))
    refiner.refine(moving, static, np.zeros((32, 32, 2)))
    np.testing.assert_allclose(refiner.refine(other, static, np.zeros((32, 32, 2))), first,
                               atol=1e-6)
    assert refiner.compiled.experimental_get_tracing_count() == 1
