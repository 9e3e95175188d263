"""Learning a template (``template.py``) as the flags of ``main.py template`` say.

The scans of ``--data`` (any format of training's ``--data``, zero-padded to sizes the network
takes: :func:`padded_scans`) and, with ``--condition FILE:COLUMN``, an attribute per scan
(:func:`read_condition`) feed batches of random scans (:class:`ScanLoader`) to the template's
model, started at the scans' mean (:func:`mean_image`). Training reuses ``training.py``'s run
folder (checkpoints, ``--resume``, the divergence stop, the lock, several GPUs or workers);
:class:`TemplateSnapshots` keeps the template after every epoch for its figure, and at the end
``template_outputs.write_outputs`` writes the run's files. :func:`command` is ``main.py
template``: learn a template, or write a learned conditional one for one value of its attribute.
"""
import contextlib
import csv
import math
import os

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np

import dataloader
import datasets
import distribution
import filelists
import models
import objective
import rundir
import shapes
import template
import template_outputs
import training
import transforms
import volumes

DEFAULT_STEPS = 100  # training steps per epoch


class ScanLoader(dataloader.PairLoader):
    """Batches of random training scans (and their attributes): batch ``i`` of epoch ``e``
    drawn from ``(seed, e, i)`` alone (``dataloader.PairLoader``), so that a run resumes
    exactly.

    Parameters
    ----------
    scans : np.ndarray or filelists.LazyVolumes
        ``(N, *spatial)`` scans in [0, 1].
    batch_size, steps : int
        Scans per batch, batches per epoch.
    seed : int
        Seed of the draws.
    attributes : np.ndarray, optional
        ``(N,)`` attribute of each scan.
    **kwargs
        Passed to ``keras.utils.PyDataset`` (``workers``).
    """

    def __init__(self, scans, batch_size: int, steps: int, seed: int,
                 attributes: np.ndarray | None = None, **kwargs):
        super().__init__(batch_size, seed, **kwargs)
        self.scans, self.steps, self.attributes = scans, steps, attributes

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """``static`` ``(B, *spatial, 1)`` float32 and, with attributes, ``attribute``
        ``(B, 1)``."""
        chosen = np.random.default_rng(self.seed_of(index)).integers(len(self.scans),
                                                                     size=self.batch_size)
        batch = {"static": filelists.take(self.scans, chosen)[..., None].astype(np.float32)}
        if self.attributes is not None:
            batch["attribute"] = self.attributes[chosen, None].astype(np.float32)
        return batch


class TemplateSnapshots(keras.callbacks.Callback):
    """Keep the template after every epoch in ``rundir.TEMPLATE_EPOCHS``, for its figure.

    Parameters
    ----------
    path : str
        The file (written atomically at every epoch's end): ``epochs`` ``(E,)``, ``templates``
        ``(E, *spatial)`` and ``mean`` ``(*spatial)``, the mean of the scans; a resumed run
        keeps the epochs its checkpoint has done.
    mean : np.ndarray
        ``(*spatial)`` the mean of the scans, on their own grid.
    padding : list of (int, int)
        The data's padding, cropped away.
    epochs_done : int
        Epochs of the checkpoint resumed (0 for a new run).
    value : float, optional
        The attribute of a conditional template's snapshot (the scans' mean).
    """

    def __init__(self, path: str, mean: np.ndarray, padding: list[tuple[int, int]],
                 epochs_done: int = 0, value: float | None = None):
        super().__init__()
        self.path, self.mean, self.padding, self.value = path, mean, padding, value
        self.epochs, self.templates = [], []
        if epochs_done and os.path.exists(path):
            stored = rundir.read_samples(path)
            kept = stored["epochs"] <= epochs_done
            self.epochs, self.templates = list(stored["epochs"][kept]), list(
                stored["templates"][kept])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append(epoch + 1)
        self.templates.append(shapes.crop(template.template_image(self.model, self.value),
                                          self.padding))
        with volumes.atomic_path(self.path) as tmp:
            np.savez_compressed(tmp, epochs=np.array(self.epochs),
                                templates=np.stack(self.templates), mean=self.mean)


