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
import dataclasses
import json
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
import utils  # noqa: E402
import viz  # noqa: E402

DEFAULT_LAMBDA = {"ncc": 1.0, "mse": 0.01}  # the papers' choices
DEFAULT_STEPS = 100  # steps per epoch for generated pairs (default data, scan-to-scan)
VALIDATION_SEED = 20180618  # the default data's validation subjects are the same in every run
NUM_VAL_SYNTHETIC = {2: 16, 3: 8}  # validation subjects made from the default data
MAX_VAL_PAIRS = 20  # scan-to-scan validation pairs at most, during training
NUM_SAMPLES = 3  # validation pairs kept in samples.npz for figures


def _positive(kind: type):
    """argparse type: a positive number of ``kind``."""
    def parse(text: str):
        value = kind(text)
        if not value > 0 or not np.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
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
                    "do: Dice per label before and after (labels warped with nearest "
                    "neighbour), share of voxels with Jacobian determinant <= 0, seconds per "
                    "pair. Writes eval.json, dice_per_structure.csv and dice_boxplot.png.")
    evaluate.add_argument("--model", required=True, help="trained model (.keras)")
    _add_data_flags(evaluate, "the default data's validation subjects")
    evaluate.add_argument("--labels", type=int, nargs="+", default=None,
                          help="labels scored with Dice (default: 'labels' in --data, else every "
                               "non-zero label present)")
    evaluate.add_argument("--max_pairs", type=_positive(int), default=None,
                          help="score only the first pairs (default: all)")
    evaluate.add_argument("--output", default=None,
                          help="output folder (default: the model's folder)")


def default_validation_set(ndim: int) -> dataloader.Dataset:
    """The default data's fixed validation subjects (the template as their atlas)."""
    data = dataloader.load_default_data(ndim)
    vols, segs = dataloader.synthetic_subjects(data.atlas, NUM_VAL_SYNTHETIC[ndim],
                                               VALIDATION_SEED, data.atlas_seg)
    return dataclasses.replace(data, vols=vols, segs=segs)


def pairing(args, data: dataloader.Dataset) -> str:
    """``--pairs``, or its default: "atlas" when the data has an atlas, else "scan_to_scan"."""
    mode = args.pairs or ("atlas" if data.atlas is not None else "scan_to_scan")
    if mode == "atlas" and data.atlas is None:
        raise dataloader.DataError("--pairs atlas needs an atlas (--atlas, or 'atlas' in the .npz)")
    return mode


def load_training_data(args) -> tuple[dataloader.Dataset, dataloader.Dataset, str]:
    """Training set, validation set and pairing mode ("atlas" or "scan_to_scan")."""
    if args.data is None:
        if args.atlas is not None or args.pairs == "scan_to_scan" or args.augment:
            raise dataloader.DataError("the default data has its own atlas, atlas pairs only, "
                                       "and is made of random deformations already")
        return dataloader.load_default_data(args.ndim), default_validation_set(args.ndim), "atlas"

    data = dataloader.load_dataset(args.data, args.atlas)
    mode = pairing(args, data)
    if args.augment and mode != "scan_to_scan":
        raise dataloader.DataError("--augment applies to scan_to_scan pairs")
    original, shape = data.shape, dataloader.padded_shape(data.shape, models.DIVISOR)
    if shape != data.shape:
        print(f"Padded the volumes with zeros from {data.shape} to {shape} (sizes must divide "
              f"by {models.DIVISOR})")
        data = dataloader.pad_dataset(data, shape)
    if args.val_data is not None:
        val = dataloader.load_dataset(args.val_data, args.atlas)
        if val.shape != original:
            raise dataloader.DataError(f"--val_data volumes are {val.shape}, --data volumes "
                                       f"{original}: they must have the same shape")
        if val.atlas is None:
            val = dataclasses.replace(val, atlas=data.atlas, atlas_seg=data.atlas_seg)
        return data, dataloader.pad_dataset(val, shape), mode
    num_val = max(int(round(args.val_fraction * len(data.vols))), 1 if mode == "atlas" else 2)
    if num_val >= len(data.vols):
        raise dataloader.DataError(f"{args.data}: {len(data.vols)} volumes are too few to hold "
                                   f"out {num_val} for validation and train on the rest")
    train, val = [dataclasses.replace(data, vols=data.vols[part],
                                      segs=None if data.segs is None else data.segs[part])
                  for part in (slice(None, -num_val), slice(-num_val, None))]
    return train, val, mode


def training_loader(args, train: dataloader.Dataset, mode: str) -> keras.utils.PyDataset:
    """Generated pairs for the default data and scan-to-scan; subjects to atlas otherwise."""
    steps = args.steps_per_epoch or DEFAULT_STEPS
    if args.data is None:  # subjects are made on the fly: a second thread overlaps it with training
        return dataloader.SyntheticDataLoader(train.atlas, args.batch_size, steps, args.seed,
                                              workers=2)
    if mode == "scan_to_scan":
        return dataloader.ScanToScanDataLoader(train.vols, args.batch_size,
                                               steps * args.batch_size, args.seed, args.augment,
                                               workers=2 if args.augment else 1)
    return dataloader.RegistrationDataLoader(train.vols, train.atlas, args.batch_size,
                                             shuffle=True, seed=args.seed)


