"""HyperMorph (hyper.py): the hypernetwork's kernels, the per-sample loss, the weights drawn,
a model fixed at one weight, saving and resuming, and --lamda on the command line."""
import json
import os

import keras
import numpy as np
import pytest

import dataloader
import hyper
import layers
import main
import metrics
import models
import objective
import rebuilding
from conftest import make_labelled_pair

SHAPE = (32, 32)


@pytest.fixture(scope="module")
def trained():
    """A 32x32 hypermodel trained 40 steps on a shifted blob, each batch at both ends of the
    range (lamda 0 and 1)."""
    keras.utils.set_random_seed(0)
    model = models.build_model(SHAPE, "vm1", lr=3e-3, hyper=True)
    moving, static, _, _ = make_labelled_pair(SHAPE)
    batch = dataloader.batch(np.stack([moving] * 2), static)
    batch["lamda"] = np.array([[0.0], [1.0]], np.float32)
    for _ in range(40):
        model.train_on_batch(batch)
    return model, moving, static


def smoothness(model, moving, static, lamda: float) -> float:
    """The gradient loss (Eq. 3) of the field the model gives at ``lamda``."""
    field = keras.ops.convert_to_numpy(hyper.at_lambda(model, lamda)(
        {"moving": moving[None, ..., None], "static": static[None, ..., None]})["deformation"])
    return float(metrics.gradient_loss()(field))


def test_a_larger_lambda_gives_a_smoother_field_from_the_same_weights(trained):
    model, moving, static = trained
    grads = [smoothness(model, moving, static, lamda) for lamda in (0.0, 0.5, 1.0)]
    assert grads[0] > grads[1] > grads[2]
    assert grads[2] < 0.2 * grads[0]


def test_the_generated_kernels_differ_with_lambda():
    model = models.build_model(SHAPE, "vm1", hyper=True)
    network = models.registration_model(model)
    hypernetwork = network.get_layer("hypernetwork")
    codes = hypernetwork(np.array([[0.1], [0.9]], np.float32))
    np.testing.assert_allclose(keras.ops.sum(codes, axis=1), [1, 1], rtol=1e-5)  # softmax
    for layer in [layer for layer in network.layers if isinstance(layer, layers.HyperConv)]:
        kernels, _ = layer.kernels(codes)
        kernels = keras.ops.convert_to_numpy(kernels)
        assert kernels.shape == (2, *layer.kernel_shape)
        assert np.abs(kernels[0] - kernels[1]).max() > 1e-3 * np.abs(kernels).max(), layer.name


def test_each_sample_is_convolved_with_the_kernel_of_its_own_weight():
    layer = layers.HyperConv(3)
    image = np.random.default_rng(0).random((2, 8, 8, 2)).astype(np.float32)
    codes = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    both = keras.ops.convert_to_numpy(layer([image, codes]))
    for i in range(2):  # the batch split in two: the same outputs
        alone = keras.ops.convert_to_numpy(layer([image[i:i + 1], codes[i:i + 1]]))
        np.testing.assert_allclose(both[i:i + 1], alone, atol=1e-5)
    assert not np.allclose(both[0], keras.ops.convert_to_numpy(layer([image[:1], codes[1:]]))[0])


