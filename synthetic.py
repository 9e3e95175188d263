"""The embedded default data: synthetic subjects made from the MNI152 template.

Each subject is a random smooth diffeomorphic deformation of the template (its tissue labels
warped alike) followed by a random intensity change (bias field, gamma, noise), the training
augmentation ``augmentation.random_subject``. Training makes a new subject at every step
(:class:`SyntheticDataLoader`); the validation subjects are fixed by ``VALIDATION_SEED``
(:func:`default_validation_set`). These are synthetic deformations of one real template, not
real subjects.
"""
import dataclasses
import os

import numpy as np

import augmentation
import dataloader
import datasets
import volumes

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mni152_2mm.npz")
DEFAULT_SLICE = 44  # axial slice of the 80x96x80 template used for 2D (through the ventricles)
VALIDATION_SEED = 20180618  # the validation subjects are the same in every run
NUM_VALIDATION = {2: 16, 3: 8}  # validation subjects per dimension


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


def synthetic_subjects(atlas: np.ndarray, count: int, seed=None,
                       atlas_seg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Subjects made from the atlas by ``augmentation.random_subject``.

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
    vols, segs = zip(*(augmentation.random_subject(atlas, rng, atlas_seg)
                       for _ in range(count)))
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