def build_model(args, shape: tuple[int, ...]) -> keras.Model:
    """The chosen VoxelMorph network, compiled with similarity + lambda * smoothness."""
    model = (models.VoxelMorph1 if args.model == "vm1" else models.VoxelMorph2)(shape)
    similarity = (metrics.local_normalized_cross_correlation_loss(args.ncc_window)
                  if args.loss == "ncc" else metrics.mse_loss())
    lamda = DEFAULT_LAMBDA[args.loss] if args.lamda is None else args.lamda
    model.compile(optimizer=keras.optimizers.Adam(args.lr),
                  loss={"moved": similarity, "deformation": metrics.gradient_loss()},
                  loss_weights={"moved": 1.0, "deformation": lamda})
    return model


def evaluate_pairs(model: keras.Model, pairs: dataloader.Pairs, labels=None) -> list[dict]:
    """Register every pair and score it (see ``metrics.score_registration``).

    Each result also holds ``seconds``, the time of the forward pass (``models.register``).
    """
    results = []
    for moving, static, moving_seg, static_seg in pairs:
        registered = models.register(model, moving, static, moving_seg)
        scores = metrics.score_registration(moving, static, registered["moved"],
                                            registered["deformation"], moving_seg, static_seg,
                                            registered.get("moved_seg"), labels)
        results.append({**scores, "seconds": registered["seconds"]})
    return results


def save_samples(model: keras.Model, pairs: dataloader.Pairs, path: str) -> None:
    """Store the first registered pairs (images, displacements, label maps) for ``viz.py``."""
    samples = {}
    for i, (moving, static, moving_seg, static_seg) in enumerate(pairs):
        if i == NUM_SAMPLES:
            break
        registered = models.register(model, moving, static, moving_seg)
        arrays = {"moving": moving, "static": static, "moved": registered["moved"],
                  "deformation": registered["deformation"], "moving_seg": moving_seg,
                  "static_seg": static_seg, "moved_seg": registered.get("moved_seg")}
        for key, value in arrays.items():
            if value is not None:
                samples.setdefault(key, []).append(value)
    np.savez_compressed(path, **{key: np.stack(values) for key, values in samples.items()})


def write_json(path: str, content: dict) -> None:
    with open(path, "w") as file:
        json.dump(content, file, indent=2)


def train(args) -> str:
    """Train, then write the model, history, samples, figures and validation metrics."""
    train_set, val_set, mode = load_training_data(args)
    val_pairs = dataloader.make_pairs(val_set, mode, MAX_VAL_PAIRS)
    output = args.output or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(output, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"{args.model} on {device}, {mode} pairs of shape {train_set.shape}, "
          f"{len(val_pairs)} validation pairs, output in {output}")

    model = build_model(args, train_set.shape)
    start = time.perf_counter()
    model.fit(training_loader(args, train_set, mode),
              validation_data=dataloader.RegistrationDataLoader(val_pairs.moving, val_pairs.static,
                                                                args.batch_size),
              epochs=args.epochs, steps_per_epoch=args.steps_per_epoch if args.data else None,
              callbacks=[keras.callbacks.CSVLogger(os.path.join(output, "history.csv"))],
              verbose=1)
    train_seconds = time.perf_counter() - start

    model.save(os.path.join(output, "model.keras"))
    save_samples(model, val_pairs, os.path.join(output, "samples.npz"))
    viz.render_run(output)
    results = evaluate_pairs(model, val_pairs, val_set.labels)
    summary = {"args": vars(args), "pairs": mode, "shape": train_set.shape, "device": device,
               "train_seconds": round(train_seconds, 1), "validation_pairs": len(results),
               **metrics.summarize(results)}
    write_json(os.path.join(output, "metrics.json"), summary)
    return report(summary) + f", trained in {train_seconds:.0f} s"


def report(summary: dict) -> str:
    """One line of the headline scores of ``metrics.summarize``."""
    line = (f"NCC {summary['ncc_before']['mean']:.3f} -> {summary['ncc_after']['mean']:.3f}")
    if "dice_after" in summary:
        line += (f", Dice {summary['dice_before']['mean']:.3f} -> "
                 f"{summary['dice_after']['mean']:.3f}")
    return line + f", folding voxels {100 * summary['folding_fraction']['mean']:.3f}%"


def load_model(path: str) -> keras.Model:
    """A saved VoxelMorph model, for inference (not compiled)."""
    if not os.path.isfile(path):
        raise dataloader.DataError(f"no such model file: {path}")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises several types for files it cannot read
        raise dataloader.DataError(f"cannot load a Keras model from {path}: {error}") from error


def model_shape(model: keras.Model) -> tuple[int, ...]:
    """Spatial input shape of a VoxelMorph model."""
    return tuple(model.inputs[0].shape[1:-1])


