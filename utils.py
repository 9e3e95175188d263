"""The spatial transformer: differentiable N-linear sampling of images (CVPR 2018, Sec. 3.3).

Conventions used throughout the package:

- images are channels-last tensors ``(B, *spatial, C)``;
- a deformation is a displacement in voxels, ``(B, *spatial, ndim)``, whose channel ``d`` moves
  along array axis ``d`` ('ij' order), so that ``moved[x] = moving[x + deformation[x]]``;
- coordinates that fall outside the image are clamped to its edge; NaN coordinates read the
  first voxel along their axis (so a diverging field gives defined values, never bad indices).

Everything here works for 2D and 3D (and 1D) through the same code, driven by ``ndim``.

This module is the sampler and the field maths built on it, all in TensorFlow; the numpy geometry
of arrays (padding to the network's shape and cropping back) is ``shapes.py``'s, so that the data
sets, which use it, need not load TensorFlow.
"""
import itertools

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import numpy as np
import tensorflow as tf


def regular_grid(shape: tuple[int, ...]) -> tf.Tensor:
    """Identity sampling grid: the voxel coordinates of every voxel.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape ``(*spatial)``.

    Returns
    -------
    tf.Tensor
        ``(*spatial, ndim)`` float32, ``grid[x] = x`` in voxels, 'ij' order.
    """
    axes = [tf.range(n, dtype=tf.float32) for n in shape]
    return tf.stack(tf.meshgrid(*axes, indexing="ij"), axis=-1)


def interpolate(image: tf.Tensor, coords: tf.Tensor, interpolation: str = "linear") -> tf.Tensor:
    """Sample ``image`` at (fractional) voxel coordinates.

    Parameters
    ----------
    image : tf.Tensor
        ``(B, *in_spatial, C)`` image to sample.
    coords : tf.Tensor
        ``(B, *out_spatial, ndim)`` coordinates in voxels of ``image``, 'ij' order. Values outside
        ``[0, size - 1]`` are clamped to the edge (+-Inf too); NaN is read as 0, the first voxel
        along its axis. So no coordinate makes an invalid index, on CPU or GPU.
    interpolation : {"linear", "nearest"}
        N-linear (bilinear in 2D, trilinear in 3D) or nearest-neighbour, e.g. for label maps.

    Returns
    -------
    tf.Tensor
        ``(B, *out_spatial, C)`` samples, same dtype as ``image``.
    """
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    in_shape = tf.shape(image)[1:-1]
    ndim = coords.shape[-1]
    sizes = tf.cast(in_shape, coords.dtype)
    coords = tf.where(tf.math.is_nan(coords), tf.zeros_like(coords), coords)  # before int casts
    coords = tf.clip_by_value(coords, 0.0, sizes - 1.0)
    batch = tf.shape(image)[0]
    flat_image = tf.reshape(image, [-1, tf.shape(image)[-1]])  # (B * voxels, C)
    strides = tf.math.cumprod(in_shape, exclusive=True, reverse=True)
    batch_offsets = tf.range(batch)[:, None] * tf.reduce_prod(in_shape)

    def gather(corner: list[tf.Tensor]) -> tf.Tensor:
        """``(B, voxels_out, C)`` values at integer voxel coordinates ``corner``."""
        index = tf.add_n([c * strides[d] for d, c in enumerate(corner)])
        index = tf.reshape(index, [batch, -1]) + batch_offsets
        return tf.gather_nd(flat_image, index[..., None])  # CPU: 2x tf.gather(batch_dims=1)

    out_shape = tf.concat([tf.shape(coords)[:-1], tf.shape(image)[-1:]], axis=0)
    if interpolation == "nearest":
        corner = [tf.cast(tf.floor(coords[..., d] + 0.5), tf.int32) for d in range(ndim)]
        return tf.reshape(gather(corner), out_shape)

    low = [tf.minimum(tf.floor(coords[..., d]), tf.maximum(sizes[d] - 2.0, 0.0))
           for d in range(ndim)]
    frac = [tf.reshape(coords[..., d] - low[d], [tf.shape(coords)[0], -1, 1])
            for d in range(ndim)]
    low = [tf.cast(c, tf.int32) for c in low]
    high = [tf.minimum(low[d] + 1, in_shape[d] - 1) for d in range(ndim)]

    # Values at the 2^ndim corners, last axis varying fastest; then interpolate linearly along
    # the last axis, the one before, ..., halving the list each time.
    values = [tf.cast(gather([high[d] if upper else low[d] for d, upper in enumerate(corner)]),
                      coords.dtype)
              for corner in itertools.product((False, True), repeat=ndim)]
    for d in reversed(range(ndim)):
        values = [a + frac[d] * (b - a) for a, b in zip(values[0::2], values[1::2])]
    moved = values[0]
    return tf.cast(tf.reshape(moved, out_shape), image.dtype)


