"""Moving/static pairs for training and evaluation: reading files, pairing, Keras loaders.

- :func:`load_dataset` reads ``.npy`` stacks ``(N, *spatial)`` (the original format), ``.npz``
  files with ``vols`` and optional ``segs``, ``atlas``, ``atlas_seg``, ``labels``, and NIfTI
  volumes (one file, or a folder of them). Intensities are scaled to [0, 1] per volume.
  :func:`load_training_sets` splits a set into training and validation subjects.
- :func:`make_pairs` lists the evaluation pairs of a set (scan-to-atlas or scan-to-scan).
- :class:`RegistrationDataLoader` pairs every moving image with one static atlas (scan-to-atlas)
  or with its own static image; :class:`ScanToScanDataLoader` draws random pairs from one set.
  Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a run resumes exactly.

Batches are ``({"moving", "static"}, {"moved", "deformation"})`` dicts matching the models'
inputs and outputs: the target of ``moved`` is the static image, that of ``deformation`` zeros
(the smoothness loss ignores it).
"""
import contextlib
import dataclasses
import glob
import os
import secrets
import warnings
import zipfile
from collections.abc import Callable, Iterator

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np

import metrics

NIFTI = (".nii", ".nii.gz")
FORMATS = ".npy, .npz, .nii or .nii.gz"


class DataError(ValueError):
    """Input data that cannot be used, with a message meant for the user."""


class DataWarning(UserWarning):
    """Input data that can be used but is probably not what the user meant."""


