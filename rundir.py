"""The folder of a run: the name of every file in it, reading them back, checkpoints, resume, lock.

Training writes ``ARGS`` (its flags, read back by ``--resume``, and what every resume changed:
:func:`write_args`), a checkpoint at the end of every epoch, and at the end ``MODEL``,
``SAMPLES``, ``METRICS`` and the figures of ``viz.render_run``; ``main.py evaluate`` writes
``EVALUATION``, ``DICE_CSV`` and ``DICE_PLOT``; ``main.py template`` (``template_outputs.py``) the
same checkpoints, ``MODEL`` and ``METRICS``, and the ``TEMPLATE...`` files. Every file is
written atomically (``volumes.atomic_path``), and read back here too (:func:`read_json`,
:func:`read_history`, :func:`read_samples`, :func:`read_evaluation`): other modules use these
names and readers. One process at a time trains into a run folder: it holds the lock of
``LOCK`` (:func:`locked`). A checkpoint (:class:`Checkpoint`) is:

- ``checkpoint-epoch<E>.keras`` (after epoch E) or ``checkpoint-epoch<E>-batch<B>.keras`` (B
  batches into the next epoch, saved when a signal stopped training, ``stopping.stop_signals``):
  the model with its optimizer state (``keras.models.load_model`` restores both);
- ``checkpoint.json``: ``model``, the name of that file, and ``best_model``, with ``keep_best``
  that of the epoch of lowest validation loss (``best_epoch``, ``best_val_loss``); ``epoch``
  (epochs completed, which is also the training loader's epoch: its batches depend on
  ``(seed, epoch, index)`` only) and ``batch`` (batches done in the next one); ``history``
  (every logged value per epoch); ``iterations`` (optimizer steps); in the middle of an epoch,
  ``metrics``, the running sums of its logged means;
- ``history.csv``: the same history, one row per epoch (the columns of Keras' ``CSVLogger``).

``checkpoint.json`` is the commit: a checkpoint's model is written under its own name first,
then ``checkpoint.json`` is replaced (one ``os.replace``) to name it, and only then are the model
files it no longer names removed. A process killed at any moment thus leaves a
``checkpoint.json`` that names a complete model file, of the new checkpoint or of the previous
one; :func:`load_checkpoint` loads it and removes what a checkpoint that never committed left
behind. A write that fails (disk full) leaves the previous checkpoint so, too.

An epoch whose losses are not all finite is never written (``stopping.StopOnDivergence`` stops
training at the first such batch).
"""
import contextlib
import csv
import fcntl
import glob
import json
import math
import os
import signal
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras

import numpy as np

import objective
import stopping
import volumes

ARGS = "args.json"  # the training flags, read back by --resume
RESUMABLE = ("epochs", "lr")  # the flags that --resume may change
STATE = "checkpoint.json"
HISTORY = "history.csv"
LOCK = "train.lock"
MODEL = "model.keras"
SAMPLES = "samples.npz"  # the first validation pairs registered, for viz.py
METRICS = "metrics.json"
TENSORBOARD = "tensorboard"
LOSS_PLOT = "loss.png"
OVERLAY_PLOT = "overlay_{}.png"  # the figures of sample i of SAMPLES (viz.render_run)
GRID_PLOT = "grid_{}.png"
DISPLACEMENT_PLOT = "displacement_{}.png"
JACOBIAN_PLOT = "jacobian_{}.png"
TEMPLATE = "template.nii.gz"  # of main.py template: the learned template in world space
TEMPLATE_SEG = "template_seg.nii.gz"  # the scans' label maps on it, majority vote
TEMPLATE_PROBABILITIES = "template_probabilities.nii.gz"  # one channel per label
TEMPLATE_MODEL = "template_model.keras"  # the template with its network (--value reads it)
TEMPLATE_EPOCHS = "template_epochs.npz"  # the template after each epoch, for its figure
TEMPLATE_PLOT = "template.png"
EVALUATION = "eval.json"  # of main.py evaluate
DICE_CSV = "dice_per_structure.csv"
DICE_PLOT = "dice_boxplot.png"
LAMBDA_CURVE = "lamda_curve.json"  # of evaluate --lamda V1 V2 ...: scores per smoothness weight
LAMBDA_PLOT = "lamda_curve.png"


class Diverged(RuntimeError):
    """Training stopped on a non-finite loss; the message names the likely cause."""


def position(state: dict) -> str:
    """Where the checkpoint ``state`` stands, in words: "after epoch 3", "at epoch 4, batch 17"."""
    if state["batch"]:
        return f"at epoch {state['epoch'] + 1}, batch {state['batch']}"
    return f"after epoch {state['epoch']}"


