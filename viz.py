"""Figures of registrations and training runs, 2D and 3D through one code path.

A 3D volume is shown as three orthogonal slices through ``slice_index`` (default: its centre),
one row each; a 2D image as one row. Arrays are displayed with axis 0 to the right and axis 1
upwards (``origin="lower"``), so RAS volumes such as the default MNI152 data appear in the usual
neurological orientation.

Every function returns a ``matplotlib.figure.Figure`` and saves it as a PNG when given ``fname``.
"""
import csv
import os
import sys

import numpy as np
from matplotlib.figure import Figure

VIEW_NAMES = ("sagittal", "coronal", "axial")


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


def _unit(image: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (zeros for a constant image)."""
    image = np.asarray(image, dtype=np.float64)
    span = image.max() - image.min()
    return (image - image.min()) / span if span > 0 else np.zeros_like(image)


def _overlay(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """RGB image: ``first`` in magenta, ``second`` in green; grey where they agree."""
    return np.stack([first, second, first], axis=-1)


def _show(ax, image: np.ndarray, title: str = "", **kwargs):
    """Display a 2D array (axis 0 right, axis 1 up) without ticks; returns the image artist."""
    image = np.swapaxes(image, 0, 1)
    artist = ax.imshow(image, origin="lower", interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    return artist


def _save(fig: Figure, fname: str | None) -> Figure:
    if fname:
        fig.savefig(fname, dpi=100, bbox_inches="tight")
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

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = [_slices(_unit(v), slice_index) for v in (moving, static, moved)]
    fig = Figure(figsize=(12.5, 2.6 * len(rows[0])))
    axes = fig.subplots(len(rows[0]), 5, squeeze=False)
    titles = (ltitle, f"{ltitle} / {mtitle}", mtitle, f"{rtitle} / {mtitle}", rtitle)
    for row, (left, middle, right) in enumerate(zip(*rows)):
        panels = (left, _overlay(left, middle), middle, _overlay(right, middle), right)
        for col, panel in enumerate(panels):
            _show(axes[row, col], panel, titles[col] if row == 0 else "", cmap="gray")
        if len(rows[0]) == 3:
            axes[row, 0].set_ylabel(VIEW_NAMES[row])
    return _save(fig, fname)


def read_history(path: str) -> dict[str, list[float]]:
    """Read a Keras ``CSVLogger`` file into ``{column: values}``."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return {key: [float(row[key]) for row in rows] for key in rows[0]} if rows else {}


def plot_history(history, fname: str | None = None) -> Figure:
    """Training curves: total loss, image similarity and smoothness, train and validation.

    Parameters
    ----------
    history : dict or str
        ``keras.callbacks.History.history``-like ``{name: values per epoch}``, or the path of
        the ``history.csv`` that ``main.py`` writes.
    fname : str, optional
        PNG path to save to.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(history, str):
        history = read_history(history)
    panels = (("loss", "total loss"), ("moved_loss", "similarity (moved vs static)"),
              ("deformation_loss", "smoothness (gradient of displacement)"))
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, len(panels))
    for ax, (key, title) in zip(axes, panels):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                epochs = np.arange(1, len(values) + 1)
                ax.plot(epochs, values, style, marker="o", markersize=3,
                        label="validation" if prefix else "train")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, fname)


def render_run(run_dir: str) -> list[str]:
    """Draw every figure of a ``main.py`` run folder into that folder.

    Reads ``history.csv`` (training curves -> ``loss.png``) and ``samples.npz`` (registered
    validation pairs -> ``overlay_<i>.png``), whichever exist.

    Returns
    -------
    list of str
        Paths of the PNG files written.
    """
    written = []
    history = os.path.join(run_dir, "history.csv")
    if os.path.exists(history):
        written.append(os.path.join(run_dir, "loss.png"))
        plot_history(history, written[-1])
    samples = os.path.join(run_dir, "samples.npz")
    if os.path.exists(samples):
        with np.load(samples) as arrays:
            for i in range(len(arrays["moving"])):
                written.append(os.path.join(run_dir, f"overlay_{i}.png"))
                overlay_slices(arrays["moving"][i], arrays["static"][i], arrays["moved"][i],
                               fname=written[-1])
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: python3 viz.py RUN_DIR  (a folder written by main.py)")
    for path in render_run(sys.argv[1]):
        print(path)
