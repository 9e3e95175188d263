"""Checkpoints, --resume, stopping by a signal or a diverged loss, the run folder's lock, failed
writes (rundir.py through main.py)."""
import csv
import errno
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from matplotlib.image import imread

import dataloader
import main
import models
import objective
import rundir
import stopping
import volumes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_flags(folder) -> list[str]:
    """Five 16x16 images and their label maps: scan-to-scan pairs, three training and two
    validation images, trained with the segmentation loss, so that every resume here also
    carries the static label map, an input of the model as the static image is."""
    vols = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    path = os.path.join(folder, "labelled.npz")
    np.savez(path, vols=vols, segs=(vols > 0.5).astype(np.uint8))
    return ["--data", path, "--ndim", "2", "--model", "vm1", "--steps_per_epoch", "3",
            "--lr", "1e-2", "--seg_weight", "0.5"]


@pytest.fixture
def tiny_set(tmp_path):
    return tiny_flags(tmp_path)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """A run of 4 epochs of the tiny set with --keep_best, never stopped: what a resumed run
    must end as."""
    folder = tmp_path_factory.mktemp("unbroken")
    run = str(folder / "run")
    assert main.main(tiny_flags(folder) + ["--keep_best", "--epochs", "4", "--output", run]) == 0
    return run


def history_rows(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, rundir.HISTORY), newline="") as file:
        return list(csv.DictReader(file))


def weights(path) -> list[np.ndarray]:
    return keras.models.load_model(path).get_weights()


def state(run_dir) -> dict:
    return rundir.read_json(os.path.join(run_dir, rundir.STATE))


