"""The embedded default data: synthetic subjects made from the MNI152 template.

Each subject is a random smooth diffeomorphic deformation of the template (its tissue labels
warped alike) followed by a random intensity change (bias field, gamma, noise). Training makes
a new subject at every step (:class:`SyntheticDataLoader`); the validation subjects are fixed by
``VALIDATION_SEED`` (:func:`default_validation_set`). These are synthetic deformations of one
real template, not real subjects.
"""
import dataclasses
import os

import numpy as np

import dataloader
import datasets
import shapes
import utils
import volumes

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mni152_2mm.npz")
DEFAULT_SLICE = 44  # axial slice of the 80x96x80 template used for 2D (through the ventricles)
VALIDATION_SEED = 20180618  # the validation subjects are the same in every run
NUM_VALIDATION = {2: 16, 3: 8}  # validation subjects per dimension

# Velocity drawn on a coarse grid of control points, in voxels.
VELOCITY_SPACING = 8  # control-point spacing, voxels
VELOCITY_STD = 2.5  # std of the velocity at the control points, voxels
INTEGRATION_FACTOR = 4  # the velocity is integrated on a grid this many times coarser
BIAS_SPACING = 24  # control-point spacing of the log bias field, voxels
BIAS_STD = 0.1  # std of the log bias field
GAMMA_STD = 0.2  # std of log(gamma)
NOISE_STD = 0.02  # std of additive Gaussian noise, intensity units
AUGMENTATIONS = ("elastic", "intensity")  # the kinds of --augment


def load_default_data(ndim: int = 3) -> datasets.Dataset:
    """The embedded MNI152 template as an atlas with tissue labels (no subjects).

    Parameters
    ----------
    ndim : {2, 3}
        3: the 80x96x80 volume at 2 mm; 2: its axial slice ``DEFAULT_SLICE`` (80x96).

    Returns
    -------
    datasets.Dataset
        ``vols`` empty ``(0, *spatial)``; ``atlas`` the T1 template in [0, 1]; ``atlas_seg``
        labels 1 CSF, 2 grey matter, 3 white matter; ``spacing`` (2 mm per axis, from the
        template's affine).
    """
    if ndim not in (2, 3):
        raise volumes.DataError(f"the default data is 2D or 3D, got ndim={ndim}")
    with np.load(DEFAULT_DATA) as stored:
        t1, labels = datasets.normalize(stored["t1"]), stored["labels"]
        names = [str(name) for name in stored["label_names"][1:]]
        spacing = np.linalg.norm(stored["affine"][:3, :3], axis=0)  # mm per array axis
    if ndim == 2:
        t1, labels = t1[..., DEFAULT_SLICE], labels[..., DEFAULT_SLICE]
    return datasets.Dataset(vols=np.zeros((0,) + t1.shape, np.float32), atlas=t1,
                              atlas_seg=labels.astype(np.int32), labels=np.array([1, 2, 3]),
                              label_names=names, spacing=tuple(spacing[:ndim].tolist()))


def default_validation_set(ndim: int) -> datasets.Dataset:
    """The default data's fixed validation subjects, with the template as their atlas.

    Parameters
    ----------
    ndim : {2, 3}
        Dimension: ``NUM_VALIDATION[ndim]`` subjects made with ``VALIDATION_SEED``.
    """
    data = load_default_data(ndim)
    vols, segs = synthetic_subjects(data.atlas, NUM_VALIDATION[ndim], VALIDATION_SEED,
                                    data.atlas_seg)
    return dataclasses.replace(data, vols=vols, segs=segs)


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


def synthetic_subjects(atlas: np.ndarray, count: int, seed=None,
                       atlas_seg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Subjects made from the atlas by :func:`random_subject`.

    Parameters
    ----------
    atlas : np.ndarray
        ``(*spatial)`` template in [0, 1].
    count : int
        Number of subjects.
    seed : int or tuple of int, optional
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


class SyntheticDataLoader(dataloader.PairLoader):
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
    atlas_seg : np.ndarray, optional
        ``(*spatial)`` label map of the template, for the segmentation loss.
    **kwargs
        Passed to ``dataloader.PairLoader`` (``labels``...) and
        ``keras.utils.PyDataset``.
    """

    def __init__(self, atlas, batch_size: int = 1, steps: int = 100,
                 seed: int | None = None, atlas_seg=None, **kwargs):
        super().__init__(batch_size, seed, **kwargs)
        self.atlas, self.steps, self.atlas_seg = atlas, steps, atlas_seg

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        atlas_seg = self.atlas_seg if self.labels else None
        vols, segs = synthetic_subjects(self.atlas, self.batch_size, self.seed_of(index),
                                        atlas_seg)
        vols, segs = self.misaligned(index, vols, segs)
        return dataloader.batch(vols, self.atlas, segs, atlas_seg, self.labels)
