"""The brain model that ships with the project, and registering two brain scans with it.

``pretrained/brain.keras`` (its model card: ``docs/brain-model.md``) is a VoxelMorph-2 trained
on pairs of skull-stripped T1 scans, its field integrated as a velocity. It works on a grid of
``SHAPE`` voxels of ``SPACING_MM`` mm with RAS axes. :func:`register_brains` places such a grid
on the static scan, centred on its brain, and carries it into the moving scan's world by the
pose stage's map (``pose.estimate``: contrast-free, by mutual information), so that scans of
any grid, orientation, voxel size and field of view, not aligned, come to the network as
training showed them: two brains in one pose on one grid. The pair is then brought into one
T1-like contrast (``contrast_mapping.in_common_contrast``), so either scan may be a T1, T2,
FLAIR or PD scan. Every output is on the static scan's own grid and world space, the resamplings and the
network's field composed into one map from static points to moving points.
"""
import dataclasses
import os
import time
from concurrent import futures

import numpy as np

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras

import contrast_mapping
import datasets
import objective
import pose
import registration
import rundir
import sampling
import scores
import shapes
import transforms
import tuning
import volumes

FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "brain.keras")
SHAPE = (64, 64, 64)  # the network's grid
SPACING_MM = 3.0  # its voxel size
MIN_EXTENT_MM = 80.0  # a scan narrower than this along an axis cannot hold a brain
TUNE_LOSS = "ncc"  # similarity of instance optimisation, the moving scan in the static's contrast
REFINE_INT_STEPS = 5  # scaling-and-squaring steps of the refinement's velocity
REFINE_DOWNSIZE = 2  # which lives on a grid this many times coarser than the working grid
REFINE_LR = 0.2  # Adam's first rate on it, in its voxels: 25 steps do what 50 of 0.1 did
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def load() -> keras.Model:
    """The shipped model, ready for ``register_brains``."""
    if not os.path.exists(FILE):
        raise volumes.UsageError(f"the shipped brain model {FILE} is missing: give --model")
    return rundir.load_model(FILE)


def refiner(model: keras.Model, steps: int, lr: float = REFINE_LR,
            similarity: str = TUNE_LOSS, int_steps: int = REFINE_INT_STEPS,
            int_downsize: int = REFINE_DOWNSIZE) -> tuning.Refiner:
    """The refiner of ``register`` with the shipped model: ``steps`` Adam steps on
    ``similarity`` (``TUNE_LOSS`` by default) and the smoothness weight that
    ``objective.DEFAULT_LAMBDA`` gives it, of a velocity composed with the network's map and
    integrated in ``int_steps`` on a grid ``int_downsize`` times coarser (so the refined map
    stays diffeomorphic; ``int_steps`` 0: of the displacement itself)."""
    return tuning.Refiner(model, steps, lr, similarity, objective.DEFAULT_LAMBDA[similarity],
                          int_steps, int_downsize)


def check_scan(image: np.ndarray, grid: transforms.Grid, name: str) -> None:
    """Refuse a scan the shipped model cannot take: not 3D, or narrower than ``MIN_EXTENT_MM``
    along an axis (a brain is about 140 x 170 x 120 mm)."""
    if image.ndim != 3:
        raise volumes.UsageError(f"the {name} image is {image.ndim}D: the shipped brain model "
                                 f"is 3D (give --model for a model of your own)")
    extent = np.array(grid.shape) * np.linalg.norm(grid.affine[:3, :3], axis=0)
    if extent.min() < MIN_EXTENT_MM:
        raise volumes.DataError(f"the {name} image spans {' x '.join(f'{e:.0f}' for e in extent)}"
                                f" mm: too small to hold a brain (the shipped model needs at "
                                f"least {MIN_EXTENT_MM:.0f} mm along every axis)")