def assert_same_weights(path, other) -> None:
    for mine, theirs in zip(weights(path), weights(other), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def assert_ends_as(run, unbroken) -> None:
    """``run`` ended with the checkpoint and the history of ``unbroken``."""
    assert state(run)["model"] == state(unbroken)["model"]
    assert_same_weights(os.path.join(run, state(run)["model"]),
                        os.path.join(unbroken, state(unbroken)["model"]))
    assert history_rows(run) == history_rows(unbroken)


def test_run_files_read_back_as_they_were_written(tmp_path):
    history = {"loss": [3.0, 1.5], "val_moved_loss": [2.0, 1.0]}
    rundir.write_history(str(tmp_path / rundir.HISTORY), history)
    assert rundir.read_history(str(tmp_path / rundir.HISTORY)) == {"epoch": [0.0, 1.0], **history}
    samples = [{"moving": np.full((4, 5), i, np.float32), "deformation": np.zeros((4, 5, 2))}
               for i in range(3)]
    rundir.write_samples(str(tmp_path / rundir.SAMPLES), samples)
    stored = rundir.read_samples(str(tmp_path / rundir.SAMPLES))
    assert stored["moving"].shape == (3, 4, 5) and stored["deformation"].shape == (3, 4, 5, 2)
    np.testing.assert_array_equal(stored["moving"][:, 0, 0], [0, 1, 2])
    rundir.write_json(str(tmp_path / rundir.EVALUATION), {"dice": [0.5, float("nan")]})
    assert rundir.read_evaluation(str(tmp_path / rundir.EVALUATION)) == {"dice": [0.5, None]}


def test_resumed_run_ends_with_the_weights_of_an_unbroken_one(tmp_path, tiny_set, unbroken,
                                                              monkeypatch):
    tiny_set = tiny_set + ["--keep_best"]
    save_epoch = rundir.Checkpoint.on_epoch_end

    def interrupt_after_epoch_2(self, epoch, logs=None):
        save_epoch(self, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt  # as Ctrl-C after the second checkpoint

    monkeypatch.setattr(rundir.Checkpoint, "on_epoch_end", interrupt_after_epoch_2)
    run = str(tmp_path / "broken")
    with pytest.raises(KeyboardInterrupt):
        main.main(tiny_set + ["--epochs", "4", "--output", run])
    assert not os.path.exists(os.path.join(run, "model.keras"))
    monkeypatch.setattr(rundir.Checkpoint, "on_epoch_end", save_epoch)
    assert main.main(["--resume", run]) == 0

    assert_ends_as(run, unbroken)
    best = state(run)["best_model"]
    for name in (best, "model.keras"):
        assert_same_weights(os.path.join(run, name), os.path.join(unbroken, name))
    val_loss = [float(row["val_loss"]) for row in history_rows(run)]  # --keep_best:
    assert json.loads(open(os.path.join(run, "metrics.json")).read())["best_epoch"] == \
        int(np.argmin(val_loss)) + 1
    assert_same_weights(os.path.join(run, best), os.path.join(run, "model.keras"))


def test_keep_best_saves_the_model_of_the_lowest_validation_loss(tmp_path):
    model = models.build_model((16, 16), "vm1")
    model.optimizer.build(model.trainable_variables)
    saver = rundir.Checkpoint(str(tmp_path), keep_best=True)
    saver.set_model(model)
    layer = model.get_layer("deformation")
    for epoch, val_loss in enumerate([3.0, 1.0, 2.0]):
        layer.set_weights([np.full_like(w, epoch) for w in layer.get_weights()])
        saver.on_epoch_end(epoch, {"loss": 0.0, "val_loss": val_loss})
    saved = state(tmp_path)
    assert (saved["epoch"], saved["best_epoch"], saved["best_val_loss"]) == (3, 2, 1.0)
    best = keras.models.load_model(tmp_path / saved["best_model"]).get_layer("deformation")
    last = keras.models.load_model(tmp_path / saved["model"]).get_layer("deformation")
    assert np.all(best.get_weights()[0] == 1.0) and np.all(last.get_weights()[0] == 2.0)
    assert sorted(os.listdir(tmp_path)) == sorted([saved["best_model"], saved["model"],
                                                   rundir.STATE, rundir.HISTORY])


def test_resume_refuses_other_flags_and_folders_without_a_run(tmp_path, capsys):
    assert main.main(["--resume", str(tmp_path), "--epochs", "3", "--model", "vm2"]) == 2
    assert capsys.readouterr().err == (f"main.py: error: --resume takes every flag from "
                                       f"{tmp_path}/args.json but --epochs and --lr; drop "
                                       f"--model\n")  # vm2 is the default: given all the same
    assert main.main(["--resume", str(tmp_path)]) == 2
    assert "not a training run folder" in capsys.readouterr().err


def test_a_new_run_refuses_a_folder_that_holds_one(tmp_path, tiny_set, capsys):
    (tmp_path / "args.json").write_text("{}")
    assert main.main(tiny_set + ["--epochs", "1", "--output", str(tmp_path)]) == 2
    assert f"--resume {tmp_path}" in capsys.readouterr().err


PROBE = {"moving": np.random.default_rng(1).random((1, 16, 16, 1)).astype(np.float32),
         "static": np.random.default_rng(2).random((1, 16, 16, 1)).astype(np.float32)}


def outputs_on_probe(model) -> dict[str, np.ndarray]:
    """``model``'s outputs on PROBE and, where it takes them, label maps of PROBE's images
    thresholded at 0.5 in every channel (an eager call: no prediction function to trace)."""
    labels = model.input["moving_seg"].shape[-1] if "moving_seg" in model.input else 0
    inputs = PROBE | {f"{key}_seg": np.repeat(PROBE[key] > 0.5, labels, axis=-1).astype(
        np.float32) for key in PROBE if labels}
    return {key: keras.ops.convert_to_numpy(value) for key, value in model(inputs).items()}


def spy_on_saved_models(monkeypatch) -> dict:
    """From now on, every model that ``rundir.save_model`` writes is also kept in memory, by file
    name: ``(its weights, its outputs on PROBE)`` as they were when it was saved."""
    saved, save = {}, rundir.save_model

    def save_and_keep(model, path):
        saved[os.path.basename(path)] = (model.get_weights(), outputs_on_probe(model))
        save(model, path)

    monkeypatch.setattr(rundir, "save_model", save_and_keep)
    return saved


def loadable(path: str, saved: dict) -> bool:
    """Read a run folder's file by its type; True when it parses. A model must load with the
    weights it was saved with and give the same outputs (``saved``: see
    :func:`spy_on_saved_models`)."""
    if path.endswith(".keras"):
        model = keras.models.load_model(path)
        weights, outputs = saved[os.path.basename(path)]
        for loaded, kept in zip(model.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(loaded, kept)
        predicted = outputs_on_probe(model)
        assert predicted.keys() == outputs.keys()
        for key in outputs:
            np.testing.assert_allclose(predicted[key], outputs[key], rtol=1e-6, atol=1e-7)
        return True
    if path.endswith(".json"):
        with open(path) as file:
            return isinstance(json.load(file), dict)
    if path.endswith(".csv"):
        return len(history_rows(os.path.dirname(path))) > 0
    if path.endswith(".npz"):
        with np.load(path) as stored:
            return all(stored[key].size for key in stored)
    if path.endswith(".png"):
        return imread(path).ndim == 3
    return False


def test_sigkilled_training_resumes_without_losing_an_epoch(tmp_path, tiny_set, monkeypatch):
    run, epochs = str(tmp_path / "run"), 5
    command = [sys.executable, "main.py", *tiny_set, "--epochs", str(epochs),
               "--steps_per_epoch", "2", "--output", run]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    state = os.path.join(run, rundir.STATE)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(state) and json.load(open(state))["epoch"] >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    printed, _ = process.communicate()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    printed_epochs = sum(line.startswith("2/2 - ") for line in printed.splitlines())  # verbose=2
    kept = rundir.read_json(state)["epoch"]
    assert 2 <= kept < epochs and kept >= printed_epochs - 1  # at most the one being written

    saved = spy_on_saved_models(monkeypatch)
    assert main.main(["--resume", run]) == 0
    rows = history_rows(run)
    assert [int(row["epoch"]) for row in rows] == list(range(epochs))
    assert rundir.read_json(state)["epoch"] == epochs
    files = sorted(set(os.listdir(run)) - {rundir.LOCK})
    assert not [name for name in files if name.startswith(".")]  # no temporary file left
    assert all(loadable(os.path.join(run, name), saved) for name in files), files


class NaNFrom(keras.utils.PyDataset):
    """Pairs of 16x16 images; from the ``first_bad``-th batch drawn on, NaN moving images."""

    def __init__(self, first_bad: int):
        super().__init__()
        self.first_bad, self.drawn = first_bad, 0

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int):
        self.drawn += 1
        moving = np.random.default_rng(index).random((1, 16, 16, 1)).astype(np.float32)
        if self.drawn >= self.first_bad:
            moving[:] = np.nan
        return {"moving": moving, "static": moving[:, ::-1]}


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    model = models.build_model((16, 16), "vm1")
    stop, saver = stopping.StopOnDivergence(), rundir.Checkpoint(str(tmp_path))
    model.fit(NaNFrom(8), epochs=5, shuffle=False, verbose=0, callbacks=[stop, saver])
    epoch, step, loss = stop.diverged  # counted from 1
    assert 2 <= epoch < 5 and 1 <= step <= 3 and np.isnan(loss)
    assert rundir.read_json(str(tmp_path / rundir.STATE))["epoch"] == epoch - 1
    assert len(history_rows(tmp_path)) == epoch - 1
    kept, _ = rundir.load_checkpoint(str(tmp_path))
    assert all(np.all(np.isfinite(w)) for w in kept.get_weights())


def test_a_diverging_run_exits_with_one_line_that_names_the_fix(tmp_path, tiny_set, capsys):
    run = tmp_path / "run"
    assert main.main(tiny_set + ["--lr", "1e6", "--epochs", "2", "--output", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("main.py: error: training diverged at epoch 1")
    assert "lower --lr (now 1e+06)" in err[0]
    assert not os.path.exists(run / "model.keras") and not os.path.exists(run / "metrics.json")


HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.mark.skipif(HAS_TENSORBOARD, reason="tensorboard is installed")
def test_tensorboard_without_its_package_is_a_one_line_error(tmp_path, tiny_set, capsys):
    assert main.main(tiny_set + ["--tensorboard", "--output", str(tmp_path / "run")]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="needs the tensorboard package")
def test_tensorboard_writes_event_files_into_the_run(tmp_path, tiny_set):
    run = tmp_path / "run"
    assert main.main(tiny_set + ["--tensorboard", "--epochs", "1", "--output", str(run)]) == 0
    events = [name for _, _, names in os.walk(run / "tensorboard") for name in names]
    assert any(name.startswith("events.out.tfevents") for name in events)


def test_resume_with_more_epochs_ends_as_one_longer_run(tmp_path, tiny_set, unbroken):
    run = str(tmp_path / "run")
    assert main.main(tiny_set + ["--epochs", "2", "--output", run]) == 0
    assert main.main(["--resume", run, "--epochs", "4"]) == 0
    assert_ends_as(run, unbroken)


def test_resume_with_a_new_lr_records_it_and_trains_with_it(tmp_path, tiny_set):
    run = str(tmp_path / "run")
    assert main.main(tiny_set + ["--epochs", "1", "--output", run]) == 0
    assert main.main(["--resume", run, "--epochs", "2", "--lr", "1e-3"]) == 0
    args = rundir.read_json(os.path.join(run, rundir.ARGS))
    assert (args["epochs"], args["lr"]) == (2, 1e-3)
    assert args["resumes"] == [{"epoch": 1, "batch": 0,
                                "changed": {"epochs": [1, 2], "lr": [1e-2, 1e-3]}}]
    optimizer = keras.models.load_model(os.path.join(run, state(run)["model"])).optimizer
    assert float(optimizer.learning_rate) == np.float32(1e-3)


def committed_epochs(run_dir, count: int) -> rundir.Checkpoint:
    """Commit ``count`` epochs of a tiny model into ``run_dir`` (no training): the weights of
    epoch ``e`` are all ``e``."""
    model = models.build_model((16, 16), "vm1", lr=1e-2)
    model.optimizer.build(model.trainable_variables)
    os.makedirs(run_dir, exist_ok=True)
    saver = rundir.Checkpoint(str(run_dir))
    saver.set_model(model)
    for epoch in range(count):
        model.set_weights([np.full_like(w, epoch + 1) for w in model.get_weights()])
        saver.on_epoch_end(epoch, {"loss": 0.0})
    return saver


def test_resume_refuses_fewer_epochs_than_the_run_has_done(tmp_path, tiny_set, capsys):
    run = tmp_path / "run"
    committed_epochs(run, 3)
    flags = vars(main.build_parser().parse_args(tiny_set + ["--output", str(run)]))
    rundir.write_json(str(run / rundir.ARGS), flags)
    assert main.main(["--resume", str(run), "--epochs", "2"]) == 2
    assert capsys.readouterr().err.endswith(
        f"--epochs 2: the run in {run} is after epoch 3 already; give --epochs 3 or more\n")


def test_a_half_written_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch):
    saver = committed_epochs(tmp_path, 2)
    write_json = rundir.write_json

    def killed_before_the_commit(path, content):
        if path.endswith(rundir.STATE):
            raise KeyboardInterrupt  # as a kill between the model's file and checkpoint.json
        write_json(path, content)

    monkeypatch.setattr(rundir, "write_json", killed_before_the_commit)
    with pytest.raises(KeyboardInterrupt):
        saver.on_epoch_end(2, {"loss": 0.0})
    assert os.path.isfile(tmp_path / rundir.checkpoint_name(3))  # written, never committed
    model, saved = rundir.load_checkpoint(str(tmp_path))
    assert saved["epoch"] == 2 and all(np.all(w == 2) for w in model.get_weights())
    assert not os.path.exists(tmp_path / rundir.checkpoint_name(3))


def test_sigint_in_an_epoch_saves_it_and_the_resumed_run_ends_as_an_unbroken_one(
        tmp_path, tiny_set, unbroken, sigint_in_epoch_2, capsys):
    run = str(tmp_path / "run")
    assert main.main(tiny_set + ["--epochs", "4", "--output", run]) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"main.py: stopped by SIGINT at epoch 2, batch 1: resume with python3 main.py "
        f"--resume {run}"]
    assert (state(run)["epoch"], state(run)["batch"]) == (1, 1)
    sigint_in_epoch_2.undo()
    assert main.main(["--resume", run]) == 0
    assert_ends_as(run, unbroken)


def test_sigterm_stops_a_training_process_with_one_line_and_status_143(tmp_path, tiny_set):
    run = str(tmp_path / "run")
    command = [sys.executable, "main.py", *tiny_set, "--epochs", "1000", "--output", run]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    path, deadline = os.path.join(run, rundir.STATE), time.time() + 240
    while time.time() < deadline and process.poll() is None and not os.path.exists(path):
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("main.py:")]
    assert len(lines) == 1 and re.fullmatch(
        rf"main.py: stopped by SIGTERM (at epoch \d+, batch \d+|after epoch \d+): resume with "
        rf"python3 main.py --resume {re.escape(run)}", lines[0]), lines
    model, saved = rundir.load_checkpoint(run)
    assert rundir.position(saved) in lines[0] and saved["epoch"] >= 1
    assert int(model.optimizer.iterations) == saved["iterations"] == 3 * saved["epoch"] + \
        saved["batch"]


HOLD_LOCK = ("import fcntl, os, sys; descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
             "fcntl.flock(descriptor, fcntl.LOCK_EX); print('locked', flush=True); "
             "sys.stdin.read()")


def hold_lock(run_dir) -> subprocess.Popen:
    """Another process that holds the lock of ``run_dir`` until its stdin closes."""
    os.makedirs(run_dir, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK,
                               os.path.join(run_dir, rundir.LOCK)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


@pytest.mark.parametrize("resume", [False, True], ids=["new run", "resume"])
def test_a_run_folder_in_use_is_refused_with_one_line(tmp_path, tiny_set, capsys, resume):
    run = str(tmp_path / "run")
    holder = hold_lock(run)
    try:
        if resume:
            flags = vars(main.build_parser().parse_args(tiny_set + ["--output", run]))
            rundir.write_json(os.path.join(run, rundir.ARGS), flags)
        argv = ["--resume", run] if resume else tiny_set + ["--output", run]
        assert main.main(argv) == 2
    finally:
        holder.stdin.close()
        holder.wait()
    assert capsys.readouterr().err.splitlines() == [
        f"main.py: error: {run} is in use by another training process: wait until it ends, or "
        f"train into another --output"]
    assert sorted(os.listdir(run)) == sorted([rundir.LOCK] + [rundir.ARGS] * resume)


def test_a_killed_process_leaves_no_lock_behind(tmp_path):
    holder = hold_lock(tmp_path)
    with pytest.raises(volumes.UsageError, match="in use"):
        with rundir.locked(str(tmp_path)):
            pass
    holder.kill()
    holder.wait()
    with rundir.locked(str(tmp_path)):
        pass


def test_a_file_system_without_locks_is_a_warning(tmp_path, monkeypatch, capsys):
    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(rundir.fcntl, "flock", no_locks)
    with rundir.locked(str(tmp_path)):
        pass
    assert capsys.readouterr().err == (f"main.py: warning: cannot lock {tmp_path} (No locks "
                                       f"available): make sure that no other process trains "
                                       f"into it\n")


def fail_writing(monkeypatch, code: int, name: str) -> None:
    """Make the write of the run's file ``name`` at epoch 2 fail with ``OSError(code)``."""
    save, dump = keras.Model.save, json.dump

    def fail(path: str, content=None) -> None:
        if name in path and (name != rundir.STATE or content["epoch"] == 2):
            raise OSError(code, os.strerror(code))

    def save_or_fail(model, path, **kwargs):
        fail(path)
        return save(model, path, **kwargs)

    def dump_or_fail(content, file, **kwargs):
        fail(getattr(file, "name", ""), content)
        return dump(content, file, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save_or_fail)
    monkeypatch.setattr(json, "dump", dump_or_fail)


@pytest.mark.parametrize("code, name", [(errno.ENOSPC, rundir.checkpoint_name(2)),
                                        (errno.EACCES, rundir.STATE)],
                         ids=["ENOSPC writing the model", "EACCES writing checkpoint.json"])
def test_a_failed_write_is_one_line_and_keeps_the_previous_checkpoint(
        tmp_path, tiny_set, monkeypatch, capsys, code, name):
    fail_writing(monkeypatch, code, name)
    run = str(tmp_path / "run")
    assert main.main(tiny_set + ["--epochs", "3", "--output", run]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"main.py: error: cannot write {os.path.join(run, name)}: {os.strerror(code)}; the "
        f"checkpoint after epoch 1 is kept in {run}"]
    monkeypatch.undo()
    model, saved = rundir.load_checkpoint(run)
    assert saved["epoch"] == 1 and int(model.optimizer.iterations) == 3
    assert sorted(name for name in os.listdir(run) if name.endswith(".keras")) == [
        rundir.checkpoint_name(1)]


def test_an_output_folder_that_cannot_be_made_is_one_line_exit_2(tiny_set, capsys):
    assert main.main(tiny_set + ["--output", "/proc/x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("main.py: error: ") and "/proc/x" in err[0]
    assert not os.path.exists("/proc/x")


def test_a_run_with_the_segmentation_loss_logs_each_term_and_its_soft_dice(unbroken):
    terms = ("loss", "moved_loss", "deformation_loss", "moved_seg_loss")
    assert sorted(history_rows(unbroken)[0]) == sorted(
        ["epoch", *terms, *(f"val_{term}" for term in terms)])
    dice_loss = [float(row["moved_seg_loss"]) for row in history_rows(unbroken)]
    assert all(0.0 < value < 1.0 for value in dice_loss)  # soft Dice of the label maps


LEGACY = os.path.join(ROOT, "tests", "data", "legacy_vm1_2d")  # see tests/data/README.md


def test_a_model_saved_with_compiled_losses_is_converted_on_load_with_the_same_losses():
    saved = np.load(LEGACY + ".npz")
    with pytest.warns(UserWarning, match="converted on load"):
        model = rundir.load_model(LEGACY + ".keras")
    assert isinstance(model, objective.TrainingModel)
    inputs = dataloader.batch(saved["moving"], saved["static"], saved["moving_seg"],
                              saved["static_seg"], labels=[1, 2])
    logs = model.test_on_batch(inputs, return_dict=True)
    for key in ("loss", "moved_loss", "moved_static_loss", "moved_seg_loss", "velocity_loss"):
        assert logs[key] == pytest.approx(float(saved[key]), rel=1e-6, abs=1e-9), key
    # 1e-5: the file was written on another CPU, whose kernels round float32 in another order
    np.testing.assert_allclose(model.predict_on_batch(inputs)["moved"], saved["moved"],
                               atol=1e-5)
    model.train_on_batch(inputs)  # and it trains on, with a fresh Adam
    assert int(model.optimizer.iterations.numpy()) == 1