def register(args) -> str:
    """Register one pair of files with a trained model and write the outputs."""
    if (args.moving_seg is None) != (args.moved_seg is None):
        raise dataloader.DataError("--moving_seg and --moved_seg go together")
    model = load_model(args.model)
    moving, _ = dataloader.load_volume(args.moving)
    static, reference = dataloader.load_volume(args.static)
    if moving.shape != static.shape:
        raise dataloader.DataError(f"moving and static shapes differ: {moving.shape} vs "
                                   f"{static.shape}")
    padding = dataloader.padding_to_shape(moving.shape, model_shape(model))
    moving_seg = None
    if args.moving_seg is not None:
        moving_seg, _ = dataloader.load_volume(args.moving_seg)
        if moving_seg.shape != moving.shape:
            raise dataloader.DataError(f"--moving_seg shape {moving_seg.shape} differs from the "
                                       f"moving image's {moving.shape}")
        moving_seg = dataloader.pad(dataloader.as_label_map(moving_seg, args.moving_seg), padding)

    inputs = [dataloader.pad(dataloader.normalize(image, name), padding)
              for image, name in ((moving, args.moving), (static, args.static))]
    registered = models.register(model, *inputs, moving_seg)
    deformation = registered["deformation"]
    moved = utils.warp(dataloader.pad(moving.astype(np.float32), padding)[None, ..., None],
                       deformation[None])
    dataloader.save_volume(args.moved, dataloader.crop(np.asarray(moved)[0, ..., 0], padding),
                           reference)
    if args.deformation:
        components = dataloader.crop(np.moveaxis(deformation, -1, 0), padding)
        dataloader.save_volume(args.deformation, np.moveaxis(components, 0, -1), reference)
    if args.moved_seg:
        dataloader.save_volume(args.moved_seg, dataloader.crop(registered["moved_seg"], padding),
                               reference)
    return (f"registered {args.moving} to {args.static} in {registered['seconds']:.3f} s "
            f"(one forward pass), wrote {args.moved}")


def evaluation_set(args, shape: tuple[int, ...]) -> dataloader.Dataset:
    """The test set of ``evaluate``, zero-padded to the model's input shape."""
    if args.data is None:
        if args.atlas is not None or args.pairs == "scan_to_scan":
            raise dataloader.DataError("the default data has its own atlas and atlas pairs only")
        if len(shape) not in NUM_VAL_SYNTHETIC:
            raise dataloader.DataError(f"no default data for a model of input shape {shape}")
        data = default_validation_set(len(shape))
    else:
        data = dataloader.load_dataset(args.data, args.atlas)
    return dataloader.pad_dataset(data, shape)


def scored_labels(args, data: dataloader.Dataset) -> tuple[list[int], list[str] | None]:
    """Labels to score with Dice and their names (None when unknown)."""
    if args.labels is not None:
        labels = args.labels
    elif data.labels is not None:
        labels = [int(label) for label in data.labels]
    else:
        maps = [m for m in (data.segs, data.atlas_seg) if m is not None]
        if not maps:
            return [], None
        labels = sorted(set().union(*(np.unique(m).tolist() for m in maps)) - {0})
    names = None
    if data.label_names is not None and data.labels is not None:
        lookup = dict(zip((int(label) for label in data.labels), data.label_names))
        names = [lookup.get(label, str(label)) for label in labels]
    return labels, names


def evaluate(args) -> str:
    """Score a trained model on every test pair; write eval.json, a CSV and a box plot."""
    model = load_model(args.model)
    data = evaluation_set(args, model_shape(model))
    mode = pairing(args, data)
    pairs = dataloader.make_pairs(data, mode, args.max_pairs)
    labels, names = scored_labels(args, data)
    print(f"evaluating {args.model} on {len(pairs)} {mode} pairs of shape {data.shape}, "
          f"{len(labels)} labels")
    results = evaluate_pairs(model, pairs, labels or None)
    summary = metrics.summarize(results)
    output = args.output or os.path.dirname(os.path.abspath(args.model))
    os.makedirs(output, exist_ok=True)
    per_pair = [{"moving": int(moving), "static": "atlas" if static < 0 else int(static), **result}
                for (moving, static), result in zip(pairs.index, results)]
    write_json(os.path.join(output, "eval.json"),
               {"model": args.model, "data": args.data or "default", "pairs": mode,
                "labels": labels, "label_names": names, "summary": summary,
                "per_pair": per_pair})
    if "dice_after" in summary:
        write_dice_csv(os.path.join(output, "dice_per_structure.csv"), labels, names, summary)
        viz.plot_dice(os.path.join(output, "eval.json"), os.path.join(output, "dice_boxplot.png"))
    return report(summary) + (f", {summary['seconds']['mean']:.3f} s per pair; "
                              f"wrote {os.path.join(output, 'eval.json')}")


def write_dice_csv(path: str, labels: list[int], names: list[str] | None, summary: dict) -> None:
    """Per-structure Dice before and after registration: mean and std over pairs."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["label", "name", "dice_before_mean", "dice_before_std",
                         "dice_after_mean", "dice_after_std"])
        for i, label in enumerate(labels):
            writer.writerow([label, names[i] if names else label]
                            + [f"{summary[key][stat][i]:.4f}" for key in ("dice_before",
                                                                          "dice_after")
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
