"""Instance optimisation: the network fine-tuned on a pair, the displacement refined on it."""
import json

import keras
import numpy as np
import pytest
from scipy import ndimage

import dataloader
import main
import metrics
import models
import objective
import registration
import tuning
import volumes
from test_registration import trained_like


def test_finetuning_lowers_the_pairs_loss_and_leaves_the_model_as_it_was(labelled_pair):
    keras.utils.set_random_seed(0)
    moving, static, _, _ = labelled_pair()
    model = models.build_model(moving.shape, "vm1", "mse", lr=1e-3)
    weights = [w.numpy().copy() for w in model.weights]
    inputs = dataloader.batch(moving[None], static[None])
    tuned = tuning.FineTuner(model, steps=15, lr=1e-3).tune(moving, static)
    assert tuned.evaluate(inputs, verbose=0)[0] < 0.8 * model.evaluate(inputs, verbose=0)[0]
    for weight, before in zip(model.weights, weights):
        np.testing.assert_array_equal(weight.numpy(), before)


def test_each_pair_is_tuned_from_the_trained_weights_and_a_fresh_adam(labelled_pair):
    moving, static, _, _ = labelled_pair()
    model = trained_like(moving.shape)
    tuner = tuning.FineTuner(model, steps=3)
    tuner.tune(static, moving)  # another pair first: its weights and moments must not carry over
    after_other = [w.copy() for w in tuner.tune(moving, static).get_weights()]
    alone = tuning.FineTuner(model, steps=3).tune(moving, static).get_weights()
    for a, b in zip(after_other, alone):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_tuning_in_parts_continues_as_tuning_at_once(labelled_pair):
    moving, static, _, _ = labelled_pair()
    model = trained_like(moving.shape)
    whole = [w.copy() for w in tuning.FineTuner(model, steps=4).tune(moving, static).get_weights()]
    tuner = tuning.FineTuner(model, steps=4)
    tuner.start(moving, static)
    first = [w.copy() for w in tuner.train(1).get_weights()]
    parts = tuner.train(3).get_weights()
    for a, b, c in zip(whole, parts, first):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(not np.allclose(a, c) for a, c in zip(whole, first))


def shifted_pair(shift=(1.5, -1.0), shape=(32, 32)):
    """A smooth 2D image and the same image shifted by ``shift`` voxels (scipy), in [0, 1]."""
    rng = np.random.default_rng(0)
    static = ndimage.gaussian_filter(rng.random(shape), 3)
    static = (static - static.min()) / np.ptp(static)
    return ndimage.shift(static, shift, order=3, mode="nearest").astype(np.float32), static


def test_refining_from_zero_recovers_a_known_shift_checked_with_scipy_sampling():
    moving, static = shifted_pair()
    model = models.build_model(moving.shape, "vm1", "mse", lr=1e-3)
    refined = tuning.Refiner(model, steps=150, lr=0.1).refine(moving, static,
                                                              np.zeros((32, 32, 2)))
    # moved(x) = moving(x + u(x)) = static(x + u - shift): u is the shift, inside the border.
    inner = refined[6:-6, 6:-6].reshape(-1, 2)
    np.testing.assert_allclose(np.median(inner, axis=0), [1.5, -1.0], atol=0.25)
    grid = np.stack(np.meshgrid(np.arange(32), np.arange(32), indexing="ij"))
    moved = ndimage.map_coordinates(moving, grid + np.moveaxis(refined, -1, 0), order=1,
                                    mode="nearest")
    before, after = (np.mean((image - static)[6:-6, 6:-6] ** 2) for image in (moving, moved))
    assert after < 0.1 * before


