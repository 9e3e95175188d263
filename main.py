"""VoxelMorph (CVPR 2018) from the command line: train, register a pair, evaluate a model.

    python3 main.py                                   # train on the default data
    python3 main.py --epochs 60 --batch_size 1 --lr 1e-3
    python3 main.py --data subjects.npz --pairs scan_to_scan --model vm1
    python3 main.py register --model RUN/model.keras --moving m.nii.gz --static f.nii.gz \
        --moved moved.nii.gz
    python3 main.py evaluate --model RUN/model.keras --data test.npz

Training writes into ``--output``: ``model.keras``, ``history.csv``, ``samples.npz``,
``metrics.json`` and the figures of ``viz.render_run``. ``python3 main.py COMMAND --help``
lists every option.
"""
import argparse
import csv
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dataloader  # noqa: E402
import metrics  # noqa: E402
import models  # noqa: E402
import synthetic  # noqa: E402
import viz  # noqa: E402

DEFAULT_STEPS = 100  # steps per epoch for generated pairs (default data, scan-to-scan)
MAX_VAL_PAIRS = 20  # scan-to-scan validation pairs at most, during training
NUM_SAMPLES = 3  # validation pairs kept in samples.npz for figures


def _positive(kind: type, zero: bool = False):
    """argparse type: a positive (or, with ``zero``, non-negative) finite number of ``kind``."""
    def parse(text: str):
        value = kind(text)
        if not (value >= 0 if zero else value > 0) or not np.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero else 'positive'}, "
                                             f"got {text}")
        return value
    parse.__name__ = f"{'non-negative' if zero else 'positive'} {kind.__name__}"
    return parse


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
    parser.add_argument("--finetune_lr", type=_positive(float), default=1e-4,
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
    parser.add_argument("--lamda", type=float, default=None,
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
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=3,
                        help="default data only: 3D volumes (80x96x80) or 2D axial slices (80x96)")
    parser.add_argument("--steps_per_epoch", type=_positive(int), default=None,
                        help=f"training steps per epoch (default: {DEFAULT_STEPS} for generated "
                             "pairs, one pass over the subjects for atlas pairs from --data)")
    parser.add_argument("--augment", action="store_true",
                        help="--data with scan_to_scan pairs: random smooth deformations and "
                             "intensity changes of every training image (for small sets)")
    parser.add_argument("--val_data", default=None,
                        help="--data only: validation set, in a format of --data (default: hold "
                             "out the last --val_fraction of --data)")
    parser.add_argument("--val_fraction", type=float, default=0.1,
                        help="--data only: share of the subjects held out for validation")
    parser.add_argument("--output", default=None,
                        help="output folder (default: runs/<date>-<time>)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--gpus", type=_positive(int), default=None,
                        help="train on this many GPUs with tf.distribute.MirroredStrategy, "
                             "--batch_size split across them (default: all visible GPUs when "
                             "there are several, else one device)")
    parser.add_argument("--mixed_precision", action="store_true",
                        help="GPU only: float16 convolutions (Keras policy mixed_float16), the "
                             "displacement, sampler and losses in float32; ignored with a "
                             "warning on a CPU")

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
                  val_data: str | None, val_fraction: float, ndim: int
                  ) -> tuple[dataloader.Dataset, dataloader.Dataset, str]:
    """Training set, validation set and pairing mode of the training flags."""
    if data is None:
        if atlas is not None or pairs == "scan_to_scan" or augment:
            raise dataloader.DataError("the default data has its own atlas, atlas pairs only, "
                                       "and is made of random deformations already")
        return synthetic.load_default_data(ndim), synthetic.default_validation_set(ndim), "atlas"
    train_set, val_set, mode = dataloader.load_training_sets(data, atlas, pairs, val_data,
                                                             val_fraction)
    if augment and mode != "scan_to_scan":
        raise dataloader.DataError("--augment applies to scan_to_scan pairs")
    return train_set, val_set, mode


def training_labels(train_set: dataloader.Dataset, seg_weight: float) -> list[int]:
    """Labels of the segmentation loss: the data's ``labels``, else every non-zero one."""
    if not seg_weight:
        return []
    if train_set.segs is None and train_set.atlas_seg is None:
        raise dataloader.DataError("--seg_weight needs label maps: 'segs' (and 'atlas_seg' for "
                                   "atlas pairs) in --data")
    labels, _ = dataloader.scored_labels(train_set)
    if not labels:
        raise dataloader.DataError("--seg_weight: the label maps hold no non-zero label")
    return labels


