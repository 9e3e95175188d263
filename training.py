"""Training VoxelMorph: the sets, the loaders, the model, ``fit`` with checkpoints, the run's files.

:func:`train` does what ``python3 main.py [flags]`` asks: it loads the training and validation sets
that the data flags name (``data_sources.py``), pads them to sizes the network takes, builds and
compiles the model (or reloads the checkpoint of ``--resume``, in an epoch's middle too) inside
the distribution strategy, trains with a checkpoint every epoch (``rundir.Checkpoint``), the
divergence stop and, on SIGTERM or SIGINT, a checkpoint at the next batch's end
(``stopping.stop_signals``), then writes the model, the registered validation samples, their
scores and the figures into the run folder, which it holds locked (``rundir.locked``). With
``TF_CONFIG`` set, it is one worker of a cluster (``distribution.multi_worker_strategy``): only
the chief writes the run folder (``distribution.is_chief``).
Where it runs (one device, several GPUs, several machines) is ``distribution.py``'s job.
"""
import argparse
import contextlib
import functools
import importlib.util
import math
import os
import sys
import tempfile
import time

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np
import tensorflow as tf

import augmentation
import dataloader
import data_sources
import datasets
import distribution
import filelists
import hyper
import scores
import models
import objective
import pairing
import registration
import rundir
import shapes
import stopping
import synthesis
import synthetic
import viz
import volumes

DEFAULT_STEPS = 100  # steps per epoch for generated pairs (default data, scan-to-scan)
MAX_VAL_PAIRS = 20  # scan-to-scan validation pairs at most, during training
NUM_SAMPLES = 3  # validation pairs kept in rundir.SAMPLES for figures
SHAPE_LABELS = 8  # labels of the random shapes of --synth shapes, the background included
ONE_HOT_GIB = 2.0  # most memory the one-hot label maps of a batch may take (moving, static, moved)
SYNTH_VAL_SUBJECTS = 4  # subjects of random shapes that validate --synth shapes


def run_sets(args) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Training set, validation set and pairing mode of a run's training flags ``args`` (also
    those read back from its ``rundir.ARGS``)."""
    if args.synth:
        return synth_sets(args)
    return data_sources.training_sets(args.data, args.atlas, args.pairs,
                                      augmentation.augmentations(args.augment), args.val_data,
                                      args.val_fraction, args.ndim, args.pairs_file)


def validation_pairs(flags: dict) -> tuple[pairing.Pairs, datasets.Dataset]:
    """The validation pairs that a run of the training flags ``flags`` (its ``rundir.ARGS``)
    scored, on their own grid, and their set (for its labels and spacing)."""
    _, val_set, mode = run_sets(argparse.Namespace(**flags))
    return pairing.make_pairs(val_set, mode, MAX_VAL_PAIRS), val_set


def training_labels(train_set: datasets.Dataset, seg_weight: float) -> list[int]:
    """Labels of the segmentation loss: the data's ``labels``, else every non-zero one."""
    if not seg_weight:
        return []
    if train_set.segs is None and train_set.atlas_seg is None:
        raise volumes.DataError("--seg_weight needs label maps: 'segs' (and 'atlas_seg' for "
                                "atlas pairs) in --data")
    labels, _ = datasets.scored_labels(train_set)
    if not labels:
        raise volumes.DataError("--seg_weight: the label maps hold no non-zero label")
    return labels


