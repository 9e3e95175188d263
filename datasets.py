"""Sets of volumes for training and evaluation: reading them into a :class:`Dataset`, padding.

- :func:`load_dataset` reads ``.npy`` stacks ``(N, *spatial)`` (the original format), ``.npz``
  files with ``vols`` and optional ``segs``, ``atlas``, ``atlas_seg``, ``labels``, and NIfTI
  or FreeSurfer ``.mgz`` volumes (one file, or a folder or list of them) into a
  :class:`Dataset`. Intensities are scaled to [0, 1] per volume (:func:`normalize`).
  :func:`load_label_maps` reads a set of label maps alone (``--synth data``).
- A folder or list of files (``filelists.py``) is a :class:`filelists.LazyVolumes` stack: its
  headers are checked up front, each volume is read when indexed (:func:`read_volume`), through
  a cache of the last ``CACHE_SIZE``.
- :func:`load_pairs_file` reads a CSV list of moving/static pairs (``moving,static`` and
  optional ``moving_seg,static_seg``), also lazily.
- :func:`pad_dataset`: every array of a set zero-padded (centred) to the network's input shape
  (``shapes.py``); :func:`scored_labels`: the labels of a set to score.

Which volumes of a set are paired, and which train or validate, is ``pairing.py``'s.
"""
import dataclasses
import functools
import os
import warnings

import numpy as np

import filelists
import volumes
from shapes import pad, padding_to_shape
from volumes import DataError, DataWarning

FLOAT32_MAX = float(np.finfo(np.float32).max)  # larger intensities overflow float32


