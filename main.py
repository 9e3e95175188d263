"""VoxelMorph (CVPR 2018) from the command line: train, register a pair, evaluate a model.

    python3 main.py                                   # train on the default data
    python3 main.py --epochs 60 --batch_size 1 --lr 1e-3
    python3 main.py --data subjects.npz --pairs scan_to_scan --model vm1
    python3 main.py register --model RUN/model.keras --moving m.nii.gz --static f.nii.gz \
        --moved moved.nii.gz
    python3 main.py evaluate --model RUN/model.keras --data test.npz

Training writes into ``--output``: ``args.json`` and, every epoch, the checkpoint files of
``checkpoint.py`` (``--resume RUN_DIR`` continues from them); at the end ``model.keras``,
``samples.npz``, ``metrics.json`` and the figures of ``viz.render_run``. Every file is written
atomically. ``python3 main.py COMMAND --help`` lists every option.
"""
import argparse
import csv
import importlib.util
import os
import sys
import time
import warnings

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np
import tensorflow as tf

import checkpoint
import dataloader
import datasets
import metrics
import models
import synthetic
import viz
import volumes

DEFAULT_STEPS = 100  # steps per epoch for generated pairs (default data, scan-to-scan)
MAX_VAL_PAIRS = 20  # scan-to-scan validation pairs at most, during training
NUM_SAMPLES = 3  # validation pairs kept in samples.npz for figures
VAL_FRACTION = 0.1  # share of --data held out for validation by default
ARGS = "args.json"  # the training flags of a run folder, read by --resume


def _number(kind: type, low: float, high: float = np.inf, low_open: bool = True,
            high_open: bool = True):
    """argparse type: a finite number of ``kind`` in the interval from ``low`` to ``high``."""
    def parse(text: str):
        value = kind(text)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below and np.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {parse.__name__}, got {text}")
        return value
    bounds = ("(" if low_open else "[") + f"{low:.10g}, {high:.10g}" + (")" if high_open else "]")
    parse.__name__ = {(True, np.inf): "positive", (False, np.inf): "non-negative"}.get(
        (low_open, high), f"in {bounds}") if low == 0 else f"in {bounds}"
    return parse


def _positive(kind: type, zero: bool = False):
    """argparse type: a positive (or, with ``zero``, non-negative) number of ``kind``."""
    return _number(kind, 0, low_open=not zero)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in --help, except None and those the help text already gives."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_data_flags(parser: argparse.ArgumentParser, default: str) -> None:
    """``--data``, ``--atlas`` and ``--pairs``, shared by training and evaluation."""
    parser.add_argument("--data", default=None,
                        help=".npy (N, *spatial), .npz (vols; optional segs, atlas, atlas_seg, "
                             "labels, label_names), a NIfTI file or a folder of NIfTI files "
                             f"(default: {default})")
    parser.add_argument("--atlas", default=None,
                        help="static atlas (.npy, .npz or NIfTI); overrides one in --data")
    parser.add_argument("--pairs", choices=("atlas", "scan_to_scan"), default=None,
                        help="register every subject to the atlas, or pairs of distinct subjects "
                             "(default: atlas when there is one)")


def _add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--finetune_steps", type=_positive(int, zero=True), default=0,
                        help="instance optimisation: Adam steps on each pair's own image loss "
                             "before registering it (its label maps are never used)")
    parser.add_argument("--finetune_lr", type=_positive(float), default=1e-3,
                        help="learning rate of --finetune_steps")


