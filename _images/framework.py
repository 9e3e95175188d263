"""Draw the VoxelMorph framework diagram (CVPR 2018, Fig. 2) with the code of each part.

    python3 _images/framework.py              # writes _images/framework.png
    python3 _images/framework.py OTHER.png

The U-Net's widths are read from ``models.py``, so the diagram follows the code.
"""
import os
import sys

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
import viz  # noqa: E402

OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "framework.png")


def _box(ax, centre: tuple[float, float], size: tuple[float, float], text: str, colour: str,
         note: str = "") -> None:
    """A rounded box with centred text and an optional note (the code) underneath."""
    (x, y), (width, height) = centre, size
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.05,rounding_size=0.15", facecolor=colour,
                                edgecolor="#444444"))
    ax.text(x, y, text, ha="center", va="center", fontsize=11)
    if note:
        ax.text(x, y - height / 2 - 0.2, note, ha="center", va="top", fontsize=9,
                family="monospace", color="#444444")


def _arrow(ax, *points: tuple[float, float], dashed: bool = False, colour: str = "black") -> None:
    """A polyline through ``points`` ending in an arrow head."""
    style = "--" if dashed else "-"
    if len(points) > 2:
        ax.plot(*zip(*points[:-1]), style, color=colour, linewidth=1.2)
    ax.add_patch(FancyArrowPatch(points[-2], points[-1], arrowstyle="-|>", mutation_scale=12,
                                 linestyle=style, color=colour, linewidth=1.2,
                                 shrinkA=0, shrinkB=0))


def _unet(ax, x: float, y: float) -> tuple[float, float]:
    """The U-Net as bars, one per resolution level, starting at ``(x, y)``; returns its output.

    Encoder widths ``models.ENCODER`` at 1/2 to 1/16 resolution (stride 2); decoder widths of
    VoxelMorph-2 per level, with dashed skip connections from the encoder level of the same size.
    """
    levels = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]  # the input pair, encoder, decoder
    decoder = [str(width) for width in models.DECODER_VM2]
    widths = (["2"] + [str(width) for width in models.ENCODER] + decoder[:3]
              + [" ".join(decoder[3:5]), " ".join(decoder[5:])])
    step, drop, bar = 0.72, 0.45, 0.3
    centres = [(x + i * step, y - drop * level) for i, level in enumerate(levels)]
    heights = [2.6 * 0.72 ** level for level in levels]
    colours = ["#999999"] + ["#6fa8dc"] * 4 + ["#93c47d"] * 5
    for (cx, cy), height, colour, width in zip(centres, heights, colours, widths):
        ax.add_patch(Rectangle((cx - bar / 2, cy - height / 2), bar, height, facecolor=colour,
                               edgecolor="#444444"))
        ax.text(cx, cy - height / 2 - 0.08, width.replace(" ", "\n"), ha="center", va="top",
                fontsize=8)
    for a, b in zip(centres, centres[1:]):
        _arrow(ax, (a[0] + bar / 2, a[1]), (b[0] - bar / 2, b[1]))
    for i in range(4):  # skips from the input pair and the encoder levels above the deepest
        j = len(levels) - 1 - i
        top = centres[i][1] + heights[i] / 2
        _arrow(ax, (centres[i][0], top), (centres[i][0], top + 0.15),
               (centres[j][0], top + 0.15), (centres[j][0], top), dashed=True, colour="#666666")
    return centres[-1][0] + bar / 2, y


def plot_framework(fname: str | None = None) -> Figure:
    """Diagram of VoxelMorph's data flow (CVPR 2018, Fig. 2), with the code of each part.

    The moving image ``m`` and static image ``f`` are concatenated and fed to the U-Net
    ``g_theta`` (``models.py``), which outputs the displacement ``u``; the spatial transformer
    (``utils.warp``) resamples ``m`` into ``m o phi``, ``phi = Id + u``. Training minimises
    ``similarity(f, m o phi) + lambda * smoothness(grad u)`` (``metrics.py``).

    Parameters
    ----------
    fname : str, optional
        PNG path to save to.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(-0.2, 17.6)
    ax.set_ylim(-0.1, 7.0)
    ax.set_aspect("equal")
    ax.axis("off")
    _box(ax, (1.1, 5.1), (1.8, 1.0), "moving\nimage $m$", "#cfe2f3")
    _box(ax, (1.1, 3.1), (1.8, 1.0), "static\nimage $f$", "#d9ead3")
    ax.add_patch(FancyBboxPatch((2.7, 1.0), 7.3, 5.2, boxstyle="round,pad=0.05",
                                facecolor="#fff8e1", edgecolor="#bbbbbb"))
    ax.text(6.35, 1.05, "U-Net $g_\\theta(m, f)$, VoxelMorph-2 widths (VoxelMorph-1: "
            "32 8 at 1/2, 8 at full size)", ha="center", va="bottom", fontsize=10)
    ax.text(6.35, 0.75, "models.py", ha="center", va="top", fontsize=9, family="monospace",
            color="#444444")
    end = _unet(ax, 3.1, 4.4)
    ax.text(4.3, 1.9, "encoder:\nconv, stride 2", ha="center", fontsize=9)
    ax.text(8.6, 1.9, "decoder: conv,\nupsample, skip", ha="center", fontsize=9)
    _arrow(ax, (2.0, 5.1), (2.95, 5.1))
    _arrow(ax, (2.0, 3.1), (2.95, 3.1))
    _box(ax, (11.4, 4.4), (1.8, 1.0), "displacement\nfield $u$", "#fce5cd")
    _box(ax, (13.9, 4.4), (1.8, 1.0), "spatial\ntransformer", "#ead1dc", "utils.warp")
    _box(ax, (16.3, 4.4), (1.8, 1.0), "moved\n$m \\circ \\phi$", "#cfe2f3")
    _box(ax, (14.0, 1.6), (6.4, 1.0), "$\\mathcal{L}_{sim}(f, m \\circ \\phi) + \\lambda\\, "
         "\\mathcal{L}_{smooth}(\\nabla u)$", "#f4cccc", "metrics.py")
    _arrow(ax, end, (10.5, 4.4))
    _arrow(ax, (12.3, 4.4), (13.0, 4.4))
    _arrow(ax, (14.8, 4.4), (15.4, 4.4))
    _arrow(ax, (1.1, 5.6), (1.1, 6.6), (13.9, 6.6), (13.9, 4.9))
    _arrow(ax, (11.4, 3.9), (11.4, 2.1), dashed=True)
    _arrow(ax, (16.3, 3.9), (16.3, 2.1), dashed=True)
    _arrow(ax, (1.1, 2.6), (1.1, 0.2), (10.4, 0.2), (10.4, 1.6), (10.8, 1.6), dashed=True)
    fig.suptitle("VoxelMorph: a CNN predicts the deformation, a spatial transformer applies it; "
                 "trained without ground-truth deformations")
    if fname:
        fig.savefig(fname, dpi=viz.DPI)
    return fig


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else OUTPUT
    plot_framework(path)
    print(path)