def training_loader(train_set: dataloader.Dataset, mode: str, default_data: bool,
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
    return dataloader.RegistrationDataLoader(train_set.vols, train_set.atlas, batch_size,
                                             shuffle=True, seed=seed, moving_segs=train_set.segs,
                                             static_segs=train_set.atlas_seg, **targets)


def _without_nan(value):
    """``value`` with every NaN or infinite float (in nested dicts and lists) replaced by None."""
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
        raise dataloader.DataError(f"--gpus {gpus}, but {len(devices)} {device_type} device(s) "
                                   "are visible")
    count = len(devices) if gpus is None else gpus
    if count < 2:
        return tf.distribute.get_strategy()
    if batch_size < count:
        raise dataloader.DataError(f"--batch_size {batch_size} is split across {count} devices: "
                                   f"give at least {count} pairs, or fewer --gpus")
    return tf.distribute.MirroredStrategy(devices[:count])


def use_mixed_precision(device: str) -> None:
    """Set Keras' mixed_float16 policy for the models built next (GPU); warn on a CPU."""
    if device == "GPU":
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        print("main.py: warning: --mixed_precision is ignored on a CPU (float16 is slower "
              "there); training in float32", file=sys.stderr)


def write_json(path: str, content: dict) -> None:
    """Write ``content`` as JSON, NaN (e.g. the score of an absent structure) as null."""
    with open(path, "w") as file:
        json.dump(_without_nan(content), file, indent=2, allow_nan=False)


def write_samples(path: str, samples: list[dict]) -> None:
    """Store registered pairs (images, displacements, label maps) for ``viz.py``."""
    np.savez_compressed(path, **{key: np.stack([sample[key] for sample in samples])
                                 for key in samples[0]})


def train(args) -> str:
    """Train, then write the model, history, samples, figures and validation metrics."""
    train_set, val_set, mode = training_sets(args.data, args.atlas, args.pairs, args.augment,
                                             args.val_data, args.val_fraction, args.ndim)
    own_shape = train_set.shape  # validation pairs are scored on it, without the padding
    shape = dataloader.padded_shape(train_set.shape, models.DIVISOR)
    if shape != train_set.shape:
        print(f"Padded the volumes with zeros from {train_set.shape} to {shape} (sizes must "
              f"divide by {models.DIVISOR})")
        train_set, val_set = (dataloader.pad_dataset(data, shape) for data in (train_set, val_set))
    val_pairs = dataloader.make_pairs(val_set, mode, MAX_VAL_PAIRS)
    if args.int_downsize > 1 and (not args.int_steps or any(size % args.int_downsize
                                                            for size in train_set.shape)):
        raise dataloader.DataError(f"--int_downsize {args.int_downsize} needs --int_steps and "
                                   f"must divide the padded shape {train_set.shape}")
    labels = training_labels(train_set, args.seg_weight)
    output = args.output or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(output, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    strategy = distribution_strategy(args.gpus, args.batch_size)
    if args.mixed_precision:
        use_mixed_precision(device)
    print(f"{args.model} on {strategy.num_replicas_in_sync} {device}(s), {mode} pairs of shape "
          f"{train_set.shape}, {len(val_pairs)} validation pairs, output in {output}")

    with strategy.scope():
        model = models.build_model(train_set.shape, args.model, args.loss, args.lamda, args.lr,
                                   args.ncc_window, args.int_steps, args.int_downsize,
                                   args.bidir, args.seg_weight, len(labels))
    start = time.perf_counter()
    targets = {"targets": models.targets(model), "labels": labels}
    loader = training_loader(train_set, mode, args.data is None, args.batch_size,
                             args.steps_per_epoch, args.seed, args.augment, targets)
    model.fit(loader,
              validation_data=dataloader.RegistrationDataLoader(
                  val_pairs.moving, val_pairs.static, args.batch_size,
                  moving_segs=val_pairs.moving_segs, static_segs=val_pairs.static_segs,
                  **targets),
              epochs=args.epochs, steps_per_epoch=args.steps_per_epoch if args.data else None,
              callbacks=[keras.callbacks.CSVLogger(os.path.join(output, "history.csv"))],
              verbose=1)
    train_seconds = time.perf_counter() - start

    model.save(os.path.join(output, "model.keras"))
    results, samples = models.evaluate_pairs(model, val_pairs, val_set.labels, NUM_SAMPLES,
                                             own_shape, val_set.spacing)
    write_samples(os.path.join(output, "samples.npz"), samples)
    viz.render_run(output)
    summary = {"args": vars(args), "pairs": mode, "shape": train_set.shape, "device": device,
               "replicas": strategy.num_replicas_in_sync,
               "train_seconds": round(train_seconds, 1), "validation_pairs": len(results),
               **metrics.summarize(results)}
    write_json(os.path.join(output, "metrics.json"), summary)
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
        raise dataloader.DataError(f"no such model file: {path}")
    try:
        return keras.models.load_model(path)
    except Exception as error:  # Keras raises several types for files it cannot read
        raise dataloader.DataError(f"cannot load a Keras model from {path}: {error}") from error


def register(args) -> str:
    """Register one pair of files with a trained model and write the outputs."""
    if (args.moving_seg is None) != (args.moved_seg is None):
        raise dataloader.DataError("--moving_seg and --moved_seg go together")
    model = load_model(args.model)
    moving, _ = dataloader.load_volume(args.moving)
    static, reference = dataloader.load_volume(args.static)
    moving_seg = None if args.moving_seg is None else dataloader.load_volume(args.moving_seg)[0]
    registered = models.register_volumes(model, moving, static, moving_seg, args.finetune_steps,
                                         args.finetune_lr)
    for path, key in ((args.moved, "moved"), (args.deformation, "deformation"),
                      (args.moved_seg, "moved_seg")):
        if path:
            dataloader.save_volume(path, registered[key], reference)
    tuned = (f" after {args.finetune_steps} fine-tuning steps "
             f"({registered['finetune_seconds']:.1f} s)" if args.finetune_steps else "")
    return (f"registered {args.moving} to {args.static} in {registered['seconds']:.3f} s "
            f"(one forward pass){tuned}, wrote {args.moved}")


def evaluation_set(data: str | None, atlas: str | None, pairs: str | None,
                   shape: tuple[int, ...]) -> dataloader.Dataset:
    """The test set of ``evaluate``, for a model of input ``shape`` (not padded yet)."""
    if data is None:
        if atlas is not None or pairs == "scan_to_scan":
            raise dataloader.DataError("the default data has its own atlas and atlas pairs only")
        if len(shape) not in synthetic.NUM_VALIDATION:
            raise dataloader.DataError(f"no default data for a model of input shape {shape}")
        test_set = synthetic.default_validation_set(len(shape))
    else:
        test_set = dataloader.load_dataset(data, atlas)
    dataloader.padding_to_shape(test_set.shape, shape)  # refuse volumes that do not fit
    return test_set


def evaluate(args) -> str:
    """Score a trained model on every test pair; write eval.json, a CSV and a box plot."""
    model = load_model(args.model)
    shape = models.input_shape(model)
    data = evaluation_set(args.data, args.atlas, args.pairs, shape)
    mode = dataloader.pairing(data, args.pairs)
    pairs = dataloader.make_pairs(dataloader.pad_dataset(data, shape), mode, args.max_pairs)
    labels, names = dataloader.scored_labels(data, args.labels)
    print(f"evaluating {args.model} on {len(pairs)} {mode} pairs of shape {data.shape}, "
          f"{len(labels)} labels")
    results, _ = models.evaluate_pairs(model, pairs, labels or None, shape=data.shape,
                                       spacing=data.spacing, finetune_steps=args.finetune_steps,
                                       finetune_lr=args.finetune_lr)
    summary = metrics.summarize(results)
    output = args.output or os.path.dirname(os.path.abspath(args.model))
    os.makedirs(output, exist_ok=True)
    per_pair = [{"moving": int(moving), "static": "atlas" if static < 0 else int(static), **result}
                for (moving, static), result in zip(pairs.index, results)]
    write_json(os.path.join(output, "eval.json"),
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
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["label", "name"] + [f"{key}_{stat}" for key in keys
                                             for stat in ("mean", "std")])
        for i, label in enumerate(labels):
            writer.writerow([label, names[i] if names else label]
                            + [f"{summary[key][stat][i]:.4f}" for key in keys
                               for stat in ("per_label", "per_label_std")])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"register": register, "evaluate": evaluate}.get(args.command, train)
    try:
        print(command(args))
    except dataloader.DataError as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
