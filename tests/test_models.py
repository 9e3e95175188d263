"""The networks of CVPR 2018 Fig. 3: shapes, sizes, saving, and that they learn."""
import keras
import numpy as np
import pytest

import dataloader
import metrics
import models
import rebuilding
import objective
import registration
import utils


def conv_params(ndim: int, inputs: int, outputs: int) -> int:
    """Weights and biases of one 3x3(x3) convolution."""
    return 3**ndim * inputs * outputs + outputs


def expected_params(ndim: int, decoder: tuple[int, ...]) -> int:
    """Parameter count derived by hand from the paper's architecture.

    Encoder 2 -> 16 -> 32 -> 32 -> 32 (stride 2). Decoder: three convolutions each followed by
    upsampling and a skip (32, 32 and 16 channels from the encoder), two at half resolution,
    upsampling and a skip of the 2-channel input pair, the rest at full resolution, then the
    ndim-channel output convolution.
    """
    layers = [(2, 16), (16, 32), (32, 32), (32, 32)]  # encoder
    layers += [(32, decoder[0]), (decoder[0] + 32, decoder[1]), (decoder[1] + 32, decoder[2])]
    layers += [(decoder[2] + 16, decoder[3]), (decoder[3], decoder[4])]  # half resolution
    widths = [decoder[4] + 2] + list(decoder[5:])  # after the skip of the input pair
    layers += list(zip(widths[:-1], widths[1:]))
    layers += [(decoder[-1], ndim)]  # the displacement
    return sum(conv_params(ndim, i, o) for i, o in layers)


def test_hand_count_of_vm1_2d():
    # 23440 in the encoder; 9248 + 18464 + 18464 + 13856 + 2312 + 728 + 146 in the decoder.
    assert expected_params(2, models.DECODER_VM1) == 86658


@pytest.mark.parametrize("shape", [(32, 48), (16, 32, 16)])
@pytest.mark.parametrize("build, decoder", [(models.VoxelMorph1, models.DECODER_VM1),
                                            (models.VoxelMorph2, models.DECODER_VM2)])
def test_output_shapes_and_parameter_counts(shape, build, decoder):
    model = build(shape)
    assert isinstance(model, keras.Model)
    moving = np.random.default_rng(0).random((2, *shape, 1)).astype(np.float32)
    outputs = model.predict({"moving": moving, "static": moving}, verbose=0)
    assert outputs["moved"].shape == (2, *shape, 1)
    assert outputs["deformation"].shape == (2, *shape, len(shape))
    assert model.count_params() == expected_params(len(shape), decoder)


def test_inputs_and_outputs_are_named_as_in_the_original():
    model = models.VoxelMorph1((16, 16))
    assert sorted(i.name for i in model.inputs) == ["moving", "static"]
    assert sorted(model.output_names) == ["deformation", "moved"]


def test_last_convolution_starts_near_zero_and_leaky_relu_is_0_2():
    model = models.VoxelMorph2((32, 32, 32))
    kernel = model.get_layer("deformation").kernel.numpy()
    assert kernel.std() < 1e-4
    slopes = {layer.negative_slope for layer in model.layers
              if isinstance(layer, keras.layers.LeakyReLU)}
    assert slopes == {0.2}


def expected_params_official(ndim: int, decoder: tuple[int, ...]) -> int:
    """Parameter count by hand of the official code's layout: encoder 2 -> 16 -> 32 -> 32 -> 32
    (stride 1, each output a skip); one convolution per level before each upsampling and skip
    (32, 32, 32, then 16 channels); the rest at full resolution; the output convolution."""
    layers = [(2, 16), (16, 32), (32, 32), (32, 32)]
    inputs = [32] + [width + skip for width, skip in zip(decoder[:3], (32, 32, 32))]
    layers += list(zip(inputs, decoder[:4]))
    widths = [decoder[3] + 16] + list(decoder[4:])
    layers += list(zip(widths[:-1], widths[1:])) + [(decoder[-1], ndim)]
    return sum(conv_params(ndim, i, o) for i, o in layers)


@pytest.mark.parametrize("shape", [(32, 48), (16, 32, 16)])
def test_the_official_layout_pools_and_counts_its_parameters(shape):
    model = models.VoxelMorph2(shape, unet="official")
    convs = [layer for layer in model.layers if type(layer).__name__.startswith("Conv")]
    pools = [layer for layer in model.layers if type(layer).__name__.startswith("MaxPooling")]
    assert len(pools) == len(models.ENCODER)
    assert all(set(layer.strides) == {1} for layer in convs)
    assert model.count_params() == expected_params_official(len(shape), models.DECODER_VM2)
    outputs = model.predict({"moving": np.zeros((1, *shape, 1)),
                             "static": np.zeros((1, *shape, 1))}, verbose=0)
    assert outputs["deformation"].shape == (1, *shape, len(shape))
    rebuilt = rebuilding.rebuild(model, tuple(2 * size for size in shape))
    assert len([layer for layer in rebuilt.layers
                if type(layer).__name__.startswith("MaxPooling")]) == len(pools)
    assert rebuilt.count_params() == model.count_params()