def synth_sets(args) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Training and validation subjects of ``--synth``: those of ``--data`` (their label maps
    train; their images and label maps validate), or, for ``shapes``, subjects of random shapes
    on the default data's grid, each image of its own contrast (``synthesis.shapes_set``)."""
    refused = [flag for flag, value in (
        ("--atlas", args.atlas), ("--pairs", args.pairs), ("--pairs_file", args.pairs_file),
        ("--augment", args.augment is not None), ("--bidir", args.bidir),
        ("--seg_weight", args.seg_weight),
        ("--random_affine (it comes with --transform affine, rigid or joint)",
         args.random_affine),
        ("--data", args.synth == "shapes" and args.data)) if value]
    if refused:
        raise volumes.UsageError(f"--synth {args.synth} does not take {', '.join(refused)}")
    if args.synth == "shapes":
        shape = synthetic.load_default_data(args.ndim or 3).shape
        subjects = synthesis.shapes_set(shape, SHAPE_LABELS, SYNTH_VAL_SUBJECTS, args.seed + 1)
        return subjects, subjects, "scan_to_scan"
    if args.data is None:
        raise volumes.UsageError("--synth data draws the label maps of --data: give --data "
                                 "with label maps, or use --synth shapes")
    if args.data.endswith(".npz") and "vols" not in volumes.read_npz(args.data):
        return label_map_sets(args)
    train_set, val_set, mode = pairing.load_training_sets(
        args.data, None, "scan_to_scan", args.val_data,
        data_sources.VAL_FRACTION if args.val_fraction is None else args.val_fraction,
        args.ndim)
    if train_set.segs is None:
        raise volumes.DataError("--synth data needs label maps: 'segs' in --data")
    return train_set, val_set, mode


def label_map_sets(args) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """``--synth data`` from an ``.npz`` of label maps alone: all of them train, and the images
    and label maps of ``--val_data`` validate."""
    if args.val_data is None:
        raise volumes.UsageError(f"--data {args.data} holds label maps only ('segs', no 'vols'): "
                                 f"give --val_data with images and label maps to validate on")
    train_set = datasets.load_label_maps(args.data, args.ndim)
    val_set = datasets.load_dataset(args.val_data, None, len(train_set.shape))
    if val_set.shape != train_set.shape or val_set.segs is None or len(val_set.vols) < 2:
        raise volumes.DataError(f"--val_data must hold 2 or more images with label maps of "
                                f"shape {train_set.shape}, got {len(val_set.vols)} of "
                                f"{val_set.shape}" + " without label maps" * (val_set.segs is None))
    return train_set, val_set, "scan_to_scan"


def synth_loader(train_set: datasets.Dataset, args, shape: tuple[int, ...],
                 labels: list[int]) -> synthesis.SynthLoader:
    """The pairs of ``--synth``, synthesised from the training subjects' label maps (``data``)
    or from random shapes. Images are drawn from every label the maps hold, each with an
    intensity of its own (e.g. all of FreeSurfer's aseg labels); the loss compares ``labels``,
    the data's ``labels`` when it names them (e.g. the 30 structures scored), else every
    non-zero one."""
    options = {"random_affine": args.transform != "deformable", "spacing": train_set.spacing,
               "workers": 2}
    if args.synth == "shapes":
        return synthesis.SynthLoader(None, shape, range(SHAPE_LABELS), labels, args.batch_size,
                                     args.steps_per_epoch or DEFAULT_STEPS, args.seed, **options)
    drawn = np.unique(np.concatenate([np.unique(train_set.segs[i])
                                      for i in range(len(train_set.segs))]))
    return synthesis.SynthLoader(train_set.segs, shape, drawn, labels, args.batch_size,
                                 args.steps_per_epoch or DEFAULT_STEPS, args.seed, **options)


def check_one_hot(labels: list[int], shape: tuple[int, ...], batch_size: int) -> None:
    """Refuse label maps whose one-hot maps (moving, static and moved, float32) would take more
    than ``ONE_HOT_GIB`` per batch, in one line that says how to use fewer labels."""
    gib = 3 * 4 * batch_size * math.prod(shape) * len(labels) / 2**30
    if gib > ONE_HOT_GIB:
        raise volumes.DataError(f"{len(labels)} labels at {shape}: their one-hot maps would take "
                                f"{gib:.1f} GiB per batch, more than {ONE_HOT_GIB:g} GiB: name "
                                f"fewer labels ('labels' in --data) or group them")


