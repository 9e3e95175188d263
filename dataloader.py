"""Moving/static pairs for training and evaluation, and the embedded default data.

- :func:`load_dataset` reads ``.npy`` stacks ``(N, *spatial)`` (the original format), ``.npz``
  files with ``vols`` and optional ``segs``, ``atlas``, ``atlas_seg``, ``labels``, and NIfTI
  volumes (one file, or a folder of them). Intensities are scaled to [0, 1] per volume.
- :class:`RegistrationDataLoader` pairs every moving image with one static atlas (scan-to-atlas)
  or with its own static image; :class:`ScanToScanDataLoader` draws random pairs from one set.
- :func:`load_default_data` and :class:`SyntheticDataLoader` make subjects on the fly from the
  embedded MNI152 template: random smooth diffeomorphic deformations of the template (with its
  tissue labels warped alike) and random intensity changes (bias field, gamma, noise).

Batches are ``({"moving", "static"}, {"moved", "deformation"})`` dicts matching the models'
inputs and outputs: the target of ``moved`` is the static image, that of ``deformation`` zeros
(the smoothness loss ignores it).
"""
import dataclasses
import glob
import os

import keras
import numpy as np

import utils

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mni152_2mm.npz")
DEFAULT_SLICE = 44  # axial slice of the 80x96x80 template used for 2D (through the ventricles)
NIFTI = (".nii", ".nii.gz")

# Synthetic subjects: velocity drawn on a coarse grid of control points, in voxels.
VELOCITY_SPACING = 8  # control-point spacing, voxels
VELOCITY_STD = 2.5  # std of the velocity at the control points, voxels
INTEGRATION_FACTOR = 4  # the velocity is integrated on a grid this many times coarser
BIAS_SPACING = 24  # control-point spacing of the log bias field, voxels
BIAS_STD = 0.1  # std of the log bias field
GAMMA_STD = 0.2  # std of log(gamma)
NOISE_STD = 0.02  # std of additive Gaussian noise, intensity units


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
    """

    vols: np.ndarray
    segs: np.ndarray | None = None
    atlas: np.ndarray | None = None
    atlas_seg: np.ndarray | None = None
    labels: np.ndarray | None = None
    label_names: list[str] | None = None

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
    image = None
    if path.endswith(NIFTI):
        import nibabel as nib

        try:
            image = nib.load(path)
            volume = np.asanyarray(image.dataobj)
        except Exception as error:  # nibabel raises several types for unreadable files
            raise DataError(f"cannot read NIfTI file {path}: {error}") from error
    elif path.endswith(".npy"):
        volume = np.load(path)
    elif path.endswith(".npz"):
        with np.load(path) as arrays:
            keys = list(arrays.keys())
            if "vol" in keys:
                volume = arrays["vol"]
            elif "vols" in keys and len(arrays["vols"]) == 1:
                volume = arrays["vols"][0]
            elif len(keys) == 1:
                volume = arrays[keys[0]]
            else:
                raise DataError(f"{path}: expected an array 'vol' (or one volume in 'vols'), "
                                f"found {keys}")
    else:
        raise DataError(f"{path}: unsupported file type (use .npy, .npz, .nii or .nii.gz)")
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
    if path.endswith(NIFTI):
        import nibabel as nib

        if reference is None:
            image = nib.Nifti1Image(volume, np.eye(4))
        else:
            header = reference.header.copy()
            header.set_data_dtype(volume.dtype)
            image = type(reference)(volume, reference.affine, header)
        nib.save(image, path)
    elif path.endswith(".npy"):
        np.save(path, volume)
    elif path.endswith(".npz"):
        np.savez_compressed(path, vol=volume)
    else:
        raise DataError(f"{path}: unsupported output type (use .npy, .npz, .nii or .nii.gz)")


def _load_nifti_stack(paths: list[str]) -> np.ndarray:
    """Stack NIfTI volumes of one shape into ``(N, *spatial)``."""
    volumes = [load_volume(p)[0] for p in paths]
    shapes = {v.shape for v in volumes}
    if len(shapes) > 1:
        raise DataError(f"NIfTI volumes differ in shape: {sorted(shapes)}")
    return np.stack(volumes)


def _read_arrays(path: str) -> dict:
    """The arrays stored at ``path`` by name: ``vols`` and whichever optional ones exist."""
    _check_file(path)
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.endswith(NIFTI))
        if not files:
            raise DataError(f"{path}: folder holds no .nii or .nii.gz files")
        return {"vols": _load_nifti_stack(files)}
    if path.endswith(NIFTI):
        return {"vols": _load_nifti_stack([path])}
    if path.endswith(".npy"):
        return {"vols": np.load(path)}
    if path.endswith(".npz"):
        with np.load(path) as stored:
            if "vols" not in stored:
                raise DataError(f"{path}: no array named 'vols' (found {list(stored.keys())})")
            return {key: stored[key] for key in ("vols", "segs", "atlas", "atlas_seg", "labels",
                                                  "label_names") if key in stored}
    raise DataError(f"{path}: unsupported file type (use .npy, .npz, .nii, .nii.gz or a "
                    f"folder of NIfTI files)")


def load_dataset(path: str, atlas: str | None = None) -> Dataset:
    """Read a set of volumes (and labels) for training or evaluation.

    Parameters
    ----------
    path : str
        ``.npy`` array ``(N, *spatial)``; ``.npz`` with ``vols`` ``(N, *spatial)`` and optional
        ``segs``, ``atlas``, ``atlas_seg``, ``labels``, ``label_names``; a NIfTI file holding
        one volume; or a folder of NIfTI volumes of one shape.
    atlas : str, optional
        File of a static atlas (``.npy``, ``.npz``, NIfTI); replaces one stored in ``path``.

    Returns
    -------
    Dataset
        Intensities scaled to [0, 1] per volume, label maps as int32.
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
    )
    _check_shapes(data, path)
    return data


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