@dataclasses.dataclass
class Dataset:
    """Volumes, optional label maps and an optional atlas, all on one grid.

    Attributes
    ----------
    vols : np.ndarray
        ``(N, *spatial)`` float32 intensities in [0, 1].
    segs : np.ndarray or None
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
    """

    vols: np.ndarray
    segs: np.ndarray | None = None
    atlas: np.ndarray | None = None
    atlas_seg: np.ndarray | None = None
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    spacing: tuple[float, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of every volume."""
        return self.vols.shape[1:]


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
        Same shape, float32 in [0, 1]; a constant volume becomes all zeros.
    """
    _check_numbers(volume, name)
    volume = np.asarray(volume, dtype=np.float32)
    if not np.all(np.isfinite(volume)):
        raise DataError(f"{name} contains NaN or Inf values")
    low, high = volume.min(), volume.max()
    if high == low == 0:
        warnings.warn(f"{name} is all zeros", DataWarning, stacklevel=2)
    return (volume - low) / (high - low) if high > low else np.zeros_like(volume)


def as_label_map(volume: np.ndarray, name: str = "label map") -> np.ndarray:
    """Check that ``volume`` holds integer labels; return it unchanged.

    Raises
    ------
    DataError
        If a value is not an integer (a label map stored as floats must hold whole numbers).
    """
    _check_numbers(volume, name)
    volume = np.asarray(volume)
    if volume.dtype.kind == "f" and not np.all(np.mod(volume, 1) == 0):
        raise DataError(f"{name} must hold integer labels, found values such as "
                        f"{volume[np.mod(volume, 1) != 0].flat[0]}")
    return volume


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path to write ``path`` through, so that ``path`` is never half-written.

    Yields a hidden name in the same folder with the same extension (``.keras``, ``.nii.gz``...,
    which the writers check); when the block ends without an error, the file replaces ``path``
    in one step (``os.replace``); on an error it is removed.

    Examples
    --------
    >>> with atomic_path("run/model.keras") as tmp:
    ...     model.save(tmp)
    """
    folder, name = os.path.split(os.path.abspath(path))
    suffix = name[name.find("."):] if "." in name else ""
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _check_numbers(volume: np.ndarray, name: str) -> None:
    """Refuse arrays that are empty or not of real numbers (strings, complex, objects)."""
    if np.asarray(volume).dtype.kind not in "biuf":
        raise DataError(f"{name} must hold real numbers, not {np.asarray(volume).dtype}")
    if np.size(volume) == 0:
        raise DataError(f"{name} is empty (shape {np.shape(volume)})")


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"no such file or folder: {path}")


def file_format(path: str) -> str:
    """``"nifti"``, ``"npy"`` or ``"npz"``, from the file name.

    Raises
    ------
    DataError
        For any other extension.
    """
    for suffixes, name in ((NIFTI, "nifti"), ((".npy",), "npy"), ((".npz",), "npz")):
        if path.endswith(suffixes):
            return name
    raise DataError(f"{path}: unsupported file type (use {FORMATS})")


def _read_nifti(path: str):
    """``(array, image)`` of a NIfTI file, the array as stored."""
    import nibabel as nib

    try:
        image = nib.load(path)
        return np.asanyarray(image.dataobj), image
    except Exception as error:  # nibabel raises several types for unreadable files
        raise DataError(f"cannot read NIfTI file {path}: {_one_line(error)}") from error


def _read_npy(path: str) -> np.ndarray:
    """The array of an ``.npy`` file (no pickled objects)."""
    with open(path, "rb") as file:
        if file.read(6) != b"\x93NUMPY":
            raise DataError(f"{path} is not an .npy file (no .npy header: empty, damaged or "
                            f"another format)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises several types for truncated or foreign files
        raise DataError(f"cannot read {path} as .npy: {_one_line(error)}") from error


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file by name, read now (no pickled objects)."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz file (not a zip archive: empty, truncated or "
                        f"another format)")
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.keys()}
    except Exception as error:  # zipfile and numpy raise several types for damaged files
        raise DataError(f"cannot read {path} as .npz: {_one_line(error)}") from error


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _one_volume(path: str, arrays) -> np.ndarray:
    """The volume of an ``.npz`` file: ``vol``, the one volume in ``vols``, or its one array."""
    keys = list(arrays.keys())
    if "vol" in keys:
        return arrays["vol"]
    if "vols" in keys and np.ndim(arrays["vols"]) > 0 and len(arrays["vols"]) == 1:
        return arrays["vols"][0]
    if len(keys) == 1:
        return arrays[keys[0]]
    raise DataError(f"{path}: expected an array 'vol' (or one volume in 'vols'), found {keys}")


def load_volume(path: str):
    """Read one volume (image or label map) as stored, without rescaling it.

    Parameters
    ----------
    path : str
        ``.npy``, ``.npz`` (array ``vol``, or ``vols`` holding one volume, or a single array) or
        NIfTI (``.nii``, ``.nii.gz``).

    Returns
    -------
    volume : np.ndarray
        ``(*spatial)``, 2D or 3D, in its stored dtype.
    image : nibabel image or None
        The NIfTI image (affine and header) for NIfTI inputs, else None.
    """
    _check_file(path)
    kind, image = file_format(path), None
    if kind == "nifti":
        volume, image = _read_nifti(path)
    elif kind == "npy":
        volume = _read_npy(path)
    else:
        volume = _one_volume(path, _read_npz(path))
    _check_numbers(volume, path)
    volume = np.squeeze(volume)
    if volume.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2D or 3D volume, got shape {volume.shape}")
    return volume, image


def save_volume(path: str, volume: np.ndarray, reference=None, vector: bool = False) -> None:
    """Write a volume atomically as ``.npy``, ``.npz`` (array ``vol``) or NIfTI.

    Parameters
    ----------
    path : str
        Output file; its extension chooses the format.
    volume : np.ndarray
        ``(*spatial)``, or ``(*spatial, C)`` with ``vector``; ``.npy`` and ``.npz`` keep its
        dtype. NIfTI takes float32 for real images and the smallest of uint8, int16 and int32
        that holds integer or boolean label maps (types every viewer opens).
    reference : nibabel image, optional
        NIfTI output takes this image's affine and header (e.g. the static image's); without it,
        an identity affine.
    vector : bool
        The last axis holds vector components (a displacement): NIfTI stores them as a vector
        image ``(x, y, z, 1, C)`` with intent 'vector' (a 2D field as ``(x, y, 1, 1, C)``).
    """
    kind = file_format(path)
    with atomic_path(path) as tmp:
        if kind == "nifti":
            _save_nifti(tmp, volume, reference, vector)
        elif kind == "npy":
            np.save(tmp, volume)
        else:
            np.savez_compressed(tmp, vol=volume)


def nifti_dtype(volume: np.ndarray) -> np.dtype:
    """float32 for real values; uint8, int16 or int32 (the smallest that fits) for labels."""
    if volume.dtype.kind not in "biu":
        return np.dtype(np.float32)
    low, high = (int(volume.min()), int(volume.max())) if volume.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise DataError(f"labels from {low} to {high} do not fit a NIfTI int32 image")


def _save_nifti(path: str, volume: np.ndarray, reference, vector: bool) -> None:
    import nibabel as nib

    volume = np.asarray(volume)
    volume = volume.astype(nifti_dtype(volume))
    if vector:  # (*spatial, C) -> (x, y, z, 1, C), the NIfTI layout of a vector per voxel
        spatial = volume.shape[:-1] + (1,) * (3 - (volume.ndim - 1))
        volume = volume.reshape(*spatial, 1, volume.shape[-1])
    header = None if reference is None else reference.header.copy()
    affine = np.eye(4) if reference is None else reference.affine
    image = (nib.Nifti1Image if reference is None else type(reference))(volume, affine, header)
    image.header.set_data_dtype(volume.dtype)
    image.header.set_intent("vector" if vector else "none")
    nib.save(image, path)


def nifti_spacing(image) -> tuple[float, ...]:
    """Voxel size in mm of a NIfTI image's axes that :func:`load_volume` keeps (size > 1)."""
    return tuple(float(zoom) for size, zoom in zip(image.shape, image.header.get_zooms())
                 if size != 1)


