"""TensorFlow's process settings, made before TensorFlow is first imported.

TensorFlow reads these environment variables once, while it loads, so they must be set before the
first ``import tensorflow`` (or ``import keras``) of the process; setting them later has no effect.
Every module of this package that imports TensorFlow or Keras imports this one first, so every
entry point gets them: ``main.py``, ``viz.py``, the benchmarks, the notebook, the tests, and a
user's own ``import models``. A value the user has set wins (``setdefault``).

- ``TF_ENABLE_ONEDNN_OPTS=1``: convolutions and matrix products run in oneDNN. TensorFlow turns
  oneDNN on by itself only on x86 CPUs with AVX-512 VNNI/BF16 or AMX; on every other CPU (AVX2
  machines: AMD EPYC Zen 2/3, older Intel, most laptops) it falls back to Eigen, whose 3D
  convolution gradients make a VoxelMorph training step about 10x slower (README, Speed).
  Results agree within float32 round-off. ``TF_ENABLE_ONEDNN_OPTS=0 python3 main.py`` turns it
  off. It has no effect on a GPU's kernels, nor where TensorFlow was built without oneDNN.
- ``TF_CPP_MIN_LOG_LEVEL=2``: TensorFlow's C++ info and warning lines (oneDNN, CUDA not found)
  are hidden; its errors still show.
- ``NUMPY_MADVISE_HUGEPAGE=0`` (numpy's, read when numpy loads: ``main.py`` imports this module
  before numpy): numpy asks the kernel for no transparent huge pages. A fresh process that
  fills large new arrays once, as ``main.py register`` does for a 256^3 scan's warp and moved
  image, waits on the kernel to assemble each 2 MB page; without them the composition onto a
  256^3 grid takes about 2.3 s instead of 3.3 s (``benchmarks/cohort.py``). TensorFlow's own
  tensors are not numpy's and are not affected.
"""
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
