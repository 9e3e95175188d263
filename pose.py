"""The pose stage of registering two brain scans: where the moving brain lies on the static one
before the network sees them (``pretrained.register_brains``).

1. The centre and spread of each brain (:func:`brain_moments`): which voxels are brain, not
   their intensities, so no contrast is preferred.
2. Candidate turns about the centres (:func:`candidate_rotations`): none, and the turn that
   takes the static brain's principal axes onto the moving brain's, offered only where the
   spreads of both brains differ enough to define their axes (:func:`axes_defined`). Each is
   scored by the mutual information of the two brains on the static working grid, and the best
   is kept.
3. A 12-parameter affine map optimised from there by Adam on mutual information, on the working
   grid at half and then full resolution (:func:`optimise_affine`), its best step kept.

Mutual information compares intensities through their joint histogram, so the two scans may
differ in contrast. The map found never scores below the start, the brain centres alone: when
no candidate and no step beats it, the start is kept and a note says so in one line.
"""
import itertools

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import numpy as np
import tensorflow as tf

import metrics
import transforms
import utils

BRAIN = 0.1  # share of the scaled intensity above which a voxel counts as brain
MAX_ROTATION = 30.0  # degrees: a larger turn between two brains' principal axes is not trusted
MIN_GAP = 0.1  # spreads closer than this share of the larger leave their axes undefined
LEVELS = ((2, 40), (1, 20))  # (working grid downsampled by, Adam steps) of the affine map
LR = 0.02  # Adam's rate of the scaled parameters below
SAMPLES = 100_000  # most static voxels (drawn at random, fixed seed) a level's MI is taken over
MIN_GAIN = 1e-3  # nats of mutual information that a pose must add to count as better
LINEAR_SCALE, SHIFT_SCALE_MM = 0.15, 20.0  # one unit of a parameter: of the matrix, in mm


def brain_moments(image: np.ndarray, grid: transforms.Grid) -> tuple[np.ndarray, np.ndarray]:
    """The centre and spread of a scan's brain: the voxels brighter than ``BRAIN`` of a scan
    scaled to [0, 1] (``pretrained.scaled``), whatever its contrast.

    Returns
    -------
    centre : np.ndarray
        ``(3,)`` LPS point in mm, their mean.
    covariance : np.ndarray
        ``(3, 3)`` their covariance in LPS mm^2, from sums along the scan's axes (exact; no
        list of voxels is made).
    """
    brain = image > BRAIN
    count = brain.sum()
    index = [np.arange(size, dtype=np.float64) for size in brain.shape]
    lines = [brain.sum(axis=tuple(b for b in range(3) if b != a)) for a in range(3)]
    mean = np.array([index[a] @ lines[a] for a in range(3)]) / count
    second = np.diag([index[a] ** 2 @ lines[a] for a in range(3)])
    for a, b in ((0, 1), (0, 2), (1, 2)):
        second[a, b] = second[b, a] = index[a] @ brain.sum(axis=3 - a - b) @ index[b]
    covariance = second / count - np.outer(mean, mean)  # in voxels^2
    linear_part = grid.matrix[:3, :3]
    return grid.world(mean), linear_part @ covariance @ linear_part.T


def axes_defined(covariance: np.ndarray) -> bool:
    """Whether a brain's ``(3, 3)`` covariance defines its principal axes: each spread
    (eigenvalue) at least ``MIN_GAP`` of the next larger one away from it. A near-spherical
    brain (two close spreads) has axes that noise alone turns."""
    spreads = np.linalg.eigvalsh(covariance)  # ascending
    return bool(np.all(np.diff(spreads) >= MIN_GAP * spreads[1:]))


def principal_rotation(moving: np.ndarray, static: np.ndarray) -> np.ndarray:
    """``(3, 3)`` rotation of LPS directions that takes the static brain's principal axes onto
    the moving brain's (eigenvectors of the ``(3, 3)`` covariances of :func:`brain_moments`),
    the one of the eight sign choices nearest the identity; the identity when even that one
    turns by more than ``MAX_ROTATION`` degrees."""
    moving_axes, static_axes = np.linalg.eigh(moving)[1], np.linalg.eigh(static)[1]
    best = max((rotation for rotation in (moving_axes @ np.diag(signs) @ static_axes.T
                                          for signs in itertools.product((1.0, -1.0), repeat=3))
                if np.linalg.det(rotation) > 0), key=np.trace)
    return best if degrees(best) <= MAX_ROTATION else np.eye(3)


def degrees(rotation: np.ndarray) -> float:
    """The angle of a ``(3, 3)`` rotation, in degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))


def candidate_rotations(moving: np.ndarray, static: np.ndarray) -> list[np.ndarray]:
    """The turns to try, from the two brains' ``(3, 3)`` covariances: none, and the principal
    axes' (:func:`principal_rotation`) where both brains define their axes and it turns."""
    turns = [np.eye(3)]
    if axes_defined(moving) and axes_defined(static):
        turn = principal_rotation(moving, static)
        if degrees(turn) > 0.1:
            turns.append(turn)
    return turns