def build_parser() -> argparse.ArgumentParser:
    """Training flags (the original script's, with types) and the register/evaluate commands."""
    parser = argparse.ArgumentParser(
        prog="main.py", formatter_class=_HelpFormatter,
        description="Train VoxelMorph (Balakrishnan et al., CVPR 2018) on moving/static pairs. "
                    "Without --data it trains on the embedded default data: synthetic subjects "
                    "made by random smooth deformations of the MNI152 template.")
    parser.add_argument("--epochs", type=_positive(int), default=8, help="training epochs")
    parser.add_argument("--batch_size", type=_positive(int), default=1, help="pairs per step")
    parser.add_argument("--lr", type=_positive(float), default=1e-3, help="Adam learning rate")
    parser.add_argument("--lamda", type=_number(float, 0, low_open=False), default=None,
                        help="weight of the smoothness loss (default: 1.0 for ncc, 0.01 for mse)")
    parser.add_argument("--model", choices=("vm1", "vm2"), default="vm2",
                        help="VoxelMorph-1 or VoxelMorph-2 decoder")
    parser.add_argument("--loss", choices=("ncc", "mse"), default="ncc",
                        help="image similarity: local NCC or mean squared error")
    parser.add_argument("--ncc_window", type=_positive(int), default=9,
                        help="width of the local NCC window in voxels, per axis (the paper: 9 "
                             "at 1 mm)")
    parser.add_argument("--int_steps", type=_positive(int, zero=True), default=0,
                        help="diffeomorphic: integrate a stationary velocity field in this many "
                             "scaling and squaring steps (7 is usual; 0: the CVPR displacement)")
    parser.add_argument("--int_downsize", type=_positive(int), default=1,
                        help="with --int_steps: integrate at 1/F resolution, then resize")
    parser.add_argument("--bidir", action="store_true",
                        help="also warp the static image with the inverse field (symmetric loss)")
    parser.add_argument("--seg_weight", type=_positive(float, zero=True), default=0.0,
                        help="weight of the auxiliary soft-Dice loss of the warped label maps "
                             "(needs label maps for the training data)")
    _add_data_flags(parser, "the embedded MNI152 data")
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=None,
                        help="dimension of the images: the default data as 3D volumes "
                             "(80x96x80, the default) or 2D axial slices (80x96); with --data, "
                             "needed only for a 3-axis array without an atlas. Shape rule: "
                             + datasets.SHAPE_RULE)
    parser.add_argument("--steps_per_epoch", type=_positive(int), default=None,
                        help=f"training steps per epoch (default: {DEFAULT_STEPS} for generated "
                             "pairs, one pass over the subjects for atlas pairs from --data)")
    parser.add_argument("--augment", action="store_true",
                        help="--data with scan_to_scan pairs: random smooth deformations and "
                             "intensity changes of every training image (for small sets)")
    parser.add_argument("--val_data", default=None,
                        help="--data only: validation set, in a format of --data (default: hold "
                             "out the last --val_fraction of --data)")
    parser.add_argument("--val_fraction", type=_number(float, 0, 1), default=None,
                        help="--data without --val_data: share of the subjects held out for "
                             f"validation (default: {VAL_FRACTION})")
    parser.add_argument("--output", default=None,
                        help="output folder, new or empty (default: runs/<date>-<time>)")
    parser.add_argument("--seed", type=_number(int, 0, 2**32, low_open=False), default=0,
                        help="random seed, in [0, 2^32)")
    parser.add_argument("--gpus", type=_positive(int), default=None,
                        help="train on this many GPUs with tf.distribute.MirroredStrategy, "
                             "--batch_size split across them (default: all visible GPUs when "
                             "there are several, else one device)")
    parser.add_argument("--mixed_precision", action="store_true",
                        help="GPU only: float16 convolutions (Keras policy mixed_float16), the "
                             "displacement, sampler and losses in float32; ignored with a "
                             "warning on a CPU")
    parser.add_argument("--keep_best", action="store_true",
                        help="model.keras and the scores are of the epoch of lowest validation "
                             "loss (also kept as best.keras while training), not the last one")
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard logs into OUTPUT/tensorboard (needs the "
                             "tensorboard package)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last complete epoch, with the "
                             "flags stored in RUN_DIR/args.json (give no other flag)")

    commands = parser.add_subparsers(dest="command", metavar="{register,evaluate}",
                                     title="other commands (python3 main.py COMMAND --help)")
    _add_register_parser(commands)
    _add_evaluate_parser(commands)
    return parser


