"""Real-brain benchmark in the manner of the VoxelMorph papers (TMI 2019, Sec. V).

    python3 benchmarks/real_brains.py --downsample 2        # networks on a 64^3 grid
    python3 benchmarks/real_brains.py                       # networks at 128^3 (a GPU helps)

Data: ``../shared/data/fstrain9_128.npz`` beside the repository (internal benchmark data: 9 real
T1 brains with FreeSurfer label maps, affinely aligned to MNI152, 128^3 at 1.5 mm; it is never
copied into the project). VoxelMorph-2 is trained scan-to-scan on the first 6 subjects with
``main.py`` in several variants (the CVPR model, diffeomorphic, bidirectional, segmentation-aided,
and the combination of the options that helped), and ordered pairs of the other 3 subjects are
registered (all 6 by default; ``--max_pairs`` keeps the first ones, the cycle ``a->b, b->c, c->a``
first). Next to them: the affine-only starting point; when the ``antspyx`` package is
installed (a benchmark-only dependency), ANTs SyN with the CC metric on the same pairs at the full
128^3 resolution; and, when its own environment exists (``--official_python``), the official
VoxelMorph 0.2 trained on the VM-2 row's budget by ``official_vxm.py``.

Every method is scored on the full-resolution grid by ``scores.score_registration``: a
displacement predicted on a coarser grid is resized to 128^3 (``utils.resize_displacement``), the
128^3 label map of the moving subject is warped with nearest neighbour, and Dice and HD95 (mm) are
taken over the file's 30 structures; folding and SDlogJ come from the 128^3 displacement. Results
of finished methods are kept in ``--output`` and reused when the command runs again, so an
interrupted benchmark resumes. Prints a markdown table and writes ``results.json`` into
``--output``.
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
# The single options compared with the CVPR model; "best" combines those that raise its Dice.
OPTIONS = {"int_steps": ["--int_steps", "7", "--int_downsize", "2"], "bidir": ["--bidir"],
           "seg": ["--seg_weight"], "elastic": ["--augment", "elastic"],
           "intensity": ["--augment", "intensity"], "random_affine": ["--random_affine"]}
NAMES = {"vm2": "VM-2 (CVPR)", "int_steps": "VM-2 + --int_steps 7 --int_downsize 2",
         "bidir": "VM-2 + --bidir",
         "seg": "VM-2 + --seg_weight {seg_weight:g}", "elastic": "VM-2 + --augment elastic",
         "intensity": "VM-2 + --augment intensity", "random_affine": "VM-2 + --random_affine",
         "best": "best: VM-2 + {best}",
         "finetune": "{tuned} + --finetune_steps {finetune_steps}",
         "refined": "{tuned} + --finetune_steps {finetune_steps} --refine_steps {refine_steps} "
                    "(refined at 128^3)",
         "ants": "ANTs SyN (CC), 128^3",
         "official": "official VoxelMorph 0.2 (VxmDense, VM-2 channels, same budget)"}
OFFICIAL_PYTHON = os.path.join(ROOT, "..", "vxm-official", "bin", "python")
# ANTs SyN's per-pair scores, committed so that its hours of CPU are spent once (no image data).
SECONDS = ("seconds", "finetune_seconds", "refine_seconds")  # the parts of a pair's time
ANTS_SCORES = os.path.join(ROOT, "benchmarks", "ants_syn_scores.json")
ANTS_ABOUT = ("ANTs SyN (antspyx registration 'SyNOnly', CC metric of radius 4) of the real-brain "
              "test pairs 'moving->static' at 128^3, scored by benchmarks/real_brains.py "
              "(score_pair); written by it, pair by pair, with the date, machine and threads of "
              "each registration")


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


def full_resolution_test_set(path: str):
    """The test subjects at 128^3: images in [0, 1], label maps, label ids, spacing in mm."""
    with np.load(path) as stored:
        vols = stored["vols"][NUM_TRAIN:].astype(np.float32) / 255.0
        return vols, stored["segs"][NUM_TRAIN:], [int(x) for x in stored["labels"]], \
            float(stored["spacing_mm"])


def test_pairs(count: int, max_pairs: int | None) -> list[tuple[int, int]]:
    """Ordered pairs of ``count`` test subjects: shift 1 first (a cycle), then shift 2, ...."""
    pairs = [(m, (m + shift) % count) for shift in range(1, count) for m in range(count)]
    return pairs[:max_pairs]


def warped(image: np.ndarray, deformation: np.ndarray, interpolation: str = "linear") -> np.ndarray:
    """``(*spatial)`` image resampled with a ``(*spatial, 3)`` displacement in voxels."""
    import utils

    moved = utils.warp(image[None, ..., None], deformation[None], interpolation)
    return np.asarray(moved)[0, ..., 0]


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
    import scores

    vols, segs, labels, spacing = full
    scored = scores.score_registration(vols[m], vols[s], warped(vols[m], deformation),
                                        deformation, segs[m], segs[s], moved_seg, labels, spacing)
    return {key: scored[name] for key, name in (
        ("dice", "dice_after"), ("hd95_mm", "hd95_mm"), ("hd95_mm_mean", "hd95_mm_mean"),
        ("hd95_left_out", "hd95_left_out"), ("folding_fraction", "folding_fraction"),
        ("sdlogj", "sdlogj"))}


def affine_only(full, pairs) -> dict:
    """Scores of the affinely aligned pairs as they are."""
    segs = full[1]
    zero = np.zeros(segs.shape[1:] + (3,), np.float32)
    return {"per_pair": [{**score_pair(full, m, s, segs[m], zero), "seconds": 0.0}
                         for m, s in pairs]}


def train(name: str, flags: list[str], train_set: str, test_set: str, folder: str,
          args) -> float:
    """Train VoxelMorph-2 with ``main.py`` and the given flags; return the training seconds.

    A finished run in ``folder/name`` is reused, an interrupted one resumed. The test pairs
    serve as ``--val_data`` only for the logged validation loss; nothing is selected on them.
    """
    import main
    import rundir

    run = os.path.join(folder, name)
    if not os.path.exists(os.path.join(run, rundir.METRICS)):
        resume = os.path.exists(os.path.join(run, rundir.ARGS))  # an interrupted training
        code = main.main(["--resume", run] if resume else [
            "--data", train_set, "--val_data", test_set, "--pairs", "scan_to_scan",
            "--model", "vm2", "--epochs", str(args.epochs), "--steps_per_epoch",
            str(args.steps_per_epoch), "--lr", str(args.lr), "--output", run, "--seed",
            str(args.seed), *flags])
        if code:
            sys.exit(f"real_brains.py: error: training {name} failed")
    with open(os.path.join(run, rundir.METRICS)) as file:
        return json.load(file)["train_seconds"]


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


def voxelmorph(model_path: str, test_set: str, full, pairs) -> dict:
    """Register the test pairs with a trained model and score them at full resolution."""
    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import keras

    import datasets
    import models

    model = models.registration_model(keras.models.load_model(model_path))  # built once
    small = datasets.load_dataset(test_set).vols
    register_full_resolution(model, small[0], small[1])  # its graph, untimed
    results = []
    for m, s in pairs:
        deformation, seconds = register_full_resolution(model, small[m], small[s])
        scored = score_pair(full, m, s, warped(full[1][m].astype(np.int32), deformation,
                                               "nearest"), deformation)
        results.append({**scored, "seconds": seconds})
        print(f"  pair {m}->{s}: Dice {np.nanmean(scored['dice']):.3f}", flush=True)
    return {"per_pair": results}


def instance_optimisation(model_path: str, test_set: str, full, pairs, args) -> dict:
    """A trained network made better on each test pair, scored along the way.

    Per pair, the network is fine-tuned once (``tuning.FineTuner``, on the network's grid) and
    scored after every count of ``--curve_steps`` and ``--finetune_steps`` (cumulative), each
    time as it is and with its displacement refined at 128^3 (``tuning.Refiner``,
    ``--refine_steps``, on the 128^3 images). Seconds: fine-tuning so far, the forward pass
    and resize, the refinement.

    Returns
    -------
    dict
        ``curve``: per pair, ``{"F+R": scores}`` for F fine-tuning and R refinement steps.
    """
    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import keras

    import datasets
    import tuning

    model = keras.models.load_model(model_path)
    counts = sorted({*args.curve_steps, args.finetune_steps})
    tuner = tuning.FineTuner(model, counts[-1], args.finetune_lr)
    refiner = tuning.Refiner(model, args.refine_steps, args.refine_lr)
    small = datasets.load_dataset(test_set).vols
    vols, segs = full[:2]
    register_full_resolution(tuner.network, small[0], small[1])  # its graph, untimed
    curve = []
    for m, s in pairs:
        tuner.start(small[m], small[s])
        rows, done, finetune_seconds = {}, 0, 0.0
        for count in counts:
            start = time.perf_counter()
            network = tuner.train(count - done)
            finetune_seconds, done = finetune_seconds + time.perf_counter() - start, count
            deformation, seconds = register_full_resolution(network, small[m], small[s])
            for refine in sorted({0, args.refine_steps}):
                field, refine_seconds = tuning.refined(refiner if refine else None, vols[m],
                                                       vols[s], deformation)
                scored = score_pair(full, m, s, warped(segs[m].astype(np.int32), field,
                                                       "nearest"), field)
                rows[f"{count}+{refine}"] = {**scored, "seconds": seconds,
                                             "finetune_seconds": finetune_seconds,
                                             "refine_seconds": refine_seconds}
                print(f"  pair {m}->{s}, {count} fine-tuning + {refine} refinement steps: Dice "
                      f"{np.nanmean(scored['dice']):.3f}", flush=True)
        curve.append(rows)
    return {"curve": curve}


def curve_rows(result: dict, key: str) -> dict:
    """The per-pair scores at one point ``"F+R"`` of :func:`instance_optimisation`'s curve."""
    return {"per_pair": [rows[key] for rows in result["curve"]]}


def plot_curve(result: dict, ants: dict | None, path: str) -> None:
    """Mean Dice against seconds per pair along the instance-optimisation curve (one line per
    refinement count), beside ANTs SyN, to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {}
    for key in result["curve"][0]:
        count, refine = (int(part) for part in key.split("+"))
        stats = summary(curve_rows(result, key))
        seconds = sum(stats.get(name, {"mean": 0.0})["mean"] for name in SECONDS)
        points.setdefault(refine, []).append((seconds, stats["dice"]["mean"], count))
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for refine, line in sorted(points.items()):
        seconds, dice, counts = zip(*sorted(line))
        label = f"+ {refine} refinement steps at 128^3" if refine else "network fine-tuning only"
        axes.plot(seconds, dice, "o-", label=label)
        for x, y, count in line:
            axes.annotate(str(count), (x, y), textcoords="offset points", xytext=(4, -10),
                          fontsize=8)
    if ants is not None:
        stats = summary(ants)
        axes.axhline(stats["dice"]["mean"], color="k", ls="--", lw=1,
                     label=f"ANTs SyN (CC), {stats['seconds']['mean']:.0f} s per pair")
        axes.axvline(stats["seconds"]["mean"] / 40, color="grey", ls=":", lw=1,
                     label="1/40 of ANTs' time")
    axes.set_xscale("log")
    axes.set_xlabel("seconds per pair (CPU; numbers: network fine-tuning steps)")
    axes.set_ylabel(f"mean Dice, {len(result['curve'])} test pairs, 30 structures")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path + ".tmp.png", dpi=120)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)


def ants_register(fixed_image: np.ndarray, moving_image: np.ndarray, moving_seg: np.ndarray,
                  iterations: list[int], path: str) -> dict:
    """ANTs SyN (CC metric, radius 4) of one pair, kept in ``path`` (.npz) and reused from there.

    ANTs' own warp file is also applied to the moving label map by ``main.py apply``, and the
    share of voxels where its labels equal ANTs' is kept (``apply_agreement``).

    Returns
    -------
    dict
        ``moved_seg`` (labels warped by ANTs with nearest neighbour), ``deformation``
        ``(*spatial, 3)`` in voxels along the array axes, ``seconds`` of the registration,
        ``apply_agreement``.
    """
    import ants

    if not os.path.exists(path):
        fixed, moving = ants.from_numpy(fixed_image), ants.from_numpy(moving_image)
        start = time.perf_counter()
        registration = ants.registration(fixed, moving, type_of_transform="SyNOnly",
                                         syn_metric="CC", syn_sampling=4,
                                         reg_iterations=tuple(iterations))
        seconds = time.perf_counter() - start
        moved_seg = ants.apply_transforms(fixed, ants.from_numpy(moving_seg.astype(np.float32)),
                                          registration["fwdtransforms"],
                                          interpolator="nearestNeighbor").numpy()
        # With unit spacing, zero origin and identity direction, the warp's physical vectors
        # are displacements in voxels along the array axes, as ours.
        warp = [name for name in registration["fwdtransforms"] if name.endswith(".nii.gz")][0]
        moved_seg = np.rint(moved_seg).astype(np.int32)
        np.savez(path + ".tmp.npz", moved_seg=moved_seg,
                 deformation=ants.image_read(warp).numpy().astype(np.float32), seconds=seconds,
                 apply_agreement=apply_agreement(warp, moving_seg, moved_seg, path))
        os.replace(path + ".tmp.npz", path)
    with np.load(path) as stored:
        return {key: stored[key] for key in ("moved_seg", "deformation", "seconds",
                                             "apply_agreement") if key in stored}


def apply_agreement(warp: str, moving_seg: np.ndarray, ants_moved_seg: np.ndarray,
                    path: str) -> float:
    """Share of voxels where ``main.py apply`` of ANTs' ``warp`` file to the moving label map
    gives ANTs' own labels (the label map written as ANTs writes images, beside ``path``)."""
    import ants
    import main

    seg_file, output = path + ".moving_seg.nii.gz", path + ".applied.nii.gz"
    ants.image_write(ants.from_numpy(moving_seg.astype(np.float32)), seg_file)
    if main.main(["apply", "--warp", warp, "--moving", seg_file, "--output", output,
                  "--interp", "nearest"]) != 0:
        sys.exit("real_brains.py: error: main.py apply failed on ANTs' warp")
    applied = np.asanyarray(ants.image_read(output).numpy())
    for name in (seg_file, output):
        os.remove(name)
    return float(np.mean(np.rint(applied) == ants_moved_seg))


def ants_machine() -> dict:
    """Where and how an ANTs registration runs now: date, antspyx version, CPU and threads."""
    import ants

    from benchmarks import bench

    with open("/proc/cpuinfo") as file:
        isa = bench.cpu_isa(file.read())["isa"]
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "antspyx": ants.__version__,
            "cpu": f"{bench.cpu_name()} ({isa}), {os.cpu_count()} cores",
            "threads": int(os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
                                          os.cpu_count()))}