def test_the_loss_weighs_each_sample_by_its_own_lambda():
    model = models.build_model((16, 16), "vm1", hyper=True)
    rng = np.random.default_rng(0)
    batch = {"moving": rng.random((2, 16, 16, 1), np.float32),
             "static": rng.random((2, 16, 16, 1), np.float32),
             "lamda": np.array([[0.2], [0.9]], np.float32)}
    outputs = model(batch)
    similarity = keras.ops.convert_to_numpy(metrics.local_normalized_cross_correlation_loss()
                                            .call(batch["static"], outputs["moved"]))
    smooth = keras.ops.convert_to_numpy(metrics.gradient_loss().call(outputs["deformation"]))
    expected = np.mean([0.8, 0.1] * similarity) + np.mean([0.2, 0.9] * smooth)
    loss = model.compute_loss(batch, None, outputs)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_a_model_fixed_at_lambda_takes_the_pair_alone_with_the_terms_scaled():
    model = models.build_model((16, 16), "vm2", loss="mse", int_steps=3, bidir=True, hyper=True)
    fixed = hyper.at_lambda(model, 0.25)
    assert set(fixed.input) == {"moving", "static"}
    weights = {term.name: term.weight for term in fixed.terms}
    scale = objective.HYPER_MSE_SCALE
    assert weights == pytest.approx({"moved": 0.375 * scale, "moved_static": 0.375 * scale,
                                     "velocity": 0.25})
    pair = {"moving": np.ones((1, 16, 16, 1), np.float32), "static": np.ones((1, 16, 16, 1),
                                                                            np.float32)}
    np.testing.assert_allclose(  # the same weights as the hypermodel given lamda 0.25
        keras.ops.convert_to_numpy(fixed(pair)["deformation"]),
        keras.ops.convert_to_numpy(model({**pair, "lamda": np.array([[0.25]], np.float32)})
                                   ["deformation"]), atol=1e-6)
    assert hyper.fixed_lambda(rebuilding.rebuild(models.registration_model(fixed), (32, 16))) == 0.25


def test_a_hypermodel_at_lambda_minimises_what_an_ordinary_model_of_the_equivalent_weight_does():
    assert hyper.plain_lambda(0.5) == 1.0  # the papers' NCC weight
    for loss, plain in (("ncc", 1.0), ("mse", 0.01), ("mi", 3.0)):
        model = models.build_model((16, 16), loss=loss, hyper=True)
        lamda = hyper.default_lambda(model)
        scale = objective.HYPER_MSE_SCALE if loss == "mse" else 1.0
        assert hyper.plain_lambda(lamda, scale) == pytest.approx(plain)
        terms = {term.name: term.weight for term in hyper.at_lambda(model, lamda).terms}
        assert terms["deformation"] / terms["moved"] == pytest.approx(plain)


def test_lambdas_are_drawn_in_the_range_with_its_ends_oversampled():
    drawn = hyper.draw(np.random.default_rng(0), 20000)
    assert drawn.shape == (20000, 1) and drawn.min() == 0.0 and drawn.max() == 1.0
    assert np.mean((drawn == 0) | (drawn == 1)) == pytest.approx(hyper.ENDPOINTS, abs=0.02)
    assert np.mean(drawn < 0.5) == pytest.approx(0.5, abs=0.02)


def test_the_loader_draws_by_seed_epoch_and_batch_and_the_validation_alike_every_epoch():
    loader = dataloader.RegistrationDataLoader(np.zeros((4, 16, 16)), np.zeros((16, 16)), 2)
    training, validation = hyper.HyperLoader(loader, 7), hyper.HyperLoader(loader, 7, False)
    first = [training[i]["lamda"] for i in range(2)], validation[0]["lamda"]
    assert first[0][0].shape == (2, 1) and not np.array_equal(*first[0])
    training.on_epoch_end()
    assert loader.epoch == 1 and not np.array_equal(training[0]["lamda"], first[0][0])
    np.testing.assert_array_equal(validation[0]["lamda"], first[1])
    training.epoch = 0  # as a resumed run sets it
    np.testing.assert_array_equal(training[1]["lamda"], first[0][1])


def test_a_saved_hypermodel_loads_with_its_hypernetwork_and_terms(tmp_path):
    model = models.build_model((16, 16), "vm1", hyper=True, int_steps=2)
    path = str(tmp_path / "model.keras")
    saved(model, path)
    loaded = keras.models.load_model(path)
    assert hyper.is_hyper(loaded) and [term.scale for term in loaded.terms] == ["1-lamda", "lamda"]
    pair = {"moving": np.random.default_rng(0).random((1, 16, 16, 1), np.float32),
            "static": np.zeros((1, 16, 16, 1), np.float32), "lamda": np.array([[0.4]])}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(pair)["velocity"]),
                               keras.ops.convert_to_numpy(model(pair)["velocity"]), atol=1e-7)


