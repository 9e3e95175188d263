"""Image pairs synthesised from label maps: training that no contrast limits (SynthMorph).

Hoffmann et al. (IEEE TMI 2022) train a registration network on images synthesised from label
maps alone, each image of a pair with a random contrast of its own, and compare only the label
maps in the loss: the network learns to register anatomy whatever its intensities. Here, in
TensorFlow, from stateless random ops seeded by the loader's ``(seed, epoch, index)``, so that a
batch is reproducible and a resumed run exact:

- :func:`random_label_maps`: label maps from smoothed noise (``--synth shapes``: no data at all);
- :func:`random_warp`: a random smooth diffeomorphic displacement (a velocity of smooth noise,
  integrated by scaling and squaring);
- :func:`synthesize`: an image of a random contrast from a label map: a random intensity mean
  and spread per label, partial-volume blur, a smooth multiplicative bias field, a gamma, noise;
- :class:`SynthLoader`: batches of two label maps, each warped, with an image synthesised from
  each: the inputs of a model whose loss compares ``static_seg`` with ``moved_seg``;
- :func:`shapes_set`: subjects of random shapes, each image of its own contrast (validation).
"""
import numpy as np

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import tensorflow as tf

import augmentation
import dataloader
import datasets
import utils

SPACING = 8  # voxels between the control points of random velocities, bias fields and shapes
WARP_STD = 2.0  # largest standard deviation of a random velocity, voxels
# The random affine maps of the moving side for models with an affine stage: what is left after
# ``pretrained.register_brains`` centres each brain (head tilt, head size), with a margin.
AFFINE = {"rotation": 15.0, "scaling": (0.9, 1.1), "shear": 0.05, "translation": 10.0}
INTEGRATION = 4  # random velocities are integrated on a grid this many times coarser
BLUR = 1.0  # largest partial-volume blur, Gaussian sigma in voxels
BIAS_STD = 0.2  # largest standard deviation of the bias field's log
GAMMA_STD = 0.25  # standard deviation of the gamma's log
NOISE = 0.05  # largest standard deviation of the noise, as a share of the intensity range


def seeds(*index: int) -> tf.Tensor:
    """A seed of TensorFlow's stateless random ops, shape ``(2,)``, made from integers; the
    functions below split it into one seed per draw (``stateless_split``), in the graph."""
    return tf.constant(np.random.SeedSequence(index).generate_state(2), tf.int64)