def stored_scores(path: str, iterations: list[int]) -> dict:
    """The per-pair scores kept in ``path`` (JSON, keys ``"m->s"``) for these SyN iterations."""
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        stored = json.load(file)
    return stored["pairs"] if stored["iterations"] == list(iterations) else {}


def store_score(path: str, iterations: list[int], key: str, scores: dict) -> None:
    """Add one pair's scores to ``path`` (written atomically), replacing other iterations'."""
    pairs = {**stored_scores(path, iterations), key: scores}
    text = json.dumps({"about": ANTS_ABOUT, "iterations": list(iterations),
                       "pairs": dict(sorted(pairs.items()))}, indent=1)
    with open(path + ".tmp", "w") as file:
        file.write(text + "\n")
    os.replace(path + ".tmp", path)


def ants_syn(full, pairs, iterations: list[int], folder: str, scores: str = ANTS_SCORES) -> dict:
    """ANTs SyN on every test pair at 128^3, scored as the other methods.

    A pair's scores come from ``scores`` (committed with the repository: scores only, each
    with the date, machine and threads it was made on) when it holds the pair for these
    ``iterations``; otherwise the pair is registered (its warp kept in ``folder``) and its
    scores are added there.
    """
    vols, segs = full[:2]
    results = []
    for m, s in pairs:
        key = f"{m}->{s}"
        if key not in stored_scores(scores, iterations):
            made = ants_machine()
            registered = ants_register(vols[s], vols[m], segs[m], iterations,
                                       os.path.join(folder, f"ants_{m}_{s}.npz"))
            scored = score_pair(full, m, s, registered["moved_seg"], registered["deformation"])
            store_score(scores, iterations, key, {
                **scored, "seconds": float(registered["seconds"]),
                "apply_agreement": float(registered["apply_agreement"]), "made": made})
        result = {name: value for name, value in stored_scores(scores, iterations)[key].items()
                  if name != "made"}
        results.append(result)
        print(f"  ANTs pair {key}: Dice {np.nanmean(result['dice']):.3f} in "
              f"{result['seconds']:.0f} s; main.py apply of its warp gives its labels at "
              f"{100 * result['apply_agreement']:.3f}% of voxels", flush=True)
    return {"per_pair": results}