def check_transform(args) -> None:
    """Refuse flags that ``--transform`` or ``--hyper`` does not take, in one line."""
    refused = []
    if args.transform != "deformable":
        refused += ["--bidir"] * bool(args.bidir)
    if args.transform not in ("deformable", "cascade"):
        refused += ["--seg_weight"] * bool(args.seg_weight)
    if args.transform in ("affine", "rigid"):
        refused += ["--int_steps"] * bool(args.int_steps)
        refused += [f"--unet {args.unet}"] * (args.unet != "paper")
    if refused:
        raise volumes.UsageError(f"--transform {args.transform} does not take "
                                 f"{', '.join(refused)}")
    refused = [flag for flag, value in (
        ("--lamda (it learns every weight in [0, 1])", args.lamda is not None),
        (f"--transform {args.transform}", args.transform != "deformable"),
        (f"--synth {args.synth}", args.synth), ("--init_from", args.init_from)) if value]
    if args.hyper and refused:
        raise volumes.UsageError(f"--hyper does not take {', '.join(refused)}")


def initialise(model: keras.Model, path: str) -> None:
    """``model``'s weights, or those of its matching stage, from the model file ``path``."""
    try:
        models.initialise(model, rundir.load_model(path))
    except ValueError as error:
        raise volumes.UsageError(f"--init_from {path}: {volumes.one_line(error)}") from error


def training_loader(train_set: datasets.Dataset, mode: str, default_data: bool,
                    batch_size: int, steps: int | None, seed: int,
                    augment: tuple[str, ...], options: dict) -> keras.utils.PyDataset:
    """Generated pairs for the default data and scan-to-scan, the pairs of a pair list in an
    order shuffled every epoch, subjects to atlas otherwise.

    ``augment`` holds the kinds of ``augmentation.random_subject`` to apply to every image of
    scan-to-scan pairs (none: ``()``). ``options`` holds the ``labels`` of the segmentation
    loss (none: ``[]``) and the other options of ``dataloader.PairLoader``. Volumes
    read from files (``filelists.LazyVolumes``) are read by two worker threads, batch by batch.
    """
    if default_data:  # subjects are made on the fly: a second thread overlaps it with training
        return synthetic.SyntheticDataLoader(train_set.atlas, batch_size, steps or DEFAULT_STEPS,
                                             seed, train_set.atlas_seg, workers=2, **options)
    lazy = isinstance(train_set.vols, filelists.LazyVolumes)
    if mode == "scan_to_scan":
        return dataloader.ScanToScanDataLoader(
            train_set.vols, batch_size, (steps or DEFAULT_STEPS) * batch_size, seed,
            functools.partial(augmentation.random_subject, kinds=augment) if augment else None,
            train_set.segs, workers=2 if augment or lazy else 1, **options)
    if mode == "listed":
        pairs = pairing.make_pairs(train_set, mode)
        loader = dataloader.RegistrationDataLoader(
            pairs.moving, pairs.static, batch_size, shuffle=True, seed=seed,
            moving_segs=pairs.moving_segs, static_segs=pairs.static_segs, workers=2, **options)
    else:
        loader = dataloader.RegistrationDataLoader(
            train_set.vols, train_set.atlas, batch_size, shuffle=True, seed=seed,
            moving_segs=train_set.segs, static_segs=train_set.atlas_seg,
            workers=2 if lazy else 1, **options)
    if steps is not None and steps > len(loader):
        what = "pairs" if mode == "listed" else "subjects"
        raise volumes.UsageError(f"--steps_per_epoch {steps} is more than one pass over the "
                                 f"{len(loader.moving)} training {what} ({len(loader)} "
                                 f"batches of --batch_size {batch_size}): ask for at most "
                                 f"{len(loader)}, or more --epochs")
    return loader