def _add_register_parser(commands) -> None:
    """``main.py register``: one pair with a trained model."""
    register = commands.add_parser(
        "register", formatter_class=_HelpFormatter,
        help="register one pair with a trained model",
        description="Register one moving image to a static image with a trained model. Inputs "
                    "and outputs are .npy, .npz or NIfTI (.nii, .nii.gz); NIfTI outputs keep "
                    "the static image's affine and header. Images are scaled to [0, 1] and "
                    "zero-padded to the model's input shape as in training; outputs come back at "
                    "the input's size.")
    register.add_argument("--model", required=True, help="trained model (.keras)")
    _add_finetune_flags(register)
    register.add_argument("--moving", required=True, help="moving image")
    register.add_argument("--static", required=True, help="static (fixed) image")
    register.add_argument("--moved", required=True,
                          help="output: the moving image warped onto the static one, in the "
                               "moving image's intensity units (float32)")
    register.add_argument("--deformation", default=None,
                          help="output: (*spatial, ndim) float32 displacement in voxels, 'ij' "
                               "order: moved[x] = moving[x + u(x)]")
    register.add_argument("--moving_seg", default=None,
                          help="label map of the moving image, warped with nearest neighbour")
    register.add_argument("--moved_seg", default=None,
                          help="output: the warped label map (same dtype as --moving_seg)")


def _add_evaluate_parser(commands) -> None:
    """``main.py evaluate``: scores of a trained model on labelled pairs."""
    evaluate = commands.add_parser(
        "evaluate", formatter_class=_HelpFormatter,
        help="score a trained model on labelled pairs",
        description="Register every test pair with a trained model and score it as the papers "
                    "and Learn2Reg do, on the data's own grid: Dice per label before and after "
                    "(labels warped with nearest neighbour), HD95 per label after (voxels, and "
                    "mm when the data gives the voxel size), SDlogJ, share of voxels with "
                    "Jacobian determinant <= 0, seconds per pair. Writes eval.json, "
                    "dice_per_structure.csv and dice_boxplot.png.")
    evaluate.add_argument("--model", required=True, help="trained model (.keras)")
    _add_finetune_flags(evaluate)
    _add_data_flags(evaluate, "the default data's validation subjects")
    evaluate.add_argument("--labels", type=int, nargs="+", default=None,
                          help="labels scored with Dice (default: 'labels' in --data, else every "
                               "non-zero label present)")
    evaluate.add_argument("--max_pairs", type=_positive(int), default=None,
                          help="score only the first pairs (default: all)")
    evaluate.add_argument("--output", default=None,
                          help="output folder (default: the model's folder)")


def training_sets(data: str | None, atlas: str | None, pairs: str | None, augment: bool,
                  val_data: str | None, val_fraction: float | None, ndim: int | None
                  ) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Training set, validation set and pairing mode of the training flags."""
    if data is None:
        given = [flag for flag, value in (("--atlas", atlas), ("--augment", augment),
                                          ("--val_data", val_data),
                                          ("--val_fraction", val_fraction),
                                          ("--pairs scan_to_scan", pairs == "scan_to_scan"))
                 if value]
        if given:
            raise volumes.DataError(f"{', '.join(given)} need{'s' * (len(given) == 1)} "
                                    f"--data: the default data has "
                                    f"its own atlas and validation set, and is made of "
                                    f"random deformations already")
        return (synthetic.load_default_data(ndim or 3), synthetic.default_validation_set(ndim or 3),
                "atlas")
    if val_data is not None and val_fraction is not None:
        raise volumes.DataError("--val_fraction and --val_data exclude each other")
    train_set, val_set, mode = datasets.load_training_sets(
        data, atlas, pairs, val_data, VAL_FRACTION if val_fraction is None else val_fraction, ndim)
    if augment and mode != "scan_to_scan":
        raise volumes.DataError("--augment applies to scan_to_scan pairs")
    return train_set, val_set, mode


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


def training_loader(train_set: datasets.Dataset, mode: str, default_data: bool,
                    batch_size: int, steps: int | None, seed: int,
                    augment: bool, targets: dict) -> keras.utils.PyDataset:
    """Generated pairs for the default data and scan-to-scan; subjects to atlas otherwise.

    ``targets`` holds the model's ``targets`` and the ``labels`` of its one-hot maps.
    """
    if default_data:  # subjects are made on the fly: a second thread overlaps it with training
        return synthetic.SyntheticDataLoader(train_set.atlas, batch_size, steps or DEFAULT_STEPS,
                                             seed, train_set.atlas_seg, workers=2, **targets)
    if mode == "scan_to_scan":
        return dataloader.ScanToScanDataLoader(
            train_set.vols, batch_size, (steps or DEFAULT_STEPS) * batch_size, seed,
            synthetic.augment if augment else None, train_set.segs,
            workers=2 if augment else 1, **targets)
    loader = dataloader.RegistrationDataLoader(train_set.vols, train_set.atlas, batch_size,
                                               shuffle=True, seed=seed,
                                               moving_segs=train_set.segs,
                                               static_segs=train_set.atlas_seg, **targets)
    if steps is not None and steps > len(loader):
        raise volumes.DataError(f"--steps_per_epoch {steps} is more than one pass over the "
                                f"{len(train_set.vols)} training subjects ({len(loader)} "
                                f"batches of --batch_size {batch_size}): ask for at most "
                                f"{len(loader)}, or more --epochs")
    return loader


def distribution_strategy(gpus: int | None, batch_size: int,
                          device_type: str = "GPU") -> tf.distribute.Strategy:
    """MirroredStrategy over the first ``gpus`` devices, or the default one-device strategy.

    Parameters
    ----------
    gpus : int or None
        Devices to train on; None: all visible ones when there are several, else one.
    batch_size : int
        Global batch size, split across the devices: at least one pair each.
    device_type : str
        "GPU"; "CPU" with logical CPU devices, for tests.

    Returns
    -------
    tf.distribute.Strategy
        Build and compile the model in its ``scope()``; Keras' ``fit`` then splits each global
        batch across the replicas and divides every replica's loss by their number.
    """
    devices = [device.name for device in tf.config.list_logical_devices(device_type)]
    if gpus is not None and gpus > len(devices):
        raise volumes.DataError(f"--gpus {gpus}, but {len(devices)} {device_type} device(s) "
                                "are visible")
    count = len(devices) if gpus is None else gpus
    if count < 2:
        return tf.distribute.get_strategy()
    if batch_size < count:
        raise volumes.DataError(f"--batch_size {batch_size} is split across {count} devices: "
                                f"give at least {count} pairs, or fewer --gpus")
    return tf.distribute.MirroredStrategy(devices[:count])


def use_mixed_precision(device: str) -> None:
    """Set Keras' mixed_float16 policy for the models built next (GPU); warn on a CPU."""
    if device == "GPU":
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        print("main.py: warning: --mixed_precision is ignored on a CPU (float16 is slower "
              "there); training in float32", file=sys.stderr)