def test_encoder_convolutions_have_stride_two():
    model = models.VoxelMorph1((32, 32))
    strided = [layer for layer in model.layers
               if isinstance(layer, keras.layers.Conv2D) and layer.strides == (2, 2)]
    assert [layer.filters for layer in strided] == list(models.ENCODER)


@pytest.mark.parametrize("shape", [(20, 32), (16,), (16, 16, 16, 16)])
def test_bad_input_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="input_shape"):
        models.VoxelMorph1(shape)


def test_saved_model_loads_and_predicts_the_same(tmp_path):
    model = models.build_model((16, 16, 16), "vm2", ncc_window=7)
    rng = np.random.default_rng(1)
    inputs = {"moving": rng.random((1, 16, 16, 16, 1)).astype(np.float32),
              "static": rng.random((1, 16, 16, 16, 1)).astype(np.float32)}
    # Move the weights away from their initial values so that the round trip means something.
    for weight in model.weights:
        weight.assign(weight.numpy() + rng.normal(0, 0.01, weight.shape))
    model.optimizer.build(model.trainable_variables)  # saved with the model, as after fit
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    before, after = model.predict(inputs, verbose=0), loaded.predict(inputs, verbose=0)
    np.testing.assert_allclose(after["deformation"], before["deformation"], atol=1e-6)
    np.testing.assert_allclose(after["moved"], before["moved"], atol=1e-6)
    assert isinstance(loaded, objective.TrainingModel)
    assert [(term.name, term.weight, term.args) for term in loaded.terms] == [
        ("deformation", 1.0, ("deformation",)), ("moved", 1.0, ("static", "moved"))]
    assert loaded.terms[1].loss.window == 7


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_a_few_training_steps_on_a_shifted_pair_lower_the_loss(shape):
    keras.utils.set_random_seed(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = np.exp(-sum(g**2 for g in grid) / 0.2).astype(np.float32)
    moving = blob[None, ..., None]
    static = np.roll(moving, 2, axis=1)  # shifted by two voxels along axis 0
    model = models.build_model(shape, "vm1", "mse", lamda=0.01)
    inputs = {"moving": moving, "static": static}
    history = model.fit(inputs, epochs=30, verbose=0).history["moved_loss"]
    assert history[-1] < 0.5 * history[0]


def test_importing_models_is_enough_to_load_a_trained_model(tmp_path):
    import subprocess
    import sys

    models.build_model((16, 16), "vm1").save(tmp_path / "model.keras")
    code = ("import keras, models; m = keras.models.load_model(r'%s'); "
            "print(type(m.terms[1].loss).__name__)" % (tmp_path / "model.keras"))
    root = __file__.rsplit("/tests/", 1)[0]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.strip() == "LocalNCC"


OPTIONS = [{"int_steps": 5}, {"int_steps": 5, "int_downsize": 2}, {"bidir": True},
           {"int_steps": 5, "bidir": True}, {"seg_weight": 0.5, "num_labels": 2},
           {"unet": "official"}]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.items())))
def test_each_option_trains_and_lowers_the_loss(options, labelled_pair):
    keras.utils.set_random_seed(0)
    moving, static, moving_seg, static_seg = labelled_pair()
    model = models.build_model(moving.shape, "vm1", "mse", lr=1e-3, **options)
    labels = [1, 2] if options.get("seg_weight") else None
    inputs = dataloader.batch(moving[None], static[None], moving_seg[None], static_seg[None],
                              labels)
    before = model.evaluate(inputs, verbose=0)
    model.fit(inputs, epochs=15, verbose=0)
    assert model.evaluate(inputs, verbose=0)[0] < 0.8 * before[0]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.items())))
def test_a_model_saved_with_each_option_loads_and_registers_the_same(tmp_path, options,
                                                                     labelled_pair):
    moving, static, _, _ = labelled_pair((16, 16, 16))
    model = models.build_model(moving.shape, "vm1", **options)
    rng = np.random.default_rng(1)
    for weight in model.weights:  # away from the tiny initial field, so the check means something
        weight.assign(weight.numpy() + rng.normal(0, 0.02, weight.shape))
    model.optimizer.build(model.trainable_variables)  # saved with the model, as after fit
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    before = registration.register(model, moving, static)
    after = registration.register(loaded, moving, static)
    assert np.abs(before["deformation"]).max() > 1e-3
    np.testing.assert_allclose(after["deformation"], before["deformation"], atol=1e-5)
    assert loaded.get_config()["terms"] == model.get_config()["terms"]


