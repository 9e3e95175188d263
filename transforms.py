"""World-space transforms: voxel grids in millimetres, ITK/ANTs displacement fields, inverses.

Conventions:

- A :class:`Grid` places a voxel array in the world through its affine: voxel indices
  ``(i, j, k)`` to RAS millimetres, as NIfTI and FreeSurfer ``.mgz`` files store it (nibabel).
  ITK and ANTs work in LPS, ``(x, y, z)_LPS = (-x, -y, z)_RAS``: :meth:`Grid.world` gives LPS.
- This project's displacement ``u`` is in voxels of the static grid, 'ij' order:
  ``moved[x] = moving[x + u(x)]`` (``utils.warp``).
- A *warp* is an ITK/ANTs displacement field: on the static grid, LPS vectors ``d`` in mm such
  that ``p + d(p)`` is the moving-space point sampled for the static-space point ``p``. It is
  stored as a NIfTI vector image ``(x, y, z, 1, 3)`` (:func:`save_warp`), which
  ``antsApplyTransforms`` and SimpleITK's ``DisplacementFieldTransform`` read as it is.
- 2D: ITK reads a 2D NIfTI image as 2D, with the upper-left 2x2 block of its affine, so a 2D
  grid's world is the plane of its first two axes, and its vectors have two components.
"""
import itertools
from typing import NamedTuple

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import numpy as np
import tensorflow as tf

import sampling
import utils
import volumes

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])
GRID_TOLERANCE_MM = 1e-3  # affines closer than this describe one grid
ITK_TRANSFORM = (".txt", ".tfm")  # ITK's text transform files (antsApplyTransforms reads them)


class Grid(NamedTuple):
    """A voxel grid in world space.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape ``(*spatial)``, 2D or 3D.
    affine : np.ndarray
        ``(4, 4)`` voxel indices to RAS mm (NIfTI convention).
    """

    shape: tuple[int, ...]
    affine: np.ndarray

    @classmethod
    def of(cls, image, shape: tuple[int, ...], name: str = "image") -> "Grid":
        """The grid of a volume of ``shape`` as ``volumes.load_volume`` returns it.

        Parameters
        ----------
        image : nibabel image or None
            Its NIfTI or MGH image; None (``.npy``, ``.npz``) places the array at 1 mm voxels,
            RAS axes, origin at the first voxel.
        shape : tuple of int
            The volume's spatial shape (size-1 axes of the file dropped).
        name : str
            How error messages call it.

        Raises
        ------
        volumes.DataError
            If the affine is not usable (not finite, or singular on the volume's axes), or a 2D
            volume does not lie along the file's first two axes.
        """
        shape = tuple(int(size) for size in shape)
        if image is None:
            return cls(shape, np.eye(4))
        if tuple(image.shape[:len(shape)]) != shape:
            raise volumes.DataError(f"{name}: a {len(shape)}D volume must lie along the file's "
                                    f"first axes to be placed in the world, got file shape "
                                    f"{tuple(image.shape)}")
        grid = cls(shape, np.asarray(image.affine, np.float64))
        block = grid.matrix[:-1, :-1]
        if not np.all(np.isfinite(grid.affine)) or abs(np.linalg.det(block)) < 1e-6:
            raise volumes.DataError(f"{name}: its affine is not usable (not finite or singular): "
                                    f"{np.round(grid.affine, 4).tolist()}")
        return grid

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def matrix(self) -> np.ndarray:
        """``(ndim + 1, ndim + 1)`` homogeneous matrix: voxel indices to LPS mm."""
        n = self.ndim
        flip = RAS_TO_LPS[:n, None]
        matrix = np.eye(n + 1)
        matrix[:n, :n] = flip * self.affine[:n, :n]
        matrix[:n, n] = RAS_TO_LPS[:n] * self.affine[:n, 3]
        return matrix

    def world(self, voxels: np.ndarray) -> np.ndarray:
        """``(..., ndim)`` voxel coordinates to ``(..., ndim)`` LPS points in mm."""
        matrix = self.matrix
        return voxels @ matrix[:-1, :-1].T + matrix[:-1, -1]

    def voxels(self, points: np.ndarray) -> np.ndarray:
        """``(..., ndim)`` LPS points in mm to ``(..., ndim)`` voxel coordinates."""
        inverse = np.linalg.inv(self.matrix)
        return points @ inverse[:-1, :-1].T + inverse[:-1, -1]

    def coordinates(self) -> np.ndarray:
        """``(*shape, ndim)`` float64 voxel coordinates of every voxel, 'ij' order."""
        axes = np.meshgrid(*[np.arange(size, dtype=np.float64) for size in self.shape],
                           indexing="ij")
        return np.stack(axes, axis=-1)

    def same_as(self, other: "Grid") -> bool:
        """Whether ``other`` has this shape and, within ``GRID_TOLERANCE_MM``, this affine."""
        return (self.shape == other.shape and
                np.allclose(self.affine, other.affine, atol=GRID_TOLERANCE_MM))