def smooth_noise(seed: tf.Tensor, shape: tuple[int, ...], channels: int,
                 spacing: int = SPACING) -> tf.Tensor:
    """``(1, *shape, channels)`` standard normal noise drawn every ``spacing`` voxels and
    interpolated (N-linear) between: smooth at that scale."""
    coarse = [max(2, -(-size // spacing) + 1) for size in shape]
    return utils.resize(tf.random.stateless_normal([1, *coarse, channels], seed), shape)


def random_warp(seed: tf.Tensor, shape: tuple[int, ...], std: float = WARP_STD) -> tf.Tensor:
    """``(1, *shape, ndim)`` displacement in voxels of a random diffeomorphism: ``exp(v)`` of a
    smooth velocity whose standard deviation is drawn in ``[0, std]`` voxels. The velocity,
    smooth at ``SPACING`` voxels, is integrated on a grid ``INTEGRATION`` times coarser and its
    displacement resized up: the same field, at a fraction of the cost."""
    draw = tf.random.experimental.stateless_split(seed, 2)
    small = tuple(max(2, size // INTEGRATION) for size in shape)
    scale = tf.random.stateless_uniform([], draw[0], 0.0, std / INTEGRATION)
    velocity = smooth_noise(draw[1], small, len(shape), SPACING // INTEGRATION) * scale
    return utils.resize_displacement(utils.integrate_velocity(velocity), shape)


@tf.function
def random_label_maps(seed: tf.Tensor, shape: tuple[int, ...], labels: int) -> tf.Tensor:
    """``(1, *shape)`` int32 label map of ``labels`` labels (0 to ``labels - 1``): the label of
    the largest of ``labels`` smooth noise channels, at every voxel."""
    noise = smooth_noise(seed, shape, labels, spacing=max(SPACING, min(shape) // 4))
    return tf.argmax(noise, axis=-1, output_type=tf.int32)


@tf.function
def warped_map(label_map: tf.Tensor, seed: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """``(1, *spatial)`` int32 label map warped by a :func:`random_warp` of ``seed`` and then
    moved by the ``(1, ndim, ndim + 1)`` affine ``matrix`` of voxels (the identity: not moved),
    with nearest-neighbour sampling; compiled once per shape."""
    shape = tuple(label_map.shape[1:])
    field = utils.affine_displacement(matrix, random_warp(seed, shape))
    warped = utils.warp(tf.cast(label_map[..., None], tf.float32), field, "nearest")
    return tf.cast(warped[..., 0], tf.int32)


def _blur(image: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """``(1, *spatial, 1)`` image convolved with a Gaussian of ``sigma`` voxels, axis by axis."""
    offsets = tf.range(-3.0, 4.0)
    kernel = tf.exp(-offsets**2 / (2.0 * tf.maximum(sigma, 1e-2) ** 2))
    kernel /= tf.reduce_sum(kernel)
    ndim = len(image.shape) - 2
    conv = {2: tf.nn.conv2d, 3: tf.nn.conv3d}[ndim]
    for axis in range(ndim):
        shape = [1] * ndim + [1, 1]
        shape[axis] = 7
        image = conv(image, tf.reshape(kernel, shape), [1] * (ndim + 2), "SAME")
    return image


def _min_max(image: tf.Tensor) -> tf.Tensor:
    """``image`` scaled to [0, 1]."""
    low, high = tf.reduce_min(image), tf.reduce_max(image)
    return (image - low) / tf.maximum(high - low, 1e-6)


@tf.function
def synthesize(label_map: tf.Tensor, seed: tf.Tensor, labels: int) -> tf.Tensor:
    """An image of a random contrast drawn from a label map.

    Parameters
    ----------
    label_map : tf.Tensor
        ``(1, *spatial)`` int32 labels, 0 to ``labels - 1``.
    seed : tf.Tensor
        ``(2,)`` seed of every draw (:func:`seeds`).
    labels : int
        Number of labels.

    Returns
    -------
    tf.Tensor
        ``(1, *spatial, 1)`` float32 in [0, 1]: each label's voxels drawn from a normal of a
        random mean in [0, 1] and spread in [0, 0.1], blurred by a Gaussian of sigma in [0,
        ``BLUR``] voxels (partial volumes), multiplied by ``exp`` of a smooth field (bias), raised
        to a random gamma, with noise of spread in [0, ``NOISE``].
    """
    shape = tuple(label_map.shape[1:])
    draw = tf.random.experimental.stateless_split(seed, 9)
    means = tf.random.stateless_uniform([labels], draw[0])
    spreads = tf.random.stateless_uniform([labels], draw[1], 0.0, 0.1)
    image = (tf.gather(means, label_map) + tf.gather(spreads, label_map)
             * tf.random.stateless_normal(label_map.shape, draw[2]))[..., None]
    image = _blur(image, tf.random.stateless_uniform([], draw[3], 0.0, BLUR))
    bias = tf.random.stateless_uniform([], draw[4], 0.0, BIAS_STD)
    image = _min_max(image * tf.exp(smooth_noise(draw[5], shape, 1) * bias))
    image = image ** tf.exp(tf.random.stateless_normal([], draw[6]) * GAMMA_STD)
    noise = tf.random.stateless_uniform([], draw[7], 0.0, NOISE)
    return _min_max(image + noise * tf.random.stateless_normal(tf.shape(image), draw[8]))


class SynthLoader(dataloader.PairLoader):
    """Pairs synthesised from label maps (:func:`synthesize`), new at every step.

    Each pair takes two label maps (two distinct maps of ``label_maps``, or one drawn by
    :func:`random_label_maps` twice), warps each by its own :func:`random_warp` (nearest neighbour),
    and synthesises an image from each, each with its own contrast. Batches hold ``moving`` and
    ``static`` (the images) and ``moving_seg`` and ``static_seg`` (one-hot maps of the labels
    ``loss_labels``).

    Parameters
    ----------
    label_maps : np.ndarray or None
        ``(N, *spatial)`` integer label maps to draw from, N >= 2; None: random shapes.
    shape : tuple of int
        Spatial shape (that of ``label_maps``, when given).
    labels : sequence of int
        The labels the images are drawn from (each its own intensity; others are background).
    loss_labels : sequence of int
        The labels of the one-hot maps the loss compares (a subset of ``labels``).
    batch_size, steps : int
        Pairs per batch and batches per epoch.
    seed : int, optional
        Seed; batch ``i`` of epoch ``e`` depends on ``(seed, e, i)`` alone.
    **kwargs
        Passed to ``dataloader.PairLoader``: with ``random_affine``, the moving side is also
        moved by a random affine map (``augmentation.random_affine`` of the ranges
        ``AFFINE``), for models with an affine stage.
    """

    def __init__(self, label_maps, shape: tuple[int, ...], labels, loss_labels,
                 batch_size: int = 1, steps: int = 100, seed: int | None = None, **kwargs):
        super().__init__(batch_size, seed, labels=list(loss_labels), **kwargs)
        self.label_maps, self.shape, self.steps = label_maps, tuple(shape), steps
        self.image_labels = np.sort(np.asarray(labels))

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        sides = [[], []]  # (image, label map) of each pair, moving and static
        for pair in range(self.batch_size):
            maps = self.pair_of_maps((*self.seed_of(index), pair))
            for side, label_map in enumerate(maps):
                sides[side].append(self.side(label_map, (*self.seed_of(index), pair, side)))
        (moving, moving_seg), (static, static_seg) = (
            (np.stack([image for image, _ in pairs]), np.stack([seg for _, seg in pairs]))
            for pairs in sides)
        return dataloader.batch(moving, static, moving_seg, static_seg, self.labels)

    def side(self, label_map: tf.Tensor, where: tuple) -> tuple[np.ndarray, np.ndarray]:
        """One side of a pair, drawn from the seed ``where`` (its last number: 0 for the moving
        side, 1 for the static one): the ``(*shape)`` label map warped (and, on the moving side
        with ``random_affine``, moved by a random affine map), and the image synthesised from
        it."""
        matrix = np.eye(len(self.shape), len(self.shape) + 1)
        if self.random_affine and where[-1] == 0:
            matrix = augmentation.random_affine(np.random.default_rng(where), self.shape,
                                                self.spacing, **AFFINE)
        seg = warped_map(label_map, seeds(*where), tf.constant(matrix[None], tf.float32))
        seg = seg.numpy()[0]
        image = synthesize(tf.constant(self.image_indices(seg)[None]), seeds(*where, 1),
                           len(self.image_labels) + 1)
        return image.numpy()[0, ..., 0], seg

    def image_indices(self, seg: np.ndarray) -> np.ndarray:
        """The index of each voxel's label in ``labels``, from 1; 0 for other labels."""
        found = np.clip(np.searchsorted(self.image_labels, seg), 0, len(self.image_labels) - 1)
        return np.where(self.image_labels[found] == seg, found + 1, 0).astype(np.int32)

    def pair_of_maps(self, seed: tuple) -> tuple[tf.Tensor, tf.Tensor]:
        """Two ``(1, *shape)`` int32 label maps: two distinct ones of the data (two subjects'
        anatomy), or one map of random shapes of ``len(labels)`` labels twice (the random
        warps then make the two sides differ)."""
        if self.label_maps is None:
            shapes = random_label_maps(seeds(*seed), self.shape, len(self.image_labels))
            return shapes, shapes
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(self.label_maps), 2, replace=False)
        return tuple(tf.constant(np.asarray(self.label_maps[i], np.int32)[None])
                     for i in picked)


def shapes_set(shape: tuple[int, ...], labels: int, count: int, seed: int) -> datasets.Dataset:
    """``count`` subjects of one map of random shapes (:func:`random_label_maps`), each warped
    by its own :func:`random_warp` and with an image of its own contrast (:func:`synthesize`):
    any two of them correspond, as two brains do. Labels 1 to ``labels - 1`` are scored (0 is
    the background)."""
    shapes = random_label_maps(seeds(seed), shape, labels)
    identity = tf.eye(len(shape), len(shape) + 1)[None]
    segs = [warped_map(shapes, seeds(seed, i), identity) for i in range(count)]
    vols = [synthesize(seg, seeds(seed, i, 1), labels).numpy()[0, ..., 0]
            for i, seg in enumerate(segs)]
    return datasets.Dataset(vols=np.stack(vols), segs=np.stack([seg.numpy()[0] for seg in segs]),
                            labels=np.arange(1, labels))
