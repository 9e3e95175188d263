"""The real-brain benchmarks' data and scoring, shared by ``real_brains.py``, ``contrasts.py``,
``affine_brains.py``, ``world_space.py`` and ``official_vxm.py``.

Data: ``../shared/data/fstrain9_128.npz`` beside the repository (internal benchmark data: 9 real
T1 brains with FreeSurfer label maps, affinely aligned to MNI152, 128^3 at 1.5 mm; never copied
into the project): the first ``NUM_TRAIN`` subjects train, ordered pairs of the others test.
Every method is scored on the full-resolution grid (:func:`score_pair`); a network's
displacement is resized to it first (:func:`register_full_resolution`). Importing this module
imports numpy only (``official_vxm.py`` runs in another environment).
"""
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def write_sets(path: str, factor: int, folder: str) -> tuple[str, str]:
    """Write train.npz and test.npz on the network's grid (with labels and names) in ``folder``."""
    with np.load(path) as stored:
        vols, segs = downsample(stored["vols"], stored["segs"], factor)
        labels = [int(label) for label in stored["labels"]]
    names = [FREESURFER_NAMES.get(label, str(label)) for label in labels]
    files = []
    for name, part in (("train", slice(None, NUM_TRAIN)), ("test", slice(NUM_TRAIN, None))):
        files.append(os.path.join(folder, f"{name}.npz"))
        np.savez(files[-1], vols=vols[part], segs=segs[part], labels=labels, label_names=names,
                 spacing=1.5 * factor)
    return files[0], files[1]


def full_resolution_test_set(path: str, subjects: list[int] | None = None):
    """The test subjects (or the ``subjects`` of these indices) at 128^3: images in [0, 1],
    label maps, label ids, spacing in mm."""
    keep = slice(NUM_TRAIN, None) if subjects is None else subjects
    with np.load(path) as stored:
        vols = stored["vols"][keep].astype(np.float32) / 255.0
        return vols, stored["segs"][keep], [int(x) for x in stored["labels"]], \
            float(stored["spacing_mm"])


def test_pairs(count: int, max_pairs: int | None) -> list[tuple[int, int]]:
    """Ordered pairs of ``count`` test subjects (``pairing.scan_to_scan_pairs``) by the shift
    from moving to static: shift 1 first (a cycle), then shift 2, ...."""
    import pairing

    pairs = map(tuple, pairing.scan_to_scan_pairs(count).tolist())
    return sorted(pairs, key=lambda pair: ((pair[1] - pair[0]) % count, pair[0]))[:max_pairs]


def score_pair(full, m: int, s: int, moved_seg: np.ndarray, deformation: np.ndarray) -> dict:
    """Dice, HD95 (mm), folding share and SDlogJ of test pair ``m -> s`` at full resolution.

    The scores of ``scores.score_registration``; its image similarities (of the moving image
    warped here with ``deformation``) and Dice before registration are left out.

    Parameters
    ----------
    full : tuple
        :func:`full_resolution_test_set`.
    m, s : int
        Moving and static test subjects.
    moved_seg : np.ndarray
        ``(128, 128, 128)`` moving label map, registered.
    deformation : np.ndarray
        ``(128, 128, 128, 3)`` displacement in voxels.
    """
    import registration
    import scores

    vols, segs, labels, spacing = full
    moved = registration.warped(vols[m], deformation)
    scored = scores.score_registration(vols[m], vols[s], moved, deformation, segs[m], segs[s],
                                       moved_seg, labels, spacing)
    return {key: scored[name] for key, name in (
        ("dice", "dice_after"), ("hd95_mm", "hd95_mm"), ("hd95_mm_mean", "hd95_mm_mean"),
        ("hd95_left_out", "hd95_left_out"), ("folding_fraction", "folding_fraction"),
        ("sdlogj", "sdlogj"))}


def register_full_resolution(model, moving, static) -> tuple[np.ndarray, float]:
    """Register one pair on the network's grid and resize the displacement to 128^3.

    Returns
    -------
    deformation : np.ndarray
        ``(128, 128, 128, 3)`` displacement in 128^3 voxels.
    seconds : float
        Forward pass and resize.
    """
    import registration
    import utils

    registered = registration.register(model, moving, static)
    start = time.perf_counter()
    full = np.asarray(utils.resize_displacement(registered["deformation"][None], (128,) * 3))[0]
    return full, registered["seconds"] + time.perf_counter() - start


def affine_only(full, pairs) -> dict:
    """Scores of the affinely aligned pairs as they are."""
    segs = full[1]
    zero = np.zeros(segs.shape[1:] + (3,), np.float32)
    return {"per_pair": [{**score_pair(full, m, s, segs[m], zero), "seconds": 0.0}
                         for m, s in pairs]}


def train(name: str, flags: list[str], train_set: str, test_set: str, folder: str,
          args, data: list[str] | None = None) -> float:
    """Train VoxelMorph-2 with ``main.py`` and the given flags; return the training seconds.

    A finished run in ``folder/name`` is reused, an interrupted one resumed. The test pairs
    serve as ``--val_data`` only for the logged validation loss; nothing is selected on them.
    ``data`` replaces the data flags (scan-to-scan pairs of ``train_set``), e.g. for ``--synth``.
    """
    import main
    import rundir

    run = os.path.join(folder, name)
    if not os.path.exists(os.path.join(run, rundir.METRICS)):
        resume = os.path.exists(os.path.join(run, rundir.ARGS))  # an interrupted training
        if data is None:
            data = ["--data", train_set, "--val_data", test_set, "--pairs", "scan_to_scan"]
        code = main.main(["--resume", run] if resume else [
            *data, "--model", "vm2", "--epochs", str(args.epochs), "--steps_per_epoch",
            str(args.steps_per_epoch), "--lr", str(args.lr), "--output", run, "--seed",
            str(args.seed), *flags])
        if code:
            sys.exit(f"error: training {name} failed")
    return rundir.read_json(os.path.join(run, rundir.METRICS))["train_seconds"]


def cached(path: str, pairs: list[tuple[int, int]], compute, settings: dict | None = None
           ) -> dict:
    """The JSON result at ``path`` if it holds these ``pairs`` (and ``settings``), else
    computed and written."""
    if os.path.exists(path):
        with open(path) as file:
            result = json.load(file)
        if (result["pairs"] == [list(pair) for pair in pairs]
                and result.get("settings") == settings):
            return result
    result = {**compute(), "pairs": pairs}
    with open(path + ".tmp", "w") as file:
        json.dump(result, file, indent=2)
    os.replace(path + ".tmp", path)
    return result


def summary(result: dict) -> dict:
    """Mean and std over pairs of each score (Dice and HD95 first averaged over structures)."""
    rows = result["per_pair"]
    out = {}
    for key in rows[0]:
        values = np.array([np.nanmean(row[key]) for row in rows], dtype=np.float64)
        out[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return out


def prepare(script: str, data: str, factor: int, output: str):
    """The sets of a benchmark on the real brains: ``train.npz`` and ``test.npz`` on the
    network's grid in ``output``, and :func:`full_resolution_test_set`; exits with one line when
    the data is absent."""
    if not os.path.exists(data):
        sys.exit(f"{script}: error: {data} not found (internal benchmark data, expected in "
                 f"../shared/data beside the repository)")
    os.makedirs(output, exist_ok=True)
    return (*write_sets(data, factor, output), full_resolution_test_set(data))
