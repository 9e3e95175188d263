"""Figures of registrations and training runs, 2D and 3D through one code path.

A 3D volume is shown as three orthogonal slices through ``slice_index`` (default: its centre),
one row each; a 2D image as one row. Arrays are displayed with axis 0 to the right and axis 1
upwards (``origin="lower"``), so RAS volumes such as the default MNI152 data appear in the usual
neurological orientation. A displacement field is shown in each view through its two in-plane
components.

Every figure function (:func:`overlay_slices`, ``plot_*``) returns a ``matplotlib.figure.Figure``
and saves it as a PNG when given ``fname`` (:func:`save`, which ``hyper_outputs.py``'s lambda
curve uses too).
From the shell::

    python3 viz.py RUN_DIR                             # every figure of a main.py run folder
    python3 viz.py RUN_DIR --output _images --prefix default3d_ --pairs 1

The framework diagram is drawn by ``_images/framework.py``. Every file name of a run is
``rundir.py``'s, and so are the readers of its files.

Seven kinds of figure, each drawn by its own short functions, and the command line that draws a
run's.
"""
import argparse
import os
import sys
from functools import partial

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

import datasets
import rundir
import scores
import volumes

VIEW_NAMES = ("sagittal", "coronal", "axial")
PANEL_INCHES = 2.6  # width and height of one image panel
DPI = 100
JACOBIAN_RANGE = (0.0, 2.0)  # colour scale of the Jacobian determinant, centred at 1
FOLDING_COLOUR = "#00e000"  # voxels with Jacobian determinant <= 0
GRID_COLOUR = "#ff8c00"
BEFORE_COLOUR, AFTER_COLOUR = "#bbbbbb", "#1f77b4"  # Dice before / after registration
FIGURES = ("loss", "overlay", "grid", "displacement", "jacobian", "dice",
           "template")  # kinds in a run
TEMPLATE_EPOCHS_SHOWN = 4  # epochs of a learned template in its figure


