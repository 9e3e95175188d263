"""Registration within and across contrasts on the real brains (T1 -> T1 and T2-like -> T1).

    python3 benchmarks/contrasts.py --finetune_steps 50 --refine_steps 20

Data: ``../shared/data/fstrain9_128.npz`` (see ``brains.py``): networks train on the first 6
subjects at 64^3 (3 mm) and register the 6 ordered pairs of the other 3, scored at 128^3 by
``brains.score_pair``. The data hold T1 scans only. The other contrast is **not a real scan**:
:func:`t2_like` remaps each test subject's T1 intensities voxel by voxel so that the order of the
tissues is that of a T2-weighted scan (CSF bright, grey matter in between, white matter dark),
from anchors measured on the training subjects' label maps. The anatomy is unchanged, so the
cross-contrast Dice is comparable with the T1 one; the remapping does not use the synthesis of
``synthesis.py`` (which would flatter the models trained on it).

Rows, each registering the pairs twice (moving T1 or T2-like, static T1): the affine start; VM-2
trained on T1 images (NCC); VM-2 with ``--loss mi --augment intensity``; VM-2 trained from the
training subjects' label maps (``--synth data``) and from random shapes (``--synth shapes``),
both diffeomorphic; the label-map model with instance optimisation by mutual information; ANTs
SyN with mutual information (``mattes``) and with CC at antspyx's default iterations and at
``--ants_iterations`` (its per-pair scores kept in ``contrasts_ants_scores.json``; ``--ants``
chooses which run). Results are cached in ``--output``; prints a markdown table.
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import ants_syn, brains  # noqa: E402  (numpy only)

# T1 intensity (of [0, 1]) -> T2-like intensity: brain edge, ventricles' median, cortex's median,
# white matter's median (the 6 training subjects at 128^3: 0.37, 0.69, 0.95), the top.
T1_ANCHORS = (0.02, 0.37, 0.69, 0.95, 1.0)
T2_ANCHORS = (0.75, 1.0, 0.6, 0.3, 0.28)
# two more, not monotone in T1 (so no scaling of a T1 gives them): FLAIR-like, CSF dark and grey
# matter brighter than white; PD-like, low contrast, CSF bright, grey matter above white
SYNTH_JITTER = 0.03  # std of a synthetic subject's per-structure intensity shift
WHITE_MATTER = 2  # the label whose intensities a structure missing from the T1s takes
REMAPS = {"T2-like": T2_ANCHORS, "FLAIR-like": (0.2, 0.1, 0.9, 0.6, 0.55),
          "PD-like": (0.6, 0.9, 0.8, 0.65, 0.62)}
SYNTH = ["--int_steps", "7", "--int_downsize", "2"]
TRAININGS = {"vm2": [], "mi": ["--loss", "mi", "--augment", "intensity"],
             "synth_data": ["--synth", "data", *SYNTH],
             "synth_shapes": ["--synth", "shapes", *SYNTH]}
NAMES = {"affine": "affine only", "vm2": "VM-2 trained on T1 images (NCC)",
         "mi": "VM-2 `--loss mi --augment intensity`",
         "synth_data": "VM-2 from brain label maps (`--synth data`, diffeomorphic)",
         "synth_shapes": "VM-2 from random shapes (`--synth shapes`, diffeomorphic)",
         "tuned": "label-map model + MI instance optimisation ({steps})",
         "ants_mattes_default": "ANTs SyN (MI), default 40-20-0",
         "ants_CC_default": "ANTs SyN (CC), default 40-20-0",
         "ants_mattes": "ANTs SyN (MI), {iterations}", "ants_CC": "ANTs SyN (CC), {iterations}"}
ANTS_SCORES = os.path.join(brains.ROOT, "benchmarks", "contrasts_ants_scores.json")
# the realistic contrasts (:func:`realistic`): per-structure intensity offsets, bias, noise
STRUCTURE_SPREAD = 0.08  # each structure's offset is uniform on +- this (intensity units)
BIAS = 0.25  # the multiplicative bias field spans 1 +- this
BIAS_POINTS = 4  # control points of the bias field per axis (cubic spline)
NOISE = 0.02  # std of the Gaussian noise in the brain (intensity units)


def remapped(t1: np.ndarray, contrast: str = "T2-like") -> np.ndarray:
    """An image of another contrast (``REMAPS``) of a skull-stripped T1 scan in [0, 1], voxel by
    voxel.

    Intensities above ``T1_ANCHORS[0]`` (the brain) are mapped piecewise linearly through the
    anchors to the contrast's: for ``T2-like`` CSF brightest, then grey matter, white matter
    darkest; the background stays 0.

    Parameters
    ----------
    t1 : np.ndarray
        ``(*spatial)`` T1 image in [0, 1].
    contrast : str
        A key of ``REMAPS``.

    Returns
    -------
    np.ndarray
        ``(*spatial)`` float32 in [0, 1].
    """
    anchors = REMAPS[contrast]
    return np.where(t1 > T1_ANCHORS[0], np.interp(t1, T1_ANCHORS, anchors),
                    0.0).astype(np.float32)


def realistic(t1: np.ndarray, seg: np.ndarray, contrast, rng: np.random.Generator
              ) -> np.ndarray:
    """A contrast that no lookup of the T1 intensity inverts: :func:`remapped` (or random
    anchors), each structure of ``seg`` shifted by its own offset (uniform on
    +-``STRUCTURE_SPREAD``, so one T1 intensity maps to several), times a smooth bias field
    spanning ``1 +- BIAS`` (a cubic spline through ``BIAS_POINTS``^3 random points), plus
    Gaussian noise of std ``NOISE`` in the brain; the background stays 0.

    Parameters
    ----------
    t1 : np.ndarray
        ``(*spatial)`` skull-stripped T1 image in [0, 1].
    seg : np.ndarray
        ``(*spatial)`` integer label map of ``t1``.
    contrast : str or sequence of float
        A key of ``REMAPS``, or the 5 intensities of ``T1_ANCHORS``' points.
    rng : np.random.Generator
        The draws' source: one seed, one image.

    Returns
    -------
    np.ndarray
        ``(*spatial)`` float32 in [0, 1].
    """
    from scipy import ndimage

    anchors = REMAPS[contrast] if isinstance(contrast, str) else tuple(contrast)
    brain = t1 > T1_ANCHORS[0]
    image = np.interp(t1, T1_ANCHORS, anchors)
    labels = np.unique(seg)
    offsets = rng.uniform(-STRUCTURE_SPREAD, STRUCTURE_SPREAD, size=labels.size)
    image += offsets[np.searchsorted(labels, seg)]
    coarse = rng.uniform(-1.0, 1.0, size=(BIAS_POINTS,) * t1.ndim)
    field = ndimage.zoom(coarse, [n / BIAS_POINTS for n in t1.shape], order=3, mode="nearest")
    image *= 1.0 + BIAS * field / max(np.abs(field).max(), 1e-6)
    image += rng.normal(0.0, NOISE, size=t1.shape)
    return np.where(brain, np.clip(image, 0.0, 1.0), 0.0).astype(np.float32)


def synthetic_t1s(maps: np.ndarray, vols: np.ndarray, segs: np.ndarray, seed: int
                  ) -> np.ndarray:
    """T1-like images of skull-stripped label maps (the public SynthSeg maps): each structure
    drawn from the mean and spread of its T1 intensities in the real ``vols``/``segs`` (a label
    they lack takes cerebral white matter's), shifted per subject by ``SYNTH_JITTER``, then
    block-averaged 2x as ``brains.downsample`` (partial volume) and scaled as the data are (the
    99.5th percentile of the brain to 255).

    Parameters
    ----------
    maps : np.ndarray
        ``(N, 128, 128, 128)`` label maps, 0 outside the brain.
    vols, segs : np.ndarray
        ``(M, 128, 128, 128)`` real T1 images (0..255) and their label maps.

    Returns
    -------
    np.ndarray
        ``(N, 64, 64, 64)`` uint8.
    """
    rng = np.random.default_rng(seed)
    stats = {}
    for label in np.unique(segs):
        values = vols[segs == label]
        stats[label] = (values.mean(), values.std())
    stats = {label: stats.get(label, stats[WHITE_MATTER]) for label in np.unique(maps) if label}
    out = []
    for label_map in maps:
        image = np.zeros(label_map.shape, np.float32)
        for label, (mean, std) in stats.items():
            inside = label_map == label
            shift = 1.0 + rng.normal(0.0, SYNTH_JITTER)
            image[inside] = rng.normal(mean * shift, std, size=int(inside.sum()))
        image = brains.downsample(np.clip(image, 0, None)[None], label_map[None], 2)[0][0]
        image *= 255.0 / np.percentile(image[image > 0], 99.5)
        out.append(np.clip(np.round(image), 0, 255))
    return np.asarray(out, np.uint8)


def t2_like(t1: np.ndarray) -> np.ndarray:
    """:func:`remapped` to ``T2-like``: the contrast of this benchmark's rows."""
    return remapped(t1, "T2-like")


def network_pairs(model, moving_small: np.ndarray, static_small: np.ndarray, full,
                  moving_full: np.ndarray, pairs, tuner=None, refiner=None) -> dict:
    """Register the test pairs with a network (fine-tuned on each pair by ``tuner`` and refined
    at 128^3 by ``refiner`` when given) and score them at 128^3.

    Parameters
    ----------
    model : keras.Model
        The registration network.
    moving_small, static_small : np.ndarray
        ``(3, 64, 64, 64)`` moving and static test images on the network's grid.
    full : tuple
        ``brains.full_resolution_test_set``.
    moving_full : np.ndarray
        ``(3, 128, 128, 128)`` moving images at full resolution (for the refinement).
    """
    import registration
    import tuning

    brains.register_full_resolution(model if tuner is None else tuner.network,
                                         moving_small[0], static_small[1])  # its graph, untimed
    results = []
    for m, s in pairs:
        network, finetune_seconds, _ = tuning.finetuned(model, tuner, moving_small[m],
                                                        static_small[s])
        deformation, seconds = brains.register_full_resolution(
            network, moving_small[m], static_small[s])
        deformation, refine_seconds, _ = tuning.refined(refiner, moving_full[m], full[0][s],
                                                        deformation)
        moved_seg = registration.warped(full[1][m].astype(np.int32), deformation, "nearest")
        scored = brains.score_pair(full, m, s, moved_seg, deformation)
        results.append({**scored, "seconds": seconds, "finetune_seconds": finetune_seconds,
                        "refine_seconds": refine_seconds})
        print(f"  pair {m}->{s}: Dice {np.nanmean(scored['dice']):.3f}", flush=True)
    return {"per_pair": results}


def ants_pairs(full, moving_full: np.ndarray, pairs, metric: str, iterations, contrast: str,
               folder: str, scores: str = ANTS_SCORES) -> dict:
    """ANTs SyN (``metric``, ``iterations`` or None for the default) on the test pairs at
    128^3, each pair's scores kept in ``scores`` (JSON, no image data) and reused."""
    key = f"{metric} {contrast} {'-'.join(map(str, iterations or ['default']))}"
    stored = json.load(open(scores)) if os.path.exists(scores) else {}
    results = []
    for m, s in pairs:
        pair = f"{m}->{s}"
        if pair not in stored.get(key, {}):
            made = ants_syn.ants_machine()
            registered = ants_syn.ants_register(
                full[0][s], moving_full[m], full[1][m], iterations,
                os.path.join(folder, f"ants_{key.replace(' ', '_')}_{m}_{s}.npz"), metric)
            scored = brains.score_pair(full, m, s, registered["moved_seg"],
                                       registered["deformation"])
            stored.setdefault(key, {})[pair] = {**scored, "seconds": float(registered["seconds"]),
                                                "made": made}
            with open(scores + ".tmp", "w") as file:
                json.dump(stored, file, indent=1)
            os.replace(scores + ".tmp", scores)
        row = {name: value for name, value in stored[key][pair].items() if name != "made"}
        results.append(row)
        print(f"  ANTs {key} pair {pair}: Dice {np.nanmean(row['dice']):.3f} in "
              f"{row['seconds']:.0f} s", flush=True)
    return {"per_pair": results}


def figures(model, small: dict, moving_full: dict, full, pair: tuple[int, int], folder: str,
            prefix: str) -> None:
    """Overlays (moving, static, moved) and the deformation grid of one test pair registered by
    ``model``, moving T1 and T2-like, at 128^3: ``{prefix}_{t1,t2}_{overlay,grid}.png``."""
    import registration
    import viz

    m, s = pair
    for contrast, tag in (("T1", "t1"), ("T2-like", "t2")):
        deformation, _ = brains.register_full_resolution(model, small[contrast][m],
                                                              small["T1"][s])
        moved = registration.warped(moving_full[contrast][m], deformation)
        viz.overlay_slices(moving_full[contrast][m], full[0][s], moved,
                           ltitle=f"Moving ({contrast})", mtitle="Static (T1)",
                           fname=os.path.join(folder, f"{prefix}_{tag}_overlay.png"))
        viz.plot_deformation_grid(deformation, moved, fname=os.path.join(
            folder, f"{prefix}_{tag}_grid.png"))


def train(name: str, train_set: str, test_set: str, folder: str, args) -> float:
    """Train one row's network by ``brains.train``: scan-to-scan pairs of T1 images, the
    training subjects' label maps (``--synth data``) or random shapes (no data)."""
    data = {"synth_data": ["--data", train_set, "--val_data", test_set],
            "synth_shapes": []}.get(name)
    return brains.train(name, TRAININGS[name], train_set, test_set, folder, args, data)


def table(results: dict, minutes: dict, names: dict) -> str:
    """Markdown table: one line per method and moving contrast."""
    lines = ["| method | moving | mean Dice (30 structures) | HD95 (mm) | SDlogJ | "
             "% det(J) <= 0 | s per pair (CPU) | training (min) |", "|---" * 8 + "|"]
    for name, by_contrast in results.items():
        for contrast, result in by_contrast.items():
            stats = brains.summary(result)
            seconds = sum(stats[key]["mean"] for key in ("seconds", "finetune_seconds",
                                                         "refine_seconds") if key in stats)
            lines.append(
                f"| {names[name]} | {contrast} | {stats['dice']['mean']:.3f} ± "
                f"{stats['dice']['std']:.3f} | {stats['hd95_mm_mean']['mean']:.2f} | "
                f"{stats['sdlogj']['mean']:.3f} | "
                f"{100 * stats['folding_fraction']['mean']:.4f} | "
                + (f"{seconds:.2f} | " if seconds else "- | ")
                + (f"{minutes[name]:.0f} |" if name in minutes else "- |"))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=brains.DATA, help="the fstrain9_128.npz file")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps_per_epoch", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune_steps", type=int, default=50,
                        help="MI fine-tuning steps of the label-map model on each pair (64^3)")
    parser.add_argument("--refine_steps", type=int, default=20,
                        help="MI refinement steps of its displacement at 128^3")
    parser.add_argument("--ants", nargs="*", default=["mattes_default", "mattes", "CC_default"],
                        choices=["mattes_default", "mattes", "CC_default", "CC"],
                        help="ANTs SyN rows (metric, default iterations or --ants_iterations), "
                             "across contrasts; skipped without antspyx")
    parser.add_argument("--ants_iterations", type=int, nargs="+", default=[100, 70, 50, 20])
    parser.add_argument("--max_pairs", type=int, default=None,
                        help="register only the first test pairs (default: all 6)")
    parser.add_argument("--output", default=os.path.join(ROOT, "runs", "contrasts"))
    parser.add_argument("--figures", default=None,
                        help="folder to draw the T1-trained VM-2's registration of the first "
                             "test pair into (within T1 and across contrasts), e.g. _images")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    train_set, test_set, full = brains.prepare("contrasts.py", args.data, 2, args.output)
    pairs = brains.test_pairs(len(full[0]), args.max_pairs)
    t2_full = np.stack([t2_like(volume) for volume in full[0]])
    with np.load(test_set) as stored:
        small = {"T1": stored["vols"].astype(np.float32) / 255.0}
    small["T2-like"] = brains.downsample(t2_full, full[1], 2)[0]
    moving_full = {"T1": full[0], "T2-like": t2_full}
    results = {"affine": {contrast: brains.affine_only(full, pairs) for contrast in small}}
    minutes = {}

    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import keras

    import models
    import registration
    import rundir
    import tuning

    for name in TRAININGS:
        seconds = train(name, train_set, test_set, args.output, args)
        minutes[name] = seconds / 60
        model = registration.network_for(keras.models.load_model(  # shapes: another grid
            os.path.join(args.output, name, rundir.MODEL)), small["T1"].shape[1:])
        results[name] = {contrast: brains.cached(
            os.path.join(args.output, f"{name}_{contrast}.json"), pairs,
            lambda: network_pairs(model, small[contrast], small["T1"], full,
                                  moving_full[contrast], pairs)) for contrast in small}
    if args.figures:  # the T1-trained VM-2: within T1, and its failure across contrasts
        figures(models.registration_model(keras.models.load_model(
            os.path.join(args.output, "vm2", rundir.MODEL))), small, moving_full, full,
            pairs[0], args.figures, "contrasts_vm2")
    trained = keras.models.load_model(os.path.join(args.output, "synth_data", rundir.MODEL))
    tuner = tuning.FineTuner(trained, args.finetune_steps, similarity="mi")
    refiner = tuning.Refiner(trained, args.refine_steps, similarity="mi")
    steps = f"{args.finetune_steps} + {args.refine_steps} steps"
    results["tuned"] = {"T2-like": brains.cached(
        os.path.join(args.output, f"tuned_{args.finetune_steps}_{args.refine_steps}.json"),
        pairs, lambda: network_pairs(trained, small["T2-like"], small["T1"], full, t2_full,
                                     pairs, tuner, refiner))}
    iterations = "-".join(map(str, args.ants_iterations))
    for kind in args.ants:
        metric, default = kind.split("_")[0], kind.endswith("_default")
        try:
            results[f"ants_{kind}"] = {"T2-like": ants_pairs(
                full, t2_full, pairs, metric, None if default else args.ants_iterations,
                "T2-like", args.output)}
        except ImportError:
            print("antspyx is not installed: skipping the ANTs rows (pip install antspyx)")
            break
    same = ants_syn.stored_scores(ants_syn.ANTS_SCORES, args.ants_iterations)
    if all(f"{m}->{s}" in same for m, s in pairs):  # ants_syn.py's T1 pairs, CC
        results.setdefault("ants_CC", {})["T1"] = {"per_pair": [
            {key: value for key, value in same[f"{m}->{s}"].items()
             if key not in ("made", "apply_agreement")} for m, s in pairs]}
    names = {key: value.format(steps=steps, iterations=iterations) for key, value in NAMES.items()}
    print(f"\n{len(pairs)} test pairs, scored at 128^3; moving T1 or T2-like (remapped T1), "
          f"static T1\n")
    print(table(results, minutes, names))


if __name__ == "__main__":
    main()