def saved(model: keras.Model, path: str) -> None:
    """``model`` saved to ``path`` with its optimizer built (as training leaves it)."""
    model.optimizer.build(model.trainable_variables)
    model.save(path)


def tiny_set(folder) -> str:
    path = os.path.join(folder, "set.npz")
    vols = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    np.savez(path, vols=vols, segs=(vols > 0.5).astype(np.uint8))
    return path


def test_a_resumed_hyper_run_keeps_its_hypernetwork_and_evaluates_at_chosen_lambdas(
        tmp_path, capsys, monkeypatch):
    run, data = str(tmp_path / "run"), tiny_set(tmp_path)
    flags = ["--data", data, "--ndim", "2", "--model", "vm1", "--hyper", "--pairs",
             "scan_to_scan", "--seg_weight", "0.1", "--steps_per_epoch", "1"]
    assert main.main(flags + ["--epochs", "1", "--output", run]) == 0
    assert main.main(["--resume", run, "--epochs", "2"]) == 0
    assert json.load(open(os.path.join(run, "checkpoint.json")))["epoch"] == 2
    assert json.load(open(os.path.join(run, "metrics.json")))["lamda"] == 0.5  # scored there
    model = keras.models.load_model(os.path.join(run, "model.keras"))
    assert hyper.is_hyper(model) and "moved_seg" in {term.name for term in model.terms}

    evaluate = ["evaluate", "--model", os.path.join(run, "model.keras"), "--data", data,
                "--pairs", "scan_to_scan", "--max_pairs", "2", "--lamda"]
    assert main.main(evaluate + ["0.1", "0.9"]) == 0
    curve = json.load(open(os.path.join(run, "lamda_curve.json")))["lamda_curve"]
    assert [row["lamda"] for row in curve] == [0.1, 0.9]
    assert os.path.getsize(os.path.join(run, "lamda_curve.png")) > 0
    monkeypatch.setattr(hyper, "CANDIDATES", (0.2, 0.5))
    capsys.readouterr()
    assert main.main(evaluate + ["best"]) == 0
    out = capsys.readouterr().out
    assert "--lamda best: " in out and "validation pairs of its run (the default 0.5:" in out
    chosen = json.load(open(os.path.join(run, "eval.json")))["lamda"]
    assert chosen in (0.2, 0.5) and f"at --lamda {chosen:g}" in out


@pytest.mark.parametrize("argv, message", [
    (["--lamda", "0.3"], "--lamda 0.3: this model is not a hypermodel"),
    (["--lamda", "best"], "--lamda best: this model is not a hypermodel"),
    (["--lamda", "best", "0.3"], "--lamda best chooses one weight: give it alone"),
])
def test_lamda_with_an_ordinary_model_is_one_line_exit_2(tmp_path, capsys, argv, message):
    path = str(tmp_path / "model.keras")
    saved(models.build_model((16, 16), "vm1"), path)
    assert main.main(["evaluate", "--model", path] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_lambda_outside_the_range_and_refused_training_flags_are_one_line_exit_2(tmp_path,
                                                                                  capsys):
    path = str(tmp_path / "model.keras")
    saved(models.build_model((16, 16), "vm1", hyper=True), path)
    image = str(tmp_path / "image.npy")
    np.save(image, np.random.default_rng(0).random((16, 16)))
    assert main.main(["register", "--model", path, "--moving", image, "--static", image,
                      "--moved", str(tmp_path / "moved.npy"), "--lamda", "1.5"]) == 2
    assert capsys.readouterr().err == ("main.py: error: --lamda 1.5 is outside the range the "
                                       "hypermodel was trained on, [0, 1]\n")
    assert not os.path.exists(tmp_path / "moved.npy")
    assert main.main(["--hyper", "--lamda", "0.3", "--ndim", "2", "--output",
                      str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith("main.py: error: --hyper does not take --lamda")
