"""Registering pairs with a trained model: one pass, padding and cropping, other sizes."""
import keras
import numpy as np

import models
import rebuilding
import registration
import shapes


def trained_like(shape, **options) -> keras.Model:
    """A compiled VM-1 whose weights are moved away from the near-zero initial field."""
    keras.utils.set_random_seed(0)
    model = models.build_model(shape, "vm1", "mse", lr=1e-3, **options)
    rng = np.random.default_rng(1)
    for weight in model.weights:
        weight.assign(weight.numpy() + rng.normal(0, 0.02, weight.shape))
    return model


def test_register_returns_the_models_own_outputs(labelled_pair):
    moving, static, moving_seg, _ = labelled_pair()
    model = trained_like(moving.shape)
    registered = registration.register(model, moving, static, moving_seg)
    outputs = model.predict_on_batch({"moving": moving[None, ..., None],
                                      "static": static[None, ..., None]})
    np.testing.assert_array_equal(registered["moved"], outputs["moved"][0, ..., 0])
    np.testing.assert_array_equal(registered["deformation"], outputs["deformation"][0])
    assert registered["moved_seg"].dtype == moving_seg.dtype
    assert set(np.unique(registered["moved_seg"])) <= set(np.unique(moving_seg))


def test_a_smaller_pair_is_padded_registered_and_cropped_back(labelled_pair):
    moving, static, moving_seg, _ = labelled_pair((26, 30))
    model = trained_like((32, 32))
    registered = registration.register_padded(model, moving, static, moving_seg)
    padding = shapes.padding_to_shape(moving.shape, (32, 32))  # (3, 3), (1, 1)
    whole = registration.register(model, *(shapes.pad(a, padding)
                                           for a in (moving, static, moving_seg)))
    assert registered["deformation"].shape == (26, 30, 2)
    np.testing.assert_array_equal(registered["deformation"], whole["deformation"][3:-3, 1:-1])
    np.testing.assert_array_equal(registered["moved"], whole["moved"][3:-3, 1:-1])
    np.testing.assert_array_equal(registered["moved_seg"], whole["moved_seg"][3:-3, 1:-1])


def test_a_network_rebuilt_for_its_own_shape_registers_exactly_as_the_model(labelled_pair):
    # The copied weights must land in the same layers: same outputs to the last bit.
    moving, static, _, _ = labelled_pair((16, 16, 16))
    model = trained_like(moving.shape, int_steps=5, int_downsize=2, bidir=True)
    rebuilt = rebuilding.rebuild(model, (16, 16, 16))
    assert rebuilt is not model
    for key, value in registration.register(model, moving, static).items():
        if key != "seconds":
            np.testing.assert_array_equal(registration.register(rebuilt, moving, static)[key],
                                          value)


def test_a_pair_of_another_size_gets_a_network_of_its_padded_shape(labelled_pair):
    moving, static, moving_seg, _ = labelled_pair((40, 44))
    model = trained_like((32, 32), int_steps=5, int_downsize=2)
    network = registration.network_for(model, moving.shape)
    assert models.input_shape(network) == (48, 48)
    assert network.output["velocity"].shape[1:] == (24, 24, 2)
    registered = registration.register_padded(network, moving, static, moving_seg)
    assert registered["deformation"].shape == (40, 44, 2)
    assert np.abs(registered["deformation"]).max() > 1e-3
    same = registration.network_for(model, (30, 20))  # padded to the trained shape: no rebuild
    assert all(mine is theirs for mine, theirs in zip(same.weights, model.weights, strict=True))


def test_a_diffeomorphic_models_inverse_starts_from_its_negated_velocity(labelled_pair):
    moving, static, _, _ = labelled_pair((32, 32))
    model = trained_like((32, 32), int_steps=7, int_downsize=2)
    layer = model.get_layer("velocity_field")  # a velocity of a few voxels
    layer.set_weights([w * 15 for w in layer.get_weights()])
    registered = registration.register(model, moving, static, inverse=True)
    deformation, inverse = registered["deformation"], registered["inverse"]
    grid = registration.transforms.spacing_grid((32, 32))
    outputs = models.registration_model(model).predict_on_batch(
        {"moving": moving[None, ..., None], "static": static[None, ..., None]})
    integrated = registration.utils.resize_displacement(registration.utils.integrate_velocity(
        -outputs["velocity"], 7), (32, 32))[0].numpy()
    start = registration.transforms.inverse_consistency(deformation, integrated, grid)
    solved = registration.transforms.inverse_consistency(deformation, inverse, grid)
    assert np.abs(deformation).max() > 1  # a field worth inverting
    assert start["mean_voxels"] < 0.05 and solved["mean_voxels"] < 0.02
    assert solved["mean_voxels"] <= start["mean_voxels"]
