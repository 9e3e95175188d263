"""HyperMorph against models trained separately: Dice and folding against the smoothness weight.

    python3 benchmarks/hyper.py --ndim 2 --runs /tmp/hyper2d \
        --json benchmarks/hyper_scores_2d.json --figure _images/hyper_lambda_2d.png

On the default data (``--ndim`` 2 or 3), as the paper's figure: one hypermodel (``main.py
--hyper``) trained for ``--hyper_epochs`` (default twice the steps of one separate model, and
again for ``--epochs``, the steps of one) beside one ordinary VoxelMorph-2 per weight of
``--lamdas``, each trained for ``--epochs`` with ``--lamda lamda / (1 - lamda)``, the ordinary
weight that minimises what the hypermodel minimises at ``lamda`` (``hyper.plain_lambda``: 1.0,
the papers' NCC weight, at 0.5). Every model is scored by ``main.py evaluate`` on a test set of
its own (``NUM_TEST`` subjects made from the template as the default data makes its subjects,
with another seed than the validation subjects'), the hypermodels at every weight of
``hyper.CANDIDATES``; ``evaluate --lamda best`` then chooses a weight on the validation
subjects, and its test Dice is set beside the default weight's (0.5).

Every run goes into ``--runs`` (outside the repository) and is reused if it finished; the table
is printed and the scores written to ``--json``, the figure to ``--figure``.
"""
import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import hyper  # noqa: E402
import hyper_outputs  # noqa: E402
import synthetic  # noqa: E402

NUM_TEST = {2: 16, 3: 8}  # test subjects, as many as the validation subjects
TEST_SEED = 36  # of the test subjects (the validation subjects' is synthetic.VALIDATION_SEED)


def write_test_set(ndim: int, path: str) -> str:
    """The test subjects, with the template as atlas, as an ``.npz`` that ``--data`` reads."""
    data = synthetic.load_default_data(ndim)
    vols, segs = synthetic.synthetic_subjects(data.atlas, NUM_TEST[ndim], TEST_SEED,
                                              data.atlas_seg)
    np.savez(path, vols=vols, segs=segs, atlas=data.atlas, atlas_seg=data.atlas_seg,
             labels=data.labels, label_names=np.array(data.label_names),
             spacing=np.array(data.spacing))
    return path


def main_py(*argv: str) -> None:
    """``python3 main.py ARGV``; exits if it fails."""
    command = [sys.executable, os.path.join(ROOT, "main.py"), *argv]
    print("$", " ".join(command[1:]), flush=True)
    if subprocess.run(command).returncode:
        sys.exit(f"failed: {' '.join(command)}")


def trained(run: str, flags: list[str]) -> dict:
    """The ``metrics.json`` of the training run ``run`` of ``flags`` (trained if need be)."""
    if not os.path.isfile(os.path.join(run, "metrics.json")):
        main_py(*flags, "--output", run)
    with open(os.path.join(run, "metrics.json")) as file:
        return json.load(file)


def scored(run: str, test: str, folder: str, *flags: str) -> dict:
    """``main.py evaluate`` of ``run``'s model on ``test`` into ``run/folder`` (if not done):
    its ``eval.json``, or its ``lamda_curve.json`` with ``--lamda`` of several weights."""
    output = os.path.join(run, folder)
    name = "lamda_curve.json" if len(flags) > 2 else "eval.json"
    if not os.path.isfile(os.path.join(output, name)):
        main_py("evaluate", "--model", os.path.join(run, "model.keras"), "--data", test,
                "--output", output, *flags)
    with open(os.path.join(output, name)) as file:
        return json.load(file)


def row(summary: dict) -> dict:
    """The scores of the table: mean Dice (and std over pairs), folding share, SDlogJ."""
    return {"dice": summary["dice_after"]["mean"], "dice_std": summary["dice_after"]["std"],
            "folding": summary["folding_fraction"]["mean"], "sdlogj": summary["sdlogj"]["mean"]}


def cpu() -> str:
    """The CPU's model name and its widest vector instructions (AVX-512 or AVX2)."""
    text = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), platform.processor())
    vectors = "AVX-512" if "avx512f" in text else "AVX2" if "avx2" in text else "no AVX2"
    return f"{name}, {os.cpu_count()} cores, {vectors}"