def official(full, pairs, args) -> dict:
    """The official VoxelMorph trained by ``official_vxm.py`` in its own environment on the VM-2
    row's budget, its displacements scored here as every other row."""
    import subprocess

    import utils

    folder = os.path.join(args.output, "official")
    flows = os.path.join(folder, "flows.npz")
    if not os.path.exists(flows):
        command = [args.official_python, os.path.join(ROOT, "benchmarks", "official_vxm.py"),
                   "--data", args.data, "--downsample", str(args.downsample),
                   "--steps", str(args.epochs * args.steps_per_epoch), "--lr", str(args.lr),
                   "--seed", str(args.seed), "--output", folder]
        if subprocess.run(command, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}).returncode:
            sys.exit("real_brains.py: error: official_vxm.py failed")
    with np.load(flows) as stored:
        order = [tuple(pair) for pair in stored["pairs"].tolist()]
        results = []
        for m, s in pairs:
            index = order.index((m, s))
            deformation = np.asarray(utils.resize_displacement(
                stored["flows"][index][None], (128,) * 3))[0]
            scored = score_pair(full, m, s, warped(full[1][m].astype(np.int32), deformation,
                                                   "nearest"), deformation)
            results.append({**scored, "seconds": float(stored["seconds"][index])})
            print(f"  official pair {m}->{s}: Dice {np.nanmean(scored['dice']):.3f}", flush=True)
        return {"per_pair": results, "train_seconds": float(stored["train_seconds"])}