def test_refining_pair_after_pair_starts_anew_and_traces_once():
    moving, static = shifted_pair()
    other, _ = shifted_pair((-1.0, 0.5))
    model = models.build_model(moving.shape, "vm1", "ncc", lr=1e-3)
    start = np.full((32, 32, 2), 0.3, np.float32)
    refiner = tuning.Refiner(model, steps=5)
    refiner.refine(other, static, np.zeros_like(start))
    after_other = refiner.refine(moving, static, start)
    alone = tuning.Refiner(model, steps=5).refine(moving, static, start)
    np.testing.assert_allclose(after_other, alone, atol=1e-6)
    assert refiner.compiled.experimental_get_tracing_count() == 1
    assert not np.allclose(alone, start)  # it moved
    np.testing.assert_array_equal(tuning.Refiner(model, steps=0).refine(moving, static, start),
                                  start)


def test_the_refined_terms_are_the_models_similarity_and_smoothness_weight():
    mse = models.build_model((16, 16), "vm1", "mse", lamda=0.02, lr=1e-3)
    refiner = tuning.Refiner(mse, steps=1)
    assert type(refiner.similarity).__name__ == "MSE" and refiner.lamda == pytest.approx(0.02)
    diffeomorphic = models.build_model((16, 16), "vm2", "ncc", lr=1e-3, int_steps=5)
    refiner = tuning.Refiner(diffeomorphic, steps=1)
    assert type(refiner.similarity).__name__ == "LocalNCC" and refiner.lamda == 1.0
    with pytest.raises(tuning.volumes.UsageError, match="affine stage only"):
        tuning.Refiner(models.build_model((16, 16), transform="affine", lr=1e-3), steps=1)


def test_refined_pairs_are_rescored_with_their_new_displacement(labelled_pair):
    moving, static, moving_seg, static_seg = labelled_pair((32, 32))
    model = trained_like((32, 32))
    plain = registration.register_padded(model, moving, static, moving_seg, inverse=True)
    refined = registration.refine_registered(tuning.Refiner(model, steps=10), plain, moving,
                                             static, moving_seg)
    assert refined["refine_seconds"] > 0
    assert not np.allclose(refined["deformation"], plain["deformation"])
    np.testing.assert_allclose(refined["moved"], registration.warped(
        moving, refined["deformation"]), atol=1e-6)
    assert refined["moved_seg"].dtype == moving_seg.dtype
    error = registration.transforms.inverse_consistency(
        refined["deformation"], refined["inverse"], registration.transforms.spacing_grid((32, 32)))
    assert error["mean_voxels"] < 0.02  # the inverse follows the refined field


def test_register_refines_from_the_command_line_and_refuses_an_uncompiled_model(tmp_path, capsys):
    moving, static = shifted_pair()
    model = models.build_model((32, 32), "vm1", "mse", lr=1e-3)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "moving.npy", moving)
    np.save(tmp_path / "static.npy", static)
    code = main.main(["register", "--model", str(tmp_path / "m.keras"), "--moving",
                      str(tmp_path / "moving.npy"), "--static", str(tmp_path / "static.npy"),
                      "--moved", str(tmp_path / "moved.npy"), "--refine_steps", "3"])
    assert code == 0 and "refined in 3 steps" in capsys.readouterr().out
    uncompiled = models.build_model((32, 32), "vm1", "mse", lr=1e-3)
    keras.Model(uncompiled.inputs, uncompiled.outputs).save(tmp_path / "plain.keras")
    code = main.main(["register", "--model", str(tmp_path / "plain.keras"), "--moving",
                      str(tmp_path / "moving.npy"), "--static", str(tmp_path / "static.npy"),
                      "--moved", str(tmp_path / "moved2.npy"), "--refine_steps", "3"])
    error = capsys.readouterr().err
    assert code == 2 and "training loss" in error and len(error.strip().splitlines()) == 1