def write_samples(path: str, samples: list[dict]) -> None:
    """Store registered pairs (images, displacements, label maps) for ``viz.py``."""
    with volumes.atomic_path(path) as tmp:
        np.savez_compressed(tmp, **{key: np.stack([sample[key] for sample in samples])
                                    for key in samples[0]})


def output_folder(path: str) -> str:
    """Check that ``path`` can be a folder of outputs (made later); return it.

    Raises
    ------
    volumes.DataError
        If it, or the nearest existing path above it, is a file, or it cannot be written.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise volumes.DataError(f"--output {path} is a file, not a folder")
    while not os.path.exists(parent):  # the nearest existing path above: folders are made in it
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise volumes.DataError(f"--output {path}: {parent} is a file, not a folder")
    if not os.access(path if os.path.isdir(path) else parent, os.W_OK | os.X_OK):
        raise volumes.DataError(f"cannot write into {path}: permission denied")
    return path


def training_output(args) -> str:
    """The run folder of a new run: writable and holding no other run."""
    output = output_folder(args.output or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S")))
    if os.path.isfile(os.path.join(output, ARGS)):
        raise volumes.DataError(f"{output} already holds a training run: continue it with "
                                f"--resume {output}, or choose another --output")
    return output


def resumed_args(args, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The flags stored in ``RUN_DIR/args.json``, every one of them, for ``--resume RUN_DIR``."""
    given = sorted(f"--{key}" for key, value in vars(args).items()
                   if key not in ("resume", "command") and value != parser.get_default(key))
    if given:
        raise volumes.DataError(f"--resume takes every flag from {args.resume}/{ARGS}; drop "
                                f"{', '.join(given)}")
    stored = checkpoint.read_json(os.path.join(args.resume, ARGS))
    return argparse.Namespace(**{**vars(args), **stored, "resume": args.resume,
                                 "output": args.resume})


def training_callbacks(args, output: str, state: dict | None) -> list:
    """Checkpoints, the divergence stop and, with --tensorboard, TensorBoard logs."""
    callbacks = [checkpoint.StopOnDivergence(),
                 checkpoint.Checkpoint(output, state, args.keep_best)]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output, "tensorboard")))
    return callbacks