def scaled(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as float32 in [0, 1]: its minimum to 0, the ``contrast_mapping.BRIGHT``
    percentile of the voxels above it to 1, clipped (a few bright voxels do not darken the brain,
    as min-max would)."""
    image = datasets.normalize(image, name)  # finite, not constant, in [0, 1]
    image /= np.percentile(image[image > 0], contrast_mapping.BRIGHT)
    return np.clip(image, 0.0, 1.0, out=image)


def working_grid(centre: np.ndarray) -> transforms.Grid:
    """The network's grid (``SHAPE`` at ``SPACING_MM``) with RAS axes, centred on the LPS
    point ``centre``."""
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    affine[:3, 3] = centre * LPS_TO_RAS - SPACING_MM * (np.array(SHAPE) - 1) / 2
    return transforms.Grid(SHAPE, affine)


def working_grids(static_centre: np.ndarray, world_map: np.ndarray) -> list[transforms.Grid]:
    """The working grids of a pair (moving, static): the static one centred on its brain
    (``static_centre``, LPS mm), the moving one that grid carried into the moving scan's world
    by the pose stage's ``(4, 4)`` LPS map (``pose.estimate``), so that one voxel of both grids
    is one point of the two brains once posed."""
    static = working_grid(static_centre)
    return [pose.grid_through(world_map, static), static]


def pose_map(grids: list[transforms.Grid]) -> np.ndarray:
    """``(4, 4)`` map of LPS points, static -> moving, that the working grids (moving, static)
    of :func:`working_grids` stand for with no network: each static working voxel's point to
    the moving working voxel's."""
    return grids[0].matrix @ np.linalg.inv(grids[1].matrix)


def register_brains(model: keras.Model, moving: np.ndarray, static: np.ndarray,
                    moving_grid: transforms.Grid, static_grid: transforms.Grid,
                    moving_seg: np.ndarray | None = None, finetune_steps: int = 0,
                    finetune_lr: float = 1e-3, refiner: tuning.Refiner | None = None,
                    tune_loss: str | None = TUNE_LOSS, inverse: bool = False) -> dict:
    """Register two brain scans of any grids with the shipped model (or one like it).

    Each scan is scaled (:func:`scaled`); the pose stage (``pose.estimate``) finds the moving
    brain's pose on the static one; both are resampled onto the working grids of that pose
    (:func:`working_grids`), the moving one mapped onto the static one's contrast
    (``contrast_mapping.in_common_contrast``); the network registers the two;
    ``finetune_steps`` first tune it
    on the pair and ``refiner`` then refines its field on the working grids.
    The outputs compose: static voxel -> static world -> working grid -> field -> the moving
    side's working grid -> moving world -> moving voxel, sampled once. The static side is
    :func:`prepared_static` and the rest :func:`register_prepared`: to register many moving
    scans to one static scan, prepare it once.

    Parameters
    ----------
    model : keras.Model
        The shipped model (:func:`load`), a 3D model for ``SHAPE``.
    moving, static : np.ndarray
        ``(*moving_spatial)`` and ``(*spatial)`` 3D scans, any intensities.
    moving_grid, static_grid : transforms.Grid
        Their grids.
    moving_seg : np.ndarray, optional
        Integer label map on the moving grid.
    finetune_steps, finetune_lr, tune_loss
        Instance optimisation of the network on the pair, by ``tune_loss`` with the smoothness
        weight ``objective.DEFAULT_LAMBDA`` gives it.
    refiner : tuning.Refiner, optional
        Refines the displacement on the finer grids.
    inverse : bool
        Also compute the inverse warp and the inverse-consistency error.

    Returns
    -------
    dict
        As ``registration.register_scans``: on the static grid, ``moved``, ``moved_seg`` (with
        ``moving_seg``), ``deformation`` (static voxels), ``warp`` (LPS mm), ``affine_world``
        (LPS mm, static point -> moving point: the pose stage's map, then any affine stage's),
        ``seconds`` (forward pass), ``pose_seconds``, ``finetune_seconds``, ``refine_seconds``,
        ``pose_note`` and the fallback notes (a line, or None); with ``inverse``,
        ``inverse_warp`` and ``inverse_error``.
    """
    return register_prepared(model, moving, moving_grid, prepared_static(static, static_grid),
                             moving_seg, finetuner(model, finetune_steps, finetune_lr, tune_loss),
                             refiner, inverse)


@dataclasses.dataclass(frozen=True)
class Static:
    """A static scan prepared once for any number of moving scans (:func:`prepared_static`).

    Attributes
    ----------
    grid : transforms.Grid
        The scan's own grid.
    image : np.ndarray
        ``(*spatial)`` float32 in [0, 1] (:func:`scaled`), read-only.
    moments : tuple of np.ndarray
        Its brain's centre ``(3,)`` in LPS mm and spread ``(3, 3)`` (``pose.brain_moments``).
    work : transforms.Grid
        Its working grid, centred on its brain (:func:`working_grid`).
    on_work : np.ndarray
        ``SHAPE`` float32: ``image`` resampled onto ``work``, read-only.
    """
    grid: transforms.Grid
    image: np.ndarray
    moments: tuple[np.ndarray, np.ndarray]
    work: transforms.Grid
    on_work: np.ndarray


def prepared_static(static: np.ndarray, static_grid: transforms.Grid) -> Static:
    """The static side of :func:`register_brains`, computed once: the ``(*spatial)`` scan checked
    (:func:`check_scan`) and scaled, its brain's moments, its working grid and the scan on it."""
    check_scan(static, static_grid, "static")
    image = scaled(static, "static image")
    moments = pose.brain_moments(image, static_grid)
    work = working_grid(moments[0])
    on_work = transforms.resample(image, static_grid, work)
    for array in (image, on_work):
        array.setflags(write=False)  # shared by every moving scan
    return Static(static_grid, image, moments, work, on_work)


def finetuner(model: keras.Model, steps: int, lr: float = 1e-3,
              tune_loss: str | None = TUNE_LOSS) -> tuning.FineTuner | None:
    """The fine-tuner of ``finetune_steps`` on the working grid (None for 0 steps): build it
    once for many pairs."""
    if not steps:
        return None
    return tuning.FineTuner(model, steps, lr, SHAPE, tune_loss,
                            objective.DEFAULT_LAMBDA.get(tune_loss))


def register_prepared(model: keras.Model, moving: np.ndarray, moving_grid: transforms.Grid,
                      static: Static, moving_seg: np.ndarray | None = None,
                      tuner: tuning.FineTuner | None = None,
                      refiner: tuning.Refiner | None = None, inverse: bool = False,
                      compiled: bool = False) -> dict:
    """:func:`register_brains` of one moving scan to a static scan prepared by
    :func:`prepared_static`, fine-tuned by ``tuner`` (:func:`finetuner`) when given; the same
    outputs. ``compiled`` (for many moving scans in one process) compiles the pose stage's
    steps by XLA (``pose.optimise_affine``) and runs the network as a traced graph
    (``registration.register``): seconds once, then each scan faster."""
    check_scan(moving, moving_grid, "moving")
    moving_seg = registration.moving_label_map(moving_seg, moving.shape)
    images = [scaled(moving, "moving image"), static.image]
    scan_grids = [moving_grid, static.grid]
    moments = [pose.brain_moments(images[0], moving_grid), static.moments]
    start = time.perf_counter()
    world_map, pose_note = pose.estimate(images, scan_grids, moments, static.work, compiled)
    pose_seconds = time.perf_counter() - start
    grids = working_grids(static.moments[0], world_map)
    small = [transforms.resample(images[0], moving_grid, grids[0]), static.on_work]
    small = contrast_mapping.in_common_contrast(*small, SPACING_MM)
    network = registration.network_for(model, SHAPE)
    network, finetune_seconds, finetune_note = tuning.finetuned(network, tuner, *small)
    registered = registration.register(network, *small, traced=compiled)
    field = registered["deformation"]
    field, refine_seconds, refine_note = tuning.refined(refiner, *small, field)
    out = on_static_grid(field, grids, moving, moving_grid, static.grid, moving_seg)
    out.update(seconds=registered["seconds"], pose_seconds=pose_seconds,
               finetune_seconds=finetune_seconds, refine_seconds=refine_seconds,
               pose_note=pose_note, finetune_fallback=finetune_note, refine_fallback=refine_note)
    out["affine_world"] = pose_map(grids)  # the pose stage's map, then any affine stage's
    if "affine" in registered:
        out["affine_world"] = out["affine_world"] @ transforms.world_matrix(registered["affine"],
                                                                            grids[1])
    if inverse:
        out["inverse"] = transforms.invert(out["deformation"])
        out["inverse_error"] = transforms.inverse_consistency(out["deformation"], out["inverse"],
                                                              static.grid)
        out["inverse_warp"] = transforms.inverse_on(out["inverse"], static.grid, moving_grid)
    return out


def on_static_grid(field: np.ndarray, grids: list[transforms.Grid], moving: np.ndarray,
                   moving_grid: transforms.Grid, static_grid: transforms.Grid,
                   moving_seg: np.ndarray | None) -> dict:
    """The registration on the static scan's grid, from ``field`` on the working grids.

    The static grid is computed in slabs along its first axis (``shapes.slabs``), on a pool of
    one thread per core: numpy's and scipy's loops let go of the interpreter, and each slab's
    arrays stay small.

    Parameters
    ----------
    field : np.ndarray
        ``(*work, 3)`` displacement in voxels of the working grids ``grids`` (moving side,
        static side), which share their layout.

    Returns
    -------
    dict
        ``deformation`` ``(*spatial, 3)`` in static voxels (to the static-grid coordinates of
        the moving-world point sampled), ``warp`` ``(*spatial, 3)`` LPS mm, ``moved`` and, with
        ``moving_seg``, ``moved_seg`` (nearest neighbour).
    """
    shape = static_grid.shape
    to_work = np.linalg.inv(grids[1].matrix) @ static_grid.matrix
    # moving-side working voxel r = on_work + field, taken to static voxels and moving voxels
    to_static = np.linalg.inv(static_grid.matrix) @ grids[0].matrix
    shift = to_static @ to_work - np.diag([1.0, 1.0, 1.0, 0.0])  # minus the voxel itself
    to_moving = np.linalg.inv(moving_grid.matrix) @ static_grid.matrix
    moving = moving.astype(np.float32, copy=False)  # once, not once a slab
    deformation, warp = (np.empty((3, *shape), np.float32) for _ in range(2))
    moved = np.empty(shape, np.float32)
    moved_seg = None if moving_seg is None else np.empty(shape, moving_seg.dtype)

    def slab(rows: slice) -> None:
        start = np.eye(4)
        start[0, 3] = rows.start  # the slab's voxels to the grid's
        part = (rows.stop - rows.start, *shape[1:])
        # the moving voxel of static voxel x is that of the static-grid point x + deformation(x)
        shifted = field_on(field, to_work @ start, part)
        grid_points(shift @ start, part, linear(to_static, shifted, out=deformation[:, rows]))
        coords = np.moveaxis(grid_points(to_moving @ start, part, linear(
            to_moving, deformation[:, rows], out=shifted)), 0, -1)
        moved[rows] = sampling.sample(moving, coords, workers=1)
        if moving_seg is not None:
            moved_seg[rows] = sampling.sample(moving_seg, coords, "nearest", workers=1)
        linear(static_grid.matrix, deformation[:, rows], out=warp[:, rows])  # LPS mm
    workers = len(os.sched_getaffinity(0))
    with futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(slab, shapes.slabs(shape[0], 4 * workers)))
    out = {"deformation": np.moveaxis(deformation, 0, -1), "moved": moved,
           "warp": np.moveaxis(warp, 0, -1)}
    if moving_seg is not None:
        out["moved_seg"] = moved_seg
    return out