def _slices(volume: np.ndarray, slice_index=None) -> list[np.ndarray]:
    """2D images to show: the image itself in 2D, three orthogonal slices in 3D.

    Parameters
    ----------
    volume : np.ndarray
        ``(H, W)`` or ``(D, H, W)``, optionally with more leading or trailing axes of size 1.
    slice_index : int or sequence of int, optional
        3D only: where to cut along each axis (one int for all); default the centre.
    """
    volume = np.squeeze(np.asarray(volume))
    if volume.ndim == 2:
        return [volume]
    if volume.ndim != 3:
        raise ValueError(f"expected a 2D or 3D array, got shape {volume.shape}")
    if slice_index is None:
        slice_index = [n // 2 for n in volume.shape]
    elif np.isscalar(slice_index):
        slice_index = [int(slice_index)] * 3
    return [np.take(volume, index, axis=axis) for axis, index in enumerate(slice_index)]


def _field(deformation) -> np.ndarray:
    """``deformation`` as a float array, checked to be ``(*spatial, ndim)`` with ndim 2 or 3."""
    deformation = np.asarray(deformation, dtype=np.float64)
    if deformation.ndim not in (3, 4) or deformation.shape[-1] != deformation.ndim - 1:
        raise ValueError(f"expected a (*spatial, ndim) displacement with ndim 2 or 3, "
                         f"got shape {deformation.shape}")
    return deformation


def _in_plane(deformation: np.ndarray, slice_index=None) -> list[np.ndarray]:
    """Per view, the two displacement components that lie in the view's plane.

    Parameters
    ----------
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement in voxels, 'ij' order, 2D or 3D.
    slice_index : int or sequence of int, optional
        3D only: where to cut; default the centre of each axis.

    Returns
    -------
    list of np.ndarray
        One ``(h, w, 2)`` array per view (one in 2D, three in 3D): the displacement along the
        view's first and second axes, in voxels.
    """
    deformation = _field(deformation)
    ndim = deformation.shape[-1]
    components = [_slices(deformation[..., d], slice_index) for d in range(ndim)]
    planes = [(0, 1)] if ndim == 2 else [(1, 2), (0, 2), (0, 1)]
    return [np.stack([components[a][view], components[b][view]], axis=-1)
            for view, (a, b) in enumerate(planes)]


def _overlay(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """RGB image: ``first`` in magenta, ``second`` in green; grey where they agree."""
    return np.stack([first, second, first], axis=-1)


def _panels(rows: int, cols: int, title: str, width: float = PANEL_INCHES):
    """A figure of ``rows`` x ``cols`` image panels; rows are named by view in 3D.

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : np.ndarray
        ``(rows, cols)`` axes.
    """
    fig = Figure(figsize=(width * cols, PANEL_INCHES * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    if rows == len(VIEW_NAMES):
        for ax, name in zip(axes[:, 0], VIEW_NAMES):
            ax.set_ylabel(name)
    fig.suptitle(title)
    return fig, axes


def _show(ax, image: np.ndarray, title: str = "", **kwargs):
    """Display a 2D array (axis 0 right, axis 1 up) without ticks; returns the image artist."""
    image = np.swapaxes(image, 0, 1)
    artist = ax.imshow(image, origin="lower", interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    return artist


def save(fig: Figure, fname: str | None) -> Figure:
    """Write ``fig`` as a PNG of exactly its size at ``DPI`` when ``fname`` is given."""
    if fname:
        with volumes.atomic_path(fname) as tmp:
            fig.savefig(tmp, dpi=DPI)
    return fig


def overlay_slices(moving, static, moved, slice_index=None, ltitle: str = "Moving",
                   mtitle: str = "Static", rtitle: str = "Moved",
                   fname: str | None = None) -> Figure:
    """The moving, static and moved images with overlays of each on the static image.

    Panels, left to right: moving, moving (magenta) over static (green), static, moved (magenta)
    over static (green), moved. Well registered structures turn grey in the fourth panel.

    Parameters
    ----------
    moving, static, moved : np.ndarray
        ``(*spatial)`` images of one shape, 2D or 3D (singleton axes are dropped).
    slice_index : int or sequence of int, optional
        3D only: where to cut; default the centre of each axis.
    ltitle, mtitle, rtitle : str
        Titles of the moving, static and moved panels.
    fname : str, optional
        PNG path to save to.
    """
    rows = [_slices(datasets.min_max(v), slice_index) for v in (moving, static, moved)]
    fig, axes = _panels(len(rows[0]), 5, f"Overlays: {ltitle} or {rtitle} in magenta, {mtitle} "
                        "in green, grey where they agree")
    titles = (ltitle, f"{ltitle} / {mtitle}", mtitle, f"{rtitle} / {mtitle}", rtitle)
    for row, (left, middle, right) in enumerate(zip(*rows)):
        panels = (left, _overlay(left, middle), middle, _overlay(right, middle), right)
        for col, panel in enumerate(panels):
            _show(axes[row, col], panel, titles[col] if row == 0 else "", cmap="gray")
    return save(fig, fname)


def plot_deformation_grid(deformation, image=None, slice_index=None, spacing: int = 4,
                          fname: str | None = None) -> Figure:
    """The deformation as a warped regular grid, optionally over an image.

    The grid lines run every ``spacing`` voxels; each grid point ``x`` is drawn at ``x + u(x)``
    (the two in-plane components of ``u`` in each view), the point of the moving image that the
    static image's voxel ``x`` is matched with. A regular, unbent grid means no deformation.

    Parameters
    ----------
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement ``u`` in voxels, 'ij' order, 2D or 3D.
    image : np.ndarray, optional
        ``(*spatial)`` image drawn underneath, best the moving image.
    slice_index : int or sequence of int, optional
        3D only: where to cut; default the centre of each axis.
    spacing : int
        Distance between grid lines, in voxels.
    fname : str, optional
        PNG path to save to.
    """
    fields = _in_plane(deformation, slice_index)
    backgrounds = (_slices(datasets.min_max(image), slice_index) if image is not None
                   else [np.ones(field.shape[:2]) for field in fields])
    fig, axes = _panels(len(fields), 1, f"Deformation grid\n(lines every {spacing} voxels)",
                        width=PANEL_INCHES + 0.6)
    for ax, field, background in zip(axes[:, 0], fields, backgrounds):
        _show(ax, background, cmap="gray", vmin=0, vmax=1)
        points = np.moveaxis(np.indices(field.shape[:2]), 0, -1) + field  # x + u(x), voxels
        lines = ([points[i, :] for i in range(0, field.shape[0], spacing)]
                 + [points[:, j] for j in range(0, field.shape[1], spacing)])
        ax.add_collection(LineCollection(lines, colors=GRID_COLOUR, linewidths=0.8), autolim=False)
    return save(fig, fname)


def _map_figure(values: np.ndarray, slice_index, title: str, label: str,
                extend: str = "neither", **style) -> tuple[Figure, list, list[np.ndarray]]:
    """A scalar map ``(*spatial)``, one view per row, with one colour bar labelled ``label``.

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : list
        The axes of the views.
    views : list of np.ndarray
        The 2D slices shown, in the order of ``axes``.
    """
    views = _slices(values, slice_index)
    fig, axes = _panels(len(views), 1, title, width=PANEL_INCHES + 1.0)
    for ax, view in zip(axes[:, 0], views):
        artist = _show(ax, view, **style)
    fig.colorbar(artist, ax=axes[:, 0], label=label, shrink=0.8, extend=extend)
    return fig, list(axes[:, 0]), views


def plot_displacement(deformation, slice_index=None, fname: str | None = None) -> Figure:
    """Displacement magnitude ``|u(x)|`` in voxels, with a colour bar.

    Parameters
    ----------
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement in voxels, 'ij' order, 2D or 3D. The magnitude counts
        every component, the through-plane one of a 3D view included.
    slice_index : int or sequence of int, optional
        3D only: where to cut; default the centre of each axis.
    fname : str, optional
        PNG path to save to.
    """
    magnitude = np.linalg.norm(_field(deformation), axis=-1)
    fig, _, _ = _map_figure(magnitude, slice_index,
                            f"Displacement magnitude\n(max {magnitude.max():.1f} voxels)",
                            "|u| (voxels)", cmap="magma",
                            norm=Normalize(0.0, max(magnitude.max(), 1e-6)))
    return save(fig, fname)


def plot_jacobian(deformation, slice_index=None, fname: str | None = None) -> Figure:
    """Jacobian determinant of ``x -> x + u(x)``, with folding voxels marked.

    A diverging colour map is centred at 1 (volume kept): blue where the map shrinks, red where
    it grows. Voxels with determinant <= 0, where the map folds, are ringed in
    ``FOLDING_COLOUR``, so that even a single one stands out; the title gives their number and
    share in the whole field.

    Parameters
    ----------
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement in voxels, 'ij' order, 2D or 3D.
    slice_index : int or sequence of int, optional
        3D only: where to cut; default the centre of each axis.
    fname : str, optional
        PNG path to save to.
    """
    determinant = scores.jacobian_determinant(deformation)
    folded = int(np.sum(determinant <= 0))
    fig, axes, views = _map_figure(
        determinant, slice_index, f"Jacobian determinant\n(folding: {folded} voxels, "
        f"{100 * folded / determinant.size:.3f}%)", "det(Jacobian)", extend="both",
        cmap="RdBu_r", norm=Normalize(*JACOBIAN_RANGE))
    for ax, view in zip(axes, views):
        ax.scatter(*np.nonzero(view <= 0), s=40, facecolors="none", edgecolors=FOLDING_COLOUR,
                   linewidths=1.2)
    ring = Line2D([], [], marker="o", linestyle="none", markersize=7, markerfacecolor="none",
                  markeredgecolor=FOLDING_COLOUR, label="folding voxel (det <= 0)")
    fig.legend(handles=[ring], loc="outside lower center", fontsize=9, frameon=False)
    return save(fig, fname)


def _loss_panels(history: dict) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The panels of :func:`plot_history`, from the loss terms that ``history`` holds.

    Returns
    -------
    list of (title, ylabel, series)
        Total loss, image similarity, smoothness and, with a segmentation loss, soft Dice;
        ``series`` holds the ``(key, label)`` of each curve, ``key`` without ``val_``.
    """
    if "moved_loss" not in history:  # one term (affine, rigid): the loss is the similarity
        return [("image similarity", "-NCC or MSE of moved vs static", [("loss", "")])]
    key, field, symbol = (("velocity_loss", "velocity", "v") if "velocity_loss" in history
                          else ("residual_loss", "deformable stage's displacement", "u")
                          if "residual_loss" in history
                          else ("deformation_loss", "displacement", "u"))
    terms, measure = ["similarity"], "-NCC or MSE of moved vs static"
    similarity = [("moved_loss", "")]
    if "moved_affine_loss" in history:  # joint: the affine stage's own similarity too
        terms.append("affine stage's similarity")
        similarity = [("moved_loss", "final, "), ("moved_affine_loss", "affine stage, ")]
    if "moved_static_loss" in history:
        terms = ["$\\frac{1}{2}$ similarity", "$\\frac{1}{2}$ symmetric similarity"]
        measure, similarity = "-NCC or MSE", [("moved_loss", "moved vs static, "),
                                              ("moved_static_loss", "static vs moving, ")]
    terms.append(f"$\\lambda$ smoothness of ${symbol}$")
    panels = [("image similarity", measure, similarity),
              (f"smoothness of the {field} ${symbol}$",
               f"mean squared gradient of ${symbol}$ (voxels$^2$)", [(key, "")])]
    if "moved_seg_loss" in history:
        terms.append("$\\gamma$ soft Dice")
        panels.append(("segmentation", "soft-Dice loss of the warped label map",
                       [("moved_seg_loss", "")]))
    if "mean_deformation_loss" in history:  # a template's centring term
        terms.append("centring")
        panels.append(("centring of the template", "$|$mean displacement$|^2$ (voxels$^2$)",
                       [("mean_deformation_loss", "")]))
    total = "\n+ ".join(" + ".join(terms[i:i + 2]) for i in range(0, len(terms), 2))
    return [("total loss", total, [("loss", "")])] + panels


def plot_history(history, fname: str | None = None) -> Figure:
    """Training curves: total loss and each of its terms, train and validation.

    Keras logs the terms unweighted; the total loss is their weighted sum, spelled out on its
    panel from the terms the history holds: the image similarity (``moved_loss``; with
    ``--bidir`` half of it plus half the symmetric one, ``moved_static_loss``, drawn on the same
    panel), lambda times the smoothness of the displacement ``u`` (``deformation_loss``) or, for
    diffeomorphic runs, of the velocity ``v`` (``velocity_loss``), and with ``--seg_weight``
    gamma times the soft-Dice loss (``moved_seg_loss``, a fourth panel). A joint model adds its
    affine stage's similarity (``moved_affine_loss``) and smooths its deformable stage's field
    (``residual_loss``); an affine or rigid model's loss is its similarity alone (one panel).
    The smoothness axis is logarithmic.

    Parameters
    ----------
    history : dict or path-like
        ``keras.callbacks.History.history``-like ``{name: values per epoch}``, or the path of
        the ``history.csv`` that ``main.py`` writes.
    fname : str, optional
        PNG path to save to.
    """
    if not isinstance(history, dict):
        history = rundir.read_history(history)
    panels = _loss_panels(history)
    fig = Figure(figsize=(13 / 3 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, ylabel, series) in zip(axes, panels):
        for key, label in series:
            for prefix, style in (("", "-"), ("val_", "--")):
                values = history.get(prefix + key)
                if values:
                    epochs = np.arange(1, len(values) + 1)
                    ax.plot(epochs, values, style, marker="o", markersize=3,
                            label=label + ("validation" if prefix else "train"))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    smoothness = [value for ax in axes[2:3] for line in ax.lines
                  for value in line.get_ydata()]
    if smoothness and min(smoothness) > 0:
        axes[2].set_yscale("log")
    fig.suptitle("Training history")
    return save(fig, fname)


def plot_template(mean: np.ndarray, templates: np.ndarray, epochs, count: int = 4,
                  fname: str | None = None) -> Figure:
    """A learned template at several epochs beside the plain mean of the scans.

    Parameters
    ----------
    mean : np.ndarray
        ``(*spatial)`` voxelwise mean of the scans (the template's start), 2D or 3D.
    templates : np.ndarray
        ``(E, *spatial)`` the template after each epoch of ``epochs``.
    epochs : sequence of int
        The epoch of each template (from 1).
    count : int
        Epochs shown at most, evenly spread, the last one always.
    fname : str, optional
        PNG path to save to.
    """
    shown = sorted(set(np.linspace(len(epochs) - 1, 0, min(count, len(epochs))).round()
                       .astype(int).tolist()))
    columns = [("mean of the scans", mean)] + [(f"template, epoch {epochs[i]}", templates[i])
                                               for i in shown]
    return plot_images(columns, "Learned template beside the mean", fname)


def plot_images(columns: list[tuple[str, np.ndarray]], title: str, fname: str | None = None
                ) -> Figure:
    """Images side by side, one column each (each scaled to [0, 1]); the three views in 3D.

    Parameters
    ----------
    columns : list of (str, np.ndarray)
        Each column's title and ``(*spatial)`` image, 2D or 3D, all of one dimension.
    title : str
        The figure's title.
    fname : str, optional
        PNG path to save to.
    """
    views = [_slices(datasets.min_max(image)) for _, image in columns]
    fig, axes = _panels(len(views[0]), len(columns), title)
    for col, ((name, _), rows) in enumerate(zip(columns, views)):
        for row, view in enumerate(rows):
            _show(axes[row, col], view, name if row == 0 else "", cmap="gray", vmin=0, vmax=1)
    return save(fig, fname)


def _box_per_structure(ax, evaluation: dict, key: str, colour: str, shift: float = 0.0) -> None:
    """Box plot of the per-label score ``key`` of every pair, one box per structure.

    NaN or null values (a structure absent from both label maps) are left out.
    """
    values = np.array([pair[key] for pair in evaluation["per_pair"]], dtype=np.float64)
    ax.boxplot([column[np.isfinite(column)] for column in values.T],
               positions=np.arange(values.shape[1]) + shift, widths=0.35, patch_artist=True,
               boxprops={"facecolor": colour}, medianprops={"color": "black"},
               flierprops={"markersize": 3})


def plot_dice(evaluation, fname: str | None = None) -> Figure:
    """Box plots per structure: Dice before and after registration and, below it, HD95.

    The HD95 panel (95th-percentile Hausdorff distance after registration, see
    ``scores.hd95``) is drawn when the evaluation has it: in mm when the data gave the voxel
    size, else in voxels.

    Parameters
    ----------
    evaluation : dict or path-like
        ``eval.json`` of ``main.py evaluate``, or its path: ``labels``, ``label_names`` (or
        null), ``pairs``, ``summary`` and ``per_pair``, whose ``dice_before``, ``dice_after``
        and optional ``hd95`` and ``hd95_mm`` list one score per label, in the order of
        ``labels``. NaN or null values (a structure absent from both label maps) are left out.
    fname : str, optional
        PNG path to save to.

    Returns
    -------
    matplotlib.figure.Figure
        The Dice axes first, then the HD95 axes when drawn.
    """
    if not isinstance(evaluation, dict):
        evaluation = rundir.read_evaluation(evaluation)
    names = [str(name).replace("_", " ")
             for name in evaluation.get("label_names") or evaluation["labels"]]
    hd95_key = next((key for key in ("hd95_mm", "hd95") if key in evaluation["per_pair"][0]),
                    None)
    rotate = len(names) > 6
    fig = Figure(figsize=(max(6.5, 1.0 + 0.45 * len(names)),
                          (5.4 if rotate else 4.4) + (3.2 if hd95_key else 0.0)),
                 layout="constrained")
    axes = fig.subplots(2 if hd95_key else 1, 1, sharex=True, squeeze=False)[:, 0]
    for key, colour, shift in (("dice_before", BEFORE_COLOUR, -0.2),
                               ("dice_after", AFTER_COLOUR, 0.2)):
        _box_per_structure(axes[0], evaluation, key, colour, shift)
    axes[0].set_ylim(0.0, 1.0)
    axes[0].set_ylabel("Dice")
    summary = evaluation["summary"]
    if hd95_key:
        _box_per_structure(axes[1], evaluation, hd95_key, AFTER_COLOUR)
        unit = "mm" if hd95_key == "hd95_mm" else "voxels"
        axes[1].set_ylim(bottom=0.0)
        axes[1].set_ylabel(f"HD95 ({unit})")
        mean = summary.get(f"{hd95_key}_mean", summary[hd95_key])["mean"]  # older evaluations
        mean = "none" if mean is None else f"{mean:.2f} {unit}"  # no structure in both maps
        axes[1].set_title(f"HD95 after registration (mean {mean} over the structures both "
                          f"maps hold; lower is better)")
    for ax in axes:
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(np.arange(len(names)), names, rotation=45 if rotate else 0,
                        ha="right" if rotate else "center", rotation_mode="anchor")
    axes[-1].set_xlim(-0.6, len(names) - 0.4)
    fig.legend(handles=[
        Patch(facecolor=BEFORE_COLOUR, edgecolor="black",
              label=f"before (mean Dice {summary['dice_before']['mean']:.3f})"),
        Patch(facecolor=AFTER_COLOUR, edgecolor="black",
              label=f"after registration (mean Dice {summary['dice_after']['mean']:.3f})")],
        loc="outside lower center", ncols=2, frameon=False)
    pairing = "scan-to-atlas" if evaluation["pairs"] == "atlas" else "scan-to-scan"
    axes[0].set_title(f"Dice per structure, {len(evaluation['per_pair'])} {pairing} pairs")
    return save(fig, fname)


def _run_figures(run_dir: str, pairs: int | None = None):
    """Yield ``(kind, file name, draw)`` for every figure a run folder has the data for.

    ``draw(fname=...)`` makes the figure; ``kind`` is one of ``FIGURES``.
    """
    history = os.path.join(run_dir, rundir.HISTORY)
    if os.path.exists(history):
        yield "loss", rundir.LOSS_PLOT, partial(plot_history, history)
    samples = os.path.join(run_dir, rundir.SAMPLES)
    if os.path.exists(samples):
        arrays = rundir.read_samples(samples)
        for i in range(len(arrays["moving"]))[:pairs]:
            moving, deformation = arrays["moving"][i], arrays["deformation"][i]
            yield "overlay", rundir.OVERLAY_PLOT.format(i), partial(
                overlay_slices, moving, arrays["static"][i], arrays["moved"][i])
            yield "grid", rundir.GRID_PLOT.format(i), partial(plot_deformation_grid, deformation,
                                                              moving)
            yield "displacement", rundir.DISPLACEMENT_PLOT.format(i), partial(plot_displacement,
                                                                              deformation)
            yield "jacobian", rundir.JACOBIAN_PLOT.format(i), partial(plot_jacobian, deformation)
    snapshots = os.path.join(run_dir, rundir.TEMPLATE_EPOCHS)
    if os.path.exists(snapshots):
        arrays = rundir.read_samples(snapshots)
        yield "template", rundir.TEMPLATE_PLOT, partial(
            plot_template, arrays["mean"], arrays["templates"], arrays["epochs"],
            TEMPLATE_EPOCHS_SHOWN)
    evaluation = os.path.join(run_dir, rundir.EVALUATION)
    if os.path.exists(evaluation) and \
            "dice_after" in rundir.read_evaluation(evaluation)["summary"]:
        yield "dice", rundir.DICE_PLOT, partial(plot_dice, evaluation)


def render_run(run_dir: str, output: str | None = None, prefix: str = "",
               pairs: int | None = None, figures=FIGURES) -> list[str]:
    """Draw every figure of a ``main.py`` run folder.

    ``history.csv`` gives ``loss.png``; ``samples.npz`` (registered validation pairs) gives
    ``overlay_<i>.png``, ``grid_<i>.png``, ``displacement_<i>.png`` and ``jacobian_<i>.png``;
    ``eval.json`` (of ``main.py evaluate``, with Dice) gives ``dice_boxplot.png``;
    ``template_epochs.npz`` (of ``main.py template``) gives ``template.png``. Missing inputs are
    skipped.

    Parameters
    ----------
    run_dir : str
        The run folder.
    output : str, optional
        Folder to write into (made if missing); default ``run_dir``.
    prefix : str
        Prepended to every file name.
    pairs : int, optional
        Draw the first ``pairs`` samples only; default all.
    figures : sequence of str
        Kinds of figure to draw, from ``FIGURES``.

    Returns
    -------
    list of str
        Paths of the PNG files written.
    """
    output = output or run_dir
    os.makedirs(output, exist_ok=True)
    written = []
    for kind, name, draw in _run_figures(run_dir, pairs):
        if kind in figures:
            written.append(os.path.join(output, prefix + name))
            draw(fname=written[-1])
    return written


def build_parser() -> argparse.ArgumentParser:
    """The command line: a run folder to draw."""
    parser = argparse.ArgumentParser(
        prog="viz.py",
        description="Draw the figures of a main.py run folder (training curves, registered "
                    "validation pairs, Dice box plot, a learned template).")
    parser.add_argument("run_dir", help="folder written by main.py")
    parser.add_argument("--output", default=None, help="folder to write into (default: RUN_DIR)")
    parser.add_argument("--prefix", default="", help="prefix of every file name (default: none)")
    parser.add_argument("--pairs", type=int, default=None,
                        help="draw the first PAIRS samples only (default: all)")
    parser.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES),
                        metavar="KIND", help=f"kinds of figure to draw, from {', '.join(FIGURES)} "
                                             "(default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not os.path.isdir(args.run_dir):
        parser.error(f"no such folder: {args.run_dir}")
    if args.pairs is not None and args.pairs < 1:
        parser.error(f"--pairs must be positive, got {args.pairs}")
    for path in render_run(args.run_dir, args.output, args.prefix, args.pairs, args.figures):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