def spacing_grid(shape: tuple[int, ...], spacing=None) -> Grid:
    """A grid of ``shape`` with voxels of ``spacing`` mm (a number, one per axis, or None: 1)."""
    sizes = np.broadcast_to(1.0 if spacing is None else np.asarray(spacing, float), (len(shape),))
    return Grid(tuple(shape), np.diag([*sizes, *[1.0] * (4 - len(shape))]))


def resample(volume: np.ndarray, source: Grid, target: Grid,
             interpolation: str = "linear") -> np.ndarray:
    """``volume`` on grid ``source`` resampled onto grid ``target`` through world space.

    Returns
    -------
    np.ndarray
        ``(*target.shape)``, zero where ``target`` leaves ``source``'s field of view.
    """
    return sampling.sample(volume, source.voxels(target.world(target.coordinates())),
                           interpolation)


def to_world(deformation: np.ndarray, grid: Grid) -> np.ndarray:
    """This project's displacement as a warp (an ITK/ANTs displacement field).

    Parameters
    ----------
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement in voxels of ``grid``, 'ij' order.
    grid : Grid
        The static grid.

    Returns
    -------
    np.ndarray
        ``(*spatial, ndim)`` float32 displacement in LPS mm: ``p + d(p)`` is the moving-space
        point sampled for the static-space point ``p``.
    """
    return _linear(deformation, grid.matrix[:-1, :-1])


def from_world(warp: np.ndarray, grid: Grid) -> np.ndarray:
    """The inverse of :func:`to_world`: LPS mm on ``grid`` to voxels of ``grid``, 'ij' order."""
    return _linear(warp, np.linalg.inv(grid.matrix[:-1, :-1]))