def kept(run_dir: str, state: dict) -> str:
    """What a run stopped by an error keeps, in words, for its message."""
    if not (state["epoch"] or state["batch"]):
        return "no checkpoint was written"
    return f"the checkpoint {position(state)} is kept in {run_dir}"


class Stopped(Exception):
    """Training stopped by a signal once its checkpoint was written; ``main.py`` prints the
    message and exits with status 128 + ``signum`` (143 for SIGTERM, 130 for SIGINT).

    Parameters
    ----------
    signum : int
        The signal.
    state : dict
        The checkpoint written last (``checkpoint.json``).
    run_dir : str
        The run folder.
    """

    def __init__(self, signum: int, state: dict, run_dir: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} {position(state)}: resume "
                         f"with python3 main.py --resume {run_dir}")
        self.signum = signum


def write_json(path: str, content: dict) -> None:
    """Write ``content`` as JSON, atomically; NaN and Inf become ``null`` (strict JSON)."""
    with volumes.atomic_path(path) as tmp, open(tmp, "w") as file:
        json.dump(_finite(content), file, indent=2, allow_nan=False)


def _finite(value):
    """``value`` with every non-finite float, at any depth, replaced by None."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json(path: str) -> dict:
    """A JSON file of a run folder, or ``DataError`` naming what is wrong with it."""
    try:
        with open(path) as file:
            return json.load(file)
    except FileNotFoundError as error:
        raise volumes.UsageError(f"no {os.path.basename(path)} in "
                                f"{os.path.dirname(path) or '.'}: not a training run "
                                f"folder") from error
    except (OSError, ValueError) as error:
        raise volumes.DataError(f"cannot read {path}: {error}") from error


def write_history(path: str, history: dict[str, list[float]]) -> None:
    """Write ``{name: values per epoch}`` as CSV: ``epoch`` then the names in sorted order."""
    names = sorted(history)
    epochs = len(history[names[0]]) if names else 0
    with volumes.atomic_path(path) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["epoch", *names])
        for epoch in range(epochs):
            writer.writerow([epoch, *(history[name][epoch] for name in names)])


def read_history(path: str) -> dict[str, list[float]]:
    """A ``HISTORY`` file (Keras ``CSVLogger`` columns, :func:`write_history`) as
    ``{column: values}``."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return {key: [float(row[key]) for row in rows] for key in rows[0]} if rows else {}


def save_model(model: keras.Model, path: str) -> None:
    """``model.save(path)`` (weights, optimizer state), atomically."""
    with volumes.atomic_path(path) as tmp:
        model.save(tmp)


def checkpoint_name(epoch: int, batch: int = 0) -> str:
    """File name of the checkpoint's model after ``epoch`` epochs and ``batch`` batches."""
    return f"checkpoint-epoch{epoch}" + (f"-batch{batch}" if batch else "") + ".keras"


def tidy(run_dir: str, state: dict) -> None:
    """Remove the checkpoint models that ``state`` does not name (of a checkpoint replaced since,
    or of one that never committed) and the temporary files that a killed run left behind."""
    named = {state["model"], state["best_model"]}
    for path in (glob.glob(os.path.join(run_dir, "checkpoint-*.keras"))
                 + glob.glob(os.path.join(run_dir, ".*.tmp*"))):
        if os.path.basename(path) not in named:
            os.remove(path)