def turned_about(rotation: np.ndarray, moving_centre: np.ndarray,
                 static_centre: np.ndarray) -> np.ndarray:
    """``(4, 4)`` LPS map, static point -> moving point: the static centre onto the moving one,
    turned by ``rotation`` about it."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = moving_centre - rotation @ static_centre
    return matrix


def grid_through(world_map: np.ndarray, grid: transforms.Grid) -> transforms.Grid:
    """The grid whose voxel ``v`` is the point ``world_map`` gives for ``grid``'s voxel ``v``:
    ``grid`` carried into the moving scan's world by a ``(4, 4)`` LPS map."""
    flip = np.diag([*transforms.RAS_TO_LPS, 1.0])
    return transforms.Grid(grid.shape, flip @ world_map @ grid.matrix)


def mutual_information(moving: np.ndarray, static: np.ndarray) -> float:
    """Mutual information in nats of two ``(*spatial)`` images in [0, 1] on one grid
    (``metrics.MutualInformation``)."""
    pair = [tf.constant(image[None, ..., None], tf.float32) for image in (static, moving)]
    return -float(metrics.MutualInformation()(*pair))


def pooled(image: np.ndarray, factor: int) -> np.ndarray:
    """``(*spatial)`` image averaged over blocks of ``factor`` voxels per axis."""
    if factor == 1:
        return image
    shape = [v for size in image.shape for v in (size // factor, factor)]
    return image.reshape(shape).mean(axis=(1, 3, 5))


def centred_points(shape: tuple[int, ...], spacing: float) -> tf.Tensor:
    """``(1, *shape, 3)`` every voxel of a grid in mm from its centre, 'ij' order."""
    centre = (np.array(shape, np.float32) - 1.0) / 2.0
    return ((utils.regular_grid(shape) - centre) * spacing)[None]


def sampled(count: int, samples: int) -> np.ndarray:
    """Ascending indices of at most ``samples`` of ``count`` voxels, drawn without replacement,
    the same on every call (a fixed seed): all of them when there are no more."""
    if count <= samples:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, samples, replace=False))


def affine_of(params: tf.Tensor) -> tf.Tensor:
    """``(12,)`` scaled parameters -> ``(3, 4)`` map of centred mm: the identity at 0."""
    linear = tf.eye(3) + LINEAR_SCALE * tf.reshape(params[:9], (3, 3))
    return tf.concat([linear, SHIFT_SCALE_MM * params[9:, None]], axis=1)


def optimise_affine(moving: np.ndarray, static: np.ndarray, spacing: float,
                    compiled: bool = False) -> np.ndarray:
    """An affine map between two images on one working grid, by Adam on mutual information,
    coarse to fine (``LEVELS``), over the static brain's bounding box: at most ``SAMPLES`` of
    its voxels (:func:`sampled`; at 3 mm the box holds about 200 000, twice the cost).

    Parameters
    ----------
    moving, static : np.ndarray
        ``(*shape)`` images in [0, 1] on grids of one layout, each side divisible by the
        ``LEVELS``' factors.
    spacing : float
        Their voxel size in mm.
    compiled : bool
        Take each step's loss and gradient by XLA (:data:`COMPILED`): seconds to compile once
        per process and level, then faster steps (many moving scans of one static scan, whose
        brain box fixes the shapes).

    Returns
    -------
    np.ndarray
        ``(4, 4)`` map of points in mm from the grid's centre, static -> moving: the best step
        of the last level (the identity when none beat it).
    """
    params, adam = np.zeros(12, np.float32), Adam(12)
    mi = metrics.MutualInformation()
    for factor, steps in LEVELS:
        coarse = [pooled(image, factor) for image in (moving, static)]
        box = brain_box(coarse[1])
        points = tf.reshape(centred_points(coarse[1].shape, spacing * factor)[(0, *box)], (-1, 3))
        chosen = sampled(int(points.shape[0]), SAMPLES)
        arguments = (tf.constant(coarse[0][None, ..., None], tf.float32),
                     mi.soft_bins(tf.constant(coarse[1][box].ravel()[chosen][None, :, None],
                                              tf.float32)),
                     tf.gather(points, chosen)[None],
                     tf.constant((np.array(coarse[1].shape, np.float32) - 1.0) / 2.0),
                     tf.constant(spacing * factor, tf.float32))
        best_loss = np.inf
        for step in range(steps + 1):  # the loss of the state before each step, and the last
            loss, gradient = (COMPILED if compiled else GRAPH)(tf.constant(params), *arguments)
            if float(loss) < best_loss:
                best_loss, best = float(loss), params.copy()
            if step < steps:
                params = adam.step(params, gradient.numpy())
        params = best
    matrix = np.eye(4)
    matrix[:3] = affine_of(tf.constant(params)).numpy()
    return matrix