@dataclasses.dataclass
class Dataset:
    """Volumes, optional label maps and an optional atlas, all on one grid.

    Attributes
    ----------
    vols : np.ndarray or filelists.LazyVolumes or None
        ``(N, *spatial)`` float32 intensities in [0, 1]; read from files when indexed for a
        folder or list of files; None in a set of label maps alone (:func:`load_label_maps`).
    segs : np.ndarray or filelists.LazyVolumes or None
        ``(N, *spatial)`` int32 label maps.
    atlas : np.ndarray or None
        ``(*spatial)`` float32 static image for scan-to-atlas registration.
    atlas_seg : np.ndarray or None
        ``(*spatial)`` int32 label map of the atlas.
    labels : np.ndarray or None
        Label ids to score with Dice; None means every non-zero label present.
    label_names : list of str or None
        Names of ``labels``, in the same order.
    spacing : tuple of float or None
        Voxel size per axis in mm, when the files give it; None when unknown.
    pairs : np.ndarray or None
        ``(P, 2)`` int: the moving and static volume of each pair of a pair list
        (:func:`load_pairs_file`); None for a set of subjects.
    """

    vols: "np.ndarray | filelists.LazyVolumes | None"
    segs: "np.ndarray | filelists.LazyVolumes | None" = None
    atlas: np.ndarray | None = None
    atlas_seg: np.ndarray | None = None
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    spacing: tuple[float, ...] | None = None
    pairs: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of every volume (of every label map, in a set of label maps alone)."""
        return (self.segs if self.vols is None else self.vols).shape[1:]


def normalize(volume: np.ndarray, name: str = "volume") -> np.ndarray:
    """Scale intensities to [0, 1] (min-max), as float32.

    Parameters
    ----------
    volume : np.ndarray
        Any shape, any real dtype.
    name : str
        Used in the error message.

    Returns
    -------
    np.ndarray
        Same shape, float32 in [0, 1].

    Raises
    ------
    DataError
        If the volume holds NaN or Inf, or has no intensity range (constant, e.g. an empty
        export): similarity losses (NCC, MI) are undefined on it, so nothing could register it.
    """
    volumes.check_numbers(volume, name)
    volume = np.asarray(volume)
    low, high = volume.min(), volume.max()  # NaN if any is; no copy of the volume
    if not (np.isfinite(low) and np.isfinite(high)) or max(-float(low), float(high)) > FLOAT32_MAX:
        raise DataError(f"{name} contains NaN or Inf values")
    if not high > low:
        raise DataError(f"{name} has no intensity range (every voxel is {volume.flat[0]:g}): "
                        f"there is nothing to register in it (an empty export or a failed "
                        f"skull strip?)")
    return min_max(volume)


def min_max(volume: np.ndarray) -> np.ndarray:
    """``volume`` scaled to [0, 1] as float32, its minimum to 0 and maximum to 1 (a constant
    one to zeros): the scaling of :func:`normalize`, without its checks (for figures)."""
    scaled = np.array(volume, dtype=np.float32)  # one copy, scaled in place
    low, high = scaled.min(), scaled.max()
    if not high > low:
        return np.zeros_like(scaled)
    scaled -= low
    scaled /= high - low
    return scaled


CACHE_SIZE = 8  # volumes a lazy stack (and its views) keeps after reading them


def read_volume(path: str, labels: bool, padding: tuple = ()) -> np.ndarray:
    """One volume file as a :class:`filelists.LazyVolumes` stack gives it.

    Parameters
    ----------
    path : str
        NIfTI or MGH file.
    labels : bool
        A label map (int32) rather than an image (float32, scaled to [0, 1]).
    padding : tuple of (int, int)
        Zero padding ``(before, after)`` per axis; none when empty.
    """
    volume, _ = volumes.load_volume(path)
    volume = _as_int32(volume, path) if labels else normalize(volume, path)
    return pad(volume, list(padding)) if padding else volume


def _lazy_stacks(images: list[str], segs: list[str] | None, places: list[str]) -> dict:
    """``vols`` (and ``segs``) as :class:`filelists.LazyVolumes` of files of one shape, checked
    by their headers, each read by :func:`read_volume` through a cache of the last
    ``CACHE_SIZE``; ``spacing`` when every image gives the same one. ``places`` name each
    image's place (a list's line) in the messages."""
    shapes, spacings = [], set()
    for i, (image, where) in enumerate(zip(images, places)):
        shape, spacing = filelists.image_header(image, where)
        spacings.add(spacing)
        if shapes and shape != shapes[0]:
            raise DataError(f"{where}: shape {shape} of {image} differs from {shapes[0]} of "
                            f"{images[0]}: every volume must have one shape")
        seg_shape = None if segs is None else filelists.image_header(segs[i], where)[0]
        if seg_shape not in (None, shape):
            raise DataError(f"{where}: label map {segs[i]} is {seg_shape}, its image {shape}")
        shapes.append(shape)
    arrays = {"vols": filelists.LazyVolumes(images, shapes[0], _cached_reader())}
    if segs is not None:
        arrays["segs"] = filelists.LazyVolumes(segs, shapes[0], _cached_reader(), labels=True)
    return {**arrays, **({"spacing": spacings.pop()} if len(spacings) == 1 else {})}


def _cached_reader():
    """:func:`read_volume` behind its own cache of the last ``CACHE_SIZE`` volumes read."""
    return functools.lru_cache(CACHE_SIZE)(read_volume)


def _load_image(path: str) -> dict:
    """One NIfTI or MGH volume as a stack: ``vols`` ``(1, *spatial)``, and ``spacing`` in mm."""
    volume, image = volumes.load_volume(path)
    return {"vols": volume[None], "spacing": volumes.nifti_spacing(image)}


def _read_arrays(path: str) -> dict:
    """The arrays stored at ``path`` by name: ``vols`` and whichever optional ones exist."""
    if os.path.isdir(path) or path.endswith(filelists.LISTS):
        return _lazy_stacks(*filelists.list_files(path))
    volumes.check_exists(path)
    kind = volumes.file_format(path)
    if kind == "image":
        return _load_image(path)
    if kind == "npy":
        return {"vols": volumes.read_npy(path)}
    stored = volumes.read_npz(path)
    if "vols" not in stored:
        raise DataError(f"{path}: no array named 'vols' (found {list(stored.keys())})")
    return {key: stored[key] for key in ("vols", "segs", "atlas", "atlas_seg", "labels",
                                          "label_names", "spacing") if key in stored}


SHAPE_RULE = ("a .npy array or .npz 'vols' is a stack (N, *spatial): (N, D, H, W) holds N 3D "
              "volumes; (N, H, W) holds N 2D images, or one 3D volume with --ndim 3 (or an "
              "atlas of 3D); without an atlas, a 3-axis array needs --ndim")


def _as_stack(vols: np.ndarray, path: str, ndim: int | None) -> np.ndarray:
    """``vols`` as ``(N, *spatial)`` by ``SHAPE_RULE``; ``ndim`` from --ndim or the atlas."""
    if vols.ndim not in (3, 4):
        raise DataError(f"{path}: expected volumes of shape (N, H, W) or (N, D, H, W), "
                        f"got {vols.shape}")
    if vols.ndim == 3 and ndim == 3:
        return vols[None]  # one 3D volume
    if vols.ndim == 3 and ndim is None:
        raise DataError(f"{path}: shape {vols.shape} is either {vols.shape[0]} 2D images or "
                        f"one 3D volume: pass --ndim 2 or --ndim 3 (or store the volume with a "
                        f"leading axis, np.save(path, volume[None]))")
    if vols.ndim - 1 != (ndim or vols.ndim - 1):
        raise DataError(f"{path}: shape {vols.shape} holds {vols.ndim - 1}D volumes, "
                        f"not {ndim}D ones")
    return vols


def load_dataset(path: str, atlas: str | None = None, ndim: int | None = None) -> Dataset:
    """Read a set of volumes (and labels) for training or evaluation.

    Parameters
    ----------
    path : str
        ``.npy`` array ``(N, *spatial)``; ``.npz`` with ``vols`` ``(N, *spatial)`` and optional
        ``segs``, ``atlas``, ``atlas_seg``, ``labels``, ``label_names``, ``spacing`` (voxel size
        in mm, one value or one per axis); a NIfTI or ``.mgz`` file holding one volume; or,
        read lazily (:class:`filelists.LazyVolumes`), NIfTI or ``.mgz`` volumes of one shape: a folder of
        them, a text file listing them one a line, or a CSV file with a column ``image`` and
        an optional ``seg`` (paths relative to the list's folder). Shapes follow ``SHAPE_RULE``.
    atlas : str, optional
        File of a static atlas (``.npy``, ``.npz``, NIfTI, ``.mgz``); replaces one stored in ``path``.
    ndim : {2, 3}, optional
        Dimension of the images; by default the atlas's, else read from the shape (a 3-axis
        ``.npy``/``.npz`` stack without an atlas then needs it).

    Returns
    -------
    Dataset
        Intensities scaled to [0, 1] per volume, label maps as int32; ``spacing`` from the
        NIfTI or MGH headers (when all files agree) or the ``.npz``, else None.
    """
    arrays = _read_arrays(path)
    if atlas is not None:
        arrays["atlas"], _ = volumes.load_volume(atlas)
    if ndim is None and "atlas" in arrays:
        ndim = np.ndim(arrays["atlas"])
    lazy = isinstance(arrays["vols"], filelists.LazyVolumes)
    if lazy and ndim not in (None, arrays["vols"].ndim - 1):
        raise DataError(f"{path} holds {arrays['vols'].ndim - 1}D volumes, not {ndim}D ones")
    if not lazy:
        volumes.check_numbers(arrays["vols"], path)
    vols = arrays["vols"] if lazy else _as_stack(arrays["vols"], path, ndim)
    if "segs" in arrays and arrays["segs"].shape == vols.shape[1:]:
        arrays["segs"] = arrays["segs"][None]  # the label map of one volume
    names = arrays.get("label_names")
    data = Dataset(
        vols=vols if lazy else np.stack([normalize(v, f"{path} volume {i}")
                                         for i, v in enumerate(vols)]),
        segs=arrays.get("segs") if lazy else _as_int32(arrays.get("segs"), f"{path} segs"),
        atlas=None if "atlas" not in arrays else normalize(arrays["atlas"], "atlas"),
        atlas_seg=_as_int32(arrays.get("atlas_seg"), f"{path} atlas_seg"),
        labels=_label_ids(arrays.get("labels"), path),
        label_names=None if names is None else [str(name) for name in np.ravel(names)],
        spacing=_spacing(arrays.get("spacing"), vols.ndim - 1, path),
    )
    _check_shapes(data, path)
    return data


def load_label_maps(path: str, ndim: int | None = None) -> Dataset:
    """A set of label maps with no images, for training from label maps (``--synth data``).

    Parameters
    ----------
    path : str
        ``.npz`` file with ``segs`` ``(N, *spatial)`` (integer label maps) and no ``vols``;
        optional ``labels``, ``label_names``, ``spacing`` as in :func:`load_dataset`.
    ndim : {2, 3}, optional
        Dimension of the label maps; by default ``segs.ndim - 1``.

    Returns
    -------
    Dataset
        ``vols`` None, ``segs`` int32.
    """
    stored = volumes.read_npz(path)
    if "segs" not in stored:
        raise DataError(f"{path}: no array named 'segs' or 'vols' (found {list(stored.keys())})")
    segs = _as_int32(stored["segs"], f"{path} segs")
    if segs.ndim - 1 not in (2, 3) or ndim not in (None, segs.ndim - 1):
        raise DataError(f"{path}: 'segs' must be a stack (N, *spatial) of {ndim or '2D or 3D'} "
                        f"label maps, got shape {segs.shape}")
    names = stored.get("label_names")
    data = Dataset(vols=None, segs=segs, labels=_label_ids(stored.get("labels"), path),
                   label_names=None if names is None else [str(n) for n in np.ravel(names)],
                   spacing=_spacing(stored.get("spacing"), segs.ndim - 1, path))
    _check_shapes(data, path)
    return data


def _spacing(spacing, ndim: int, path: str) -> tuple[float, ...] | None:
    """``(ndim,)`` voxel size in mm from one value or one per axis; None stays None."""
    if spacing is None:
        return None
    try:
        return tuple(volumes.voxel_size(spacing, ndim).tolist())
    except (TypeError, ValueError) as error:
        raise DataError(f"{path}: spacing must be one positive value or {ndim} (one per axis), "
                        f"got {np.ravel(spacing).tolist()}") from error


def _label_ids(labels: np.ndarray | None, path: str) -> np.ndarray | None:
    """The ``labels`` array of an ``.npz``: a list of integer label ids."""
    if labels is None:
        return None
    labels = np.ravel(labels)
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and labels.size and
                                               np.all(np.mod(labels, 1) == 0)):
        raise DataError(f"{path}: 'labels' must be integer label ids, got {labels.dtype} "
                        f"values {labels[:5].tolist()}")
    return labels.astype(np.int64)


def _as_int32(segs: np.ndarray | None, name: str) -> np.ndarray | None:
    return None if segs is None else volumes.as_label_map(segs, name).astype(np.int32)


def _check_shapes(data: Dataset, path: str) -> None:
    """Every array of ``data`` must share the spatial shape of ``vols``."""
    if data.label_names is not None and (data.labels is None or
                                         len(data.label_names) != len(data.labels)):
        raise DataError(f"{path}: 'label_names' needs 'labels' of the same length")
    if data.segs is not None and data.vols is not None and data.segs.shape != data.vols.shape:
        raise DataError(f"{path}: segs shape {data.segs.shape} differs from vols "
                        f"{data.vols.shape}")
    for name in ("atlas", "atlas_seg"):
        value = getattr(data, name)
        if value is not None and value.shape != data.shape:
            raise DataError(f"moving and static shapes differ: volumes are {data.shape}, "
                            f"{name} is {value.shape}")


def pad_dataset(data: Dataset, target: tuple[int, ...]) -> Dataset:
    """Zero-pad every array of ``data`` to the spatial shape ``target`` (centred)."""
    padding = padding_to_shape(data.shape, target)
    padded = {name: None if value is None else
              value.padded(padding) if isinstance(value, filelists.LazyVolumes) else pad(value, padding)
              for name, value in (("vols", data.vols), ("segs", data.segs),
                                  ("atlas", data.atlas), ("atlas_seg", data.atlas_seg))}
    return dataclasses.replace(data, **padded)


PAIR_COLUMNS = ("moving", "static")
PAIR_SEG_COLUMNS = ("moving_seg", "static_seg")


def load_pairs_file(path: str, ndim: int | None = None) -> Dataset:
    """A CSV list of moving/static pairs, read lazily: the pairs to train on or to evaluate.

    Parameters
    ----------
    path : str
        CSV file with the header ``moving,static`` and optionally ``moving_seg,static_seg``
        (label maps, both, on every row); NIfTI or ``.mgz`` paths, relative to its folder.
    ndim : {2, 3}, optional
        Dimension the images must have.

    Returns
    -------
    Dataset
        ``vols`` (and ``segs``): :class:`filelists.LazyVolumes` of the moving files then the static
        ones, ``pairs`` ``(P, 2)`` their indices, in the file's order.

    Raises
    ------
    DataError
        For a missing column or file, a label-map column given on some rows only, or shapes
        that differ (between moving and static, or from the first row), all from the headers.
    """
    columns, places = filelists.read_columns(path, PAIR_COLUMNS, PAIR_SEG_COLUMNS)
    if (columns["moving_seg"] is None) != (columns["static_seg"] is None):
        raise DataError(f"{path}: moving_seg and static_seg go together (one is given)")
    count = len(columns["moving"])
    for where, moving, static in zip(places, columns["moving"], columns["static"]):
        shapes = [filelists.image_header(file, where)[0] for file in (moving, static)]
        if shapes[0] != shapes[1]:
            raise DataError(f"{where}: moving and static shapes differ: {shapes[0]} vs "
                            f"{shapes[1]}")
    segs = None if columns["moving_seg"] is None else \
        columns["moving_seg"] + columns["static_seg"]
    arrays = _lazy_stacks(columns["moving"] + columns["static"], segs, 2 * places)
    if ndim not in (None, arrays["vols"].ndim - 1):
        raise DataError(f"{path} lists {arrays['vols'].ndim - 1}D volumes, not {ndim}D ones")
    return Dataset(vols=arrays["vols"], segs=arrays.get("segs"), spacing=arrays.get("spacing"),
                   pairs=np.stack([np.arange(count), count + np.arange(count)], axis=1))


def scored_labels(data: Dataset, labels: list[int] | None = None
                  ) -> tuple[list[int], list[str] | None]:
    """Labels to score with Dice, and their names (None when unknown).

    Parameters
    ----------
    data : Dataset
        The test set.
    labels : list of int, optional
        Labels asked for; by default ``data.labels``, else every non-zero label present.

    Raises
    ------
    DataError
        If ``labels`` are given without label maps, or one is in no label map (labels of
        ``data.labels`` in no label map are skipped with a warning).
    """
    maps = [m for m in (data.segs, None if data.atlas_seg is None else data.atlas_seg[None])
            if m is not None]
    present = set().union(*(np.unique(m[i]).tolist() for m in maps
                            for i in range(len(m)))) - {0}  # one volume at a time
    if labels is None and data.labels is None:
        return sorted(present), None
    stored = labels is None
    labels = [int(label) for label in (data.labels if stored else labels)]
    if not maps and stored:
        return [], None
    if not maps:
        raise DataError("labels to score were given, but the data has no label maps ('segs' "
                        "or 'atlas_seg' in the .npz)")
    absent = [label for label in labels if label not in present]
    if absent and not stored:
        raise DataError(f"--labels {absent} are in none of the label maps (present: "
                        f"{sorted(present)[:40]})")
    if absent:
        warnings.warn(f"skipped labels {absent} of 'labels': in none of the label maps",
                      DataWarning, stacklevel=2)
        labels = [label for label in labels if label in present]
    names = None
    if data.label_names is not None and data.labels is not None:
        lookup = dict(zip((int(label) for label in data.labels), data.label_names))
        names = [lookup.get(label, str(label)) for label in labels]
    return labels, names