def _load_nifti_stack(paths: list[str]) -> dict:
    """Stack NIfTI volumes of one shape: ``vols`` ``(N, *spatial)``, and ``spacing`` in mm.

    ``spacing`` is left out when the files disagree on it.
    """
    volumes, images = zip(*(load_volume(p) for p in paths))
    shapes = {v.shape for v in volumes}
    if len(shapes) > 1:
        raise DataError(f"NIfTI volumes differ in shape: {sorted(shapes)}")
    spacings = {nifti_spacing(image) for image in images}
    return {"vols": np.stack(volumes), **({"spacing": spacings.pop()} if len(spacings) == 1
                                           else {})}


def _read_arrays(path: str) -> dict:
    """The arrays stored at ``path`` by name: ``vols`` and whichever optional ones exist."""
    _check_file(path)
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.endswith(NIFTI))
        if not files:
            raise DataError(f"{path}: folder holds no .nii or .nii.gz files")
        return _load_nifti_stack(files)
    kind = file_format(path)
    if kind == "nifti":
        return _load_nifti_stack([path])
    if kind == "npy":
        return {"vols": _read_npy(path)}
    stored = _read_npz(path)
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
        in mm, one value or one per axis); a NIfTI file holding one volume; or a folder of NIfTI
        volumes of one shape. Shapes follow ``SHAPE_RULE``.
    atlas : str, optional
        File of a static atlas (``.npy``, ``.npz``, NIfTI); replaces one stored in ``path``.
    ndim : {2, 3}, optional
        Dimension of the images; by default the atlas's, else read from the shape (a 3-axis
        ``.npy``/``.npz`` stack without an atlas then needs it).

    Returns
    -------
    Dataset
        Intensities scaled to [0, 1] per volume, label maps as int32; ``spacing`` from the
        NIfTI headers (when all files agree) or the ``.npz``, else None.
    """
    arrays = _read_arrays(path)
    if atlas is not None:
        arrays["atlas"], _ = load_volume(atlas)
    _check_numbers(arrays["vols"], path)
    if ndim is None and "atlas" in arrays:
        ndim = np.ndim(arrays["atlas"])
    vols = _as_stack(arrays["vols"], path, ndim)
    if "segs" in arrays and arrays["segs"].shape == vols.shape[1:]:
        arrays["segs"] = arrays["segs"][None]  # the label map of one volume
    names = arrays.get("label_names")
    data = Dataset(
        vols=np.stack([normalize(v, f"{path} volume {i}") for i, v in enumerate(vols)]),
        segs=_as_int32(arrays.get("segs"), f"{path} segs"),
        atlas=None if "atlas" not in arrays else normalize(arrays["atlas"], "atlas"),
        atlas_seg=_as_int32(arrays.get("atlas_seg"), f"{path} atlas_seg"),
        labels=_label_ids(arrays.get("labels"), path),
        label_names=None if names is None else [str(name) for name in np.ravel(names)],
        spacing=_spacing(arrays.get("spacing"), vols.ndim - 1, path),
    )
    _check_shapes(data, path)
    return data


def _spacing(spacing, ndim: int, path: str) -> tuple[float, ...] | None:
    """``(ndim,)`` voxel size in mm from one value or one per axis; None stays None."""
    if spacing is None:
        return None
    try:
        return tuple(metrics.voxel_size(spacing, ndim).tolist())
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
    return None if segs is None else as_label_map(segs, name).astype(np.int32)


def _check_shapes(data: Dataset, path: str) -> None:
    """Every array of ``data`` must share the spatial shape of ``vols``."""
    if data.label_names is not None and (data.labels is None or
                                         len(data.label_names) != len(data.labels)):
        raise DataError(f"{path}: 'label_names' needs 'labels' of the same length")
    if data.segs is not None and data.segs.shape != data.vols.shape:
        raise DataError(f"{path}: segs shape {data.segs.shape} differs from vols "
                        f"{data.vols.shape}")
    for name in ("atlas", "atlas_seg"):
        value = getattr(data, name)
        if value is not None and value.shape != data.shape:
            raise DataError(f"moving and static shapes differ: volumes are {data.shape}, "
                            f"{name} is {value.shape}")


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


def pad_dataset(data: Dataset, target: tuple[int, ...]) -> Dataset:
    """Zero-pad every array of ``data`` to the spatial shape ``target`` (centred)."""
    padding = padding_to_shape(data.shape, target)
    padded = {name: None if value is None else pad(value, padding)
              for name, value in (("vols", data.vols), ("segs", data.segs),
                                  ("atlas", data.atlas), ("atlas_seg", data.atlas_seg))}
    return dataclasses.replace(data, **padded)


def pairing(data: Dataset, pairs: str | None = None) -> str:
    """``pairs``, or by default ``"atlas"`` when ``data`` has an atlas, else ``"scan_to_scan"``."""
    mode = pairs or ("atlas" if data.atlas is not None else "scan_to_scan")
    if mode == "atlas" and data.atlas is None:
        raise DataError("--pairs atlas needs an atlas (--atlas, or 'atlas' in the .npz)")
    return mode


def split(data: Dataset, num_val: int) -> tuple[Dataset, Dataset]:
    """The first ``N - num_val`` subjects for training, the last ``num_val`` for validation."""
    if not 0 < num_val < len(data.vols):
        raise DataError(f"{len(data.vols)} volumes are too few to hold out {num_val} for "
                        f"validation and train on the rest")
    return tuple(dataclasses.replace(data, vols=data.vols[part], segs=_take(data.segs, part))
                 for part in (slice(None, -num_val), slice(-num_val, None)))


def load_training_sets(path: str, atlas: str | None, pairs: str | None, val_path: str | None,
                       val_fraction: float, ndim: int | None = None
                       ) -> tuple[Dataset, Dataset, str]:
    """Training and validation sets of one shape, and the pairing mode.

    Parameters
    ----------
    path : str
        The set to train on (see :func:`load_dataset`).
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
        Dimension of the images (see :func:`load_dataset`).

    Returns
    -------
    train, val : Dataset
        The sets; ``val`` shares ``train``'s atlas unless it has its own.
    mode : str
        The pairing mode.
    """
    data = load_dataset(path, atlas, ndim)
    mode = pairing(data, pairs)
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
        train, val = data, load_dataset(val_path, atlas, len(data.shape))
        if val.shape != data.shape:
            raise DataError(f"--val_data volumes are {val.shape}, --data volumes "
                            f"{data.shape}: they must have the same shape")
        if val.atlas is None:
            val = dataclasses.replace(val, atlas=data.atlas, atlas_seg=data.atlas_seg)
        if mode == "scan_to_scan" and len(val.vols) < 2:
            raise DataError(f"--val_data {val_path} holds 1 volume: scan-to-scan validation "
                            f"pairs need at least 2")
    return train, val, mode


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
    maps = [m for m in (data.segs, data.atlas_seg) if m is not None]
    present = set().union(*(np.unique(m).tolist() for m in maps)) - {0}
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


TARGETS = ("moved", "deformation")  # the CVPR model's: similarity and smoothness


def one_hot(seg: np.ndarray, labels) -> np.ndarray:
    """``(*shape)`` label map -> ``(*shape, K)`` float32 one-hot map of the ``K`` ``labels``."""
    return (np.asarray(seg)[..., None] == np.asarray(labels)).astype(np.float32)


def batch(moving: np.ndarray, static: np.ndarray, targets=TARGETS, moving_seg=None,
          static_seg=None, labels=None) -> tuple[dict, dict]:
    """Model inputs and targets for a batch of pairs.

    Parameters
    ----------
    moving : np.ndarray
        ``(B, *spatial)`` moving images.
    static : np.ndarray
        ``(B, *spatial)`` static images, or one ``(*spatial)`` image for the whole batch.
    targets : sequence of str
        The model's trained outputs (``models.targets``): ``moved`` (the static image),
        ``deformation`` or ``velocity`` (zeros: the smoothness loss has no target),
        ``moved_static`` (the moving image) and ``moved_seg`` (the static label map, one-hot).
    moving_seg, static_seg : np.ndarray, optional
        Label maps shaped like ``moving`` and ``static``; needed for ``moved_seg``, which also
        adds the input ``moving_seg`` (one-hot).
    labels : sequence of int, optional
        Labels of the one-hot maps.
    """
    moving = moving[..., None].astype(np.float32)
    static = np.broadcast_to(static, moving.shape[:-1])[..., None].astype(np.float32)
    zeros = np.zeros(static.shape[:-1] + (static.ndim - 2,), np.float32)
    inputs = {"moving": moving, "static": static}
    available = {"moved": static, "deformation": zeros, "velocity": zeros, "moved_static": moving}
    if "moved_seg" in targets:
        if moving_seg is None or static_seg is None:
            raise DataError("the segmentation loss needs label maps ('segs') for every volume")
        inputs["moving_seg"] = one_hot(moving_seg, labels)
        available["moved_seg"] = one_hot(np.broadcast_to(static_seg, moving.shape[:-1]), labels)
    return inputs, {name: available[name] for name in targets}


class PairLoader(keras.utils.PyDataset):
    """Base of the training loaders: batch size, seed and epoch count.

    Batch ``i`` of epoch ``e`` is drawn from ``seed_of(i) = (seed, e, i)`` alone, so setting
    ``epoch`` resumes a run exactly where it stopped.

    Parameters
    ----------
    batch_size : int
        Pairs per batch.
    seed : int, optional
        Seed of every draw; by default a fresh random one.
    targets : sequence of str
        The model's trained outputs, see :func:`batch`.
    labels : sequence of int, optional
        Labels of the one-hot maps of the segmentation loss.
    **kwargs
        Passed to ``keras.utils.PyDataset`` (``workers``, ``use_multiprocessing``...).
    """

    def __init__(self, batch_size: int = 1, seed: int | None = None, targets=TARGETS,
                 labels=None, **kwargs):
        super().__init__(**kwargs)
        self.batch_size, self.epoch = batch_size, 0
        self.seed = np.random.SeedSequence().entropy if seed is None else seed
        self.targets, self.labels = tuple(targets), labels

    def seed_of(self, *index: int) -> tuple[int, ...]:
        """Seed of a draw in the current epoch: ``(seed, epoch, *index)``."""
        return (self.seed, self.epoch, *index)

    def on_epoch_end(self) -> None:
        self.epoch += 1


class RegistrationDataLoader(PairLoader):
    """Batches of (moving, static) pairs for ``model.fit``, ``evaluate`` and ``predict``.

    Parameters
    ----------
    moving : np.ndarray
        ``(N, *spatial)`` moving images in [0, 1].
    static : np.ndarray
        ``(*spatial)``: one atlas for every moving image (scan-to-atlas); or ``(N, *spatial)``:
        the static image of each moving image.
    batch_size : int
        Pairs per batch; the last batch may be smaller.
    shuffle : bool
        Shuffle the pairs at every epoch.
    seed : int, optional
        Seed of the shuffling.
    moving_segs, static_segs : np.ndarray, optional
        Label maps shaped like ``moving`` and ``static``, for the segmentation loss.
    **kwargs
        Passed to :class:`PairLoader` (``targets``, ``labels``) and ``keras.utils.PyDataset``.
    """

    def __init__(self, moving, static, batch_size: int = 1, shuffle: bool = False,
                 seed: int | None = None, moving_segs=None, static_segs=None, **kwargs):
        super().__init__(batch_size, seed, **kwargs)
        self.moving, self.static = np.asarray(moving), np.asarray(static)
        self.moving_segs, self.static_segs = moving_segs, static_segs
        if self.static.shape not in (self.moving.shape, self.moving.shape[1:]):
            raise DataError(f"moving and static shapes differ: {self.moving.shape[1:]} vs "
                            f"{self.static.shape[-self.moving.ndim + 1:]}")
        self.shuffle = shuffle

    def __len__(self) -> int:
        return ceil_div(len(self.moving), self.batch_size)

    def __getitem__(self, index: int) -> tuple[dict, dict]:
        order = np.arange(len(self.moving))
        if self.shuffle:
            order = np.random.default_rng(self.seed_of()).permutation(order)
        pick = order[index * self.batch_size:(index + 1) * self.batch_size]
        one_static = self.static.shape != self.moving.shape
        static = self.static if one_static else self.static[pick]
        static_seg = (self.static_segs if one_static or self.static_segs is None
                      else self.static_segs[pick])
        moving_seg = None if self.moving_segs is None else self.moving_segs[pick]
        return batch(self.moving[pick], static, self.targets, moving_seg, static_seg, self.labels)


@dataclasses.dataclass
class Pairs:
    """Moving/static pairs with their label maps, for validation and evaluation.

    Attributes
    ----------
    moving, static : np.ndarray
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


