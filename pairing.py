"""Which volumes of a set are registered to which: the pairing mode, the split into training
and validation, and the pairs.

- :func:`pairing_mode`: scan-to-atlas, scan-to-scan, or the pairs of a pair list.
- :func:`load_training_sets` reads a set (``datasets.load_dataset``) and holds out validation
  subjects (:func:`split`), enough on each side for their pairs; :func:`split_pairs` splits a
  pair list (``datasets.load_pairs_file``) by its pairs.
- :func:`make_pairs` lists the evaluation pairs of a set (:class:`Pairs`);
  :func:`scan_to_scan_pairs` draws training pairs of distinct volumes.
"""
import dataclasses

import numpy as np

import datasets
from volumes import DataError


def pairing_mode(data: datasets.Dataset, pairs: str | None = None) -> str:
    """``"listed"`` for a pair list; else ``pairs``, or by default ``"atlas"`` when ``data`` has
    an atlas, else ``"scan_to_scan"``."""
    if data.pairs is not None:
        return "listed"
    mode = pairs or ("atlas" if data.atlas is not None else "scan_to_scan")
    if mode == "atlas" and data.atlas is None:
        raise DataError("--pairs atlas needs an atlas (--atlas, or 'atlas' in the .npz)")
    return mode


def split(data: datasets.Dataset, num_val: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The first ``N - num_val`` subjects for training, the last ``num_val`` for validation."""
    if not 0 < num_val < len(data.vols):
        raise DataError(f"{len(data.vols)} volumes are too few to hold out {num_val} for "
                        f"validation and train on the rest")
    return tuple(dataclasses.replace(data, vols=data.vols[part], segs=_take(data.segs, part))
                 for part in (slice(None, -num_val), slice(-num_val, None)))


def load_training_sets(path: str, atlas: str | None, pairs: str | None, val_path: str | None,
                       val_fraction: float, ndim: int | None = None
                       ) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """Training and validation sets of one shape, and the pairing mode.

    Parameters
    ----------
    path : str
        The set to train on (see ``datasets.load_dataset``).
    atlas : str, optional
        File of a static atlas, replacing one stored in ``path``.
    pairs : {"atlas", "scan_to_scan"}, optional
        Pairing mode; by default ``"atlas"`` when there is an atlas.
    val_path : str, optional
        Validation set of the same shape; by default the last ``val_fraction`` of ``path``
        (at least one subject for atlas pairs, two for scan-to-scan).
    val_fraction : float
        Share of the subjects held out when ``val_path`` is None, in (0, 1).
    ndim : {2, 3}, optional
        Dimension of the images (see ``datasets.load_dataset``).

    Returns
    -------
    train, val : datasets.Dataset
        The sets; ``val`` shares ``train``'s atlas unless it has its own.
    mode : str
        The pairing mode.
    """
    data = datasets.load_dataset(path, atlas, ndim)
    mode = pairing_mode(data, pairs)
    least = 1 if mode == "atlas" else 2  # subjects needed on each side
    if val_path is None:
        count = len(data.vols)
        num_val = max(int(round(val_fraction * count)), least)
        if count - num_val < least:
            raise DataError(f"{path} holds {count} volumes: {num_val} go to validation "
                            f"(--val_fraction {val_fraction:g}, at least {least}), which leaves "
                            f"{count - num_val} to train {mode} pairs on, fewer than {least}; "
                            f"add volumes or give --val_data")
        train, val = split(data, num_val)
    else:
        train, val = data, datasets.load_dataset(val_path, atlas, len(data.shape))
        if val.shape != data.shape:
            raise DataError(f"--val_data volumes are {val.shape}, --data volumes "
                            f"{data.shape}: they must have the same shape")
        if val.atlas is None:
            val = dataclasses.replace(val, atlas=data.atlas, atlas_seg=data.atlas_seg)
        if mode == "scan_to_scan" and len(val.vols) < 2:
            raise DataError(f"--val_data {val_path} holds 1 volume: scan-to-scan validation "
                            f"pairs need at least 2")
    return train, val, mode


def split_pairs(data: datasets.Dataset, val_fraction: float, path: str
                ) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The first pairs of a pair list for training, the last ``val_fraction`` (at least one)
    for validation."""
    count = len(data.pairs)
    num_val = max(int(round(val_fraction * count)), 1)
    if count - num_val < 1:
        raise DataError(f"{path} lists {count} pair{'s' * (count > 1)}: too few to hold out "
                        f"{num_val} for validation (--val_fraction {val_fraction:g}) and train "
                        f"on the rest")
    return (dataclasses.replace(data, pairs=data.pairs[:-num_val]),
            dataclasses.replace(data, pairs=data.pairs[-num_val:]))


@dataclasses.dataclass
class Pairs:
    """Moving/static pairs with their label maps, for validation and evaluation.

    Attributes
    ----------
    moving, static : np.ndarray or filelists.LazyVolumes
        ``(P, *spatial)`` images in [0, 1].
    index : np.ndarray
        ``(P, 2)`` int: the moving and static volume of each pair in the set; -1 for the atlas.
    moving_segs, static_segs : np.ndarray or None
        ``(P, *spatial)`` int32 label maps, when the data has them.
    """

    moving: np.ndarray
    static: np.ndarray
    index: np.ndarray
    moving_segs: np.ndarray | None = None
    static_segs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.moving)

    def __iter__(self):
        """Yield ``(moving, static, moving_seg, static_seg)``, label maps None when absent."""
        for i in range(len(self)):
            segs = (None, None) if self.moving_segs is None or self.static_segs is None else \
                (self.moving_segs[i], self.static_segs[i])
            yield (self.moving[i], self.static[i]) + segs