class Checkpoint(keras.callbacks.Callback):
    """Commit a checkpoint at the end of every epoch and, once a signal asked to stop, at the end
    of the next batch, then stop (see the module doc and ``stopping.stop_signals``).

    Parameters
    ----------
    run_dir : str
        The run folder (it must exist).
    state : dict, optional
        ``checkpoint.json`` of the run being resumed; by default a new run. In the middle of an
        epoch, the first ``state["batch"]`` batches of that epoch are done: the running means
        that Keras logs go on from ``state["metrics"]``.
    keep_best : bool
        Also keep the model of the lowest ``val_loss``.

    Attributes
    ----------
    state : dict
        The ``checkpoint.json`` committed last.
    signal : int or None
        The signal that asked training to stop, set by ``stopping.stop_signals``.

    Raises
    ------
    Stopped
        At the end of the batch that follows a signal, once the checkpoint is written; at the
        end of an epoch it stops training instead (``model.stop_training``).
    volumes.WriteError
        If a file of the checkpoint cannot be written; the message says which one is kept.
    """

    def __init__(self, run_dir: str, state: dict | None = None, keep_best: bool = False):
        super().__init__()
        self.run_dir, self.keep_best, self.signal = run_dir, keep_best, None
        self.state = {"epoch": 0, "batch": 0, "model": None, "best_model": None,
                      "best_epoch": None, "best_val_loss": None, "history": {}, **(state or {})}
        self.batch, self.resumed_means = self.state["batch"], self.state.get("metrics")

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        variables = self.model.metrics_variables
        if self.resumed_means:  # the first batch after a stop: from 0, the sum of one batch
            for variable in variables:  # a first addition from 0 is exact: as if never stopped
                variable.assign(variable + self.resumed_means[variable.path])
            self.resumed_means = None
        self.batch += 1
        self.signal = stopping.agreed_signal(self.signal)
        if self.signal and math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.commit({**self.state, "batch": self.batch,
                         "model": checkpoint_name(self.state["epoch"], self.batch),
                         "iterations": int(self.model.optimizer.iterations.numpy()),
                         "metrics": {variable.path: float(variable.numpy())
                                     for variable in variables}})
            raise Stopped(self.signal, self.state, self.run_dir)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = {key: float(value) for key, value in (logs or {}).items()}
        if not all(math.isfinite(value) for value in logs.values()):
            return  # a diverged epoch: keep the last good checkpoint
        history = {key: [*self.state["history"].get(key, []), value]
                   for key, value in logs.items()}
        state = {**self.state, "epoch": epoch + 1, "batch": 0, "model": checkpoint_name(epoch + 1),
                 "iterations": int(self.model.optimizer.iterations.numpy()), "history": history}
        state.pop("metrics", None)
        best = state["best_val_loss"]
        if self.keep_best and "val_loss" in logs and (best is None or logs["val_loss"] < best):
            state.update(best_epoch=epoch + 1, best_val_loss=logs["val_loss"],
                         best_model=state["model"])
        self.commit(state)
        self.batch = 0
        if self.signal:
            self.model.stop_training = True

    def commit(self, state: dict) -> None:
        """Write the model as ``state["model"]``, then ``state`` as ``checkpoint.json`` (the
        commit) and ``history.csv``; remove the model files it no longer names."""
        try:
            save_model(self.model, os.path.join(self.run_dir, state["model"]))
            write_json(os.path.join(self.run_dir, STATE), state)
            self.state = state
            write_history(os.path.join(self.run_dir, HISTORY), state["history"])
        except volumes.WriteError as error:
            raise volumes.WriteError(f"{error}; {kept(self.run_dir, self.state)}") from error
        tidy(self.run_dir, state)


def load_model(path: str) -> keras.Model:
    """A saved ``.keras`` model, compiled as trained; ``DataError`` if it cannot be read.

    A model saved by a version before ``objective.TrainingModel`` (its losses compiled per output)
    is converted on load (``objective.from_compiled``), with a warning: its network, weights and
    loss terms are kept, its optimizer's moments are not.
    """
    if not os.path.isfile(path):
        raise volumes.DataError(f"no such model file: {path}")
    if not zipfile.is_zipfile(path):
        raise volumes.DataError(f"{path} is not a complete .keras file (not a zip archive: "
                                f"truncated or of another format)")
    try:
        compiled = legacy_compile_config(path)
        if compiled is None:
            return keras.models.load_model(path)
        model = objective.from_compiled(keras.models.load_model(path, compile=False), compiled)
    except Exception as error:  # Keras raises several types for files it cannot read
        raise volumes.DataError(f"cannot load a Keras model from {path}: {error}") from error
    warnings.warn(f"{path} was saved by an earlier version of this project (losses compiled "
                  f"per output): converted on load; its optimizer state starts anew",
                  volumes.DataWarning)
    return model