def read_condition(spec: str, data: datasets.Dataset) -> np.ndarray:
    """``(N,)`` float attribute of every scan from ``--condition FILE:COLUMN``.

    ``FILE`` is a CSV with a column ``scan`` naming each scan (its index in ``--data`` from 0,
    or for files its name or path as listed) and the numeric ``COLUMN``; other rows are ignored.

    Raises
    ------
    volumes.UsageError
        If ``spec`` is not ``FILE:COLUMN``.
    volumes.DataError
        If the file cannot be read, lacks a column, misses a scan or holds a value that is not
        a finite number.
    """
    path, _, column = spec.rpartition(":")
    if not path or not column:
        raise volumes.UsageError(f"--condition {spec}: give FILE:COLUMN, e.g. ages.csv:age")
    volumes.check_exists(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            rows = [(reader.line_num, row) for row in reader]
            header = [name.strip() for name in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise volumes.DataError(f"cannot read {path}: {volumes.one_line(error)}") from error
    missing = [name for name in ("scan", column) if name not in header]
    if missing:
        raise volumes.DataError(f"{path}: no column {', '.join(missing)} in its header "
                                f"({', '.join(header) or 'none'})")
    rows = [(line, {key.strip(): (value or "").strip() for key, value in row.items() if key})
            for line, row in rows]
    by_name = {row["scan"]: (line, row[column]) for line, row in rows}
    return np.array([_attribute(path, column, by_name, names)
                     for names in scan_names(data)], np.float64)


def scan_names(data: datasets.Dataset) -> list[tuple[str, ...]]:
    """The names a condition file may give each scan of ``data``: its index and, for files,
    the file's name and path."""
    paths = getattr(data.vols, "paths", None)
    if paths is None:
        return [(str(i),) for i in range(len(data.vols))]
    return [(str(i), os.path.basename(path), path) for i, path in enumerate(paths)]


def _attribute(path: str, column: str, by_name: dict, names: tuple[str, ...]) -> float:
    """The finite number that ``by_name`` (``{scan: (line, text)}``) gives the scan ``names``."""
    found = next((by_name[name] for name in names if name in by_name), None)
    if found is None:
        raise volumes.DataError(f"{path} has no row for scan {names[-1]} (column 'scan': its "
                                f"index {names[0]}" + (", file name or path" if len(names) > 1
                                                       else "") + ")")
    line, text = found
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise volumes.DataError(f"{path} line {line}: {column} {text!r} is not a number")
    return value


def mean_image(scans: np.ndarray | filelists.LazyVolumes) -> np.ndarray:
    """``(*spatial)`` float32 voxelwise mean of ``(N, *spatial)`` scans, read one at a time."""
    total = np.zeros(scans.shape[1:], np.float64)
    for i in range(len(scans)):
        total += scans[i]
    return (total / len(scans)).astype(np.float32)


def load_scans(path: str, ndim: int | None) -> datasets.Dataset:
    """The scans of ``--data`` (any format of training's ``--data``): two or more, one shape."""
    data = datasets.load_dataset(path, None, ndim)
    if len(data.vols) < 2:
        raise volumes.DataError(f"{path} holds {len(data.vols)} scan: a template needs two or "
                                f"more")
    return data


def world_reference(data: datasets.Dataset, shape: tuple[int, ...]):
    """Where the template lies in the world: the first scan's NIfTI/MGH image for scans read
    from files, else the ``(4, 4)`` affine of the data's voxel size (1 mm when unknown)."""
    paths = getattr(data.vols, "paths", None)
    if paths is not None:
        return volumes.read_image(paths[0])[1]
    return transforms.spacing_grid(shape, data.spacing).affine


def check_flags(args) -> None:
    """Refuse flags of ``main.py template`` that do not go together, in one line."""
    if args.data is None:
        raise volumes.UsageError("main.py template needs --data (the scans), or --model RUN "
                                 "--value V to write a conditional template")
    if args.int_downsize > 1 and not args.int_steps:
        raise volumes.UsageError(f"--int_downsize {args.int_downsize} needs --int_steps")


def train(args) -> dict:
    """Learn a template as the flags of ``main.py template`` say; write the run folder.

    Returns
    -------
    dict
        What ``rundir.METRICS`` holds (``template_outputs.write_outputs``), or for a worker
        other than the chief ``distribution.worker_summary``.

    Raises
    ------
    volumes.DataError, volumes.UsageError
        Before any file is written, for data or flags that cannot be used.
    rundir.Diverged, rundir.Stopped, volumes.WriteError
        As ``training.train``.
    """
    check_flags(args)
    with contextlib.ExitStack() as lock:
        return _locked_train(args, lock)


def padded_scans(args) -> tuple[datasets.Dataset, np.ndarray | None, list[tuple[int, int]]]:
    """The scans of ``--data`` zero-padded to sizes the network takes, the attribute of each
    (``--condition``; None without), and the padding per axis."""
    data = load_scans(args.data, args.ndim)
    attributes = read_condition(args.condition, data) if args.condition else None
    shape = shapes.padded_shape(data.shape, models.DIVISOR)
    if args.int_downsize > 1 and any(size % args.int_downsize for size in shape):
        raise volumes.UsageError(f"--int_downsize {args.int_downsize} must divide the padded "
                                 f"shape {shape}")
    return (datasets.pad_dataset(data, shape), attributes,
            shapes.padding_to_shape(data.shape, shape))


def _locked_train(args, lock: contextlib.ExitStack) -> dict:
    """:func:`train`, the run folder's lock taken into ``lock`` (``training.locked_train``)."""
    strategy = distribution.distribution_strategy(None, args.batch_size)
    chief = distribution.is_chief()
    output = args.resume or (rundir.new_run_folder(args.output) if chief
                             else args.output or "the chief's run folder")
    if args.resume and chief:
        lock.enter_context(rundir.locked(output))
    data, attributes, padding = padded_scans(args)
    mean = mean_image(data.vols)
    keras.utils.set_random_seed(args.seed)
    options = {key: getattr(args, key) for key in ("loss", "lamda", "ncc_window", "bidir",
                                                   "int_steps", "int_downsize", "centre_weight",
                                                   "lr")}
    with strategy.scope():
        model, state = rundir.load_checkpoint(output, chief) if args.resume else (
            template.build_template_model(mean, {**options, "momentum": template.MOMENTUM},
                                          attributes), None)
    if state:
        training.check_resumed_epochs(args.epochs, state, output)
        model.optimizer.learning_rate = args.lr
    lazy = isinstance(data.vols, filelists.LazyVolumes)
    loader = ScanLoader(data.vols, args.batch_size, args.steps_per_epoch, args.seed, attributes,
                        workers=2 if lazy else 1)
    run_dir = training.claim_run_folder(output, args, chief, lock, state)
    print(f"template of {len(data.vols)} scans of shape {shapes.crop(mean, padding).shape}"
          + (f" (padded to {data.shape})" if any(sum(axis) for axis in padding) else "")
          + (f", conditioned on {args.condition}" if args.condition else "")
          + f", output in {output}" + (f", resumed {rundir.position(state)}" if state else ""))
    value = None if attributes is None else float(np.mean(attributes))
    snapshots = TemplateSnapshots(os.path.join(run_dir, rundir.TEMPLATE_EPOCHS),
                                  shapes.crop(mean, padding), padding,
                                  state["epoch"] if state else 0, value)
    seconds, _ = training.fit_run(
        model, loader, None, args.epochs, args.steps_per_epoch, output, run_dir, state,
        strategy, training.divergence_hint(args.lr, args.lamda,
                                           objective.DEFAULT_LAMBDA[args.loss]),
        training.training_callbacks(run_dir, state) + [snapshots])
    if not chief:
        return distribution.worker_summary(model, strategy, seconds)
    reference = world_reference(data, shapes.crop(mean, padding).shape)
    facts = {"args": vars(args), "output": output, "train_seconds": round(seconds, 1),
             "shape": data.shape}
    return template_outputs.write_outputs(model, data, mean, padding, reference, output, facts,
                                          options, value)


def command(args) -> str:
    """``main.py template``: learn a template, or (``--model``, ``--value``) write one."""
    if args.model is not None or args.value is not None:
        if args.model is None or args.value is None or args.output is None or args.data:
            raise volumes.UsageError("--value V, --model RUN and --output FILE go together, "
                                     "without --data")
        return template_outputs.write_for_value(args.model, args.value, args.output)
    summary = train(args)
    if "worker" in summary:
        return f"{summary['worker']} trained in {summary['train_seconds']:.0f} s"
    shift = summary["mean_displacement"]
    return (f"template learned in {summary['train_seconds']:.0f} s: mean displacement to the "
            f"scans {shift['voxels']:.3f} voxels"
            + (f" ({shift['mm']:.3f} mm)" if "mm" in shift else "")
            + f", sharpness {summary['sharpness']['template']:.4f} (the mean of the scans: "
            f"{summary['sharpness']['mean']:.4f}); wrote {summary['output']}")