def make_pairs(data: Dataset, mode: str, max_pairs: int | None = None) -> Pairs:
    """All evaluation pairs of a set: every volume to the atlas, or every ordered pair of volumes.

    Parameters
    ----------
    data : Dataset
        Volumes (and label maps, atlas).
    mode : {"atlas", "scan_to_scan"}
        Scan-to-atlas or scan-to-scan pairs.
    max_pairs : int, optional
        Keep the first ``max_pairs`` pairs only.
    """
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


def _take(volumes: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    return None if volumes is None else volumes[index]


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


class ScanToScanDataLoader(PairLoader):
    """Random pairs of distinct volumes from one set, redrawn every epoch.

    Parameters
    ----------
    vols : np.ndarray
        ``(N, *spatial)`` images in [0, 1], N >= 2.
    batch_size : int
        Pairs per batch.
    pairs_per_epoch : int
        Pairs drawn per epoch.
    seed : int, optional
        Seed of the draws.
    augment : callable, optional
        ``augment(image, rng) -> image`` applied to both images of every pair, e.g.
        ``synthetic.augment`` (a random smooth deformation and intensity change), which helps
        when the set is small. Not with label maps.
    segs : np.ndarray, optional
        ``(N, *spatial)`` label maps, for the segmentation loss.
    **kwargs
        Passed to :class:`PairLoader` (``targets``, ``labels``) and ``keras.utils.PyDataset``.
    """

    def __init__(self, vols, batch_size: int = 1, pairs_per_epoch: int = 100,
                 seed: int | None = None,
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
                 segs=None, **kwargs):
        super().__init__(batch_size, seed, **kwargs)
        self.vols, self.pairs_per_epoch, self.augment = np.asarray(vols), pairs_per_epoch, augment
        self.segs = segs
        if augment is not None and "moved_seg" in self.targets:
            raise DataError("augmentation deforms the images only: it cannot be combined with "
                            "the segmentation loss")
        if len(self.vols) < 2:
            raise DataError(f"scan-to-scan pairs need at least 2 training volumes, "
                            f"got {len(self.vols)}")

    def __len__(self) -> int:
        return ceil_div(self.pairs_per_epoch, self.batch_size)

    def __getitem__(self, index: int) -> tuple[dict, dict]:
        pairs = scan_to_scan_pairs(len(self.vols), self.pairs_per_epoch, self.seed_of())
        pick = pairs[index * self.batch_size:(index + 1) * self.batch_size]
        moving, static = self.vols[pick[:, 0]], self.vols[pick[:, 1]]
        if self.augment is not None:
            rng = np.random.default_rng(self.seed_of(index))
            moving, static = (np.stack([self.augment(image, rng) for image in images])
                              for images in (moving, static))
        segs = (None, None) if self.segs is None else (self.segs[pick[:, 0]],
                                                        self.segs[pick[:, 1]])
        return batch(moving, static, self.targets, *segs, self.labels)