class Adam:
    """Adam (Kingma and Ba 2015) as Keras applies it, at rate ``LR``, on a few parameters in
    numpy: an eager Keras step costs more than the 12 numbers it updates."""

    def __init__(self, size: int, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7):
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.m, self.v, self.steps = np.zeros(size, np.float32), np.zeros(size, np.float32), 0

    def step(self, params: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        """``params`` after one step down ``gradient`` (both ``(size,)`` float32)."""
        self.steps += 1
        alpha = LR * np.sqrt(1 - self.beta_2 ** self.steps) / (1 - self.beta_1 ** self.steps)
        self.m += (gradient - self.m) * np.float32(1 - self.beta_1)
        self.v += (gradient ** 2 - self.v) * np.float32(1 - self.beta_2)
        return params - np.float32(alpha) * self.m / (np.sqrt(self.v) + np.float32(self.epsilon))


def brain_box(image: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    """The bounding box of the voxels above ``BRAIN`` in a ``(*spatial)`` image, ``margin``
    voxels wider on each side (within the image)."""
    found = np.argwhere(image > BRAIN)
    low = np.maximum(found.min(axis=0) - margin, 0)
    high = np.minimum(found.max(axis=0) + margin + 1, image.shape)
    return tuple(slice(a, b) for a, b in zip(low, high))


def loss_and_gradient(params: tf.Tensor, moving: tf.Tensor, static_bins: tf.Tensor,
                      points: tf.Tensor, centre: tf.Tensor, spacing: tf.Tensor
                      ) -> tuple[tf.Tensor, tf.Tensor]:
    """Negative mutual information of the static image at ``N`` voxels (their ``(1, N, bins)``
    Parzen weights, ``metrics.MutualInformation.soft_bins``) and the ``(1, *shape, 1)`` moving
    image through the map of the ``(12,)`` ``params`` (:func:`affine_of`) at their ``(1, N, 3)``
    ``points`` (mm from the grid's ``centre`` voxel, voxels of ``spacing`` mm), and its
    gradient. Run as :data:`GRAPH` or, compiled by XLA, :data:`COMPILED`."""
    mi = metrics.MutualInformation()
    with tf.GradientTape() as tape:
        tape.watch(params)
        matrix = affine_of(params)
        mapped = tf.einsum("ij,b...j->b...i", matrix[:, :3], points) + matrix[:, 3]
        moving_bins = mi.soft_bins(utils.interpolate(moving, mapped / spacing + centre))
        loss = tf.reduce_mean(mi.from_bins(static_bins, moving_bins))
    return loss, tape.gradient(loss, params)


SIGNATURE = [tf.TensorSpec([12]), tf.TensorSpec([1, None, None, None, 1]),
             tf.TensorSpec([1, None, None]), tf.TensorSpec([1, None, 3]), tf.TensorSpec([3]),
             tf.TensorSpec([])]
GRAPH = tf.function(loss_and_gradient, input_signature=SIGNATURE, autograph=False)  # one trace, every level
COMPILED = tf.function(loss_and_gradient, input_signature=SIGNATURE, jit_compile=True,
                       autograph=False)


def estimate(images: list[np.ndarray], grids: list[transforms.Grid],
             moments: list[tuple[np.ndarray, np.ndarray]], static_work: transforms.Grid,
             compiled: bool = False) -> tuple[np.ndarray, str | None]:
    """The pose of the moving brain on the static one: the three steps of this module.

    Parameters
    ----------
    images : list of np.ndarray
        Moving and static ``(*spatial)`` scans scaled to [0, 1] (``pretrained.scaled``).
    grids : list of transforms.Grid
        Their grids.
    moments : list of tuple
        Their :func:`brain_moments`.
    static_work : transforms.Grid
        The static scan's working grid (centred on its brain, RAS axes), each side divisible by
        the ``LEVELS``' factors: where the brains are compared.
    compiled : bool
        Optimise the affine map by XLA (:func:`optimise_affine`).

    Returns
    -------
    world_map : np.ndarray
        ``(4, 4)`` LPS map, static point -> moving point.
    note : str or None
        One line when nothing beat the brain centres alone (then the map is theirs).
    """
    static = transforms.resample(images[1], grids[1], static_work)

    def on_work(world_map: np.ndarray) -> np.ndarray:
        return transforms.resample(images[0], grids[0], grid_through(world_map, static_work))

    (moving_centre, moving_spread), (static_centre, static_spread) = moments
    maps = [turned_about(turn, moving_centre, static_centre)
            for turn in candidate_rotations(moving_spread, static_spread)]
    scores = [mutual_information(on_work(world_map), static) for world_map in maps]
    best = maps[int(np.argmax(scores))]
    spacing = float(np.linalg.norm(static_work.matrix[:3, 0]))
    to_centred = np.eye(4)
    to_centred[:3] *= spacing
    to_centred[:3, 3] = -spacing * (np.array(static_work.shape) - 1.0) / 2.0
    work = to_centred @ np.linalg.inv(static_work.matrix)  # world to centred mm
    found = optimise_affine(on_work(best), static, spacing, compiled)
    maps.append(best @ np.linalg.inv(work) @ found @ work)
    scores.append(mutual_information(on_work(maps[-1]), static))
    if max(scores) > scores[0] + MIN_GAIN:
        return maps[int(np.argmax(scores))], None
    return maps[0], ("pose: no turn or affine map matched the brains better than their centres "
                     "alone (mutual information): kept the centres")