def legacy_compile_config(path: str) -> dict | None:
    """The ``compile_config`` of a ``.keras`` file whose model is a functional one compiled
    with one loss per output (saved before ``objective.TrainingModel``); None for any other."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    compiled = config.get("compile_config") or {}
    return compiled if config.get("class_name") == "Functional" and \
        isinstance(compiled.get("loss"), dict) else None


def load_checkpoint(run_dir: str, tidy_up: bool = True) -> tuple[keras.Model, dict]:
    """The model (compiled, with its optimizer state) and ``checkpoint.json`` of a run folder, as
    last committed; call it with the folder locked (:func:`locked`).

    With ``tidy_up`` (all but the other workers of a multi-worker run, which only read), the
    files of a checkpoint that never committed and temporary files are removed, and
    ``history.csv`` is written again from ``checkpoint.json``: the folder is as the commit left it.

    Raises
    ------
    volumes.UsageError
        If the folder holds no complete checkpoint.
    volumes.DataError
        If ``checkpoint.json`` or the model it names cannot be read.
    """
    state = read_json(os.path.join(run_dir, STATE))
    if not (isinstance(state.get("epoch"), int) and isinstance(state.get("model"), str)
            and os.path.isfile(os.path.join(run_dir, state["model"]))):
        raise volumes.UsageError(f"{run_dir} holds no complete checkpoint: nothing to resume")
    if tidy_up:
        tidy(run_dir, state)
        write_history(os.path.join(run_dir, HISTORY), state["history"])
    return load_model(os.path.join(run_dir, state["model"])), state


def write_args(run_dir: str, flags: dict, state: dict | None) -> None:
    """Write ``ARGS``: the training flags and ``resumes``, a list with, for every resume, where
    it resumed (``epoch``, ``batch``) and the ``RESUMABLE`` flags it ``changed``, as
    ``[before, after]``.

    Parameters
    ----------
    run_dir : str
        The run folder.
    flags : dict
        The flags of this run (on a resume, with those it changed).
    state : dict or None
        ``checkpoint.json`` of the run resumed; None for a new run.
    """
    path = os.path.join(run_dir, ARGS)
    stored = read_json(path) if state else {}
    resumes = stored.get("resumes", [])
    if state:
        resumes.append({"epoch": state["epoch"], "batch": state["batch"],
                        "changed": {key: [stored.get(key), flags[key]] for key in RESUMABLE
                                    if stored.get(key) != flags[key]}})
    write_json(path, {**flags, "resumes": resumes})


def make_folder(path: str) -> str:
    """``os.makedirs(path, exist_ok=True)``; return ``path``.

    Raises
    ------
    volumes.UsageError
        If it cannot be made (no permission, a file system that takes no folder, such as /proc).
    """
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise volumes.UsageError(f"cannot create the folder {path}: "
                                 f"{error.strerror or error}") from error
    return path


@contextlib.contextmanager
def locked(run_dir: str) -> Iterator[None]:
    """Hold the lock of a run folder (made if need be) while the block runs: ``fcntl.flock`` on
    its ``LOCK`` file, which the kernel releases when the process ends, killed or not.

    Raises
    ------
    volumes.UsageError
        If another process holds it, or the folder cannot be made or written. On a file system
        without locks (NFS without lockd, Lustre without ``-o flock``) it warns and goes on.
    """
    try:
        descriptor = os.open(os.path.join(make_folder(run_dir), LOCK), os.O_RDWR | os.O_CREAT,
                             0o644)
    except OSError as error:
        raise volumes.UsageError(f"cannot write into {run_dir}: {error.strerror}") from error
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise volumes.UsageError(f"{run_dir} is in use by another training process: wait "
                                     f"until it ends, or train into another --output") from None
        except OSError as error:
            print(f"main.py: warning: cannot lock {run_dir} ({error.strerror}): make sure that no "
                  f"other process trains into it", file=sys.stderr)
        yield
    finally:
        os.close(descriptor)


def output_folder(path: str) -> str:
    """Check that ``path`` can be a folder of outputs (made later); return it.

    Raises
    ------
    volumes.UsageError
        If it, or the nearest existing path above it, is a file, or it cannot be written.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise volumes.UsageError(f"--output {path} is a file, not a folder")
    while not os.path.exists(parent):  # the nearest existing path above: folders are made in it
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise volumes.UsageError(f"--output {path}: {parent} is a file, not a folder")
    if not os.access(path if os.path.isdir(path) else parent, os.W_OK | os.X_OK):
        raise volumes.UsageError(f"cannot write into {path}: permission denied")
    return path


def new_run_folder(output: str | None) -> str:
    """The folder of a new training run (default ``runs/<date>-<time>``): writable, holding no
    other run."""
    output = output_folder(output or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
    if os.path.isfile(os.path.join(output, ARGS)):
        raise volumes.UsageError(f"{output} already holds a training run: continue it with "
                                 f"--resume {output}, or choose another --output")
    return output


def write_samples(path: str, samples: list[dict]) -> None:
    """Store registered pairs (images, displacements, label maps) for ``viz.py`` (``SAMPLES``)."""
    with volumes.atomic_path(path) as tmp:
        np.savez_compressed(tmp, **{key: np.stack([sample[key] for sample in samples])
                                    for key in samples[0]})


def read_samples(path: str) -> dict[str, np.ndarray]:
    """The registered pairs of a ``SAMPLES`` file (:func:`write_samples`), ``{key: (P, ...)}``."""
    with np.load(path) as stored:
        return dict(stored)


def read_evaluation(path: str) -> dict:
    """The ``EVALUATION`` file that ``main.py evaluate`` writes (null for absent structures)."""
    with open(path) as file:
        return json.load(file)