def padded_shape(shape: tuple[int, ...], multiple: int) -> tuple[int, ...]:
    """``shape`` with every size rounded up to a multiple of ``multiple``."""
    return tuple(-(-n // multiple) * multiple for n in shape)


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


def _batch(moving: np.ndarray, static: np.ndarray) -> tuple[dict, dict]:
    """Model inputs and targets for ``(B, *spatial)`` moving and static images."""
    moving = moving[..., None].astype(np.float32)
    static = static[..., None].astype(np.float32)
    zeros = np.zeros(static.shape[:-1] + (static.ndim - 2,), np.float32)
    return {"moving": moving, "static": static}, {"moved": static, "deformation": zeros}


class RegistrationDataLoader(keras.utils.PyDataset):
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
    **kwargs
        Passed to ``keras.utils.PyDataset`` (``workers``, ``use_multiprocessing``...).
    """

    def __init__(self, moving, static, batch_size: int = 1, shuffle: bool = False,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.moving, self.static = np.asarray(moving), np.asarray(static)
        if self.static.shape not in (self.moving.shape, self.moving.shape[1:]):
            raise DataError(f"moving and static shapes differ: {self.moving.shape[1:]} vs "
                            f"{self.static.shape[-self.moving.ndim + 1:]}")
        self.batch_size, self.shuffle = batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = np.arange(len(self.moving))
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-len(self.moving) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[dict, dict]:
        pick = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        static = self.static[pick] if self.static.shape == self.moving.shape else \
            np.repeat(self.static[None], len(pick), axis=0)
        return _batch(self.moving[pick], static)

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.rng.shuffle(self.order)


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
    return None if volume is None else np.repeat(volume[None], count, axis=0)


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


class ScanToScanDataLoader(keras.utils.PyDataset):
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
    augment : bool
        Pass both images of every pair through :func:`random_subject` (a new random smooth
        deformation and intensity change each time), which helps when the set is small.
    **kwargs
        Passed to ``keras.utils.PyDataset``.
    """

    def __init__(self, vols, batch_size: int = 1, pairs_per_epoch: int = 100,
                 seed: int | None = None, augment: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.vols, self.batch_size, self.augment = np.asarray(vols), batch_size, augment
        self.pairs_per_epoch, self.seed, self.epoch = pairs_per_epoch, seed, 0
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-self.pairs_per_epoch // self.batch_size)

    def __getitem__(self, index: int) -> tuple[dict, dict]:
        pick = self.pairs[index * self.batch_size:(index + 1) * self.batch_size]
        moving, static = self.vols[pick[:, 0]], self.vols[pick[:, 1]]
        if self.augment:
            rng = np.random.default_rng(None if self.seed is None
                                        else (self.seed, self.epoch, index))
            moving, static = ([random_subject(image, rng)[0] for image in images]
                              for images in (moving, static))
        return _batch(np.asarray(moving), np.asarray(static))

    def on_epoch_end(self) -> None:
        seed = None if self.seed is None else (self.seed, self.epoch)
        self.pairs = scan_to_scan_pairs(len(self.vols), self.pairs_per_epoch, seed)
        self.epoch += 1


def load_default_data(ndim: int = 3) -> Dataset:
    """The embedded MNI152 template as an atlas with tissue labels (no subjects).

    Parameters
    ----------
    ndim : {2, 3}
        3: the 80x96x80 volume at 2 mm; 2: its axial slice ``DEFAULT_SLICE`` (80x96).

    Returns
    -------
    Dataset
        ``vols`` empty ``(0, *spatial)``; ``atlas`` the T1 template in [0, 1]; ``atlas_seg``
        labels 1 CSF, 2 grey matter, 3 white matter.
    """
    if ndim not in (2, 3):
        raise DataError(f"the default data is 2D or 3D, got ndim={ndim}")
    with np.load(DEFAULT_DATA) as stored:
        t1, labels = normalize(stored["t1"]), stored["labels"]
        names = [str(name) for name in stored["label_names"][1:]]
    if ndim == 2:
        t1, labels = t1[..., DEFAULT_SLICE], labels[..., DEFAULT_SLICE]
    return Dataset(vols=np.zeros((0,) + t1.shape, np.float32), atlas=t1,
                   atlas_seg=labels.astype(np.int32), labels=np.array([1, 2, 3]),
                   label_names=names)


def _smooth_noise(shape: tuple[int, ...], channels: int, spacing: float, std: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise on control points ``spacing`` voxels apart, N-linearly upsampled.

    Returns
    -------
    np.ndarray
        ``(1, *shape, channels)`` float32.
    """
    coarse_shape = [int(np.ceil(n / spacing)) + 1 for n in shape]
    coarse = rng.normal(0.0, std, size=(1, *coarse_shape, channels)).astype(np.float32)
    return utils.resize(coarse, shape).numpy()


def random_deformation(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random smooth diffeomorphic displacement: exp of a smooth random velocity field.

    The velocity varies on a scale of ``VELOCITY_SPACING`` voxels, so it is integrated (scaling
    and squaring) on a grid ``INTEGRATION_FACTOR`` times coarser, then upsampled.

    Returns
    -------
    np.ndarray
        ``(1, *shape, ndim)`` float32 displacement in voxels, 'ij' order.
    """
    small = tuple(-(-n // INTEGRATION_FACTOR) for n in shape)
    scale = np.array([(n - 1) / (m - 1) for n, m in zip(shape, small)], np.float32)
    velocity = _smooth_noise(small, len(shape), VELOCITY_SPACING / INTEGRATION_FACTOR,
                             VELOCITY_STD, rng) / scale
    displacement = utils.integrate_velocity(velocity)
    return utils.resize(displacement, shape).numpy() * scale


def random_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative bias field, gamma change and additive noise, clipped to [0, 1].

    Parameters
    ----------
    image : np.ndarray
        ``(*spatial)`` in [0, 1].
    """
    bias = np.exp(_smooth_noise(image.shape, 1, BIAS_SPACING, BIAS_STD, rng)[0, ..., 0])
    gamma = np.exp(rng.normal(0.0, GAMMA_STD))
    noisy = (image * bias) ** gamma + rng.normal(0.0, NOISE_STD, size=image.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def random_subject(image: np.ndarray, rng: np.random.Generator,
                   seg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` under a random smooth deformation (its label map alike) and intensity change.

    Parameters
    ----------
    image : np.ndarray
        ``(*spatial)`` in [0, 1].
    rng : np.random.Generator
        Source of the randomness.
    seg : np.ndarray, optional
        ``(*spatial)`` integer label map of ``image``, warped with nearest neighbour.

    Returns
    -------
    image : np.ndarray
        ``(*spatial)`` float32 in [0, 1].
    seg : np.ndarray or None
        ``(*spatial)`` int32, when ``seg`` is given.
    """
    deformation = random_deformation(image.shape, rng)
    moved = utils.warp(image[None, ..., None], deformation).numpy()[0, ..., 0]
    if seg is not None:
        seg = utils.warp(np.asarray(seg, np.int32)[None, ..., None], deformation,
                         "nearest").numpy()[0, ..., 0]
    return random_intensity(moved, rng), seg


def synthetic_subjects(atlas: np.ndarray, count: int, seed: int | None = None,
                       atlas_seg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Subjects made from the atlas by :func:`random_subject`.

    Parameters
    ----------
    atlas : np.ndarray
        ``(*spatial)`` template in [0, 1].
    count : int
        Number of subjects.
    seed : int, optional
        Seed; the same seed gives the same subjects.
    atlas_seg : np.ndarray, optional
        ``(*spatial)`` integer label map of the template, warped with each subject's deformation.

    Returns
    -------
    vols : np.ndarray
        ``(count, *spatial)`` float32 images in [0, 1].
    segs : np.ndarray or None
        ``(count, *spatial)`` int32 label maps, when ``atlas_seg`` is given.
    """
    rng = np.random.default_rng(seed)
    vols, segs = zip(*(random_subject(atlas, rng, atlas_seg) for _ in range(count)))
    return np.stack(vols), None if atlas_seg is None else np.stack(segs)


class SyntheticDataLoader(keras.utils.PyDataset):
    """Scan-to-atlas training pairs made on the fly: a new synthetic subject for every pair.

    Parameters
    ----------
    atlas : np.ndarray
        ``(*spatial)`` template in [0, 1], the static image of every pair.
    batch_size : int
        Pairs per batch.
    steps : int
        Batches per epoch.
    seed : int, optional
        Seed; batch ``i`` of epoch ``e`` is the same for the same seed.
    **kwargs
        Passed to ``keras.utils.PyDataset``.
    """

    def __init__(self, atlas, batch_size: int = 1, steps: int = 100,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.atlas = atlas
        self.batch_size, self.steps, self.seed, self.epoch = batch_size, steps, seed, 0

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[dict, dict]:
        seed = None if self.seed is None else (self.seed, self.epoch, index)
        vols, _ = synthetic_subjects(self.atlas, self.batch_size, seed)
        return _batch(vols, np.repeat(self.atlas[None], self.batch_size, axis=0))

    def on_epoch_end(self) -> None:
        self.epoch += 1
