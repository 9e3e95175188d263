"""Training losses against hand-computed values."""
import keras
import numpy as np
import pytest
import tensorflow as tf
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
    assert float(metrics.gradient_loss()(field)) == 0.0


@pytest.mark.parametrize("norm", [1, 2])
def test_gradient_loss_of_a_linear_field_matches_hand_value(norm):
    # u(x) = (0.5 * x0, -2 * x1): forward differences are 0.5 and 0 along axis 0 (channels 0, 1),
    # 0 and -2 along axis 1. Mean over voxels and channels per axis, then over the two axes.
    x0, x1 = np.meshgrid(np.arange(5.0), np.arange(6.0), indexing="ij")
    field = np.stack([0.5 * x0, -2.0 * x1], axis=-1)[None].astype(np.float32)
    per_axis = [(0.5**norm + 0.0) / 2, (0.0 + 2.0**norm) / 2]
    expected = sum(per_axis) / 2
    loss = metrics.gradient_loss(norm)(field)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_losses_return_one_value_per_sample():
    image = np.concatenate([smooth_image((16, 16), 0), smooth_image((16, 16), 1)])
    field = np.random.default_rng(0).random((2, 16, 16, 2)).astype(np.float32)
    assert metrics.LocalNCC().call(image, image[::-1]).shape == (2,)
    assert metrics.GlobalNCC().call(image, image[::-1]).shape == (2,)
    assert metrics.MSE().call(image, image[::-1]).shape == (2,)
    assert metrics.Grad().call(field).shape == (2,)


def test_the_smoothness_term_survives_keras_serialization():
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(metrics.gradient_loss(norm=1)))
    assert isinstance(restored, metrics.Grad) and restored.norm == 1


def test_losses_survive_keras_serialization():
    loss = metrics.local_normalized_cross_correlation_loss(window=7, eps=1e-3)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, metrics.LocalNCC)
    assert (restored.window, restored.eps) == (7, 1e-3)


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


def parzen_mutual_information(a, b, bins=32, width=0.5):
    """Mutual information of two intensity arrays in [0, 1] from a Gaussian Parzen-window joint
    histogram, in plain numpy, voxel by voxel: the reference of MutualInformation."""
    centres, sigma = np.linspace(0, 1, bins), width / (bins - 1)
    joint = np.zeros((bins, bins))
    for x, y in zip(a.ravel().astype(np.float64), b.ravel().astype(np.float64)):
        wx, wy = (np.exp(-(v - centres) ** 2 / (2 * sigma**2)) for v in (x, y))
        joint += np.outer(wx / wx.sum(), wy / wy.sum())
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) @ joint.sum(0, keepdims=True)
    present = joint > 0
    return float(np.sum(joint[present] * np.log(joint[present] / outer[present])))


def test_mutual_information_matches_a_numpy_parzen_window_histogram():
    rng = np.random.default_rng(0)
    a = rng.random((2, 12, 10, 1)).astype(np.float32)
    b = np.stack([(1 - a[0]) ** 2, rng.random((12, 10, 1))]).astype(np.float32)
    values = metrics.MutualInformation().call(a, b).numpy()
    expected = [-parzen_mutual_information(a[i], b[i]) for i in range(2)]
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-5)
    assert values[0] < values[1] - 0.5  # a function of the image: far more information


def test_mutual_information_is_blind_to_an_inverted_contrast_where_mse_is_not():
    image = smooth_image((24, 24), 0)
    mi, mse = metrics.MutualInformation(), metrics.mse_loss()
    np.testing.assert_allclose(float(mi(image, 1 - image)), float(mi(image, image)), rtol=1e-5)
    assert float(mse(image, 1 - image)) > 10 * float(mse(image, image)) + 0.01


def test_mutual_information_has_a_gradient_toward_the_aligned_image():
    static = smooth_image((24, 24), 0)
    moved = tf.Variable(np.roll(static, 3, axis=1))
    with tf.GradientTape() as tape:
        loss = metrics.MutualInformation()(1 - static, moved)
    gradient = tape.gradient(loss, moved)
    assert np.all(np.isfinite(gradient.numpy())) and np.abs(gradient.numpy()).max() > 0
    moved.assign_sub(0.5 * gradient / np.abs(gradient.numpy()).max())
    assert float(metrics.MutualInformation()(1 - static, moved)) < float(loss)


def test_mind_descriptors_are_blind_to_an_inverted_contrast_but_not_to_a_shift():
    image = smooth_image((24, 24), 0)
    mind = metrics.MINDSSD()
    inverted, shifted = float(mind(image, 1 - image)), float(mind(image, np.roll(image, 2, 1)))
    assert mind.descriptors(image).shape == (*image.shape[:-1], 4)  # a channel per neighbour
    assert inverted < 1e-6 < 0.01 < shifted  # MIND depends on differences, not on their sign


def test_mind_descriptors_of_a_3d_image_have_six_channels_in_zero_to_one():
    image = tf.random.uniform((1, 8, 9, 10, 1), seed=0)
    descriptors = metrics.MINDSSD(radius=2).descriptors(image).numpy()
    assert descriptors.shape == (1, 8, 9, 10, 6)
    assert descriptors.min() > 0 and np.allclose(descriptors.max(axis=-1), 1.0)
