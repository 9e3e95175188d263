"""HyperMorph's outputs (``hyper.py``): scores against the smoothness weight, and the weight
chosen on a run's validation pairs.

:func:`write_curve` writes ``evaluate --lamda V1 V2 ...``'s curve (``rundir.LAMBDA_CURVE``) and
its figure (:func:`plot_lambda_curve`); :func:`chosen_lambda` is ``evaluate --lamda best``: the
weight of best mean Dice on the validation pairs of the hypermodel's training run
(``training.validation_pairs``, which is why it is not in ``hyper.py``, which training imports).
"""
import os

from matplotlib.figure import Figure

import hyper
import objective
import rundir
import scores
import training
import viz


def write_curve(model: objective.TrainingModel, lamdas: list[float], pairs, labels: list[int],
                spacing, output: str) -> str:
    """``evaluate --lamda V1 V2 ...``: the scores at each weight (``hyper.curve``), written as
    ``rundir.LAMBDA_CURVE`` and its figure in ``output``; one line per weight."""
    for lamda in lamdas:
        hyper.check_lambda(model, lamda)
    rows = hyper.curve(model, pairs, lamdas, labels or None, spacing)
    rundir.make_folder(output)
    path = os.path.join(output, rundir.LAMBDA_CURVE)
    rundir.write_json(path, {"lamda_curve": rows})
    if "dice_after" in rows[0]:
        plot_lambda_curve({"hypermodel": rows}, os.path.join(output, rundir.LAMBDA_PLOT))
    return "\n".join(f"--lamda {row['lamda']:g}: " + scores.headline(row) for row in rows) + \
        f"\nwrote {path}"


def chosen_lambda(model, path: str | None) -> float:
    """``evaluate --lamda best``: the hypermodel's weight of best mean Dice on the validation
    pairs of its training run (its ``rundir.ARGS``), said in one line (``hyper.choose``)."""
    hyper.check_lambda(model, "best")
    flags = rundir.read_json(os.path.join(os.path.dirname(os.path.abspath(path)), rundir.ARGS))
    best, line = hyper.choose(model, *training.validation_pairs(flags))
    print(line)
    return best


def plot_lambda_curve(curves: dict, fname: str | None = None, title: str = "") -> Figure:
    """Mean Dice and share of folding voxels against a hypermodel's smoothness weight.

    Parameters
    ----------
    curves : dict
        ``{label: rows}``, each row a ``lamda`` and the ``scores.summarize`` keys
        ``dice_after`` and ``folding_fraction`` (``hyper.curve``, ``rundir.LAMBDA_CURVE``); a
        curve of 6 points or more is drawn as a line, fewer as markers (models trained
        separately, for instance).
    fname : str, optional
        PNG path to save to.
    title : str
        Figure title.
    """
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    dice_ax, folding_ax = fig.subplots(1, 2, sharex=True)
    for label, rows in curves.items():
        lamdas = [row["lamda"] for row in rows]
        style = {"marker": "o", "linestyle": "-" if len(rows) >= 6 else "none", "label": label}
        dice_ax.errorbar(lamdas, [row["dice_after"]["mean"] for row in rows],
                         [row["dice_after"]["std"] for row in rows], capsize=2, **style)
        folding_ax.plot(lamdas, [100 * row["folding_fraction"]["mean"] for row in rows],
                        **style)
    dice_ax.set_ylabel("mean Dice after registration")
    folding_ax.set_ylabel("% voxels with det(J) <= 0")
    folding_ax.set_yscale("symlog", linthresh=0.01)
    for ax in (dice_ax, folding_ax):
        ax.set_xlabel("smoothness weight lambda (hypermodel's)")
        ax.grid(alpha=0.3)
    dice_ax.legend(frameon=False)
    if title:
        fig.suptitle(title)
    return viz.save(fig, fname)
