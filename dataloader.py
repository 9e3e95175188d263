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
import dataclasses
import glob
import os
from collections.abc import Callable

import keras
import numpy as np

NIFTI = (".nii", ".nii.gz")
FORMATS = ".npy, .npz, .nii or .nii.gz"


class DataError(ValueError):
    """Input data that cannot be used, with a message meant for the user."""


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
    volume = np.asarray(volume, dtype=np.float32)
    if not np.all(np.isfinite(volume)):
        raise DataError(f"{name} contains NaN or Inf values")
    low, high = volume.min(), volume.max()
    return (volume - low) / (high - low) if high > low else np.zeros_like(volume)


def as_label_map(volume: np.ndarray, name: str = "label map") -> np.ndarray:
    """Check that ``volume`` holds integer labels; return it unchanged.

    Raises
    ------
    DataError
        If a value is not an integer (a label map stored as floats must hold whole numbers).
    """
    volume = np.asarray(volume)
    if not np.issubdtype(volume.dtype, np.integer) and not np.all(np.mod(volume, 1) == 0):
        raise DataError(f"{name} must hold integer labels, found values such as "
                        f"{volume[np.mod(volume, 1) != 0].flat[0]}")
    return volume


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
        raise DataError(f"cannot read NIfTI file {path}: {error}") from error


def _one_volume(path: str, arrays) -> np.ndarray:
    """The volume of an ``.npz`` file: ``vol``, the one volume in ``vols``, or its one array."""
    keys = list(arrays.keys())
    if "vol" in keys:
        return arrays["vol"]
    if "vols" in keys and len(arrays["vols"]) == 1:
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
        volume = np.load(path)
    else:
        with np.load(path) as arrays:
            volume = _one_volume(path, arrays)
    volume = np.squeeze(volume)
    if volume.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2D or 3D volume, got shape {volume.shape}")
    return volume, image


def save_volume(path: str, volume: np.ndarray, reference=None) -> None:
    """Write a volume as ``.npy``, ``.npz`` (array ``vol``) or NIfTI.

    Parameters
    ----------
    path : str
        Output file; its extension chooses the format.
    volume : np.ndarray
        ``(*spatial)`` or ``(*spatial, C)``, written in its own dtype.
    reference : nibabel image, optional
        NIfTI output takes this image's affine and header (e.g. the static image's); without it,
        an identity affine.
    """
    kind = file_format(path)
    if kind == "nifti":
        import nibabel as nib

        if reference is None:
            image = nib.Nifti1Image(volume, np.eye(4))
        else:
            header = reference.header.copy()
            header.set_data_dtype(volume.dtype)
            image = type(reference)(volume, reference.affine, header)
        nib.save(image, path)
    elif kind == "npy":
        np.save(path, volume)
    else:
        np.savez_compressed(path, vol=volume)


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
        return {"vols": np.load(path)}
    with np.load(path) as stored:
        if "vols" not in stored:
            raise DataError(f"{path}: no array named 'vols' (found {list(stored.keys())})")
        return {key: stored[key] for key in ("vols", "segs", "atlas", "atlas_seg", "labels",
                                              "label_names", "spacing") if key in stored}


def load_dataset(path: str, atlas: str | None = None) -> Dataset:
    """Read a set of volumes (and labels) for training or evaluation.

    Parameters
    ----------
    path : str
        ``.npy`` array ``(N, *spatial)``; ``.npz`` with ``vols`` ``(N, *spatial)`` and optional
        ``segs``, ``atlas``, ``atlas_seg``, ``labels``, ``label_names``, ``spacing`` (voxel size
        in mm, one value or one per axis); a NIfTI file holding one volume; or a folder of NIfTI
        volumes of one shape.
    atlas : str, optional
        File of a static atlas (``.npy``, ``.npz``, NIfTI); replaces one stored in ``path``.

    Returns
    -------
    Dataset
        Intensities scaled to [0, 1] per volume, label maps as int32; ``spacing`` from the
        NIfTI headers (when all files agree) or the ``.npz``, else None.
    """
    arrays = _read_arrays(path)
    vols = arrays["vols"]
    if vols.ndim not in (3, 4):
        raise DataError(f"{path}: expected volumes of shape (N, H, W) or (N, D, H, W), "
                        f"got {vols.shape}")
    if atlas is not None:
        arrays["atlas"], _ = load_volume(atlas)
    names = arrays.get("label_names")
    data = Dataset(
        vols=np.stack([normalize(v, f"{path} volume {i}") for i, v in enumerate(vols)]),
        segs=_as_int32(arrays.get("segs"), f"{path} segs"),
        atlas=None if "atlas" not in arrays else normalize(arrays["atlas"], "atlas"),
        atlas_seg=_as_int32(arrays.get("atlas_seg"), f"{path} atlas_seg"),
        labels=arrays.get("labels"),
        label_names=None if names is None else [str(name) for name in names],
        spacing=_spacing(arrays.get("spacing"), vols.ndim - 1, path),
    )
    _check_shapes(data, path)
    return data


def _spacing(spacing, ndim: int, path: str) -> tuple[float, ...] | None:
    """``(ndim,)`` voxel size in mm from one value or one per axis; None stays None."""
    if spacing is None:
        return None
    values = np.ravel(spacing)
    if (not np.issubdtype(values.dtype, np.number) or values.size not in (1, ndim)
            or not np.all(np.isfinite(values) & (values > 0))):
        raise DataError(f"{path}: spacing must be one positive value or {ndim} (one per axis), "
                        f"got {values.tolist()}")
    return tuple(float(value) for value in np.broadcast_to(values, (ndim,)))


def _as_int32(segs: np.ndarray | None, name: str) -> np.ndarray | None:
    return None if segs is None else as_label_map(segs, name).astype(np.int32)


def _check_shapes(data: Dataset, path: str) -> None:
    """Every array of ``data`` must share the spatial shape of ``vols``."""
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
                       val_fraction: float) -> tuple[Dataset, Dataset, str]:
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
        Share of the subjects held out when ``val_path`` is None.

    Returns
    -------
    train, val : Dataset
        The sets; ``val`` shares ``train``'s atlas unless it has its own.
    mode : str
        The pairing mode.
    """
    data = load_dataset(path, atlas)
    mode = pairing(data, pairs)
    if val_path is None:
        num_val = max(int(round(val_fraction * len(data.vols))), 1 if mode == "atlas" else 2)
        train, val = split(data, num_val)
    else:
        train, val = data, load_dataset(val_path, atlas)
        if val.shape != data.shape:
            raise DataError(f"--val_data volumes are {val.shape}, --data volumes "
                            f"{data.shape}: they must have the same shape")
        if val.atlas is None:
            val = dataclasses.replace(val, atlas=data.atlas, atlas_seg=data.atlas_seg)
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
    """
    if labels is None and data.labels is not None:
        labels = [int(label) for label in data.labels]
    elif labels is None:
        maps = [m for m in (data.segs, data.atlas_seg) if m is not None]
        if not maps:
            return [], None
        labels = sorted(set().union(*(np.unique(m).tolist() for m in maps)) - {0})
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