def test_evaluate_with_refinement_matches_the_pairs_better(tmp_path):
    moving, static = shifted_pair()
    model = models.build_model((32, 32), "vm1", "mse", lr=1e-3)  # near-zero initial field
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "test.npz", vols=np.stack([moving, static]))
    for name, flags in (("plain", []), ("refined", ["--refine_steps", "40"])):
        assert main.main(["evaluate", "--model", str(tmp_path / "m.keras"), "--data",
                          str(tmp_path / "test.npz"), "--output", str(tmp_path / name),
                          *flags]) == 0
    plain, refined = (json.loads((tmp_path / name / "eval.json").read_text())["per_pair"]
                      for name in ("plain", "refined"))
    for before, after in zip(plain, refined):
        assert before["refine_seconds"] == 0 and after["refine_seconds"] > 0
        assert after["ncc_after"] > before["ncc_after"] + 0.05


def test_the_watch_stops_at_a_loss_not_finite_or_far_above_the_first_and_keeps_the_best():
    watch = tuning.Watch()
    assert all(watch.step(step, loss) for step, loss in enumerate([-0.5, -0.6, -0.55]))
    assert watch.best_step == 1 and watch.stopped is None
    assert not watch.step(3, 0.01)  # rose by more than |first|: from -0.5 to above 0
    assert "stopped at step 4" in watch.stopped and "far above" in watch.stopped
    assert "kept step 1's weights (loss -0.6)" in watch.fell_back("weights", "--finetune_lr")
    diverged = tuning.Watch()
    assert diverged.step(0, 0.2) and not diverged.step(1, float("nan"))
    assert "kept the network's own field" in diverged.fell_back("field", "--refine_lr")


def test_the_share_outside_the_grid_counts_voxels_sent_out_and_a_field_not_finite():
    field = np.zeros((4, 10, 2))
    field[:, :3, 1] = -5.0  # 3 of 10 columns sent left of the grid
    assert tuning.outside_share(field) == pytest.approx(0.3)
    assert tuning.outside_share(field[None]) == pytest.approx(0.3)
    field[0, 0, 0] = np.nan
    assert tuning.outside_share(field) == 1.0


def test_finetuning_at_a_rate_that_diverges_falls_back_and_says_so(labelled_pair):
    moving, static, _, _ = labelled_pair()
    model = trained_like(moving.shape)
    tuner = tuning.FineTuner(model, steps=20, lr=10.0)
    tuned = tuner.tune(moving, static)
    assert tuner.note.startswith("fine-tuning ") and "--finetune_lr (now 10)" in tuner.note
    field = registration.register_padded(tuned, moving, static)["deformation"]
    assert np.all(np.isfinite(field)) and tuning.outside_share(field) <= tuning.MAX_OUTSIDE
    tuner = tuning.FineTuner(model, steps=3, lr=1e-4)  # a sound rate: no note
    tuner.tune(moving, static)
    assert tuner.note is None


def test_refining_at_a_rate_that_diverges_falls_back_and_says_so():
    moving, static = shifted_pair()
    model = models.build_model(moving.shape, "vm1", "mse", lr=1e-3)
    refiner = tuning.Refiner(model, steps=30, lr=1e4)
    start = np.zeros((32, 32, 2), np.float32)
    refined = refiner.refine(moving, static, start)
    assert refiner.note.startswith("refinement ") and "--refine_lr (now 10000)" in refiner.note
    assert np.all(np.isfinite(refined)) and tuning.outside_share(refined) <= tuning.MAX_OUTSIDE
    refiner = tuning.Refiner(model, steps=5)
    refiner.refine(moving, static, start)
    assert refiner.note is None


