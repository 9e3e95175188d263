"""Volume files: reading and writing ``.npy``, ``.npz``, NIfTI and FreeSurfer ``.mgz``, atomically;
the user errors.

- :func:`load_volume` reads one image or label map as stored; :func:`save_volume` writes one
  (a displacement as a NIfTI vector image), through :func:`atomic_path`, which every writer of
  the package uses: a temporary file in the same folder, then one ``os.replace``. NIfTI and
  MGH files keep their affine (voxel to RAS mm), which ``transforms.Grid`` reads.
- :func:`write_image`: a nibabel image to a file, ``.nii.gz`` compressed by ISA-L on every core.
- :func:`check_output_files`: output files that could not all be written are refused before any
  work is done.
- :func:`nifti_spacing` and :func:`voxel_size`: the voxel size in mm, from a file's header, or
  from one value or one per axis (an ``.npz``'s ``spacing``, a score's argument).
- :class:`DataError` (input data that cannot be used) and :class:`UsageError` (flags or a run
  folder that cannot be used) carry one-line messages for the user; ``main.py`` prints them and
  exits with status 2. :class:`DataWarning` is printed as one line too.
"""
import collections
import contextlib
import io
import os
import secrets
import zipfile
from collections.abc import Iterator
from concurrent import futures

import numpy as np
from isal import igzip

NIFTI = (".nii", ".nii.gz")
MGH = (".mgz", ".mgh")  # FreeSurfer's format
IMAGES = NIFTI + MGH  # files with an affine, read by nibabel

FORMATS = ".npy, .npz, .nii, .nii.gz or .mgz"
GZIP_BLOCK = 2**24  # bytes of a .nii.gz file that one thread compresses: one gzip member
GZIP_LEVEL = 1  # nibabel's own level for .nii.gz (ISA-L's at 1 compresses as much, 10x faster)


class DataError(ValueError):
    """Input data that cannot be used, with a message meant for the user."""


class UsageError(ValueError):
    """Flags, options or a run folder that cannot be used, with a message meant for the user."""


class WriteError(OSError):
    """A file that could not be written (disk full, no permission...), with a message for users."""


class DataWarning(UserWarning):
    """Input data that can be used but is probably not what the user meant."""


def as_label_map(volume: np.ndarray, name: str = "label map") -> np.ndarray:
    """Check that ``volume`` holds integer labels; return it unchanged.

    Raises
    ------
    DataError
        If a value is not an integer (a label map stored as floats must hold whole numbers).
    """
    check_numbers(volume, name)
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
    in one step (``os.replace``); on an error it is removed and ``path`` is left as it was.

    Raises
    ------
    WriteError
        For an ``OSError`` of the block or of the rename (disk full, no permission...): one line
        naming ``path`` and the cause.

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
    except OSError as error:
        raise WriteError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_numbers(volume: np.ndarray, name: str) -> None:
    """Refuse arrays that are empty or not of real numbers (strings, complex, objects)."""
    if np.asarray(volume).dtype.kind not in "biuf":
        raise DataError(f"{name} must hold real numbers, not {np.asarray(volume).dtype}")
    if np.size(volume) == 0:
        raise DataError(f"{name} is empty (shape {np.shape(volume)})")


def check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"no such file or folder: {path}")


def file_format(path: str) -> str:
    """``"image"`` (NIfTI or MGH), ``"npy"`` or ``"npz"``, from the file name.

    Raises
    ------
    DataError
        For any other extension.
    """
    for suffixes, name in ((IMAGES, "image"), ((".npy",), "npy"), ((".npz",), "npz")):
        if path.endswith(suffixes):
            return name
    raise DataError(f"{path}: unsupported file type (use {FORMATS})")


def check_output_files(paths: dict[str, str | None], inputs: list[str],
                       other_formats: tuple[str, ...] = ()) -> None:
    """Refuse output files that could not all be written: checked before any work is done.

    Parameters
    ----------
    paths : dict
        ``{flag: path}`` of the outputs asked for (None: not asked for).
    inputs : list of str
        Input files, which no output may overwrite.
    other_formats : tuple of str
        Flags of outputs that are not volumes (e.g. a transform file), whose format the caller
        checks.
    """
    given = {flag: path for flag, path in paths.items() if path}
    for flag, path in given.items():
        if flag not in other_formats:
            file_format(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise UsageError(f"{flag} {path}: no such folder {folder}")
        if os.path.isdir(path):
            raise UsageError(f"{flag} {path} is a folder, not a file")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path}: cannot write into {folder}")
        if any(os.path.abspath(path) == os.path.abspath(other) for other in inputs):
            raise UsageError(f"{flag} {path} would overwrite an input file")
    if len({os.path.abspath(path) for path in given.values()}) < len(given):
        raise UsageError(f"{', '.join(given)} must be different files")


