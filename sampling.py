"""Sampling numpy volumes at voxel coordinates, on the CPU: N-linear or nearest neighbour,
point by point or, on a lattice along the volume's axes, one axis at a time.

The numpy counterpart of ``utils.interpolate`` (TensorFlow, differentiable), for volumes too
large to sample in a graph: the world-space resampling of ``transforms`` and the composition of
the shipped model's outputs (``pretrained``) run through it.
"""
import os
from concurrent import futures

import numpy as np
from scipy import ndimage

import shapes
import utils


def sample(volume: np.ndarray, coords: np.ndarray, interpolation: str = "linear",
           edge: bool = False, workers: int | None = None) -> np.ndarray:
    """Sample ``volume`` at voxel coordinates, zero outside it (as ITK's resampling does).

    Parameters
    ----------
    volume : np.ndarray
        ``(*in_spatial)`` or ``(*in_spatial, C)`` (a vector per voxel, e.g. a displacement).
    coords : np.ndarray
        ``(*out_spatial, ndim)`` voxel coordinates of ``volume``, 'ij' order. A point is
        inside when every coordinate is in ``[-0.5, size - 0.5]``; within that, values beyond
        the edge voxels' centres are the edge's, as ``utils.interpolate`` samples (here by
        scipy's ``map_coordinates``, several times faster on a CPU for large volumes).
    interpolation : {"linear", "nearest"}
        N-linear (float32 output) or nearest neighbour (``volume``'s dtype kept: label maps).
    edge : bool
        Outside the volume, the nearest edge voxel's value instead of zero (a displacement
        field extended beyond its grid without a jump).
    workers : int, optional
        Threads that share the N-linear sampling (default: one per core; 1 from a thread of a
        pool of one's own).

    Returns
    -------
    np.ndarray
        ``(*out_spatial)`` or ``(*out_spatial, C)``.
    """
    ndim = coords.shape[-1]
    vector = volume.ndim == ndim + 1
    values = volume if vector else volume[..., None]
    values = values.astype(utils.sampling_dtype(values.dtype, interpolation), copy=False)
    size = np.array(volume.shape[:ndim])
    coords = np.asarray(coords, np.float32)
    if np.isnan(np.sum(coords)):  # one pass, no copy
        coords = np.nan_to_num(coords, nan=-1.0)  # NaN: outside
    if interpolation == "nearest":  # the nearest voxel centre, clamped to the volume
        index = tuple(np.clip(np.floor(coords[..., d] + 0.5), 0, size[d] - 1).astype(np.intp)
                      for d in range(ndim))
        sampled = values[index]
    else:  # N-linear, beyond the edge voxels' centres the edge's values
        points = np.moveaxis(coords, -1, 0)
        channels = [_map_coordinates(values[..., c], points, workers)
                    for c in range(values.shape[-1])]
        sampled = channels[0][..., None] if len(channels) == 1 else np.stack(channels, axis=-1)
    if not edge:
        sampled[~_inside(coords, size)] = 0
    sampled = sampled if vector else sampled[..., 0]
    return sampled.astype(volume.dtype if interpolation == "nearest" else np.float32, copy=False)


def _inside(coords: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``(*out_spatial)``: whether each point's every coordinate is in ``[-0.5, size - 0.5]``
    (built axis by axis: no ``(*out_spatial, ndim)`` temporaries)."""
    inside = np.ones(coords.shape[:-1], bool)
    for d in range(coords.shape[-1]):
        inside &= coords[..., d] >= -0.5
        inside &= coords[..., d] <= size[d] - 0.5
    return inside


def _map_coordinates(values: np.ndarray, points: np.ndarray, workers: int | None = None
                     ) -> np.ndarray:
    """scipy's N-linear ``map_coordinates`` (edge values beyond the edge centres) of ``values``
    at ``(ndim, *out_spatial)`` points, in float32, its output split into one block per worker
    (default: per CPU core; scipy releases Python's lock while it samples)."""
    out = np.empty(points.shape[1:], np.float32)
    if not out.size:
        return out
    blocks = shapes.slabs(len(out), workers or len(os.sched_getaffinity(0)))
    with futures.ThreadPoolExecutor(len(blocks)) as pool:
        list(pool.map(lambda block: ndimage.map_coordinates(
            values, points[:, block], output=out[block], order=1, mode="nearest"), blocks))
    return out


def sample_axes(volume: np.ndarray, coords: list[np.ndarray], edge: bool = False) -> np.ndarray:
    """N-linear sampling at the points of a lattice, one axis at a time (as :func:`sample`).

    When the points form a lattice along the volume's own axes (grids whose axes are parallel,
    e.g. a scan's grid on a coarser RAS grid), the interpolation factors into one linear
    interpolation per axis: the two neighbours of each coordinate gathered along that axis and
    weighted, a few passes over memory instead of ``2^ndim`` gathers a point.

    Parameters
    ----------
    volume : np.ndarray
        ``(*in_spatial)`` values.
    coords : list of np.ndarray
        For each axis of ``volume``, the ``(n_d,)`` voxel coordinates along it.
    edge : bool
        Outside the volume, the edge's values instead of zero (as :func:`sample`).

    Returns
    -------
    np.ndarray
        ``(n_0, n_1, ...)`` float32: :func:`sample` of ``volume`` at every combination of the
        coordinates (zero where one is outside ``[-0.5, size - 0.5]``).
    """
    values = np.asarray(volume, np.float32)
    growth = [len(c) / size for c, size in zip(coords, volume.shape)]
    for axis in sorted(range(values.ndim), key=lambda a: (growth[a], -a)):  # last axes first
        values = _along_axis(values, np.asarray(coords[axis], np.float64), axis, edge)
    return values


def _along_axis(values: np.ndarray, coords: np.ndarray, axis: int, edge: bool) -> np.ndarray:
    """Linear interpolation of ``values`` along one ``axis`` at ``(n,)`` ``coords``: the voxels
    below and above each coordinate (``np.take``), weighted to sum to 1 (edge values up to half
    a voxel beyond the edge centres), zero beyond that, or the edge's values with ``edge``; a
    contiguous float32 array out."""
    size = values.shape[axis]
    inside = edge | ((coords >= -0.5) & (coords <= size - 0.5))
    coords = np.clip(coords, 0, size - 1)
    low = np.minimum(np.floor(coords).astype(np.intp), max(size - 2, 0))
    weight = coords - low
    along = [len(coords) if a == axis else 1 for a in range(values.ndim)]  # broadcast shape
    out = np.take(values, low, axis=axis)
    out *= ((1 - weight) * inside).astype(np.float32).reshape(along)
    high = np.take(values, np.minimum(low + 1, size - 1), axis=axis)
    high *= (weight * inside).astype(np.float32).reshape(along)
    out += high
    return out