def sampling_dtype(dtype, interpolation: str = "linear") -> np.dtype:
    """The dtype to sample a numpy image of ``dtype`` in: int32 for integer labels with
    ``"nearest"`` (their values copied exactly), float32 for anything else."""
    integer = np.dtype(dtype).kind in "biu"
    return np.dtype(np.int32 if interpolation == "nearest" and integer else np.float32)


def warp(moving: tf.Tensor, deformation: tf.Tensor, interpolation: str = "linear") -> tf.Tensor:
    """Resample ``moving`` with a dense displacement field: ``moved[x] = moving[x + u(x)]``.

    Parameters
    ----------
    moving : tf.Tensor
        ``(B, *spatial, C)`` image (any channel count; labels with ``interpolation="nearest"``).
    deformation : tf.Tensor
        ``(B, *spatial, ndim)`` displacement ``u`` in voxels, 'ij' order.
    interpolation : {"linear", "nearest"}
        See :func:`interpolate`.

    Returns
    -------
    tf.Tensor
        ``(B, *spatial, C)`` moved image; differentiable in ``moving`` and, for linear
        interpolation, in ``deformation``.
    """
    deformation = tf.convert_to_tensor(deformation, tf.float32)
    grid = regular_grid(deformation.shape[1:-1])
    return interpolate(moving, grid + deformation, interpolation)


@tf.function(autograph=False)  # compiled once per shape: it runs eagerly when synthetic data are made
def resize(image: tf.Tensor, shape: tuple[int, ...]) -> tf.Tensor:
    """N-linear resize with aligned corners (the first and last voxels map onto each other).

    Parameters
    ----------
    image : tf.Tensor
        ``(B, *in_spatial, C)``.
    shape : tuple of int
        Output spatial shape.

    Returns
    -------
    tf.Tensor
        ``(B, *shape, C)``.
    """
    in_shape = image.shape[1:-1]
    scale = [(i - 1) / max(o - 1, 1) for i, o in zip(in_shape, shape)]
    coords = regular_grid(shape) * tf.constant(scale, tf.float32)
    coords = tf.repeat(coords[None], tf.shape(image)[0], axis=0)
    return interpolate(image, coords)


@tf.function(autograph=False)  # compiled once per shape: seven warps run as one graph
def integrate_velocity(velocity: tf.Tensor, steps: int = 7) -> tf.Tensor:
    """Displacement of the diffeomorphism exp(v), by scaling and squaring.

    Parameters
    ----------
    velocity : tf.Tensor
        ``(B, *spatial, ndim)`` stationary velocity field in voxels.
    steps : int
        Number of squarings; the field is first divided by ``2 ** steps``.

    Returns
    -------
    tf.Tensor
        ``(B, *spatial, ndim)`` displacement in voxels.
    """
    displacement = velocity / 2.0**steps
    for _ in range(steps):
        displacement += warp(displacement, displacement)
    return displacement


