"""_images/framework.py draws the framework diagram with the widths of models.py."""
import os
import subprocess
import sys

import numpy as np
from matplotlib.image import imread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "_images"))

import framework  # noqa: E402
import models  # noqa: E402
import viz  # noqa: E402


def test_unet_bars_are_labelled_with_the_model_widths():
    fig = framework.plot_framework()
    labels = [text.get_text() for text in fig.axes[0].texts]
    decoder = models.DECODER_VM2
    assert f"{decoder[3]}\n{decoder[4]}" in labels and f"{decoder[5]}\n{decoder[6]}" in labels
    assert labels.count(str(models.ENCODER[0])) == 1  # the first encoder level


def test_script_writes_a_png_of_the_figure_size(tmp_path):
    path = tmp_path / "framework.png"
    result = subprocess.run([sys.executable, "_images/framework.py", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-1000:]
    assert result.stdout.split() == [str(path)]
    height, width = imread(path).shape[:2]
    size = framework.plot_framework().get_size_inches() * viz.DPI
    assert (width, height) == tuple(np.round(size).astype(int))
