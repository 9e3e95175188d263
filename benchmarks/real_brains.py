"""Real-brain benchmark in the manner of the VoxelMorph papers (TMI 2019, Sec. V).

    python3 benchmarks/real_brains.py --downsample 2        # 64^3 grid, within an hour on a CPU
    python3 benchmarks/real_brains.py                       # 128^3 at 1.5 mm (a GPU helps)

Data: ``../shared/data/fstrain9_128.npz`` beside the repository (internal benchmark data: 9 real
T1 brains with FreeSurfer label maps, affinely aligned to MNI152, 128^3 at 1.5 mm; it is never
copied into the project). VoxelMorph-1 and -2 are trained scan-to-scan on the first 6 subjects
(``main.py --pairs scan_to_scan``) and evaluated (``main.py evaluate``) on every ordered pair of
the other 3, over the 30 structures in the file's ``labels``. Next to them: the affine-only
starting point and, when the ``antspyx`` package is installed (a benchmark-only dependency),
ANTs SyN with the CC metric on the same pairs. Prints a markdown table and writes
``results.json`` into ``--output``.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DATA = os.path.join(ROOT, "..", "shared", "data", "fstrain9_128.npz")
NUM_TRAIN = 6  # subjects used for training; the rest are test subjects
FREESURFER_NAMES = {
    2: "L cerebral WM", 3: "L cerebral cortex", 4: "L lateral ventricle",
    7: "L cerebellum WM", 8: "L cerebellum cortex", 10: "L thalamus", 11: "L caudate",
    12: "L putamen", 13: "L pallidum", 14: "3rd ventricle", 15: "4th ventricle",
    16: "brain stem", 17: "L hippocampus", 18: "L amygdala", 24: "CSF", 28: "L ventral DC",
    31: "L choroid plexus", 41: "R cerebral WM", 42: "R cerebral cortex",
    43: "R lateral ventricle", 46: "R cerebellum WM", 47: "R cerebellum cortex",
    49: "R thalamus", 50: "R caudate", 51: "R putamen", 52: "R pallidum", 53: "R hippocampus",
    54: "R amygdala", 60: "R ventral DC", 63: "R choroid plexus",
}


def downsample(volumes: np.ndarray, labels: np.ndarray, factor: int):
    """Block-average images and subsample label maps (nearest) by ``factor`` per axis.

    Parameters
    ----------
    volumes, labels : np.ndarray
        ``(N, *spatial)`` images and label maps.
    """
    if factor == 1:
        return volumes.astype(np.float32), labels
    n, *shape = volumes.shape
    blocks = volumes.reshape([n] + [v for size in shape for v in (size // factor, factor)])
    means = blocks.astype(np.float32).mean(axis=tuple(range(2, 2 * len(shape) + 1, 2)))
    start = factor // 2
    return means, labels[(slice(None),) + (slice(start, None, factor),) * len(shape)]


def write_sets(path: str, factor: int, folder: str) -> tuple[str, str, list[int]]:
    """Split the subjects into train.npz and test.npz (with labels and names) in ``folder``."""
    with np.load(path) as stored:
        vols, segs = downsample(stored["vols"], stored["segs"], factor)
        labels = [int(label) for label in stored["labels"]]
    names = [FREESURFER_NAMES.get(label, str(label)) for label in labels]
    files = []
    for name, part in (("train", slice(None, NUM_TRAIN)), ("test", slice(NUM_TRAIN, None))):
        files.append(os.path.join(folder, f"{name}.npz"))
        np.savez(files[-1], vols=vols[part], segs=segs[part], labels=labels, label_names=names)
    return files[0], files[1], labels


def train_and_evaluate(model: str, train: str, test: str, folder: str, args) -> dict:
    """Train one VoxelMorph model with main.py, evaluate it on the test pairs, return eval.json."""
    import main

    run = os.path.join(folder, model)
    start = time.perf_counter()
    code = main.main(["--data", train, "--val_data", test, "--pairs", "scan_to_scan",
                      "--model", model, "--epochs", str(args.epochs),
                      "--steps_per_epoch", str(args.steps_per_epoch), "--lr", str(args.lr),
                      "--output", run, "--seed", str(args.seed)])
    train_seconds = time.perf_counter() - start
    code = code or main.main(["evaluate", "--model", os.path.join(run, "model.keras"),
                              "--data", test, "--pairs", "scan_to_scan", "--output", run])
    if code:
        sys.exit(f"{model}: main.py failed")
    with open(os.path.join(run, "eval.json")) as file:
        evaluation = json.load(file)
    evaluation["train_seconds"] = train_seconds
    return evaluation


def ants_syn(test: str, labels: list[int], iterations: list[int]) -> dict:
    """ANTs SyN (CC metric, radius 4) on every ordered pair of the test subjects."""
    import ants

    import dataloader
    import metrics

    data = dataloader.load_dataset(test)
    pairs = dataloader.make_pairs(data, "scan_to_scan")
    results = []
    for moving, static, moving_seg, static_seg in pairs:
        fixed_image, moving_image = ants.from_numpy(static), ants.from_numpy(moving)
        start = time.perf_counter()
        registration = ants.registration(fixed_image, moving_image, type_of_transform="SyNOnly",
                                         syn_metric="CC", syn_sampling=4,
                                         reg_iterations=tuple(iterations))
        seconds = time.perf_counter() - start
        moved_seg = ants.apply_transforms(fixed_image, ants.from_numpy(moving_seg.astype(
            np.float32)), registration["fwdtransforms"], interpolator="nearestNeighbor").numpy()
        jacobian = ants.create_jacobian_determinant_image(
            fixed_image, registration["fwdtransforms"][0]).numpy()
        results.append({"dice_before": metrics.dice(moving_seg, static_seg, labels).tolist(),
                        "dice_after": metrics.dice(np.rint(moved_seg).astype(np.int32),
                                                   static_seg, labels).tolist(),
                        "folding_fraction": float(np.mean(jacobian <= 0)), "seconds": seconds})
    return {"summary": metrics.summarize(results), "per_pair": results}


def table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table: mean Dice (std over pairs), % folding voxels, seconds per pair."""
    lines = ["| method | mean Dice (30 structures) | % voxels with det(J) <= 0 | s per pair |",
             "|---|---|---|---|"]
    for name, summary in rows:
        dice = summary["dice"]
        folding = summary.get("folding_fraction")
        seconds = summary.get("seconds")
        lines.append(f"| {name} | {dice['mean']:.3f} ± {dice['std']:.3f} | "
                     + (f"{100 * folding['mean']:.3f} | " if folding else "- | ")
                     + (f"{seconds['mean']:.3f} |" if seconds else "- |"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=DATA, help="the fstrain9_128.npz file")
    parser.add_argument("--downsample", type=int, choices=(1, 2, 4), default=1,
                        help="grid factor: 1 = 128^3 at 1.5 mm, 2 = 64^3 at 3 mm")
    parser.add_argument("--models", nargs="+", choices=("vm1", "vm2"), default=["vm1", "vm2"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps_per_epoch", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ants_iterations", type=int, nargs="+", default=[100, 70, 50, 20],
                        help="SyN iterations per level, coarse to fine")
    parser.add_argument("--no_ants", action="store_true", help="skip ANTs SyN")
    parser.add_argument("--output", default=os.path.join(ROOT, "runs", "real_brains"))
    args = parser.parse_args()
    if not os.path.exists(args.data):
        sys.exit(f"real_brains.py: error: {args.data} not found (internal benchmark data, "
                 f"expected in ../shared/data beside the repository)")

    os.makedirs(args.output, exist_ok=True)
    train, test, labels = write_sets(args.data, args.downsample, args.output)
    grid = 128 // args.downsample
    results = {"grid": f"{grid}^3 at {1.5 * args.downsample:g} mm", "train_subjects": NUM_TRAIN,
               "steps": args.epochs * args.steps_per_epoch, "labels": labels, "methods": {}}
    for model in args.models:
        evaluation = train_and_evaluate(model, train, test, args.output, args)
        results["methods"][model] = {"train_seconds": evaluation["train_seconds"],
                                     **evaluation["summary"]}
    if not args.no_ants:
        try:
            results["methods"]["ants_syn_cc"] = ants_syn(test, labels, args.ants_iterations)[
                "summary"]
        except ImportError:
            print("antspyx is not installed: skipping ANTs SyN (pip install antspyx)")

    first = next(iter(results["methods"].values()))
    rows = [("affine only", {"dice": first["dice_before"]})]
    names = {"vm1": "VoxelMorph-1", "vm2": "VoxelMorph-2", "ants_syn_cc": "ANTs SyN (CC)"}
    rows += [(names[key], {"dice": value["dice_after"], **value})
             for key, value in results["methods"].items()]
    with open(os.path.join(args.output, "results.json"), "w") as file:
        json.dump(results, file, indent=2)
    print(f"\nGrid {results['grid']}, {NUM_TRAIN} training subjects, {results['steps']} steps "
          f"per model, {len(labels)} structures, 6 test pairs\n")
    print(table(rows))


if __name__ == "__main__":
    main()
