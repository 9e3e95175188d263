"""Keras loaders of moving/static pairs for ``model.fit``: batches drawn by seed.

- :class:`RegistrationDataLoader` pairs every moving image with one static atlas (scan-to-atlas)
  or with its own static image; :class:`ScanToScanDataLoader` draws random pairs from one set.
  Batch ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a run resumes exactly;
  :class:`RestOfEpoch` gives the batches of an epoch from one on, to resume in its middle.

Batches are dicts of the models' inputs (:func:`batch`): ``moving`` and ``static`` and, for the
segmentation loss, both label maps. They hold no targets: the models compute their losses from
their own inputs and outputs (``objective.TrainingModel``).
"""
from collections.abc import Callable

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np

import augmentation
import filelists
import pairing
import shapes
from volumes import DataError

def one_hot(seg: np.ndarray, labels) -> np.ndarray:
    """``(*shape)`` label map -> ``(*shape, K)`` float32 one-hot map of the ``K`` ``labels``."""
    return (np.asarray(seg)[..., None] == np.asarray(labels)).astype(np.float32)


def batch(moving: np.ndarray, static: np.ndarray, moving_seg=None, static_seg=None,
          labels=None) -> dict[str, np.ndarray]:
    """The model inputs of a batch of pairs (the models compute their losses from their inputs
    and outputs: a batch has no targets).

    Parameters
    ----------
    moving : np.ndarray
        ``(B, *spatial)`` moving images.
    static : np.ndarray
        ``(B, *spatial)`` static images, or one ``(*spatial)`` image for the whole batch.
    moving_seg, static_seg : np.ndarray, optional
        Label maps shaped like ``moving`` and ``static``; needed with ``labels``.
    labels : sequence of int, optional
        Labels of the segmentation loss: the label maps are then inputs too, one-hot.

    Returns
    -------
    dict
        ``moving`` and ``static``, ``(B, *spatial, 1)`` float32; with ``labels``,
        ``moving_seg`` and ``static_seg``, ``(B, *spatial, K)`` float32 one-hot maps.
    """
    moving = moving[..., None].astype(np.float32)
    inputs = {"moving": moving,
              "static": np.broadcast_to(static, moving.shape[:-1])[..., None].astype(np.float32)}
    if labels:
        if moving_seg is None or static_seg is None:
            raise DataError("the segmentation loss needs label maps ('segs') for every volume")
        inputs["moving_seg"] = one_hot(moving_seg, labels)
        inputs["static_seg"] = one_hot(np.broadcast_to(static_seg, moving.shape[:-1]), labels)
    return inputs


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
    labels : sequence of int, optional
        Labels of the segmentation loss: batches then hold both label maps (see :func:`batch`).
    random_affine : bool
        Move every moving image (and label map) by its own random affine map
        (``augmentation.random_affine``: rotation, scaling, shear, translation), so that an
        affine stage learns to undo misalignment.
    spacing : float or sequence of float, optional
        Voxel size in mm, for the translations of ``random_affine`` (default 1).
    **kwargs
        Passed to ``keras.utils.PyDataset`` (``workers``, ``use_multiprocessing``...).
    """

    def __init__(self, batch_size: int = 1, seed: int | None = None, labels=None,
                 random_affine: bool = False, spacing=None, **kwargs):
        super().__init__(**kwargs)
        self.batch_size, self.epoch = batch_size, 0
        self.seed = np.random.SeedSequence().entropy if seed is None else seed
        self.labels = labels
        self.random_affine, self.spacing = random_affine, spacing

    def misaligned(self, index: int, moving: np.ndarray, moving_seg: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """With ``random_affine``, the ``(B, *spatial)`` moving images and label maps of batch
        ``index``, each pair moved by its own random affine map (drawn from the batch's seed);
        else as they are."""
        if not self.random_affine:
            return moving, moving_seg
        rng = np.random.default_rng((*self.seed_of(index), 1))
        maps = [augmentation.random_affine(rng, moving.shape[1:], self.spacing) for _ in moving]
        moving = np.stack([augmentation.affine_moved(image, m) for image, m in zip(moving, maps)])
        if moving_seg is not None:
            moving_seg = np.stack([augmentation.affine_moved(seg, m, "nearest")
                                   for seg, m in zip(moving_seg, maps)])
        return moving, moving_seg

    def seed_of(self, *index: int) -> tuple[int, ...]:
        """Seed of a draw in the current epoch: ``(seed, epoch, *index)``."""
        return (self.seed, self.epoch, *index)

    def on_epoch_end(self) -> None:
        self.epoch += 1


class RegistrationDataLoader(PairLoader):
    """Batches of (moving, static) pairs for ``model.fit``, ``evaluate`` and ``predict``.

    Parameters
    ----------
    moving : np.ndarray or filelists.LazyVolumes
        ``(N, *spatial)`` moving images in [0, 1]; lazy ones are read batch by batch.
    static : np.ndarray or filelists.LazyVolumes
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
        Passed to :class:`PairLoader` (``labels``...) and ``keras.utils.PyDataset``.
    """

    def __init__(self, moving, static, batch_size: int = 1, shuffle: bool = False,
                 seed: int | None = None, moving_segs=None, static_segs=None, **kwargs):
        super().__init__(batch_size, seed, **kwargs)
        self.moving, self.static = filelists.as_volumes(moving), filelists.as_volumes(static)
        self.moving_segs, self.static_segs = moving_segs, static_segs
        if self.static.shape not in (self.moving.shape, self.moving.shape[1:]):
            raise DataError(f"moving and static shapes differ: {self.moving.shape[1:]} vs "
                            f"{self.static.shape[-self.moving.ndim + 1:]}")
        self.shuffle = shuffle

    def __len__(self) -> int:
        return shapes.ceil_div(len(self.moving), self.batch_size)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        order = np.arange(len(self.moving))
        if self.shuffle:
            order = np.random.default_rng(self.seed_of()).permutation(order)
        pick = order[index * self.batch_size:(index + 1) * self.batch_size]
        one_static = self.static.shape != self.moving.shape
        static = self.static if one_static else filelists.take(self.static, pick)
        static_seg = (self.static_segs if one_static or self.static_segs is None
                      else filelists.take(self.static_segs, pick))
        moving_seg = None if self.moving_segs is None else filelists.take(self.moving_segs, pick)
        moving, moving_seg = self.misaligned(index, filelists.take(self.moving, pick), moving_seg)
        return batch(moving, static, moving_seg, static_seg, self.labels)


class ScanToScanDataLoader(PairLoader):
    """Random pairs of distinct volumes from one set, redrawn every epoch.

    Parameters
    ----------
    vols : np.ndarray or filelists.LazyVolumes
        ``(N, *spatial)`` images in [0, 1], N >= 2; lazy ones are read batch by batch.
    batch_size : int
        Pairs per batch.
    pairs_per_epoch : int
        Pairs drawn per epoch.
    seed : int, optional
        Seed of the draws.
    augment : callable, optional
        ``augment(image, rng, seg) -> (image, seg)`` applied to both images of every pair
        (with their label maps, if any), e.g. ``augmentation.random_subject`` (a random smooth
        deformation and intensity change), which helps when the set is small.
    segs : np.ndarray, optional
        ``(N, *spatial)`` label maps, for the segmentation loss.
    **kwargs
        Passed to :class:`PairLoader` (``labels``...) and ``keras.utils.PyDataset``.
    """

    def __init__(self, vols, batch_size: int = 1, pairs_per_epoch: int = 100,
                 seed: int | None = None,
                 augment: Callable[..., tuple[np.ndarray, np.ndarray | None]] | None = None,
                 segs=None, **kwargs):
        super().__init__(batch_size, seed, **kwargs)
        self.vols, self.pairs_per_epoch = filelists.as_volumes(vols), pairs_per_epoch
        self.augment, self.segs = augment, segs
        if len(self.vols) < 2:
            raise DataError(f"scan-to-scan pairs need at least 2 training volumes, "
                            f"got {len(self.vols)}")

    def __len__(self) -> int:
        return shapes.ceil_div(self.pairs_per_epoch, self.batch_size)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        pairs = pairing.scan_to_scan_pairs(len(self.vols), self.pairs_per_epoch, self.seed_of())
        pick = pairs[index * self.batch_size:(index + 1) * self.batch_size]
        sides = [(filelists.take(self.vols, pick[:, side]),
                  None if self.segs is None else filelists.take(self.segs, pick[:, side]))
                 for side in (0, 1)]
        if self.augment is not None:
            rng = np.random.default_rng(self.seed_of(index))
            sides = [self.augmented(images, segs, rng) for images, segs in sides]
        (moving, moving_seg), (static, static_seg) = sides
        moving, moving_seg = self.misaligned(index, moving, moving_seg)
        return batch(moving, static, moving_seg, static_seg, self.labels)

    def augmented(self, images: np.ndarray, segs: np.ndarray | None, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(B, *spatial)`` images, and their label maps if any, each changed by ``augment``."""
        changed = [self.augment(image, rng, None if segs is None else segs[i])
                   for i, image in enumerate(images)]
        return (np.stack([image for image, _ in changed]),
                None if segs is None else np.stack([seg for _, seg in changed]))


class RestOfEpoch(keras.utils.PyDataset):
    """The batches of one epoch of a :class:`PairLoader` from ``start`` on: the rest of an epoch
    that a signal stopped in its middle, to resume it without drawing its first batches again.

    Parameters
    ----------
    loader : PairLoader
        The training loader, at the epoch to finish (``loader.epoch``).
    start : int
        Batches of the epoch already done.
    steps : int
        Batches of a whole epoch.
    """

    def __init__(self, loader: PairLoader, start: int, steps: int):
        super().__init__(workers=loader.workers, use_multiprocessing=loader.use_multiprocessing,
                         max_queue_size=loader.max_queue_size)
        self.loader, self.start, self.steps = loader, start, steps

    def __len__(self) -> int:
        return self.steps - self.start

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.loader[self.start + index]

    def on_epoch_end(self) -> None:
        self.loader.on_epoch_end()