def combined(options: list[list[str]]) -> list[str]:
    """The flags of several options of :data:`OPTIONS`, their ``--augment`` kinds under one
    ``--augment``."""
    flags = [flag for option in options if option[0] != "--augment" for flag in option]
    kinds = [kind for option in options if option[0] == "--augment" for kind in option[1:]]
    return flags + (["--augment", *kinds] if kinds else [])


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


def table(rows: list[tuple[str, dict, float | None]]) -> str:
    """Markdown table of the summaries: name, summary, training minutes (or None)."""
    lines = ["| method | mean Dice (30 structures) | HD95 (mm) | SDlogJ | % det(J) <= 0 "
             "| s per pair (CPU) | training (min) |", "|---|---|---|---|---|---|---|"]
    for name, stats, minutes in rows:
        seconds = sum(stats.get(name, {"mean": 0.0})["mean"] for name in SECONDS)
        lines.append(f"| {name} | {stats['dice']['mean']:.3f} ± {stats['dice']['std']:.3f} | "
                     f"{stats.get('hd95_mm_mean', stats['hd95_mm'])['mean']:.2f} | "
                     f"{stats['sdlogj']['mean']:.3f} | "
                     f"{100 * stats['folding_fraction']['mean']:.4f} | "
                     + (f"{seconds:.3f} | " if seconds else "- | ")
                     + (f"{minutes:.0f} |" if minutes is not None else "- |"))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=DATA, help="the fstrain9_128.npz file")
    parser.add_argument("--downsample", type=int, choices=(1, 2, 4), default=1,
                        help="network grid: 1 = 128^3 at 1.5 mm, 2 = 64^3 at 3 mm")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps_per_epoch", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seg_weight", type=float, default=0.1,
                        help="gamma of the segmentation-aided row")
    parser.add_argument("--finetune_steps", type=int, default=50,
                        help="network fine-tuning steps of the instance-optimisation rows")
    parser.add_argument("--curve_steps", type=int, nargs="+", default=[0, 25, 50, 100],
                        help="network fine-tuning steps scored along the instance-optimisation "
                             "curve, with and without refinement")
    parser.add_argument("--finetune_lr", type=float, default=1e-3)
    parser.add_argument("--refine_steps", type=int, default=20,
                        help="refinement steps of the displacement at 128^3 after fine-tuning")
    parser.add_argument("--refine_lr", type=float, default=None,
                        help="initial learning rate of the refinement (default: main.py's)")
    parser.add_argument("--methods", nargs="+", default=["vm2", *OPTIONS, "best", "finetune",
                                                         "ants", "official"],
                        choices=["vm2", *OPTIONS, "best", "finetune", "ants", "official"],
                        help="rows to compute (affine only is always shown)")
    parser.add_argument("--max_pairs", type=int, default=None,
                        help="register only the first test pairs (default: all 6)")
    parser.add_argument("--ants_iterations", type=int, nargs="+", default=[100, 70, 50, 20],
                        help="SyN iterations per level, coarse to fine")
    parser.add_argument("--official_python", default=OFFICIAL_PYTHON,
                        help="python of the official VoxelMorph's own environment (see "
                             "official_vxm.py), for the official row")
    parser.add_argument("--output", default=os.path.join(ROOT, "runs", "real_brains"))
    return parser