def training_callbacks(run_dir: str, state: dict | None, keep_best: bool = False,
                       tensorboard: bool = False) -> list:
    """The divergence stop, checkpoints into ``run_dir`` and, with ``tensorboard``, its logs."""
    callbacks = [stopping.StopOnDivergence(state["batch"] if state else 0),
                 rundir.Checkpoint(run_dir, state, keep_best)]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, rundir.TENSORBOARD)))
    return callbacks


def check_resumed_epochs(epochs: int, state: dict, output: str) -> None:
    """Refuse ``--epochs`` fewer than the epochs that a resumed run has begun."""
    begun = state["epoch"] + bool(state["batch"])
    if epochs < begun:
        raise volumes.UsageError(f"--epochs {epochs}: the run in {output} is "
                                 f"{rundir.position(state)} already; give --epochs {begun} or "
                                 f"more")


def divergence_hint(lr: float, lamda: float | None, default_lamda: float) -> str:
    """What to try when training diverged: a lower ``--lr``, another ``--lamda``."""
    lamda = default_lamda if lamda is None else lamda
    return f"lower --lr (now {lr:g}) or check --lamda (now {lamda:g})"


def diverged_message(where: tuple, hint: str, output: str, state: dict) -> str:
    """One line: where training diverged, what to try (``hint``), and what was kept."""
    epoch, step, loss = where
    return (f"training diverged at epoch {epoch} step {step} (loss {loss}); {hint}; "
            f"{rundir.kept(output, state)}")


def fit(model: keras.Model, loader: keras.utils.PyDataset, val_loader, epochs: int,
        steps: int | None, callbacks: list, state: dict | None) -> None:
    """``model.fit`` from the checkpoint ``state`` (or the start) to ``epochs``: the rest
    of an epoch stopped in its middle first (its batches from ``state["batch"]`` on), then the
    next epochs of ``steps`` batches (None: the loader's length); none once the divergence stop
    or a signal stopped training."""
    epoch, batch = (state["epoch"], state["batch"]) if state else (0, 0)
    stop, saver = callbacks[:2]
    if not model.optimizer.built:  # else Keras builds it in the train step's first trace,
        model.optimizer.build(model.trainable_variables)  # which it then traces again
    fit_epochs = functools.partial(model.fit, validation_data=val_loader, epochs=epochs,
                                   shuffle=False,  # the loaders shuffle by (seed, epoch)
                                   verbose=1 if sys.stdout.isatty() else 2)
    if batch:
        loader.epoch = epoch  # batches depend on (seed, epoch, index): the same as unbroken
        one_epoch = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda *_: setattr(model, "stop_training", True))
        fit_epochs(dataloader.RestOfEpoch(loader, batch, steps or len(loader)),
                   initial_epoch=epoch, callbacks=callbacks + [one_epoch])
        epoch += 1
    if not (stop.diverged or saver.signal):
        loader.epoch = epoch
        fit_epochs(loader, initial_epoch=epoch, callbacks=callbacks, steps_per_epoch=steps)


def fit_run(model: keras.Model, loader: keras.utils.PyDataset, val_loader, epochs: int,
            steps: int | None, output: str, run_dir: str, state: dict | None,
            strategy: tf.distribute.Strategy, hint: str, callbacks: list) -> tuple[float, dict]:
    """:func:`fit` under ``strategy`` with the divergence stop and checkpoints into ``run_dir``
    first in ``callbacks`` (:func:`training_callbacks`), SIGTERM and SIGINT stopping it at a
    checkpoint (``stopping.stop_signals``).

    Returns
    -------
    seconds : float
        Time spent in ``fit``.
    state : dict
        The checkpoint committed last (``rundir.Checkpoint.state``).

    Raises
    ------
    rundir.Diverged
        If a loss turned NaN or Inf: one line, with ``hint`` (what to try) and what was kept.
    rundir.Stopped
        If a signal stopped training, once its checkpoint was written; named by ``output``,
        the chief's run folder, on every worker.
    """
    stop, saver = callbacks[:2]
    start = time.perf_counter()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        distribution.fit_across_workers(model)
    with stopping.stop_signals(saver), strategy.scope():
        try:
            fit(model, loader, val_loader, epochs, steps, callbacks, state)
        except rundir.Stopped as stopped:  # named by the chief's folder on every worker
            raise rundir.Stopped(stopped.signum, saver.state, output) from None
    seconds = time.perf_counter() - start
    if stop.diverged:
        raise rundir.Diverged(diverged_message(stop.diverged, hint, output, saver.state))
    if saver.signal:  # it came at the end of an epoch, or after the last one
        raise rundir.Stopped(saver.signal, saver.state, output)
    return seconds, saver.state


