"""Array shapes: sizes rounded up to a multiple, and centred zero padding to a shape and back.

The network takes sizes divisible by ``models.DIVISOR``: the data sets, registration and instance
optimisation pad volumes with :func:`pad` to :func:`padded_shape` (centred, by
:func:`padding_to_shape`) and :func:`crop` every output back; the loaders and the synthetic data
round counts up with :func:`ceil_div`. Numpy functions of arrays, kept apart from ``utils.py``
(the differentiable sampler, in TensorFlow), which the data sets need not load. :func:`slabs`
cuts an axis into pieces for a pool of threads.
"""
import numpy as np

from volumes import DataError


def ceil_div(size: int, divisor: int) -> int:
    """``ceil(size / divisor)`` for positive integers."""
    return -(-size // divisor)


def padded_shape(shape: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """``shape`` with every size rounded up to a multiple of ``multiple``."""
    return tuple(ceil_div(n, multiple) * multiple for n in shape)


def padding_to_shape(shape: tuple[int, ...], target: tuple[int, ...]) -> list[tuple[int, int]]:
    """Zero padding ``(before, after)`` per axis from ``shape`` to ``target``, centred.

    Raises
    ------
    DataError
        If ``shape`` is larger than ``target`` along an axis, or of another dimension.
    """
    if len(shape) != len(target) or any(n > t for n, t in zip(shape, target)):
        raise DataError(f"volumes of shape {tuple(shape)} do not fit the model's input shape "
                        f"{tuple(target)}")
    return [((t - n) // 2, t - n - (t - n) // 2) for n, t in zip(shape, target)]


def pad(volume: np.ndarray, padding: list[tuple[int, int]]) -> np.ndarray:
    """Zero-pad the last ``len(padding)`` axes of ``volume``."""
    lead = [(0, 0)] * (volume.ndim - len(padding))
    return np.pad(volume, lead + list(padding))


def crop(volume: np.ndarray, padding: list[tuple[int, int]]) -> np.ndarray:
    """Undo :func:`pad`: remove ``padding`` from the last ``len(padding)`` axes of ``volume``."""
    slices = tuple(slice(before, volume.shape[i] - after)
                   for i, (before, after) in enumerate(padding, start=volume.ndim - len(padding)))
    return volume[(Ellipsis,) + slices]


def slabs(size: int, count: int) -> list[slice]:
    """At most ``count`` slices, of nearly one length, that cover ``range(size)`` in order (the
    pieces of an axis that a pool of threads shares)."""
    return [slice(part[0], part[-1] + 1) for part in np.array_split(np.arange(size), count)
            if len(part)]