def prepare(script: str, data: str, factor: int, output: str):
    """The sets of a benchmark on the real brains: ``train.npz`` and ``test.npz`` on the
    network's grid in ``output``, and :func:`full_resolution_test_set`; exits with one line when
    the data is absent."""
    if not os.path.exists(data):
        sys.exit(f"{script}: error: {data} not found (internal benchmark data, expected in "
                 f"../shared/data beside the repository)")
    os.makedirs(output, exist_ok=True)
    return (*write_sets(data, factor, output), full_resolution_test_set(data))


def main() -> None:
    args = build_parser().parse_args()
    started = time.perf_counter()
    train_set, test_set, full = prepare("real_brains.py", args.data, args.downsample,
                                        args.output)
    pairs = test_pairs(len(full[0]), args.max_pairs)
    results = {"affine": affine_only(full, pairs)}
    minutes = {}

    def run(name: str, flags: list[str]):
        """Train and score one VoxelMorph row."""
        def compute():
            seconds = train(name, flags, train_set, test_set, args.output, args)
            return {"flags": flags, "train_seconds": seconds,
                    **voxelmorph(model_path(name), test_set, full, pairs)}

        results[name] = cached(os.path.join(args.output, f"{name}.json"), pairs, compute)
        minutes[name] = results[name]["train_seconds"] / 60

    def model_path(name: str) -> str:
        import rundir

        return os.path.join(args.output, name, rundir.MODEL)

    options = {**OPTIONS, "seg": OPTIONS["seg"] + [str(args.seg_weight)]}
    for name in ["vm2", *OPTIONS]:
        if name in args.methods:
            run(name, [] if name == "vm2" else options[name])
    helped = [name for name in OPTIONS if name in results and "vm2" in results
              and summary(results[name])["dice"]["mean"] > summary(results["vm2"])["dice"]["mean"]]
    best_flags = combined([options[name] for name in helped])
    # With one option (or none) that helped, or without the "best" row, the best row trained.
    best = ("best" if len(helped) > 1 and "best" in args.methods else
            max(["vm2", *helped], key=lambda name: summary(results[name])["dice"]["mean"])
            if "vm2" in results else None)
    if best == "best":
        run("best", best_flags)
    if "ants" in args.methods:
        try:
            results["ants"] = cached(os.path.join(args.output, "ants.json"), pairs,
                                     lambda: ants_syn(full, pairs, args.ants_iterations,
                                                      args.output))
        except ImportError:
            print("antspyx is not installed: skipping ANTs SyN (pip install antspyx)")
    if "finetune" in args.methods and best in results:
        if args.refine_lr is None:
            import tuning

            args.refine_lr = tuning.REFINE_LR
        settings = {"model": best, **{key: getattr(args, key) for key in (
            "finetune_steps", "curve_steps", "finetune_lr", "refine_steps", "refine_lr")}}
        tuned = cached(os.path.join(args.output, "finetune.json"), pairs, lambda: {
            **instance_optimisation(model_path(best), test_set, full, pairs, args),
            "settings": settings}, settings)
        results["finetune"] = curve_rows(tuned, f"{args.finetune_steps}+0")
        results["refined"] = curve_rows(tuned, f"{args.finetune_steps}+{args.refine_steps}")
        plot_curve(tuned, results.get("ants"), os.path.join(args.output, "finetune_curve.png"))
    if "official" in args.methods:
        if os.path.exists(args.official_python):
            results["official"] = cached(os.path.join(args.output, "official.json"), pairs,
                                         lambda: official(full, pairs, args))
            minutes["official"] = results["official"]["train_seconds"] / 60
        else:
            print(f"{args.official_python} not found: skipping the official VoxelMorph row "
                  f"(set up its environment as official_vxm.py says)")

    grid = 128 // args.downsample
    labels = {"seg_weight": args.seg_weight, "finetune_steps": args.finetune_steps,
              "refine_steps": args.refine_steps,
              "best": " ".join(best_flags) or "(no option helped)"}
    labels["tuned"] = NAMES[best].format(**labels) if best else ""
    rows = [("affine only", summary(results["affine"]), None)]
    rows += [(NAMES[name].format(**labels) + (f", {grid}^3" if name != "ants" else ""),
              summary(result), minutes.get(name)) for name, result in results.items()
             if name != "affine"]
    with open(os.path.join(args.output, "results.json"), "w") as file:
        json.dump({"network_grid": f"{grid}^3 at {1.5 * args.downsample:g} mm",
                   "scoring_grid": "128^3 at 1.5 mm", "train_subjects": NUM_TRAIN,
                   "steps": args.epochs * args.steps_per_epoch, "pairs": pairs,
                   "labels": full[2], "methods": results,
                   "summary": {name: summary(result) for name, result in results.items()}},
                  file, indent=2)
    print(f"\nNetworks on {grid}^3 at {1.5 * args.downsample:g} mm, {NUM_TRAIN} training "
          f"subjects, {args.epochs * args.steps_per_epoch} steps per model; every score on the "
          f"128^3 grid over {len(full[2])} structures and {len(pairs)} test pairs; benchmark "
          f"{(time.perf_counter() - started) / 60:.0f} min\n")
    print(table(rows))


if __name__ == "__main__":
    main()
