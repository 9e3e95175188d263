"""Real-brain benchmark in the manner of the VoxelMorph papers (TMI 2019, Sec. V).

    python3 benchmarks/real_brains.py --downsample 2        # networks on a 64^3 grid
    python3 benchmarks/real_brains.py                       # networks at 128^3 (a GPU helps)

Data: ``../shared/data/fstrain9_128.npz`` beside the repository (see ``brains.py``).
VoxelMorph-2 is trained scan-to-scan on the first 6 subjects with ``main.py`` in several
variants (the CVPR model and each option of ``OPTIONS``: diffeomorphic, bidirectional,
segmentation-aided, the augmentations, the official code's U-Net; then the options that helped,
combined), and ordered pairs of the other 3 subjects are registered (all 6 by default;
``--max_pairs`` keeps the first ones, the cycle ``a->b, b->c, c->a`` first). The best network (or
that of ``--tune_model``) is then made better on each pair (instance optimisation: fine-tuning the
network, then refining its displacement at 128^3), scored along a curve of step counts.
Next to them: the affine-only starting point; when the ``antspyx`` package is installed (a
benchmark-only dependency), ANTs SyN with the CC metric on the same pairs at the full 128^3
resolution (``ants_syn.py``: its per-pair scores are kept in the repository); and, when its own
environment exists (``--official_python``), the official VoxelMorph 0.2 trained on the VM-2
row's budget by ``official_vxm.py``.

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
from benchmarks import ants_syn, brains  # noqa: E402  (numpy only)

# The single options compared with the CVPR model; "best" combines those that raise its Dice.
OPTIONS = {"int_steps": ["--int_steps", "7", "--int_downsize", "2"], "bidir": ["--bidir"],
           "seg": ["--seg_weight"], "elastic": ["--augment", "elastic"],
           "intensity": ["--augment", "intensity"], "random_affine": ["--random_affine"],
           "unet": ["--unet", "official"]}
NAMES = {"vm2": "VM-2 (CVPR)", "int_steps": "VM-2 + --int_steps 7 --int_downsize 2",
         "bidir": "VM-2 + --bidir",
         "seg": "VM-2 + --seg_weight {seg_weight:g}", "elastic": "VM-2 + --augment elastic",
         "intensity": "VM-2 + --augment intensity", "random_affine": "VM-2 + --random_affine",
         "unet": "VM-2 + --unet official (the official code's U-Net layout)",
         "best": "VM-2 + {best} (the options that helped, combined)",
         "finetune": "{tuned} + --finetune_steps {finetune_steps}",
         "refined": "{tuned} + --finetune_steps {finetune_steps} --refine_steps {refine_steps} "
                    "(refined at 128^3)",
         "ants": "ANTs SyN (CC), 128^3",
         "official": "official VoxelMorph 0.2 (VxmDense, VM-2 channels, same budget)"}
OFFICIAL_PYTHON = os.path.join(ROOT, "..", "vxm-official", "bin", "python")
SECONDS = ("seconds", "finetune_seconds", "refine_seconds")  # the parts of a pair's time


def voxelmorph(model_path: str, test_set: str, full, pairs) -> dict:
    """Register the test pairs with a trained model and score them at full resolution."""
    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import keras

    import datasets
    import models
    from benchmarks import contrasts

    model = models.registration_model(keras.models.load_model(model_path))  # built once
    small = datasets.load_dataset(test_set).vols
    return contrasts.network_pairs(model, small, small, full, full[0], pairs)


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
    import registration
    import tuning

    model = keras.models.load_model(model_path)
    counts = sorted({*args.curve_steps, args.finetune_steps})
    tuner = tuning.FineTuner(model, counts[-1], args.finetune_lr)
    refiner = tuning.Refiner(model, args.refine_steps, args.refine_lr)
    small = datasets.load_dataset(test_set).vols
    vols, segs = full[:2]
    brains.register_full_resolution(tuner.network, small[0], small[1])  # its graph, untimed
    curve = []
    for m, s in pairs:
        tuner.start(small[m], small[s])
        rows, done, finetune_seconds = {}, 0, 0.0
        for count in counts:
            start = time.perf_counter()
            network = tuner.train(count - done)
            finetune_seconds, done = finetune_seconds + time.perf_counter() - start, count
            deformation, seconds = brains.register_full_resolution(network, small[m], small[s])
            for refine in sorted({0, args.refine_steps}):
                field, refine_seconds, _ = tuning.refined(refiner if refine else None,
                                                          vols[m], vols[s], deformation)
                moved_seg = registration.warped(segs[m].astype(np.int32), field, "nearest")
                scored = brains.score_pair(full, m, s, moved_seg, field)
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
        stats = brains.summary(curve_rows(result, key))
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
    if ants is not None:  # its median time: one pair may have run beside other work
        dice, count = brains.summary(ants)["dice"]["mean"], len(ants["per_pair"])
        seconds = float(np.median([row["seconds"] for row in ants["per_pair"]]))
        axes.plot(seconds, dice, "k*", markersize=10, label=f"ANTs SyN (CC) at 128^3, {count} "
                  f"pair{'s' * (count > 1)}, median time")
        axes.axhline(dice, color="k", ls="--", lw=1)
        axes.axvline(seconds / 40, color="grey", ls=":", lw=1, label="1/40 of ANTs' time")
    axes.set_xscale("log")
    axes.set_xlabel("seconds per pair (CPU; numbers: network fine-tuning steps)")
    axes.set_ylabel(f"mean Dice, {len(result['curve'])} test pairs, 30 structures")
    axes.legend(fontsize=8, loc="upper left")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path + ".tmp.png", dpi=120)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)


def official(full, pairs, args) -> dict:
    """The official VoxelMorph trained by ``official_vxm.py`` in its own environment on the VM-2
    row's budget, its displacements scored here as every other row."""
    import subprocess

    import registration
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
            moved_seg = registration.warped(full[1][m].astype(np.int32), deformation, "nearest")
            scored = brains.score_pair(full, m, s, moved_seg, deformation)
            results.append({**scored, "seconds": float(stored["seconds"][index])})
            print(f"  official pair {m}->{s}: Dice {np.nanmean(scored['dice']):.3f}", flush=True)
        return {"per_pair": results, "train_seconds": float(stored["train_seconds"])}