def make_pairs(data: datasets.Dataset, mode: str, max_pairs: int | None = None) -> Pairs:
    """All evaluation pairs of a set: every volume to the atlas, or every ordered pair of volumes.

    Parameters
    ----------
    data : datasets.Dataset
        Volumes (and label maps, atlas).
    mode : {"atlas", "scan_to_scan", "listed"}
        Scan-to-atlas or scan-to-scan pairs, or those of a pair list (``data.pairs``), in order.
    max_pairs : int, optional
        Keep the first ``max_pairs`` pairs only.
    """
    if mode == "listed":
        index = data.pairs[:max_pairs]
        moving, static = index.T
        return Pairs(_take(data.vols, moving), _take(data.vols, static), index,
                     _take(data.segs, moving), _take(data.segs, static))
    if mode == "atlas":
        if data.atlas is None:
            raise DataError("atlas pairs need an atlas (--atlas, or 'atlas' in the .npz file)")
        moving = np.arange(len(data.vols))[:max_pairs]
        index = np.stack([moving, np.full_like(moving, -1)], axis=1)
        return Pairs(_take(data.vols, moving), _tile(data.atlas, len(moving)), index,
                     _take(data.segs, moving), _tile(data.atlas_seg, len(moving)))
    index = scan_to_scan_pairs(len(data.vols))[:max_pairs]
    moving, static = index.T
    return Pairs(_take(data.vols, moving), _take(data.vols, static), index,
                 _take(data.segs, moving), _take(data.segs, static))


def _take(arrays: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    return None if arrays is None else arrays[index]


def _tile(volume: np.ndarray | None, count: int) -> np.ndarray | None:
    return None if volume is None else np.broadcast_to(volume, (count, *volume.shape))


def scan_to_scan_pairs(num_volumes: int, num_pairs: int | None = None,
                       seed: int | None = None) -> np.ndarray:
    """Ordered pairs ``(moving, static)`` of distinct volumes.

    Parameters
    ----------
    num_volumes : int
        Size of the set (at least 2).
    num_pairs : int, optional
        Draw this many random pairs (with replacement); by default all ``N (N - 1)`` pairs in order.
    seed : int, optional
        Seed of the draw.

    Returns
    -------
    np.ndarray
        ``(P, 2)`` int indices.
    """
    if num_volumes < 2:
        raise DataError(f"scan-to-scan pairs need at least 2 volumes, got {num_volumes}")
    if num_pairs is None:
        return np.array([(i, j) for i in range(num_volumes) for j in range(num_volumes) if i != j])
    rng = np.random.default_rng(seed)
    moving = rng.integers(num_volumes, size=num_pairs)
    static = (moving + rng.integers(1, num_volumes, size=num_pairs)) % num_volumes
    return np.stack([moving, static], axis=1)


def volume_name(data: datasets.Dataset, index: int) -> int | str:
    """How ``eval.json`` names volume ``index`` of a pair: its file for a pair list, else its
    index in the set, or ``"atlas"`` (-1)."""
    if data.pairs is not None:
        return data.vols.paths[index]
    return "atlas" if index < 0 else int(index)


def per_pair(data: datasets.Dataset, pairs: Pairs, results: list[dict]) -> list[dict]:
    """The ``results`` of ``pairs`` of ``data`` (one dict each), each with its ``moving`` and
    ``static`` volumes named (:func:`volume_name`): ``eval.json``'s ``per_pair``."""
    return [{"moving": volume_name(data, moving), "static": volume_name(data, static), **result}
            for (moving, static), result in zip(pairs.index, results)]
