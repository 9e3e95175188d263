"""Train VoxelMorph (CVPR 2018) and write the model, curves, figures and validation scores.

    python3 main.py                                   # default data: synthetic MNI152 subjects
    python3 main.py --epochs 60 --batch_size 1 --lr 1e-3
    python3 main.py --data subjects.npz --pairs scan_to_scan --model vm1 --loss mse

Outputs (in ``--output``): ``model.keras``, ``history.csv``, ``loss.png``, ``overlay_<i>.png``
and ``metrics.json``. Run ``python3 main.py --help`` for every option.
"""
import argparse
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
import viz  # noqa: E402

DEFAULT_LAMBDA = {"ncc": 1.0, "mse": 0.01}  # the papers' choices
DEFAULT_STEPS = 100  # steps per epoch for generated pairs (default data, scan-to-scan)
VALIDATION_SEED = 20180618  # the default data's validation subjects are the same in every run
NUM_VAL_SYNTHETIC = {2: 16, 3: 8}  # validation subjects made from the default data
MAX_VAL_PAIRS = 20  # scan-to-scan validation pairs at most
NUM_FIGURES = 3  # validation pairs drawn as overlay figures


def _positive(kind: type):
    """argparse type: a positive number of ``kind``."""
    def parse(text: str):
        value = kind(text)
        if not value > 0 or not np.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line: training flags (the original script's, with types)."""
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="Train VoxelMorph (Balakrishnan et al., CVPR 2018) on moving/static pairs. "
                    "Without --data it trains on the embedded default data: synthetic subjects "
                    "made by random smooth deformations of the MNI152 template.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--epochs", type=_positive(int), default=10, help="training epochs")
    parser.add_argument("--batch_size", type=_positive(int), default=1, help="pairs per step")
    parser.add_argument("--lr", type=_positive(float), default=1e-3, help="Adam learning rate")
    parser.add_argument("--lamda", type=float, default=None,
                        help="weight of the smoothness loss (default: 1.0 for ncc, 0.01 for mse)")
    parser.add_argument("--model", choices=("vm1", "vm2"), default="vm2",
                        help="VoxelMorph-1 or VoxelMorph-2 decoder")
    parser.add_argument("--loss", choices=("ncc", "mse"), default="ncc",
                        help="image similarity: local NCC (window 9) or mean squared error")
    parser.add_argument("--data", default=None,
                        help=".npy (N, *spatial), .npz (vols; optional segs, atlas, atlas_seg, "
                             "labels), a NIfTI file or a folder of NIfTI files "
                             "(default: the embedded MNI152 data)")
    parser.add_argument("--atlas", default=None,
                        help="static atlas (.npy, .npz or NIfTI); overrides one in --data")
    parser.add_argument("--pairs", choices=("atlas", "scan_to_scan"), default=None,
                        help="register every subject to the atlas, or random pairs of subjects "
                             "(default: atlas when there is one)")
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=3,
                        help="default data only: 3D volumes (80x96x80) or 2D axial slices (80x96)")
    parser.add_argument("--steps_per_epoch", type=_positive(int), default=None,
                        help=f"training steps per epoch (default: {DEFAULT_STEPS} for generated "
                             "pairs, one pass over the subjects for atlas pairs from --data)")
    parser.add_argument("--val_fraction", type=float, default=0.1,
                        help="--data only: share of the subjects held out for validation")
    parser.add_argument("--output", default=None,
                        help="output folder (default: runs/<date>-<time>)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def load_data(args) -> tuple[dataloader.Dataset, dataloader.Dataset, str]:
    """Training set, validation set and pairing mode ("atlas" or "scan_to_scan")."""
    if args.data is None:
        if args.atlas is not None:
            raise dataloader.DataError("--atlas needs --data (the default data has its own)")
        if args.pairs == "scan_to_scan":
            raise dataloader.DataError("the default data has atlas pairs only")
        data = dataloader.load_default_data(args.ndim)
        vols, segs = dataloader.synthetic_subjects(
            data.atlas, NUM_VAL_SYNTHETIC[args.ndim], VALIDATION_SEED, data.atlas_seg)
        return data, dataclasses.replace(data, vols=vols, segs=segs), "atlas"

    data = dataloader.load_dataset(args.data, args.atlas)
    mode = args.pairs or ("atlas" if data.atlas is not None else "scan_to_scan")
    if mode == "atlas" and data.atlas is None:
        raise dataloader.DataError("--pairs atlas needs an atlas (--atlas, or 'atlas' in the .npz)")
    data, padding = dataloader.pad_dataset(data, models.DIVISOR)
    if any(before or after for before, after in padding):
        print(f"Padded the volumes with zeros to {data.shape} (sizes must divide by "
              f"{models.DIVISOR}): {padding}")
    num_val = max(int(round(args.val_fraction * len(data.vols))), 1 if mode == "atlas" else 2)
    if num_val >= len(data.vols):
        raise dataloader.DataError(f"{args.data}: {len(data.vols)} volumes are too few to hold "
                                   f"out {num_val} for validation and train on the rest")
    split = [dataclasses.replace(data, vols=data.vols[part],
                                 segs=None if data.segs is None else data.segs[part])
             for part in (slice(None, -num_val), slice(-num_val, None))]
    return split[0], split[1], mode


def training_loader(args, train: dataloader.Dataset, mode: str) -> keras.utils.PyDataset:
    """Generated pairs for the default data and scan-to-scan; subjects to atlas otherwise."""
    steps = args.steps_per_epoch or DEFAULT_STEPS
    if args.data is None:
        return dataloader.SyntheticDataLoader(train.atlas, args.batch_size, steps, args.seed, workers=2)
    if mode == "scan_to_scan":
        return dataloader.ScanToScanDataLoader(train.vols, args.batch_size,
                                               steps * args.batch_size, args.seed)
    return dataloader.RegistrationDataLoader(train.vols, train.atlas, args.batch_size,
                                             shuffle=True, seed=args.seed)


def build_model(args, shape: tuple[int, ...]) -> keras.Model:
    """The chosen VoxelMorph network, compiled with similarity + lambda * smoothness."""
    model = (models.VoxelMorph1 if args.model == "vm1" else models.VoxelMorph2)(shape)
    similarity = (metrics.local_normalized_cross_correlation_loss() if args.loss == "ncc"
                  else metrics.mse_loss())
    lamda = DEFAULT_LAMBDA[args.loss] if args.lamda is None else args.lamda
    model.compile(optimizer=keras.optimizers.Adam(args.lr),
                  loss={"moved": similarity, "deformation": metrics.gradient_loss()},
                  loss_weights={"moved": 1.0, "deformation": lamda})
    return model


def evaluate_pairs(model: keras.Model, pairs: dataloader.Pairs, labels=None) -> list[dict]:
    """Register every pair and score it (see ``metrics.score_registration``).

    Each result also holds ``seconds``, the time of the forward pass; the very first pass, which
    builds the graph, is run once more untimed before.
    """
    results = []
    for index, (moving, static, moving_seg, static_seg) in enumerate(pairs):
        if index == 0:
            models.register(model, moving, static)
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
        if i == NUM_FIGURES:
            break
        registered = models.register(model, moving, static, moving_seg)
        arrays = {"moving": moving, "static": static, "moved": registered["moved"],
                  "deformation": registered["deformation"], "moving_seg": moving_seg,
                  "static_seg": static_seg, "moved_seg": registered.get("moved_seg")}
        for key, value in arrays.items():
            if value is not None:
                samples.setdefault(key, []).append(value)
    np.savez_compressed(path, **{key: np.stack(values) for key, values in samples.items()})


def train(args) -> dict:
    """Train, then write the model, history, figures and validation metrics into the output."""
    train_set, val_set, mode = load_data(args)
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
    with open(os.path.join(output, "metrics.json"), "w") as file:
        json.dump(summary, file, indent=2)
    return summary


def report(summary: dict) -> str:
    """One line of the headline validation scores."""
    line = (f"validation NCC {summary['ncc_before']['mean']:.3f} -> "
            f"{summary['ncc_after']['mean']:.3f}")
    if "dice_after" in summary:
        line += (f", Dice {summary['dice_before']['mean']:.3f} -> "
                 f"{summary['dice_after']['mean']:.3f}")
    return line + (f", folding voxels {100 * summary['folding_fraction']['mean']:.3f}%, "
                   f"trained in {summary['train_seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = train(args)
    except (dataloader.DataError, ValueError) as error:
        print(f"main.py: error: {error}", file=sys.stderr)
        return 2
    print(report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