def test_a_cascade_runs_its_network_again_on_its_moved_image_and_composes_the_maps():
    cascade = models.build_model((32, 32), "vm1", transform="cascade", int_steps=3)
    rng = np.random.default_rng(2)
    cascade.set_weights([w + rng.normal(0, 0.03, w.shape) for w in cascade.get_weights()])
    network, = models.stages(cascade)
    moving, static = (rng.random((1, 32, 32, 1), np.float32) for _ in range(2))
    outputs = cascade.predict_on_batch({"moving": moving, "static": static})
    first = network.predict_on_batch({"moving": moving, "static": static})["deformation"]
    again = network.predict_on_batch({"moving": utils.warp(moving, first), "static": static})
    second = again["deformation"]
    assert np.abs(second).max() > 0.05  # the second pass moves the image further
    np.testing.assert_allclose(outputs["deformation"], second + utils.warp(first, second),
                               atol=1e-4)
    np.testing.assert_allclose(outputs["moved"], utils.warp(moving, outputs["deformation"]),
                               atol=1e-5)
    assert models.transform(cascade) == "cascade"
    models.initialise(cascade, models.build_model((32, 32), "vm1", int_steps=3))  # --init_from
    assert np.abs(network.predict_on_batch({"moving": moving, "static": static})[
        "deformation"]).max() < 0.01  # the fresh network's near-zero field, now both passes'
    assert models.transform(rebuilding.rebuild(models.registration_model(cascade),
                                               (48, 32))) == "cascade"


def test_a_cascade_with_label_maps_trains_saves_and_loads(tmp_path, labelled_pair):
    keras.utils.set_random_seed(0)
    moving, static, moving_seg, static_seg = labelled_pair((32, 32))
    model = models.build_model((32, 32), "vm1", "mse", lr=3e-3, transform="cascade",
                               seg_weight=0.5, num_labels=2)
    assert {term.name for term in model.terms} == {"moved", "fields", "moved_seg"}
    inputs = dataloader.batch(moving[None], static[None], moving_seg[None], static_seg[None],
                              [1, 2])
    before = model.test_on_batch(inputs)[0]
    for _ in range(10):
        model.train_on_batch(inputs)
    after = model.test_on_batch(inputs)[0]
    assert after < 0.8 * before
    model.save(tmp_path / "cascade.keras")
    loaded = keras.models.load_model(tmp_path / "cascade.keras")
    assert loaded.test_on_batch(inputs)[0] == pytest.approx(after, rel=1e-5)


def test_integrated_outputs_are_the_velocity_and_its_diffeomorphic_displacement():
    model = models.VoxelMorph1((32, 32), int_steps=7, int_downsize=2)
    assert model.output["velocity"].shape == (None, 16, 16, 2)
    assert model.output["deformation"].shape == (None, 32, 32, 2)
    terms = models.build_model((32, 32), int_steps=7, int_downsize=2).terms
    assert [(term.name, term.args) for term in terms] == [("moved", ("static", "moved")),
                                                         ("velocity", ("velocity",))]


def test_an_eager_call_integrates_the_velocity_as_the_compiled_model():
    keras.utils.set_random_seed(0)
    model = models.VoxelMorph1((16, 16), int_steps=7)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        weight.assign(weight.numpy() + rng.normal(0, 0.05, weight.shape))
    pair = {key: rng.random((1, 16, 16, 1)).astype(np.float32) for key in ("moving", "static")}
    compiled = model.predict_on_batch(pair)["deformation"]
    assert np.abs(compiled).max() > 0.5
    np.testing.assert_allclose(model(pair)["deformation"], compiled, atol=1e-5)


def test_coarse_integration_resizes_the_velocity_down_and_its_displacement_back_up():
    keras.utils.set_random_seed(0)  # the initial weights too: the field's size depends on them
    model = models.VoxelMorph1((32, 32), int_steps=7, int_downsize=2)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # a field of a few voxels, so the check means something
        weight.assign(weight.numpy() + rng.normal(0, 0.05, weight.shape))
    pair = {key: rng.random((1, 32, 32, 1)).astype(np.float32) for key in ("moving", "static")}
    outputs = model.predict_on_batch(pair)
    expected = utils.resize_displacement(utils.integrate_velocity(outputs["velocity"], 7), (32, 32))
    assert np.abs(outputs["deformation"]).max() > 0.5
    np.testing.assert_allclose(outputs["deformation"], expected, atol=1e-5)