def resize_displacement(deformation: tf.Tensor, shape: tuple[int, ...]) -> tf.Tensor:
    """Resample a displacement field onto another grid of the same extent, rescaling its vectors.

    Voxel centres map as in block averaging (``x_in = (x_out + 0.5) * in / out - 0.5`` per axis,
    edges clamped), and channel ``d`` is multiplied by ``out_d / in_d`` so that it stays in voxels
    of the new grid.

    Parameters
    ----------
    deformation : tf.Tensor
        ``(B, *in_spatial, ndim)`` displacement in voxels of the input grid, 'ij' order.
    shape : tuple of int
        Output spatial shape ``(*out_spatial)``.

    Returns
    -------
    tf.Tensor
        ``(B, *shape, ndim)`` displacement in voxels of the output grid.
    """
    deformation = tf.convert_to_tensor(deformation, tf.float32)
    ratio = [o / i for i, o in zip(deformation.shape[1:-1], shape)]
    return linear_resize(deformation, shape) * tf.constant(ratio, tf.float32)


def linear_resize(volume: tf.Tensor, shape: tuple[int, ...]) -> tf.Tensor:
    """``(B, *spatial, C)`` -> ``(B, *shape, C)`` by linear interpolation, separably: voxel
    centres map as ``x_in = (x_out + 0.5) * in / out - 0.5`` per axis, edges clamped (TensorFlow's
    half-pixel bilinear resize, whose gradient is its own kernel: many times faster than
    sampling every output voxel with :func:`interpolate`). 1D, 2D or 3D."""
    spatial = volume.shape[1:-1]
    if len(spatial) == 1:
        return tf.image.resize(volume[:, :, None], (shape[0], 1))[:, :, 0]
    if len(spatial) == 2:
        return tf.image.resize(volume, shape)
    batch, channels = tf.shape(volume)[0], volume.shape[-1]
    rest = spatial[1] * spatial[2]  # axis 0 first, the other two flattened and kept
    volume = tf.image.resize(tf.reshape(volume, (batch, spatial[0], rest, channels)),
                             (shape[0], rest))
    volume = tf.image.resize(tf.reshape(volume, (batch * shape[0], *spatial[1:], channels)),
                             shape[1:])
    return tf.reshape(volume, (batch, *shape, channels))


def affine_points(matrix: tf.Tensor, coords: tf.Tensor) -> tf.Tensor:
    """Map voxel coordinates through affine maps: ``y = A x + b``, ``matrix = [A | b]``.

    Parameters
    ----------
    matrix : tf.Tensor
        ``(B, ndim, ndim + 1)`` affine maps of voxel coordinates, 'ij' order.
    coords : tf.Tensor
        ``(B, *spatial, ndim)`` voxel coordinates.

    Returns
    -------
    tf.Tensor
        ``(B, *spatial, ndim)`` mapped coordinates, in voxels.
    """
    coords = tf.convert_to_tensor(coords, tf.float32)
    ndim = coords.shape[-1]
    flat = tf.reshape(coords, [tf.shape(coords)[0], -1, ndim])
    mapped = tf.einsum("bij,bnj->bni", matrix[:, :, :ndim], flat) + matrix[:, None, :, ndim]
    return tf.reshape(mapped, tf.shape(coords))


def affine_displacement(matrix: tf.Tensor, deformation: tf.Tensor) -> tf.Tensor:
    """Displacement of an affine map composed after a displacement field.

    ``moving[M(x + u(x))]`` is ``moving[x + v(x)]`` with ``v(x) = M(x + u(x)) - x``: the
    deformation ``u`` on the static grid, then the affine map ``M`` into the moving image.

    Parameters
    ----------
    matrix : tf.Tensor
        ``(B, ndim, ndim + 1)`` affine map of voxel coordinates (static grid to moving image).
    deformation : tf.Tensor
        ``(B, *spatial, ndim)`` displacement ``u`` in voxels (zeros: the affine map alone).

    Returns
    -------
    tf.Tensor
        ``(B, *spatial, ndim)`` displacement ``v`` in voxels, 'ij' order.
    """
    grid = regular_grid(deformation.shape[1:-1])
    return affine_points(matrix, grid + deformation) - grid