def test_register_that_falls_back_writes_a_sound_warp_with_one_warning(tmp_path, capsys):
    import nibabel as nib

    trained_like((16, 16, 16)).save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    for name in ("moving", "static"):
        image = ndimage.gaussian_filter(rng.random((16, 16, 16)), 2) * 1000
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.diag([2.0, 2, 2, 1])),
                 tmp_path / f"{name}.nii.gz")
    code = main.main(["register", "--model", str(tmp_path / "m.keras"),
                      "--moving", str(tmp_path / "moving.nii.gz"),
                      "--static", str(tmp_path / "static.nii.gz"),
                      "--moved", str(tmp_path / "moved.nii.gz"),
                      "--warp", str(tmp_path / "w.nii.gz"),
                      "--inverse_warp", str(tmp_path / "wi.nii.gz"),
                      "--finetune_steps", "40", "--finetune_lr", "10"])
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("main.py:")]
    assert code == 0 and "Traceback" not in captured.err
    assert len(warnings) == 1 and warnings[0].startswith("main.py: warning: fine-tuning")
    assert "fine-tuning stopped early" in captured.out
    warp = np.asanyarray(nib.load(tmp_path / "w.nii.gz").dataobj)
    assert np.abs(warp).max() <= 16 * 2.0  # within the image's extent, in mm
    assert np.asanyarray(nib.load(tmp_path / "moved.nii.gz").dataobj).max() > 0


def test_evaluate_reports_each_pair_whose_finetuning_fell_back(tmp_path, capsys):
    moving, static = shifted_pair()
    trained_like((32, 32)).save(tmp_path / "m.keras")
    np.savez(tmp_path / "test.npz", vols=np.stack([moving, static]))
    assert main.main(["evaluate", "--model", str(tmp_path / "m.keras"), "--data",
                      str(tmp_path / "test.npz"), "--output", str(tmp_path / "e"),
                      "--finetune_steps", "10", "--finetune_lr", "10"]) == 0
    pairs = json.loads((tmp_path / "e" / "eval.json").read_text())["per_pair"]
    assert len(pairs) == 2
    assert all(pair["finetune_fallback"].startswith("fine-tuning ") for pair in pairs)
    assert all(pair["refine_fallback"] is None for pair in pairs)
    assert "main.py: warning: 2 of 2 pairs fell back in fine-tuning" in capsys.readouterr().err


def test_instance_optimisation_may_use_another_similarity_with_the_models_weights():
    model = models.build_model((16, 16), "vm1", "ncc", lamda=0.3, bidir=True)
    terms = {term.name: term for term in tuning.image_terms(model, "mi")}
    for name in ("moved", "moved_static"):
        assert isinstance(terms[name].loss, metrics.MutualInformation)
    assert isinstance(terms["deformation"].loss, metrics.Grad)
    assert [term.weight for term in terms.values()] == [term.weight for term in model.terms]
    refiner = tuning.Refiner(model, steps=1, similarity="mi")
    assert isinstance(refiner.similarity, metrics.MutualInformation)
    assert refiner.lamda == pytest.approx(0.3 / 0.5)
    tuner = tuning.FineTuner(model, steps=1, similarity="mse")
    assert {type(term.loss).__name__ for term in tuner.network.terms} == {"MSE", "Grad"}


def test_instance_optimisation_may_take_its_own_smoothness_weight():
    model = models.build_model((16, 16), "vm1", "ncc", lamda=0.3, bidir=True)
    terms = {term.name: term for term in tuning.image_terms(model, "mind", lamda=0.05)}
    assert isinstance(terms["moved"].loss, metrics.MINDSSD) and terms["moved"].weight == 0.5
    assert terms["deformation"].weight == pytest.approx(0.05 * 0.5)
    assert tuning.Refiner(model, 1, similarity="mind", lamda=0.05).lamda == pytest.approx(0.05)


def test_a_model_trained_from_label_maps_is_tuned_by_the_similarity_given():
    model = models.build_model((16, 16), "vm1", num_labels=3, synth=True)
    terms = {term.name: term for term in tuning.image_terms(model, "mi")}
    assert isinstance(terms["moved"].loss, metrics.MutualInformation)
    assert terms["moved"].weight == 1.0 and terms["moved"].args == ("static", "moved")
    smooth = [term for name, term in terms.items() if name != "moved"]
    assert len(smooth) == 1 and smooth[0].weight == objective.DEFAULT_LAMBDA["mi"]
    with pytest.raises(volumes.UsageError, match="give --tune_loss"):
        tuning.image_terms(model)