def _linear(vectors: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``(*spatial, ndim)`` vectors through a ``(ndim, ndim)`` matrix, in float32."""
    flat = np.asarray(vectors, np.float32).reshape(-1, vectors.shape[-1])
    return (flat @ matrix.T.astype(np.float32)).reshape(vectors.shape)


def warped_points(warp: np.ndarray, grid: Grid) -> np.ndarray:
    """``(*spatial, ndim)`` LPS points ``p + d(p)`` of a warp, for every voxel ``p`` of ``grid``."""
    return grid.world(grid.coordinates()) + warp


def apply_warp(warp: np.ndarray, grid: Grid, moving: np.ndarray, moving_grid: Grid,
               interpolation: str = "linear") -> np.ndarray:
    """Warp an image or label map given on any grid in the moving space onto the warp's grid.

    Parameters
    ----------
    warp : np.ndarray
        ``(*spatial, ndim)`` displacement in LPS mm on ``grid`` (:func:`to_world`, or ANTs').
    grid : Grid
        The warp's (static) grid.
    moving : np.ndarray
        ``(*moving_spatial)`` image or label map on ``moving_grid``.
    moving_grid : Grid
        Its grid, of the warp's dimension.
    interpolation : {"linear", "nearest"}
        As :func:`sample`.

    Returns
    -------
    np.ndarray
        ``(*spatial)`` moved image on the warp's grid; zero where it samples outside ``moving``.
    """
    coords = moving_grid.voxels(warped_points(warp, grid))
    return sampling.sample(moving, coords, interpolation)


def invert(deformation: np.ndarray, initial: np.ndarray | None = None, iterations: int = 100,
           tolerance: float = 1e-3) -> np.ndarray:
    """Inverse of the map ``x -> x + u(x)`` on the same grid, by damped fixed-point iteration.

    The inverse displacement ``v`` solves ``v(y) = -u(y + v(y))``. Starting from ``initial``
    (or ``-u``), each step moves ``v`` half-way to ``-u(y + v(y))`` (the undamped iteration
    can cycle between two values at a few voxels of real fields), until no voxel moves by more
    than ``tolerance`` voxels. It converges where the map is invertible (no folding).

    Parameters
    ----------
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement ``u`` in voxels, 'ij' order.
    initial : np.ndarray, optional
        ``(*spatial, ndim)`` first guess, e.g. the integrated negated velocity of a
        diffeomorphic model.
    iterations : int
        Most iterations.
    tolerance : float
        Largest change, in voxels, at which iteration stops.

    Returns
    -------
    np.ndarray
        ``(*spatial, ndim)`` float32 inverse displacement ``v`` in voxels: ``y + v(y)`` is the
        point that ``x -> x + u(x)`` takes to ``y``.
    """
    u = tf.constant(deformation[None], tf.float32)
    grid = utils.regular_grid(deformation.shape[:-1])[None]
    v = -u if initial is None else tf.constant(initial[None], tf.float32)
    for _ in range(iterations):
        step = 0.5 * (-utils.interpolate(u, grid + v) - v)
        v += step
        if float(tf.reduce_max(tf.abs(step))) < tolerance / 2:
            break
    return np.asarray(v)[0]


def inverse_consistency(deformation: np.ndarray, inverse: np.ndarray, grid: Grid) -> dict:
    """How far ``phi_inv(phi(x))`` lands from ``x``, in mm, over the voxels ``phi`` keeps inside.

    Parameters
    ----------
    deformation, inverse : np.ndarray
        ``(*spatial, ndim)`` displacements in voxels of ``grid``: ``phi(x) = x + u(x)`` and
        ``phi_inv(y) = y + v(y)``.
    grid : Grid
        Their grid (its voxel size and axes give millimetres).

    Returns
    -------
    dict
        ``mean_mm`` and ``p95_mm``, the mean and 95th percentile of ``|x - phi_inv(phi(x))|``,
        and ``mean_voxels`` and ``p95_voxels``, the same in voxels: NaN when ``phi`` keeps no
        voxel inside (none to measure).
    """
    coords = grid.coordinates() + deformation
    inside = np.all((coords >= 0) & (coords <= np.array(grid.shape) - 1), axis=-1)
    error = deformation + sampling.sample(inverse, coords)  # (x + u) + v(x + u) - x
    lengths = {"mm": np.linalg.norm(error @ grid.matrix[:-1, :-1].T, axis=-1)[inside],
               "voxels": np.linalg.norm(error, axis=-1)[inside]}
    return {f"{stat}_{unit}": float(np.nan if not values.size else np.mean(values)
                                    if stat == "mean" else np.percentile(values, 95))
            for unit, values in lengths.items() for stat in ("mean", "p95")}


def inverse_on(inverse: np.ndarray, grid: Grid, moving_grid: Grid) -> np.ndarray:
    """The inverse warp on the moving grid, from the inverse displacement on the static grid.

    Parameters
    ----------
    inverse : np.ndarray
        ``(*spatial, ndim)`` inverse displacement ``v`` in voxels of the static ``grid``
        (:func:`invert`).
    grid, moving_grid : Grid
        The static grid, and the moving image's grid.

    Returns
    -------
    np.ndarray
        ``(*moving_spatial, ndim)`` float32 displacement in LPS mm: ``q + d(q)`` is the
        static-space point that the moving-space point ``q`` samples (zero where ``q`` is
        outside the static grid).
    """
    coords = grid.voxels(moving_grid.world(moving_grid.coordinates()))
    return to_world(sampling.sample(inverse, coords), grid)


def save_warp(path: str, warp: np.ndarray, grid: Grid) -> None:
    """Write a warp as an ITK/ANTs displacement field, atomically.

    Parameters
    ----------
    path : str
        ``.nii`` or ``.nii.gz``.
    warp : np.ndarray
        ``(*spatial, ndim)`` displacement in LPS mm on ``grid``.
    grid : Grid
        Its grid: the file's affine (qform and sform, code 'scanner').
    """
    import nibabel as nib

    if not path.endswith(volumes.NIFTI):
        raise volumes.DataError(f"{path}: a warp is written as NIfTI (.nii or .nii.gz)")
    spatial = warp.shape[:-1] + (1,) * (3 - grid.ndim)
    data = np.asarray(warp, np.float32).reshape(*spatial, 1, warp.shape[-1])
    image = nib.Nifti1Image(data, grid.affine)
    image.header.set_intent("vector")
    image.set_qform(grid.affine, code=1)
    image.set_sform(grid.affine, code=1)
    with volumes.atomic_path(path) as tmp:
        volumes.write_image(image, tmp)


def load_scan(path: str, name: str) -> tuple[np.ndarray, object, Grid]:
    """A volume file as stored, its nibabel image (None for arrays) and its grid in world space;
    ``name`` (``"moving"``, ...) says which scan it is in messages."""
    volume, image = volumes.load_volume(path)
    return volume, image, Grid.of(image, volume.shape, f"{name} {path}")


def load_label_map(path: str | None, grid: Grid) -> np.ndarray | None:
    """The label map of the image on ``grid`` at ``path`` (None: none), as stored.

    Raises
    ------
    volumes.DataError
        If it is not on ``grid``.
    """
    if path is None:
        return None
    labels, _, labels_grid = load_scan(path, "moving label map")
    if not labels_grid.same_as(grid):
        raise volumes.DataError(f"{path} is not on the moving image's grid "
                                f"(shape {labels_grid.shape} vs {grid.shape}, or affine)")
    return labels


def save_registered(registered: dict, paths: dict, static_grid: Grid, moving_grid: Grid,
                    static_image=None) -> None:
    """Write the outputs of ``main.py register`` that ``paths`` names (None: not written).

    Parameters
    ----------
    registered : dict
        One registered pair (``registration.register_scans``, ``pretrained.register_brains``).
    paths : dict
        Paths of ``moved``, ``deformation`` and ``moved_seg`` (volumes on the static grid,
        with the header of ``static_image``, else its grid's affine), ``warp`` and
        ``inverse_warp`` (:func:`save_warp` on the static and moving grids) and ``affine``
        (:func:`save_affine` of ``affine_world``).
    """
    reference = static_grid.affine if static_image is None else static_image
    for key in ("moved", "deformation", "moved_seg"):
        if paths[key]:
            volumes.save_volume(paths[key], registered[key], reference, key == "deformation")
    for key, grid in (("warp", static_grid), ("inverse_warp", moving_grid)):
        if paths[key]:
            save_warp(paths[key], registered[key], grid)
    if paths["affine"]:
        save_affine(paths["affine"], registered["affine_world"])


def load_warp(path: str) -> tuple[np.ndarray, Grid]:
    """Read an ITK/ANTs displacement field (this project's :func:`save_warp`, or ANTs').

    Returns
    -------
    warp : np.ndarray
        ``(*spatial, ndim)`` float32 displacement in LPS mm.
    grid : Grid
        Its grid.

    Raises
    ------
    volumes.DataError
        If the file is not a NIfTI vector image ``(x, y, z, 1, 3)`` or ``(x, y, 1, 1, 2)`` of
        finite values with a usable affine.
    """
    if not path.endswith(volumes.NIFTI):
        raise volumes.DataError(f"{path}: a warp must be a NIfTI displacement field (.nii or "
                                f".nii.gz)")
    volumes.check_exists(path)
    data, image = volumes.read_image(path)
    shape, ndim = data.shape, data.shape[-1] if data.ndim == 5 else 0
    if (data.ndim != 5 or shape[3] != 1 or ndim not in (2, 3)
            or any(size != 1 for size in shape[ndim:3]) or data.dtype.kind not in "iuf"):
        raise volumes.DataError(f"{path}: not a displacement field (expected a NIfTI vector "
                                f"image of shape (x, y, z, 1, 3) or (x, y, 1, 1, 2), got "
                                f"{shape})")
    warp = np.asarray(data, np.float32).reshape(*shape[:ndim], ndim)
    if not np.all(np.isfinite(warp)):
        raise volumes.DataError(f"{path}: the displacement field holds NaN or Inf")
    return warp, Grid.of(image, shape[:ndim], path)


def rotation_matrix(angles) -> np.ndarray:
    """``(ndim, ndim)`` rotation: a planar rotation by each angle (radians), in the axis pairs
    ``(0, 1)`` in 2D, ``(0, 1), (0, 2), (1, 2)`` in 3D, composed in that order."""
    angles = np.atleast_1d(angles)
    ndim = {1: 2, 3: 3}[len(angles)]
    rotation = np.eye(ndim)
    for angle, (i, j) in zip(angles, itertools.combinations(range(ndim), 2)):
        plane = np.eye(ndim)
        plane[[i, i, j, j], [i, j, i, j]] = np.cos(angle), -np.sin(angle), np.sin(angle), \
            np.cos(angle)
        rotation = rotation @ plane
    return rotation


def world_matrix(matrix: np.ndarray, grid: Grid) -> np.ndarray:
    """An affine map of ``grid``'s voxels, ``(ndim, ndim + 1)``, as the ``(ndim + 1, ndim +
    1)`` map of LPS points in mm that ITK and ANTs apply (static point -> moving point)."""
    voxel_map = np.eye(grid.ndim + 1)
    voxel_map[:-1] = matrix
    return grid.matrix @ voxel_map @ np.linalg.inv(grid.matrix)


def save_affine(path: str, matrix: np.ndarray) -> None:
    """Write an affine map of LPS points as an ITK transform file (text), atomically.

    ITK (SimpleITK ``ReadTransform``), ``antsApplyTransforms`` and 3D Slicer read it: an
    ``AffineTransform_double_3_3`` (or ``_2_2``) whose parameters are the matrix row by row,
    then the translation, about the centre (0, 0, 0). It maps each static-space point to the
    moving-space point it samples, as ANTs' own affine files do.

    Parameters
    ----------
    path : str
        ``.txt`` or ``.tfm``.
    matrix : np.ndarray
        ``(ndim + 1, ndim + 1)`` homogeneous map of LPS mm (:func:`world_matrix`).
    """
    if not path.endswith(ITK_TRANSFORM):
        raise volumes.DataError(f"{path}: an affine transform is written as an ITK text "
                                f"transform file (.txt or .tfm)")
    ndim = len(matrix) - 1
    numbers = [*np.asarray(matrix)[:ndim, :ndim].ravel(), *np.asarray(matrix)[:ndim, ndim]]
    text = ("#Insight Transform File V1.0\n#Transform 0\n"
            f"Transform: AffineTransform_double_{ndim}_{ndim}\n"
            f"Parameters: {' '.join(repr(float(n)) for n in numbers)}\n"
            f"FixedParameters: {' '.join(['0'] * ndim)}\n")
    with volumes.atomic_path(path) as tmp, open(tmp, "w") as file:
        file.write(text)