def benchmark(args) -> dict:
    """Train and score every model; the scores by weight, the choice on validation, the cost."""
    os.makedirs(args.runs, exist_ok=True)
    test = write_test_set(args.ndim, os.path.join(args.runs, "test.npz"))
    common = ["--ndim", str(args.ndim), "--seed", str(args.seed)]
    steps = args.epochs * 100
    results = {"cpu": cpu(), "ndim": args.ndim, "test_pairs": NUM_TEST[args.ndim],
               "separate": {}, "hyper": {}}
    for lamda in args.lamdas:
        run = os.path.join(args.runs, f"separate-{lamda:g}")
        plain = hyper.plain_lambda(lamda)
        metrics = trained(run, common + ["--lamda", f"{plain:.6g}", "--epochs", str(args.epochs)])
        results["separate"][f"{lamda:g}"] = {
            "plain_lamda": plain, "steps": steps, "train_seconds": metrics["train_seconds"],
            **row(scored(run, test, "test")["summary"])}
    grid = [f"{lamda:g}" for lamda in hyper.CANDIDATES]
    for epochs in sorted({args.epochs, args.hyper_epochs}):
        run = os.path.join(args.runs, f"hyper-{epochs}")
        metrics = trained(run, common + ["--hyper", "--epochs", str(epochs)])
        curve = scored(run, test, "test", "--lamda", *grid)["lamda_curve"]
        chosen = scored(run, test, "best", "--lamda", "best")
        default = next(r for r in curve if r["lamda"] == metrics["lamda"])
        results["hyper"][str(epochs * 100)] = {
            "train_seconds": metrics["train_seconds"],
            "curve": {f"{r['lamda']:g}": row(r) for r in curve},
            "best": {"lamda": chosen["lamda"], "test_dice": chosen["summary"]["dice_after"]["mean"],
                     "default_lamda": metrics["lamda"],
                     "default_test_dice": default["dice_after"]["mean"]}}
    return results


def table(results: dict) -> str:
    """Markdown: per weight, the separate model's Dice and folding beside each hypermodel's."""
    budgets = sorted(results["hyper"], key=int)
    head = "| lambda (ordinary --lamda) | separate: Dice, folding % | " + " | ".join(
        f"hypermodel, {int(b):,} steps: Dice, folding %" for b in budgets) + " |"
    lines = [head, "|" + "---|" * (2 + len(budgets))]
    for key, separate in results["separate"].items():
        cells = [f"{separate['dice']:.3f}, {100 * separate['folding']:.3f}"]
        cells += [f"{results['hyper'][b]['curve'][key]['dice']:.3f}, "
                  f"{100 * results['hyper'][b]['curve'][key]['folding']:.3f}" for b in budgets]
        lines.append(f"| {key} ({separate['plain_lamda']:.3g}) | " + " | ".join(cells) + " |")
    for budget in budgets:
        best = results["hyper"][budget]["best"]
        lines.append(f"\nhypermodel of {int(budget):,} steps: --lamda best chose {best['lamda']:g} "
                     f"on validation, test Dice {best['test_dice']:.3f} (the default "
                     f"{best['default_lamda']:g}: {best['default_test_dice']:.3f}); trained in "
                     f"{results['hyper'][budget]['train_seconds']:.0f} s")
    seconds = [s["train_seconds"] for s in results["separate"].values()]
    lines.append(f"separate models: {next(iter(results['separate'].values()))['steps']:,} steps "
                 f"each, {np.mean(seconds):.0f} s each on average; CPU: {results['cpu']}")
    return "\n".join(lines)


def figure(results: dict, path: str) -> None:
    """Dice and folding against lambda: each hypermodel's curve, the separate models' points."""
    def rows(scores: dict) -> list[dict]:
        return [{"lamda": float(key), "dice_after": {"mean": s["dice"], "std": s["dice_std"]},
                 "folding_fraction": {"mean": s["folding"]}} for key, s in scores.items()]
    curves = {f"hypermodel, {int(b):,} steps": rows(results["hyper"][b]["curve"])
              for b in sorted(results["hyper"], key=int)}
    steps = next(iter(results["separate"].values()))["steps"]
    curves[f"separate models, {steps:,} steps each"] = rows(results["separate"])
    hyper_outputs.plot_lambda_curve(curves, path, f"{results['ndim']}D default data, "
                                        f"{results['test_pairs']} test pairs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=2)
    parser.add_argument("--runs", required=True, help="folder of the runs (outside the repo)")
    parser.add_argument("--lamdas", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9],
                        help="weights of the separate models (the hypermodel's scale)")
    parser.add_argument("--epochs", type=int, default=8, help="of each separate model")
    parser.add_argument("--hyper_epochs", type=int, default=16, help="of the hypermodel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the scores here")
    parser.add_argument("--figure", default=None, help="write the figure here")
    args = parser.parse_args(argv)
    results = benchmark(args)
    print(table(results))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    if args.figure:
        figure(results, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