def claim_run_folder(output: str, args, chief: bool, lock: contextlib.ExitStack,
                     state: dict | None) -> str:
    """The folder this process checkpoints into, once every check has passed: the chief's
    ``output``, locked into ``lock`` (a resumed run's lock is held already) with the flags
    ``args`` written (``rundir.write_args``); another worker's, a temporary folder of its own,
    removed when ``lock`` closes."""
    if not chief:
        return lock.enter_context(tempfile.TemporaryDirectory(prefix="vxm-worker-"))
    if not args.resume:
        lock.enter_context(rundir.locked(output))
        rundir.new_run_folder(output)  # still: another process may have begun a run in it
    rundir.write_args(output, {key: value for key, value in vars(args).items()
                               if key not in ("resume", "command")}, state)
    return output


def train(args) -> dict:
    """Train (or resume) as the training flags ``args`` say; write the run folder.

    Parameters
    ----------
    args : argparse.Namespace
        The flags of ``main.py``'s training command (stored as ``rundir.ARGS``); with
        ``args.resume``, those of the run being resumed.

    Returns
    -------
    dict
        What ``rundir.METRICS`` holds: the flags, the run's facts and ``scores.summarize`` of the
        validation pairs.

    Raises
    ------
    volumes.DataError, volumes.UsageError
        Before any file is written, for data or flags that cannot be used, or a run folder in
        use by another process (``rundir.locked``).
    rundir.Diverged
        If a loss turned NaN or Inf; the last complete epoch's checkpoint is kept.
    rundir.Stopped
        If SIGTERM or SIGINT stopped training, once its checkpoint was written.
    volumes.WriteError
        If a file cannot be written (disk full...); the last checkpoint written is kept.
    """
    with contextlib.ExitStack() as lock:  # the run folder's, held until training ends
        return locked_train(args, lock)