def combined(options: list[list[str]]) -> list[str]:
    """The flags of several options of :data:`OPTIONS`, their ``--augment`` kinds under one
    ``--augment``."""
    flags = [flag for option in options if option[0] != "--augment" for flag in option]
    kinds = [kind for option in options if option[0] == "--augment" for kind in option[1:]]
    return flags + (["--augment", *kinds] if kinds else [])


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
    parser.add_argument("--data", default=brains.DATA, help="the fstrain9_128.npz file")
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
    parser.add_argument("--tune_model", default=None, choices=["vm2", *OPTIONS, "best"],
                        help="the row whose network the instance-optimisation rows start from "
                             "(default: the best trained row)")
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


def main() -> None:
    args = build_parser().parse_args()
    started = time.perf_counter()
    train_set, test_set, full = brains.prepare("real_brains.py", args.data, args.downsample,
                                               args.output)
    pairs = brains.test_pairs(len(full[0]), args.max_pairs)
    results = {"affine": brains.affine_only(full, pairs)}
    minutes = {}

    def run(name: str, flags: list[str]):
        """Train and score one VoxelMorph row."""
        def compute():
            seconds = brains.train(name, flags, train_set, test_set, args.output, args)
            return {"flags": flags, "train_seconds": seconds,
                    **voxelmorph(model_path(name), test_set, full, pairs)}

        results[name] = brains.cached(os.path.join(args.output, f"{name}.json"), pairs, compute)
        minutes[name] = results[name]["train_seconds"] / 60

    def model_path(name: str) -> str:
        import rundir

        return os.path.join(args.output, name, rundir.MODEL)

    options = {**OPTIONS, "seg": OPTIONS["seg"] + [str(args.seg_weight)]}
    for name in ["vm2", *OPTIONS]:
        if name in args.methods:
            run(name, [] if name == "vm2" else options[name])
    dice = {name: brains.summary(result)["dice"]["mean"] for name, result in results.items()}
    helped = [name for name in OPTIONS if name in results and "vm2" in results
              and dice[name] > dice["vm2"]]
    best_flags = combined([options[name] for name in helped])
    # With one option (or none) that helped, or without the "best" row, the best row trained.
    best = ("best" if len(helped) > 1 and "best" in args.methods else
            max(["vm2", *helped], key=dice.get)
            if "vm2" in results else None)
    if best == "best":
        run("best", best_flags)
        dice["best"] = brains.summary(results["best"])["dice"]["mean"]
        best = max(["vm2", *helped, "best"], key=dice.get)  # combined is not always better
    if "ants" in args.methods:
        try:
            results["ants"] = brains.cached(
                os.path.join(args.output, "ants.json"), pairs,
                lambda: ants_syn.ants_syn(full, pairs, args.ants_iterations, args.output))
        except ImportError:
            print("antspyx is not installed: skipping ANTs SyN (pip install antspyx)")
    tuned = args.tune_model or best
    if "finetune" in args.methods and tuned in results:
        if args.refine_lr is None:
            import tuning

            args.refine_lr = tuning.REFINE_LR
        settings = {"model": tuned, **{key: getattr(args, key) for key in (
            "finetune_steps", "curve_steps", "finetune_lr", "refine_steps", "refine_lr")}}
        curve = brains.cached(os.path.join(args.output, "finetune.json"), pairs, lambda: {
            **instance_optimisation(model_path(tuned), test_set, full, pairs, args),
            "settings": settings}, settings)
        results["finetune"] = curve_rows(curve, f"{args.finetune_steps}+0")
        results["refined"] = curve_rows(curve, f"{args.finetune_steps}+{args.refine_steps}")
        plot_curve(curve, results.get("ants"), os.path.join(args.output, "finetune_curve.png"))
    if "official" in args.methods:
        if os.path.exists(args.official_python):
            results["official"] = brains.cached(os.path.join(args.output, "official.json"), pairs,
                                         lambda: official(full, pairs, args))
            minutes["official"] = results["official"]["train_seconds"] / 60
        else:
            print(f"{args.official_python} not found: skipping the official VoxelMorph row "
                  f"(set up its environment as official_vxm.py says)")

    grid = 128 // args.downsample
    labels = {"seg_weight": args.seg_weight, "finetune_steps": args.finetune_steps,
              "refine_steps": args.refine_steps,
              "best": " ".join(best_flags) or "(no option helped)"}
    labels["tuned"] = NAMES[tuned].format(**labels) if tuned else ""
    rows = [("affine only", brains.summary(results["affine"]), None)]
    rows += [(NAMES[name].format(**labels) + (f", {grid}^3" if name != "ants" else ""),
              brains.summary(result), minutes.get(name)) for name, result in results.items()
             if name != "affine"]
    with open(os.path.join(args.output, "results.json"), "w") as file:
        json.dump({"network_grid": f"{grid}^3 at {1.5 * args.downsample:g} mm",
                   "scoring_grid": "128^3 at 1.5 mm", "train_subjects": brains.NUM_TRAIN,
                   "steps": args.epochs * args.steps_per_epoch, "pairs": pairs,
                   "labels": full[2], "methods": results,
                   "summary": {name: brains.summary(result) for name, result in results.items()}},
                  file, indent=2)
    print(f"\nNetworks on {grid}^3 at {1.5 * args.downsample:g} mm, {brains.NUM_TRAIN} training "
          f"subjects, {args.epochs * args.steps_per_epoch} steps per model; every score on the "
          f"128^3 grid over {len(full[2])} structures and {len(pairs)} test pairs; benchmark "
          f"{(time.perf_counter() - started) / 60:.0f} min\n")
    print(table(rows))


if __name__ == "__main__":
    main()