def read_image(path: str):
    """``(array, image)`` of a NIfTI or MGH file, the array as stored."""
    import nibabel as nib

    try:
        image = nib.load(path)
        return np.asanyarray(image.dataobj), image
    except Exception as error:  # nibabel raises several types for unreadable files
        raise DataError(f"cannot read {path}: {one_line(error)}") from error


def read_npy(path: str) -> np.ndarray:
    """The array of an ``.npy`` file (no pickled objects)."""
    with open(path, "rb") as file:
        if file.read(6) != b"\x93NUMPY":
            raise DataError(f"{path} is not an .npy file (no .npy header: empty, damaged or "
                            f"another format)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises several types for truncated or foreign files
        raise DataError(f"cannot read {path} as .npy: {one_line(error)}") from error


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file by name, read now (no pickled objects)."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz file (not a zip archive: empty, truncated or "
                        f"another format)")
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.keys()}
    except Exception as error:  # zipfile and numpy raise several types for damaged files
        raise DataError(f"cannot read {path} as .npz: {one_line(error)}") from error


def one_line(error: Exception) -> str:
    """An exception's message on one line (its type's name when it has none), for users."""
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
        ``.npy``, ``.npz`` (array ``vol``, or ``vols`` holding one volume, or a single array),
        NIfTI (``.nii``, ``.nii.gz``) or MGH (``.mgz``, ``.mgh``).

    Returns
    -------
    volume : np.ndarray
        ``(*spatial)``, 2D or 3D, in its stored dtype (in the machine's byte order).
    image : nibabel image or None
        The NIfTI or MGH image (affine and header), else None.
    """
    check_exists(path)
    kind, image = file_format(path), None
    if kind == "image":
        volume, image = read_image(path)
    elif kind == "npy":
        volume = read_npy(path)
    else:
        volume = _one_volume(path, read_npz(path))
    check_numbers(volume, path)
    volume = np.squeeze(volume)
    if not volume.dtype.isnative:  # MGH files are big-endian
        volume = volume.astype(volume.dtype.newbyteorder("="))
    if volume.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2D or 3D volume, got shape {volume.shape}")
    return volume, image


def save_volume(path: str, volume: np.ndarray, reference=None, vector: bool = False) -> None:
    """Write a volume atomically as ``.npy``, ``.npz`` (array ``vol``), NIfTI or MGH.

    Parameters
    ----------
    path : str
        Output file; its extension chooses the format.
    volume : np.ndarray
        ``(*spatial)``, or ``(*spatial, C)`` with ``vector``; ``.npy`` and ``.npz`` keep its
        dtype. NIfTI and MGH take float32 for real images; integer label maps keep a dtype
        every viewer opens (NIfTI: uint8, int8, int16, uint16, int32; MGH: uint8, int16, int32),
        others take the smallest of uint8, int16 and int32 that holds them (booleans: uint8).
    reference : nibabel image or np.ndarray, optional
        NIfTI and MGH output takes this image's affine (and its header, when it is of the
        output's format), e.g. the static image's; or a ``(4, 4)`` affine; without it, identity.
    vector : bool
        The last axis holds vector components (a displacement): NIfTI stores them as a vector
        image ``(x, y, z, 1, C)`` with intent 'vector' (a 2D field as ``(x, y, 1, 1, C)``).
    """
    kind = file_format(path)
    with atomic_path(path) as tmp:
        if kind == "image":
            _save_image(tmp, volume, reference, vector)
        elif kind == "npy":
            np.save(tmp, volume)
        else:
            np.savez_compressed(tmp, vol=volume)


KEPT_DTYPES = {"nifti": (np.uint8, np.int8, np.int16, np.uint16, np.int32),
               "mgh": (np.uint8, np.int16, np.int32)}


def image_dtype(volume: np.ndarray, kind: str = "nifti") -> np.dtype:
    """The dtype ``volume`` is stored with in a ``kind`` ("nifti" or "mgh") file.

    float32 for real values; integer labels keep their dtype when the format and viewers take
    it, else the smallest of uint8, int16 and int32 that holds them.
    """
    if volume.dtype.kind not in "biu":
        return np.dtype(np.float32)
    if volume.dtype in KEPT_DTYPES[kind]:
        return volume.dtype
    low, high = (int(volume.min()), int(volume.max())) if volume.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise DataError(f"labels from {low} to {high} do not fit an int32 image")


def _save_image(path: str, volume: np.ndarray, reference, vector: bool) -> None:
    import nibabel as nib

    kind = "mgh" if path.endswith(MGH) else "nifti"
    volume = np.asarray(volume)
    volume = volume.astype(image_dtype(volume, kind))
    if vector:  # (*spatial, C) -> (x, y, z, 1, C), the NIfTI layout of a vector per voxel
        spatial = volume.shape[:-1] + (1,) * (3 - (volume.ndim - 1))
        volume = volume.reshape(*spatial, 1, volume.shape[-1])
    image_type = nib.MGHImage if kind == "mgh" else nib.Nifti1Image
    affine = np.eye(4) if reference is None else getattr(reference, "affine", reference)
    header = (reference.header.copy() if kind == "nifti" and
              isinstance(reference, (nib.Nifti1Image, nib.Nifti2Image)) else None)
    if header is not None:
        image_type = type(reference)
    image = image_type(volume, np.asarray(affine, np.float64), header)
    image.header.set_data_dtype(volume.dtype)
    if kind == "nifti":
        image.header.set_intent("vector" if vector else "none")
    write_image(image, path)


def write_image(image, path: str, block: int = GZIP_BLOCK) -> None:
    """Write a nibabel image to ``path``; ``.nii.gz`` compressed on every core.

    nibabel compresses on one core with zlib, which takes most of the time of writing a 256^3
    warp. Here its bytes are cut into blocks of ``block`` bytes, each compressed by ISA-L
    (``isal.igzip``: zlib's level-1 ratio, about ten times faster) on a pool of threads (it lets
    go of the interpreter) into one gzip member, written in order: a gzip file of several
    members is one stream to every reader (zlib's ``gzread`` in ITK, ANTs and FSL, Python's
    ``gzip`` in nibabel). The data are first laid out in the file's (Fortran) order, on the
    same pool (:func:`fortran_order`), so that nibabel copies no strided array.
    """
    import nibabel as nib

    workers = len(os.sched_getaffinity(0))
    with futures.ThreadPoolExecutor(workers) as pool:
        data = fortran_order(np.asanyarray(image.dataobj), pool, 4 * workers)
        image = type(image)(data, image.affine, image.header)
        if not path.endswith(".nii.gz"):
            nib.save(image, path)
            return
        with open(path, "wb") as file:
            stream = _GzipMembers(file, pool, block, 2 * workers)
            image.to_file_map({"image": nib.FileHolder(fileobj=stream)})
            stream.close()


def fortran_order(array: np.ndarray, pool: futures.ThreadPoolExecutor, parts: int
                  ) -> np.ndarray:
    """``array`` (any layout) copied into Fortran order in ``parts`` slabs of its third axis
    (its last of a 2D one) on ``pool`` (numpy's copies let go of the interpreter); itself when
    already in that order."""
    if array.flags.f_contiguous:
        return array
    out = np.empty(array.shape, array.dtype, order="F")
    axis = min(2, array.ndim - 1)
    slabs = [(slice(None),) * axis + (slice(part[0], part[-1] + 1),)
             for part in np.array_split(np.arange(array.shape[axis]), parts) if len(part)]

    def copy(slab: tuple) -> None:
        out[slab] = array[slab]
    list(pool.map(copy, slabs))
    return out


class _GzipMembers(io.IOBase):
    """A file object nibabel writes into (``write``, ``tell``, ``seek`` to where it is): blocks
    of ``block`` bytes compressed on ``pool``, at most ``in_flight`` at a time, written to
    ``file`` in order."""

    def __init__(self, file, pool: futures.ThreadPoolExecutor, block: int, in_flight: int):
        self.file, self.pool, self.block, self.in_flight = file, pool, block, in_flight
        self.buffer, self.position, self.pending = bytearray(), 0, collections.deque()

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self.position += len(data)
        start = 0
        if self.buffer:  # complete the block begun by earlier writes
            start = min(self.block - len(self.buffer), len(data))
            self.buffer += data[:start]
            if len(self.buffer) < self.block:
                return len(data)
            self._compress(bytes(self.buffer))
            self.buffer.clear()
        while len(data) - start >= self.block:  # whole blocks straight from the caller's bytes
            self._compress(bytes(data[start:start + self.block]))
            start += self.block
        self.buffer += data[start:]
        return len(data)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (self.position, 0):
            raise OSError("a compressed stream is written forwards only")
        return offset

    def close(self) -> None:
        if self.buffer:
            self._compress(bytes(self.buffer))
            self.buffer.clear()
        while self.pending:
            self.file.write(self.pending.popleft().result())
        super().close()

    def _compress(self, block: bytes) -> None:
        self.pending.append(self.pool.submit(igzip.compress, block, GZIP_LEVEL, mtime=0))
        while len(self.pending) > self.in_flight:
            self.file.write(self.pending.popleft().result())


def nifti_spacing(image) -> tuple[float, ...]:
    """Voxel size in mm of a NIfTI or MGH image's axes that :func:`load_volume` keeps (size > 1)."""
    return tuple(float(zoom) for size, zoom in zip(image.shape, image.header.get_zooms())
                 if size != 1)


def voxel_size(spacing, ndim: int) -> np.ndarray:
    """``(ndim,)`` voxel size from one value or one per axis; ValueError if not positive."""
    spacing = np.ravel(np.asarray(spacing, dtype=np.float64))
    if spacing.size == 1:
        spacing = np.repeat(spacing, ndim)
    if spacing.shape != (ndim,) or not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise ValueError(f"spacing must be positive, a scalar or one per axis ({ndim}), "
                         f"got {spacing.tolist()}")
    return spacing