def locked_train(args, lock: contextlib.ExitStack) -> dict:
    """:func:`train`, which takes the run folder's lock into ``lock``: a resumed run's at once,
    a new run's after every check (its folder may not exist before)."""
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise volumes.UsageError("--tensorboard needs the tensorboard package: "
                                 "pip install tensorboard")
    strategy = distribution.distribution_strategy(args.gpus, args.batch_size)  # first: see
    # distribution.multi_worker_strategy
    chief = distribution.is_chief()
    output = args.resume or (rundir.new_run_folder(args.output) if chief
                             else args.output or "the chief's run folder")
    if args.resume and chief:
        lock.enter_context(rundir.locked(output))
    augment = augmentation.augmentations(args.augment)
    train_set, val_set, mode = run_sets(args)
    val_pairs = pairing.make_pairs(val_set, mode, MAX_VAL_PAIRS)  # scored on their own grid
    shape = shapes.padded_shape(train_set.shape, models.DIVISOR)
    if shape != train_set.shape:
        print(f"Padded the volumes with zeros from {train_set.shape} to {shape} (sizes must "
              f"divide by {models.DIVISOR})")
        train_set, val_set = (datasets.pad_dataset(data, shape) for data in (train_set, val_set))
    if args.int_downsize > 1 and (not args.int_steps or any(size % args.int_downsize
                                                            for size in shape)):
        raise volumes.UsageError(f"--int_downsize {args.int_downsize} needs --int_steps and "
                                 f"must divide the padded shape {shape}")
    check_transform(args)
    labels = (datasets.scored_labels(train_set)[0] if args.synth
              else training_labels(train_set, args.seg_weight))
    check_one_hot(labels, shape, args.batch_size)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    if args.mixed_precision:
        distribution.use_mixed_precision(device)
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        model, state = rundir.load_checkpoint(output, chief) if args.resume else (
            models.build_model(shape, args.model, args.loss, args.lamda, args.lr,
                               args.ncc_window, args.int_steps, args.int_downsize, args.bidir,
                               args.seg_weight, len(labels), args.transform,
                               args.unet, bool(args.synth), args.hyper), None)
        if not args.resume:
            for path in args.init_from or ():
                initialise(model, path)
    if state:
        check_resumed_epochs(args.epochs, state, output)
        model.optimizer.learning_rate = args.lr  # --lr may change on --resume
    loader = synth_loader(train_set, args, shape, labels) if args.synth else training_loader(
        train_set, mode, args.data is None and args.pairs_file is None, args.batch_size,
        args.steps_per_epoch, args.seed, augment,
        {"labels": labels, "random_affine": args.random_affine, "spacing": train_set.spacing})
    padded = pairing.make_pairs(val_set, mode, MAX_VAL_PAIRS)
    val_loader = dataloader.RegistrationDataLoader(
        padded.moving, padded.static, args.batch_size, moving_segs=padded.moving_segs,
        static_segs=padded.static_segs, labels=labels)
    if args.hyper:  # each sample's smoothness weight, drawn afresh (the same for validation)
        loader, val_loader = (hyper.HyperLoader(loader, args.seed),
                              hyper.HyperLoader(val_loader, args.seed, redraw=False))
    run_dir = claim_run_folder(output, args, chief, lock, state)
    kind = {"deformable": args.model, "joint": f"joint ({args.model})",
            "cascade": f"cascade ({args.model})"}.get(args.transform, args.transform)
    print(f"{kind} on {strategy.num_replicas_in_sync} {device}(s), {mode} pairs of shape "
          f"{shape}, {len(val_pairs)} validation pairs, output in {output}"
          + (f", resumed {rundir.position(state)}" if state else ""))

    default_lamda = objective.SYNTH_LAMBDA if args.synth else objective.DEFAULT_LAMBDA[args.loss]
    train_seconds, last = fit_run(
        model, loader, val_loader, args.epochs,
        args.steps_per_epoch if args.data or args.pairs_file else None, output, run_dir, state,
        strategy, divergence_hint(args.lr, args.lamda, default_lamda),
        training_callbacks(run_dir, state, args.keep_best, args.tensorboard))
    if not chief:
        return distribution.worker_summary(model, strategy, train_seconds)

    if args.keep_best and last["best_epoch"]:
        model = rundir.load_model(os.path.join(output, last["best_model"]))
    rundir.save_model(model, os.path.join(output, rundir.MODEL))
    results, samples = registration.evaluate_pairs(hyper.for_registration(model, None),
                                                   val_pairs, val_set.labels, NUM_SAMPLES,
                                                   val_set.spacing)
    rundir.write_samples(os.path.join(output, rundir.SAMPLES), samples)
    viz.render_run(output)
    summary = {"args": vars(args), "pairs": mode, "shape": shape, "device": device,
               "replicas": strategy.num_replicas_in_sync,
               "train_seconds": round(train_seconds, 1), "validation_pairs": len(results),
               "epochs_completed": last["epoch"], "best_epoch": last["best_epoch"],
               **({"lamda": hyper.default_lambda(model)} if args.hyper else {}),
               **scores.summarize(results)}
    rundir.write_json(os.path.join(output, rundir.METRICS), summary)
    return summary