def diverged_message(where: tuple, args, output: str, state: dict) -> str:
    """One line: where training diverged, the likely cause, and what was kept."""
    epoch, step, loss = where
    lamda = models.DEFAULT_LAMBDA[args.loss] if args.lamda is None else args.lamda
    kept = (f"the checkpoint of epoch {state['epoch']} is kept in {output}" if state["epoch"]
            else "no epoch completed")
    return (f"training diverged at epoch {epoch} step {step} (loss {loss}); lower --lr (now "
            f"{args.lr:g}) or check --lamda (now {lamda:g}); {kept}")


def train(args) -> str:
    """Train (or resume), checkpointing every epoch; then write the model, samples, metrics."""
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise volumes.DataError("--tensorboard needs the tensorboard package: "
                                "pip install tensorboard")
    output = args.resume or training_output(args)
    train_set, val_set, mode = training_sets(args.data, args.atlas, args.pairs, args.augment,
                                             args.val_data, args.val_fraction, args.ndim)
    own_shape = train_set.shape  # validation pairs are scored on it, without the padding
    shape = datasets.padded_shape(train_set.shape, models.DIVISOR)
    if shape != train_set.shape:
        print(f"Padded the volumes with zeros from {train_set.shape} to {shape} (sizes must "
              f"divide by {models.DIVISOR})")
        train_set, val_set = (datasets.pad_dataset(data, shape) for data in (train_set, val_set))
    val_pairs = datasets.make_pairs(val_set, mode, MAX_VAL_PAIRS)
    if args.int_downsize > 1 and (not args.int_steps or any(size % args.int_downsize
                                                            for size in train_set.shape)):
        raise volumes.DataError(f"--int_downsize {args.int_downsize} needs --int_steps and "
                                f"must divide the padded shape {train_set.shape}")
    labels = training_labels(train_set, args.seg_weight)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    strategy = distribution_strategy(args.gpus, args.batch_size)
    if args.mixed_precision:
        use_mixed_precision(device)
    keras.utils.set_random_seed(args.seed)
    with strategy.scope():
        model, state = checkpoint.load_checkpoint(output) if args.resume else (
            models.build_model(train_set.shape, args.model, args.loss, args.lamda, args.lr,
                               args.ncc_window, args.int_steps, args.int_downsize, args.bidir,
                               args.seg_weight, len(labels)), None)
    targets = {"targets": models.targets(model), "labels": labels}
    loader = training_loader(train_set, mode, args.data is None, args.batch_size,
                             args.steps_per_epoch, args.seed, args.augment, targets)
    os.makedirs(output, exist_ok=True)
    checkpoint.write_json(os.path.join(output, ARGS),
                          {key: value for key, value in vars(args).items()
                           if key not in ("resume", "command")})
    initial_epoch = state["epoch"] if state else 0
    print(f"{args.model} on {strategy.num_replicas_in_sync} {device}(s), {mode} pairs of shape "
          f"{train_set.shape}, {len(val_pairs)} validation pairs, output in {output}"
          + (f", resumed after epoch {initial_epoch}" if state else ""))

    loader.epoch = initial_epoch  # batches depend on (seed, epoch, index): the same as unbroken
    callbacks = training_callbacks(args, output, state)
    start = time.perf_counter()
    model.fit(loader,
              validation_data=dataloader.RegistrationDataLoader(
                  val_pairs.moving, val_pairs.static, args.batch_size,
                  moving_segs=val_pairs.moving_segs, static_segs=val_pairs.static_segs,
                  **targets),
              epochs=args.epochs, initial_epoch=initial_epoch,
              steps_per_epoch=args.steps_per_epoch if args.data else None,
              shuffle=False,  # the loaders shuffle by (seed, epoch), which a resume restores
              callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
    train_seconds = time.perf_counter() - start
    stop, saver = callbacks[:2]
    if stop.diverged:
        raise checkpoint.Diverged(diverged_message(stop.diverged, args, output, saver.state))

    if args.keep_best and saver.state["best_epoch"]:
        model = checkpoint.load_model(os.path.join(output, checkpoint.BEST))
    checkpoint.save_model(model, os.path.join(output, "model.keras"))
    results, samples = models.evaluate_pairs(model, val_pairs, val_set.labels, NUM_SAMPLES,
                                             own_shape, val_set.spacing)
    write_samples(os.path.join(output, "samples.npz"), samples)
    viz.render_run(output)
    summary = {"args": vars(args), "pairs": mode, "shape": train_set.shape, "device": device,
               "replicas": strategy.num_replicas_in_sync,
               "train_seconds": round(train_seconds, 1), "validation_pairs": len(results),
               "epochs_completed": saver.state["epoch"], "best_epoch": saver.state["best_epoch"],
               **metrics.summarize(results)}
    checkpoint.write_json(os.path.join(output, "metrics.json"), summary)
    return report(summary) + f", trained in {train_seconds:.0f} s"


def report(summary: dict) -> str:
    """One line of the headline scores of ``metrics.summarize``."""
    line = (f"NCC {summary['ncc_before']['mean']:.3f} -> {summary['ncc_after']['mean']:.3f}")
    if "dice_after" in summary:
        line += (f", Dice {summary['dice_before']['mean']:.3f} -> "
                 f"{summary['dice_after']['mean']:.3f}, HD95 {summary['hd95']['mean']:.2f} voxels")
        if "hd95_mm" in summary:
            line += f" ({summary['hd95_mm']['mean']:.2f} mm)"
    return line + (f", SDlogJ {summary['sdlogj']['mean']:.3f}, "
                   f"folding voxels {100 * summary['folding_fraction']['mean']:.3f}%")


def load_model(path: str) -> keras.Model:
    """A saved VoxelMorph model, compiled as trained (``--finetune_steps`` reuses its loss)."""
    if not os.path.isfile(path):
        raise volumes.DataError(f"no such model file: {path}")
    return checkpoint.load_model(path)


def check_output_files(paths: dict[str, str | None], inputs: list[str]) -> None:
    """Refuse output files that could not all be written: checked before any work is done.

    Parameters
    ----------
    paths : dict
        ``{flag: path}`` of the outputs asked for (None: not asked for).
    inputs : list of str
        Input files, which no output may overwrite.
    """
    given = {flag: path for flag, path in paths.items() if path}
    for flag, path in given.items():
        volumes.file_format(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise volumes.DataError(f"{flag} {path}: no such folder {folder}")
        if os.path.isdir(path):
            raise volumes.DataError(f"{flag} {path} is a folder, not a file")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise volumes.DataError(f"{flag} {path}: cannot write into {folder}")
        if any(os.path.abspath(path) == os.path.abspath(other) for other in inputs):
            raise volumes.DataError(f"{flag} {path} would overwrite an input file")
    if len({os.path.abspath(path) for path in given.values()}) < len(given):
        raise volumes.DataError(f"{', '.join(given)} must be different files")


def affine_warning(*images) -> None:
    """Warn when NIfTI inputs have different affines: registration maps voxel grids only."""
    affines = [image.affine for image in images if image is not None]
    if len(affines) > 1 and not all(np.allclose(a, affines[0], atol=1e-4) for a in affines):
        warnings.warn("the moving and static NIfTI affines differ: VoxelMorph registers voxel "
                      "grids, so align the images first (e.g. affinely to one space)",
                      volumes.DataWarning, stacklevel=2)


def register(args) -> str:
    """Register one pair of files with a trained model and write the outputs."""
    if (args.moving_seg is None) != (args.moved_seg is None):
        raise volumes.DataError("--moving_seg and --moved_seg go together")
    check_output_files({"--moved": args.moved, "--deformation": args.deformation,
                        "--moved_seg": args.moved_seg},
                       [args.model, args.moving, args.static, args.moving_seg or ""])
    model = load_model(args.model)
    moving, moving_image = volumes.load_volume(args.moving)
    static, reference = volumes.load_volume(args.static)
    affine_warning(moving_image, reference)
    moving_seg = None if args.moving_seg is None else volumes.load_volume(args.moving_seg)[0]
    registered = models.register_volumes(model, moving, static, moving_seg, args.finetune_steps,
                                         args.finetune_lr)
    for path, key in ((args.moved, "moved"), (args.deformation, "deformation"),
                      (args.moved_seg, "moved_seg")):
        if path:
            volumes.save_volume(path, registered[key], reference, key == "deformation")
    tuned = (f" after {args.finetune_steps} fine-tuning steps "
             f"({registered['finetune_seconds']:.1f} s)" if args.finetune_steps else "")
    return (f"registered {args.moving} to {args.static} in {registered['seconds']:.3f} s "
            f"(one forward pass){tuned}, wrote {args.moved}")


def evaluation_set(data: str | None, atlas: str | None, pairs: str | None,
                   shape: tuple[int, ...]) -> datasets.Dataset:
    """The test set of ``evaluate``, for a model of input ``shape`` (not padded yet)."""
    if data is None:
        if atlas is not None or pairs == "scan_to_scan":
            raise volumes.DataError("the default data has its own atlas and atlas pairs only")
        if len(shape) not in synthetic.NUM_VALIDATION:
            raise volumes.DataError(f"no default data for a model of input shape {shape}")
        test_set = synthetic.default_validation_set(len(shape))
    else:
        test_set = datasets.load_dataset(data, atlas, len(shape))
    datasets.padding_to_shape(test_set.shape, shape)  # refuse volumes that do not fit
    return test_set


def evaluate(args) -> str:
    """Score a trained model on every test pair; write eval.json, a CSV and a box plot."""
    output = output_folder(args.output or os.path.dirname(os.path.abspath(args.model)))
    model = load_model(args.model)
    shape = models.input_shape(model)
    data = evaluation_set(args.data, args.atlas, args.pairs, shape)
    mode = datasets.pairing(data, args.pairs)
    pairs = datasets.make_pairs(datasets.pad_dataset(data, shape), mode, args.max_pairs)
    labels, names = datasets.scored_labels(data, args.labels)
    print(f"evaluating {args.model} on {len(pairs)} {mode} pairs of shape {data.shape}, "
          f"{len(labels)} labels")
    results, _ = models.evaluate_pairs(model, pairs, labels or None, shape=data.shape,
                                       spacing=data.spacing, finetune_steps=args.finetune_steps,
                                       finetune_lr=args.finetune_lr)
    summary = metrics.summarize(results)
    os.makedirs(output, exist_ok=True)
    per_pair = [{"moving": int(moving), "static": "atlas" if static < 0 else int(static), **result}
                for (moving, static), result in zip(pairs.index, results)]
    checkpoint.write_json(os.path.join(output, "eval.json"),
               {"model": args.model, "data": args.data or "default", "pairs": mode,
                "labels": labels, "label_names": names, "spacing": data.spacing,
                "summary": summary,
                "per_pair": per_pair})
    if "dice_after" in summary:
        write_dice_csv(os.path.join(output, "dice_per_structure.csv"), labels, names, summary)
        viz.plot_dice(os.path.join(output, "eval.json"), os.path.join(output, "dice_boxplot.png"))
    return report(summary) + (f", {summary['seconds']['mean']:.3f} s per pair; "
                              f"wrote {os.path.join(output, 'eval.json')}")


def write_dice_csv(path: str, labels: list[int], names: list[str] | None, summary: dict) -> None:
    """Per-structure scores, mean and std over pairs: Dice before and after registration, HD95
    after it in voxels and, when the spacing is known, in mm."""
    keys = [key for key in ("dice_before", "dice_after", "hd95", "hd95_mm") if key in summary]
    with volumes.atomic_path(path) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["label", "name"] + [f"{key}_{stat}" for key in keys
                                             for stat in ("mean", "std")])
        for i, label in enumerate(labels):
            writer.writerow([label, names[i] if names else label]
                            + [f"{summary[key][stat][i]:.4f}" for key in keys
                               for stat in ("per_label", "per_label_std")])


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Data warnings as one line ``main.py: warning: ...``; others as Python prints them."""
    if issubclass(category, volumes.DataWarning):
        print(f"main.py: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"register": register, "evaluate": evaluate}.get(args.command, train)
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning
        try:
            if args.command is None and args.resume:
                args = resumed_args(args, parser)
            print(command(args))
        except (volumes.DataError, checkpoint.Diverged) as error:
            print(f"main.py: error: {' '.join(str(error).split())}", file=sys.stderr)
            return 2 if isinstance(error, volumes.DataError) else 1
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # epoch lines reach a log file or pipe at once
    sys.exit(main())
