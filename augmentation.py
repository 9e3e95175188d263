"""Training augmentations: random changes of the images (and label maps) that a loader draws.

- :func:`random_subject`: a random smooth diffeomorphic deformation (:func:`random_deformation`)
  and a random intensity change (bias field, gamma, noise: :func:`random_intensity`), the
  ``--augment`` kinds of :data:`AUGMENTATIONS`; ``synthetic.py`` makes the default data's
  subjects with it from the template.
- :func:`random_affine` and :func:`affine_moved`: a random affine map (rotation, scaling, shear,
  translation in mm) and an image moved by it, for ``--random_affine``
  (``dataloader.PairLoader.misaligned``) and the affine benchmark.

Every draw comes from the ``np.random.Generator`` passed in, so a loader's batch depends on its
seed alone.
"""
import numpy as np

import sampling
import shapes
import transforms
import utils

# Velocity drawn on a coarse grid of control points, in voxels.
VELOCITY_SPACING = 8  # control-point spacing, voxels
VELOCITY_STD = 2.5  # std of the velocity at the control points, voxels
INTEGRATION_FACTOR = 4  # the velocity is integrated on a grid this many times coarser
BIAS_SPACING = 24  # control-point spacing of the log bias field, voxels
BIAS_STD = 0.1  # std of the log bias field
GAMMA_STD = 0.2  # std of log(gamma)
NOISE_STD = 0.02  # std of additive Gaussian noise, intensity units
AUGMENTATIONS = ("elastic", "intensity")  # the kinds of --augment
# Random affine maps of training (--random_affine) and of the affine benchmark: rotation about
# each axis pair (degrees), scaling per axis, shear, translation (mm).
RANDOM_AFFINE = {"rotation": 20.0, "scaling": (0.85, 1.15), "shear": 0.1, "translation": 15.0}


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
    and squaring) on a grid ``INTEGRATION_FACTOR`` times coarser, then upsampled. That coarse grid
    is a lattice with its end points on the image's corner voxels, so it is upsampled by
    :func:`utils.resize` (aligned corners, vectors times ``(n - 1) / (m - 1)``), not by the
    networks' :func:`utils.resize_displacement` (block-averaging voxel centres, ``n / m``), which
    would give other fields and so other fixed validation subjects.

    Returns
    -------
    np.ndarray
        ``(1, *shape, ndim)`` float32 displacement in voxels, 'ij' order.
    """
    small = tuple(shapes.ceil_div(n, INTEGRATION_FACTOR) for n in shape)
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


def random_subject(image: np.ndarray, rng: np.random.Generator, seg: np.ndarray | None = None,
                   kinds: tuple[str, ...] = AUGMENTATIONS
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` under a random smooth deformation (its label map alike) and intensity change.

    Parameters
    ----------
    image : np.ndarray
        ``(*spatial)`` in [0, 1].
    rng : np.random.Generator
        Source of the randomness.
    seg : np.ndarray, optional
        ``(*spatial)`` integer label map of ``image``, warped with nearest neighbour.
    kinds : tuple of str
        Changes of :data:`AUGMENTATIONS` to make: "elastic" (:func:`random_deformation`),
        "intensity" (:func:`random_intensity`); both by default.

    Returns
    -------
    image : np.ndarray
        ``(*spatial)`` float32 in [0, 1].
    seg : np.ndarray or None
        ``(*spatial)`` int32, when ``seg`` is given.
    """
    image = np.asarray(image, np.float32)
    if "elastic" in kinds:
        deformation = random_deformation(image.shape, rng)
        image = utils.warp(image[None, ..., None], deformation).numpy()[0, ..., 0]
        if seg is not None:
            seg = utils.warp(np.asarray(seg, np.int32)[None, ..., None], deformation,
                             "nearest").numpy()[0, ..., 0]
    if "intensity" in kinds:
        image = random_intensity(image, rng)
    return image, seg


def augmentations(augment) -> tuple[str, ...]:
    """The kinds of ``--augment``: a list of :data:`AUGMENTATIONS` (empty: all of them), or a
    bool as runs recorded it before kinds existed; ``()`` for none."""
    if augment is True or augment == []:
        return AUGMENTATIONS
    return tuple(augment or ())


def random_affine(rng: np.random.Generator, shape: tuple[int, ...], spacing=None,
                  rotation: float = RANDOM_AFFINE["rotation"],
                  scaling: tuple[float, float] = RANDOM_AFFINE["scaling"],
                  shear: float = RANDOM_AFFINE["shear"],
                  translation: float = RANDOM_AFFINE["translation"]) -> np.ndarray:
    """A random affine map of a grid's voxels about its centre, drawn in millimetres.

    ``A = R S H``: rotation by uniform angles in ``[-rotation, rotation]`` degrees per axis
    pair, scaling uniform in ``scaling`` per axis, shear ``H`` with off-diagonal (upper)
    entries uniform in ``[-shear, shear]``; a translation uniform in ``[-translation,
    translation]`` mm per axis.

    Parameters
    ----------
    rng : np.random.Generator
        The draws' generator.
    shape : tuple of int
        Spatial shape of the grid.
    spacing : float or sequence of float, optional
        Voxel size in mm (default 1).

    Returns
    -------
    np.ndarray
        ``(ndim, ndim + 1)`` map ``[A | b]`` of voxel coordinates: ``y = A (x - c) + c + t``,
        ``c`` the grid's centre, in voxels, 'ij' order.
    """
    ndim = len(shape)
    voxel = np.broadcast_to(np.asarray(1.0 if spacing is None else spacing, float), (ndim,))
    angles = np.radians(rng.uniform(-rotation, rotation, ndim * (ndim - 1) // 2))
    sheared = np.eye(ndim)
    sheared[np.triu_indices(ndim, 1)] = rng.uniform(-shear, shear, ndim * (ndim - 1) // 2)
    in_mm = transforms.rotation_matrix(angles) @ np.diag(rng.uniform(*scaling, ndim)) @ sheared
    matrix = in_mm * voxel[None, :] / voxel[:, None]  # the same map in voxel coordinates
    shift = rng.uniform(-translation, translation, ndim) / voxel
    centre = (np.asarray(shape) - 1) / 2
    return np.concatenate([matrix, (centre + shift - matrix @ centre)[:, None]], axis=1)


def affine_moved(volume: np.ndarray, matrix: np.ndarray, interpolation: str = "linear"
                 ) -> np.ndarray:
    """``volume`` resampled by an affine map of its voxels: ``moved[x] = volume[A x + b]``
    (zero outside), e.g. to misalign a moving image by :func:`random_affine`."""
    coords = transforms.spacing_grid(volume.shape).coordinates()
    return sampling.sample(volume, coords @ matrix[:, :-1].T + matrix[:, -1], interpolation)