def field_on(field: np.ndarray, to_work: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The working grid's ``(*work, 3)`` field sampled at every voxel of a grid of ``shape``
    (``to_work``: ``(4, 4)``, its voxels to working voxels); ``(3, *shape)`` float32.

    When the two grids' axes are parallel (``to_work`` permutes and scales them, as for a scan
    stored in any of the 48 axis orders), it is sampled axis by axis
    (``sampling.sample_axes``), several times faster; otherwise voxel by voxel. Beyond the
    working grid the field keeps its edge's values: dropping to zero there would tear the map
    (fold it) wherever the affine stage moved the scan."""
    linear_part = to_work[:3, :3]
    axes = np.argmax(np.abs(linear_part), axis=0)  # the working axis along each grid axis
    parallel = (sorted(axes) == [0, 1, 2] and np.allclose(
        np.delete(linear_part.T.ravel(), axes + np.arange(3) * 3), 0, atol=1e-6))
    if not parallel:
        points = np.moveaxis(grid_points(to_work, shape), 0, -1)
        return np.ascontiguousarray(np.moveaxis(sampling.sample(field, points, edge=True),
                                                -1, 0))
    coords = [to_work[axes[a], a] * np.arange(size) + to_work[axes[a], 3]
              for a, size in enumerate(shape)]
    return np.stack([sampling.sample_axes(np.transpose(field[..., c], axes), coords, edge=True)
                     for c in range(3)])


def evaluate_pairs(model: keras.Model, pairs, labels=None, spacing=None, finetune_steps: int = 0,
                   finetune_lr: float = 1e-3, refiner: tuning.Refiner | None = None,
                   tune_loss: str | None = TUNE_LOSS) -> list[dict]:
    """``registration.evaluate_pairs`` with the shipped model: each pair of a set on one grid
    of voxels of ``spacing`` mm (RAS axes) registered by :func:`register_brains` and scored
    there (``scores.score_registration``), with the inverse consistency in mm."""
    grid = transforms.spacing_grid(pairs.moving.shape[1:], spacing)
    results = []
    for moving, static, moving_seg, static_seg in pairs:
        out = register_brains(model, moving, static, grid, grid, moving_seg, finetune_steps,
                              finetune_lr, refiner, tune_loss, inverse=True)
        scored = scores.score_registration(moving, static, out["moved"], out["deformation"],
                                           moving_seg, static_seg, out.get("moved_seg"),
                                           labels, spacing)
        error = out["inverse_error"]
        results.append({**scored, **{key: out[key] for key in (
            "seconds", "finetune_seconds", "refine_seconds", "finetune_fallback",
            "refine_fallback")}, "inverse_error": error["mean_voxels"],
            "inverse_error_p95": error["p95_voxels"]})
    return results


def grid_points(matrix: np.ndarray, shape: tuple[int, ...], out: np.ndarray | None = None
                ) -> np.ndarray:
    """``(3, *shape)`` float32: every voxel of a grid of ``shape`` through the ``(4, 4)``
    homogeneous ``matrix``, added to ``out`` (in place) when given; built axis by axis (no
    ``(*shape, 3)`` array of voxels)."""
    axes = np.ix_(*(np.arange(size, dtype=np.float32) for size in shape))
    if out is None:
        out = np.zeros((3, *shape), np.float32)
    for row in range(3):
        out[row] += np.float32(matrix[row, 3])
        for axis, values in enumerate(axes):
            out[row] += np.float32(matrix[row, axis]) * values
    return out


def linear(matrix: np.ndarray, vectors: np.ndarray, out: np.ndarray | None = None
           ) -> np.ndarray:
    """``(3, *spatial)`` float32 vectors through the linear part of the ``(4, 4)`` ``matrix``,
    into ``out`` (not ``vectors``) when given."""
    return np.einsum("ij,j...->i...", matrix[:3, :3].astype(np.float32), vectors, out=out)
