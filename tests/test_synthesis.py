"""Pairs synthesised from label maps (--synth): reproducible, of two contrasts, label-map loss."""
import json
import types

import numpy as np
import pytest
import tensorflow as tf

import datasets
import main
import models
import synthesis
import training
from scores import dice


def test_a_synthesised_image_is_uniform_within_each_label_and_varies_between_them():
    seg = np.zeros((1, 32, 32), np.int32)
    seg[0, :, 16:] = 1
    seg[0, 8:24, 8:24] = 2
    image = synthesis.synthesize(tf.constant(seg), synthesis.seeds(3), 3).numpy()[0, ..., 0]
    assert image.min() == 0.0 and image.max() == 1.0
    inner = [image[2:-2, 2:6], image[2:-2, 26:30], image[12:20, 12:20]]  # away from the edges
    means = [region.mean() for region in inner]
    assert max(region.std() for region in inner) < np.ptp(means)


def test_synthesised_pairs_are_reproducible_by_seed_and_new_at_every_step():
    loader = synthesis.SynthLoader(None, (32, 32), range(6), range(1, 6), 2, 3, seed=5)
    again = synthesis.SynthLoader(None, (32, 32), range(6), range(1, 6), 2, 3, seed=5)
    batch = loader[1]
    assert sorted(batch) == ["moving", "moving_seg", "static", "static_seg"]
    assert batch["moving_seg"].shape == (2, 32, 32, 5)
    for key in batch:
        np.testing.assert_array_equal(batch[key], again[1][key])
    assert not np.array_equal(batch["moving"], loader[2]["moving"])


def test_the_two_sides_of_a_pair_share_their_anatomy_but_not_their_contrast():
    batch = synthesis.SynthLoader(None, (48, 48), range(6), range(1, 6), 1, 1, seed=0)[0]
    moving_seg, static_seg = (np.argmax(batch[key][0], -1) + 1 for key in ("moving_seg",
                                                                              "static_seg"))
    assert np.mean(dice(moving_seg, static_seg, range(1, 6))) > 0.5  # one map, two warps
    moving, static = batch["moving"][0, ..., 0], batch["static"][0, ..., 0]
    means = [[image[seg == label].mean() for label in range(1, 6)]
             for image, seg in ((moving, moving_seg), (static, static_seg))]
    assert np.argsort(means[0]).tolist() != np.argsort(means[1]).tolist()  # other contrasts


def test_label_maps_of_the_data_give_pairs_of_two_distinct_subjects():
    maps = np.stack([np.full((16, 16), label, np.int32) for label in (1, 2, 3)])
    loader = synthesis.SynthLoader(maps, (16, 16), [0, 1, 2, 3], [1, 2, 3], 1, 4, seed=0)
    for index in range(4):
        batch = loader[index]
        sides = [int(np.argmax(batch[key][0, 8, 8])) for key in ("moving_seg", "static_seg")]
        assert sides[0] != sides[1]


def test_a_synth_model_has_no_image_term():
    model = models.build_model((16, 16), "vm1", num_labels=4, synth=True)
    assert [(term.name, term.args) for term in model.terms] == [
        ("deformation", ("deformation",)), ("moved_seg", ("static_seg", "moved_seg"))]


def test_training_from_random_shapes_runs_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    assert main.main(["--synth", "shapes", "--ndim", "2", "--model", "vm1", "--epochs", "1",
                      "--steps_per_epoch", "2", "--output", str(run)]) == 0
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert sorted(header) == sorted(["epoch", "loss", "moved_seg_loss", "deformation_loss",
                                     "val_loss", "val_moved_seg_loss", "val_deformation_loss"])
    assert json.loads((run / "metrics.json").read_text())["validation_pairs"] == 12