def test_the_registration_model_of_a_segmentation_model_needs_no_label_map():
    model = models.build_model((16, 16), "vm1", seg_weight=1.0, num_labels=3)
    assert sorted(model.input) == ["moving", "moving_seg", "static", "static_seg"]
    network = models.registration_model(model)
    assert sorted(network.input) == ["moving", "static"] and "moved_seg" not in network.output
    assert not isinstance(network, objective.TrainingModel)
    assert [w.path for w in network.weights] == [w.path for w in model.weights]  # shared


def label_map_pair(shape=(32, 32), labels=3):
    """One-hot label maps of a square and of the same square shifted by 3 voxels, and images
    whose contrasts differ (the square dark on the moving side, bright on the static side)."""
    seg = np.zeros(shape, np.int32)
    seg[8:20, 8:20] = 1
    seg[12:16, 12:16] = 2
    moving_seg, static_seg = seg, np.roll(seg, 3, axis=0)
    one_hot = [dataloader.one_hot(s, range(labels))[None] for s in (moving_seg, static_seg)]
    images = [(moving_seg == 0).astype(np.float32), static_seg.astype(np.float32) / 2]
    return {"moving": images[0][None, ..., None], "static": images[1][None, ..., None],
            "moving_seg": one_hot[0], "static_seg": one_hot[1]}


def test_a_loss_on_the_two_label_maps_alone_is_one_term():
    keras.utils.set_random_seed(0)
    network = models.VoxelMorph1((32, 32))
    inputs, outputs = objective.with_label_maps(network, 3)
    model = objective.TrainingModel(inputs, outputs, terms=[
        objective.Term("moved_seg", metrics.MSE(), 1.0, ("static_seg", "moved_seg")),
        objective.Term("deformation", metrics.Grad(), 0.01, ("deformation",))])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    batch = label_map_pair()
    history = model.fit(batch, epochs=20, verbose=0).history
    assert set(history) == {"loss", "moved_seg_loss", "deformation_loss"}  # no image term
    assert history["moved_seg_loss"][-1] < 0.7 * history["moved_seg_loss"][0]


def test_a_loss_whose_static_side_is_an_input_of_another_contrast_is_one_term():
    network = models.VoxelMorph1((32, 32))
    other = keras.Input((32, 32, 1), name="static_other")
    model = objective.TrainingModel({**network.input, "static_other": other}, network.output,
                                 terms=[objective.Term("moved", metrics.GlobalNCC(), 1.0,
                                                    ("static_other", "moved"))])
    model.compile(optimizer="adam")
    pair = label_map_pair()
    batch = {"moving": pair["moving"], "static": pair["static"],
             "static_other": 1.0 - pair["static"]}  # the static image in an inverted contrast
    logs = model.test_on_batch(batch, return_dict=True)
    expected = metrics.GlobalNCC()(batch["static_other"], model.predict_on_batch(batch)["moved"])
    np.testing.assert_allclose(logs["moved_loss"], float(expected), rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], logs["moved_loss"], rtol=1e-6)


def test_targets_are_refused_since_the_model_computes_its_loss_from_its_inputs():
    model = models.build_model((16, 16), "vm1")
    pair = {key: np.zeros((1, 16, 16, 1), np.float32) for key in ("moving", "static")}
    with pytest.raises(ValueError, match="without targets"):
        model.train_on_batch(pair, {"moved": pair["static"]})


def test_a_term_on_a_tensor_the_model_does_not_have_is_refused():
    network = models.VoxelMorph1((16, 16))
    with pytest.raises(ValueError, match="static_seg"):
        objective.TrainingModel(network.input, network.output, terms=[
            objective.Term("moved_seg", metrics.SoftDice(), 1.0, ("static_seg", "moved"))])


@pytest.fixture
def mixed_float16():
    """Keras' mixed_float16 policy while a test builds models, float32 again afterwards."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_keeps_displacement_and_sampler_in_float32(tmp_path, mixed_float16):
    # Built, not run: float16 kernels on a CPU need AVX-512 FP16 in oneDNN, and main.py trains
    # in float32 on a CPU anyway. The graph's dtypes and the saved policy are what is checked.
    model = models.build_model((16, 16), "vm1", "ncc")
    assert model.get_layer("pair").compute_dtype == "float16"  # the U-Net runs in float16
    assert model.get_layer("deformation").compute_dtype == "float32"
    assert model.get_layer("moved").compute_dtype == "float32"
    assert model.output["deformation"].dtype == model.output["moved"].dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # Keras wraps Adam
    model.optimizer.build(model.trainable_variables)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("pair").compute_dtype == "float16"
    assert loaded.get_layer("deformation").compute_dtype == "float32"
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    for saved, kept in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(saved, kept)
