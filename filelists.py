"""Volume files named by a folder or a list: checked by their headers, read only when needed.

- :func:`list_files`: the image files (and label maps) of a folder of NIfTI or ``.mgz`` files,
  a ``.txt`` list (one path a line) or a ``.csv`` list (column ``image``, optional ``seg``);
  :func:`read_columns` reads any CSV of paths (e.g. pair lists), relative to its folder.
- :func:`image_header`: a file's shape and voxel size from its header alone.
- :class:`LazyVolumes`: a stack of such files that reads each one when indexed, through a
  cached reader; :func:`as_volumes` and :func:`take` let the loaders treat it and arrays alike.

Messages name each file's place (a list and its line); ``datasets.py`` builds sets on these.
"""
import csv
import glob
import os

import numpy as np

import volumes
from volumes import DataError

LISTS = (".txt", ".csv")  # lists of image files


class LazyVolumes:
    """A stack ``(N, *spatial)`` of volume files, each read only when indexed.

    ``stack[i]`` reads file ``i`` with ``read`` (a cached reader, which every view of the stack
    shares); ``stack[index]`` with a
    slice or an array of ints is such a view, and reads nothing. ``np.asarray(stack)`` reads
    every file.

    Parameters
    ----------
    paths : sequence of str
        NIfTI or MGH files whose headers give the spatial ``shape``.
    shape : tuple of int
        Spatial shape of every volume, padding included.
    labels : bool
        The files are label maps (int32), not images (float32 in [0, 1]).
    padding : tuple of (int, int)
        Zero padding per axis added to every volume read.
    read : callable
        ``read(path, labels, padding)``: one volume file as the stack gives it, e.g.
        ``datasets.read_volume`` behind a ``functools.lru_cache``, which every view shares.
    """

    def __init__(self, paths, shape: tuple[int, ...], read, labels: bool = False,
                 padding: tuple = ()):
        self.paths, self.spatial, self.labels = tuple(paths), tuple(shape), labels
        self.padding = tuple(tuple(int(n) for n in axis) for axis in padding)
        self.read = read

    @property
    def shape(self) -> tuple[int, ...]:
        """``(N, *spatial)``."""
        return (len(self.paths), *self.spatial)

    @property
    def ndim(self) -> int:
        return 1 + len(self.spatial)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.read(self.paths[index], self.labels, self.padding)
        paths = np.asarray(self.paths, dtype=object)[index]
        return LazyVolumes(paths.tolist(), self.spatial, self.read, self.labels, self.padding)

    def padded(self, padding: list[tuple[int, int]]) -> "LazyVolumes":
        """The stack zero-padded by ``padding`` (``(before, after)`` per axis), a view."""
        shape = tuple(n + before + after for n, (before, after) in zip(self.spatial, padding))
        return LazyVolumes(self.paths, shape, self.read, self.labels, padding)


def as_volumes(stack):
    """``stack`` as a loader keeps it: a :class:`LazyVolumes` as it is, else an array."""
    return stack if isinstance(stack, LazyVolumes) else np.asarray(stack)


def take(stack, index) -> np.ndarray:
    """Volumes ``index`` of ``stack`` (an array or :class:`LazyVolumes`) as one array."""
    return np.stack([stack[i] for i in index])


def image_header(path: str, where: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Spatial shape and voxel size in mm of a NIfTI or MGH file, from its header alone.

    Size-1 axes are dropped, as :func:`volumes.load_volume` does. ``where`` names the file's
    place (a list and its line) in the error messages.
    """
    import nibabel as nib

    if not os.path.isfile(path):
        raise DataError(f"{where}: no such file: {path}")
    if not path.endswith(volumes.IMAGES):
        raise DataError(f"{where}: {path}: a list holds NIfTI (.nii, .nii.gz) or .mgz files")
    try:
        image = nib.load(path)
        dtype = image.get_data_dtype()
    except Exception as error:  # nibabel raises several types for unreadable files
        raise DataError(f"{where}: cannot read {path}: {volumes.one_line(error)}") from error
    shape = tuple(n for n in image.shape if n != 1)
    if len(shape) not in (2, 3):
        raise DataError(f"{where}: {path}: expected a 2D or 3D volume, got shape {image.shape}")
    if dtype.kind not in "biuf":
        raise DataError(f"{where}: {path} must hold real numbers, not {dtype}")
    return shape, volumes.nifti_spacing(image)


def read_columns(path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
                 ) -> tuple[dict[str, list[str] | None], list[str]]:
    """The columns of paths of a CSV file, made relative to its folder.

    Returns
    -------
    columns : dict
        Each column by name: a path per row, or None for an optional column absent or empty on
        every row.
    places : list of str
        ``path line N`` of each row, for messages (blank lines are skipped).

    Raises
    ------
    DataError
        For a missing file or required column, no rows, or a value missing on some rows only.
    """
    volumes.check_exists(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:  # a spreadsheet's BOM
            reader = csv.DictReader(file)
            rows = [(reader.line_num, row) for row in reader]
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read {path}: {volumes.one_line(error)}") from error
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        found = ", ".join(name if name.isprintable() else repr(name) for name in header)
        raise DataError(f"{path}: no column {', '.join(missing)} in the header, which has "
                        f"{found or 'no column'} (expected: {', '.join(required + optional)})")
    if not rows:
        raise DataError(f"{path} lists nothing")
    folder, columns = os.path.dirname(os.path.abspath(path)), {}
    for name in required + optional:
        values = [(row.get(name) or "").strip() for _, row in rows] if name in header else []
        empty = [line for (line, _), value in zip(rows, values) if not value]
        if empty and (name in required or len(empty) < len(values)):
            raise DataError(f"{path} line {empty[0]}: no {name}"
                            + ("" if name in required else
                               " (a column of label maps is given on every row or none)"))
        columns[name] = [os.path.join(folder, value) for value in values] if values and \
            not empty else None
    return columns, [f"{path} line {line}" for line, _ in rows]


def list_files(path: str) -> tuple[list[str], list[str] | None, list[str]]:
    """Images, label maps (or None) and the place of each image for messages, of a folder, a
    text file (one path a line) or a CSV file (columns ``image``, optional ``seg``)."""
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*"))
                       if f.endswith(volumes.IMAGES))
        if not files:
            raise DataError(f"{path}: folder holds no .nii, .nii.gz or .mgz files")
        return files, None, [path] * len(files)
    if path.endswith(".csv"):
        columns, places = read_columns(path, ("image",), ("seg",))
        return columns["image"], columns["seg"], places
    volumes.check_exists(path)
    try:
        with open(path, encoding="utf-8-sig") as file:  # a byte-order mark, CRLF: as written
            lines = [(number, line.strip()) for number, line in enumerate(file, start=1)]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read {path}: {volumes.one_line(error)}") from error
    folder = os.path.dirname(os.path.abspath(path))
    listed = [(number, os.path.join(folder, line)) for number, line in lines if line]
    if not listed:
        raise DataError(f"{path} lists nothing")
    return [file for _, file in listed], None, [f"{path} line {number}" for number, _ in listed]