@pytest.mark.parametrize("flags, refused", [
    (["--synth", "shapes", "--bidir"], "--synth shapes does not take --bidir"),
    (["--synth", "data"], "--synth data draws the label maps of --data"),
])
def test_flags_that_synth_does_not_take_are_one_line(tmp_path, capsys, flags, refused):
    assert main.main(flags + ["--ndim", "2", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and refused in err[0]


def test_images_are_drawn_from_every_label_of_the_data_and_the_loss_from_its_scored_ones():
    segs = np.zeros((2, 16, 16), np.int32)
    segs[0, :8], segs[1, 8:], segs[1, :4] = 3, 7, 9  # 9: drawn in images, not scored
    subjects = datasets.Dataset(vols=np.random.default_rng(0).random((2, 16, 16)), segs=segs,
                                labels=np.array([3, 7]))
    args = types.SimpleNamespace(synth="data", transform="deformable", batch_size=1,
                                 steps_per_epoch=2, seed=0)
    loader = training.synth_loader(subjects, args, (16, 16), [3, 7])
    assert loader.image_labels.tolist() == [0, 3, 7, 9]
    assert loader[0]["moving_seg"].shape == (1, 16, 16, 2)
    assert not loader.random_affine


def test_a_synth_affine_model_trains_on_the_label_maps_alone(tmp_path):
    run = tmp_path / "run"
    assert main.main(["--synth", "shapes", "--transform", "affine", "--ndim", "2", "--epochs",
                      "1", "--steps_per_epoch", "2", "--output", str(run)]) == 0
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert sorted(header) == sorted(["epoch", "loss", "moved_seg_loss", "val_loss",
                                     "val_moved_seg_loss"])  # an affine map: no smoothness


def test_labels_whose_one_hot_maps_would_not_fit_are_one_line_and_write_nothing(
        tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "set.npz", vols=rng.random((4, 16, 16)),
             segs=rng.integers(0, 40, (4, 16, 16)))
    monkeypatch.setattr(training, "ONE_HOT_GIB", 1e-4)  # 39 labels at 16x16: 2.9e-4 GiB
    before = sorted(tmp_path.rglob("*"))
    assert main.main(["--synth", "data", "--data", str(tmp_path / "set.npz"), "--ndim", "2",
                      "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "39 labels at (16, 16): their one-hot maps would take" in err[0]
    assert "name fewer labels" in err[0] and sorted(tmp_path.rglob("*")) == before


def test_synth_data_without_label_maps_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "vols.npy", np.random.default_rng(0).random((4, 16, 16)))
    assert main.main(["--synth", "data", "--data", str(tmp_path / "vols.npy"), "--ndim", "2",
                      "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["main.py: error: --synth data needs label maps: 'segs' in --data"]
    assert not (tmp_path / "run").exists()


def blob_maps(count: int, shape=(16, 16)) -> np.ndarray:
    """``(count, *shape)`` label maps 0-3: a square of label 1 with a bar of 2 and a dot of 3."""
    maps = np.zeros((count, *shape), np.int32)
    maps[:, 3:13, 3:13], maps[:, 6:10, 5:11], maps[:, 7:9, 7:9] = 1, 2, 3
    return maps


def test_synth_data_trains_on_label_maps_alone_validated_on_val_data(tmp_path):
    np.savez(tmp_path / "maps.npz", segs=blob_maps(3), labels=[1, 2, 3])  # no images at all
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "val.npz", vols=rng.random((2, 16, 16)), segs=blob_maps(2))
    run = tmp_path / "run"
    assert main.main(["--synth", "data", "--data", str(tmp_path / "maps.npz"), "--val_data",
                      str(tmp_path / "val.npz"), "--ndim", "2", "--model", "vm1", "--epochs",
                      "1", "--steps_per_epoch", "2", "--output", str(run)]) == 0
    assert (run / "model.keras").exists()


def test_label_maps_alone_without_val_data_are_one_line(tmp_path, capsys):
    np.savez(tmp_path / "maps.npz", segs=blob_maps(3))
    assert main.main(["--synth", "data", "--data", str(tmp_path / "maps.npz"), "--ndim", "2",
                      "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds label maps only" in err[0] and "--val_data" in err[0]
    assert not (tmp_path / "run").exists()
