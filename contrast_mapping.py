"""Bringing two brain scans of any contrasts into one T1-like contrast, the shipped model's.

The scans are skull-stripped, scaled to [0, 1] and posed on one working grid (``pretrained.py``).
A scan counts as T1 when its brain grows brighter with depth (:func:`t1_like`); the other scan is
mapped onto it, its bias field divided out first (:func:`in_contrast_of`); two scans that are
not T1 go through the static scan's own brain depth (:func:`in_common_contrast`).
"""
import numpy as np
from scipy import ndimage

import pose

CONTRAST_BINS = 64  # intensity bins of the moving scan mapped onto the static scan's contrast
BIAS_SIGMA_MM = 18.0  # smoothness of the bias field divided out before that mapping
T1_DEPTH = 0.5  # least correlation of a T1 scan's brain intensities with their depth
BRIGHT = 99.5  # a scan's intensities are scaled to [0, 1] by this percentile of its brain's
DEPTH_CAP_MM = 24.0  # depth (distance to the brain's edge) beyond which a voxel counts as deep


def conditional_means(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each voxel's ``source`` intensity replaced by the mean ``target`` intensity of the
    ``mask`` voxels whose ``source`` intensity falls into its bin (``CONTRAST_BINS`` bins of
    [0, 1]; the conditional mean that the correlation ratio measures), bins that hold none
    interpolated between their neighbours; ``source`` itself where ``mask`` is empty."""
    bins = np.minimum((source * CONTRAST_BINS).astype(np.int64), CONTRAST_BINS - 1)
    counts = np.bincount(bins[mask], minlength=CONTRAST_BINS)
    if not counts.any():  # no brain in common: nothing to learn the mapping from
        return source
    sums = np.bincount(bins[mask], target[mask], minlength=CONTRAST_BINS)
    filled = np.flatnonzero(counts)
    table = np.interp(np.arange(CONTRAST_BINS), filled, sums[filled] / counts[filled])
    return table[bins]


def smoothed_in(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """``values`` averaged over ``mask`` by a Gaussian of ``sigma`` voxels (normalised
    convolution: the voxels outside ``mask`` carry no weight)."""
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    total = ndimage.gaussian_filter(np.where(mask, values, 0.0).astype(np.float32), sigma)
    return total / np.maximum(weight, 1e-6)


def bias_corrected(moving: np.ndarray, static: np.ndarray, mask: np.ndarray,
                   spacing: float) -> np.ndarray:
    """The moving image divided by its smooth multiplicative bias field relative to the static
    image: the moving intensity each static bin predicts (:func:`conditional_means`) against the
    moving image, the log of their ratio smoothed over the brain by ``BIAS_SIGMA_MM`` (voxels of
    ``spacing`` mm)."""
    predicted = conditional_means(static, moving, mask)
    log_ratio = np.log(np.maximum(moving, 1e-3)) - np.log(np.maximum(predicted, 1e-3))
    field = np.exp(smoothed_in(log_ratio, mask, BIAS_SIGMA_MM / spacing))
    return np.clip(moving / field, 0.0, 1.0)


def in_contrast_of(moving: np.ndarray, static: np.ndarray, spacing: float) -> np.ndarray:
    """The moving image in the static image's contrast, the two brains posed on one grid.

    The moving image's smooth bias field relative to the static one is divided out first
    (:func:`bias_corrected`); then each moving voxel takes the mean static intensity of the brain
    voxels of its intensity bin (:func:`conditional_means`). Any mapping of intensities to
    tissues (a T2, FLAIR or PD scan against a T1) comes out close to the static scan's, as far as
    one intensity names one tissue; the background stays 0.

    Parameters
    ----------
    moving, static : np.ndarray
        ``(*spatial)`` images in [0, 1] on one working grid, brains posed (``pose.estimate``).
    spacing : float
        Its voxel size, mm.

    Returns
    -------
    np.ndarray
        ``(*spatial)`` float32 in [0, 1].
    """
    brain = (moving > pose.BRAIN) & (static > pose.BRAIN)
    if not brain.any():
        return moving
    corrected = bias_corrected(moving, static, brain, spacing)
    mapped = conditional_means(corrected, static, brain)
    return np.where(moving > pose.BRAIN, mapped, 0.0).astype(np.float32)


def brain_depth(image: np.ndarray, spacing: float) -> np.ndarray:
    """Each brain voxel's distance to the brain's edge (voxels of ``spacing`` mm), capped at
    ``DEPTH_CAP_MM`` and divided by it: ``(*spatial)`` float32 in [0, 1], 0 outside the brain
    (above ``pose.BRAIN``)."""
    depth = ndimage.distance_transform_edt(image > pose.BRAIN) * spacing
    return np.minimum(depth / DEPTH_CAP_MM, 1.0).astype(np.float32)


def t1_like(image: np.ndarray, spacing: float) -> bool:
    """Whether a skull-stripped scan on the working grid has a T1's contrast: white matter
    (deep) bright, cortex and CSF (near the brain's edge) darker, so that its brain
    intensities correlate by at least ``T1_DEPTH`` with their depth (:func:`brain_depth`;
    about 0.6 for T1 scans, -0.6 to 0.45 for T2, FLAIR and PD-like ones)."""
    brain = image > pose.BRAIN
    if brain.sum() < 2:
        return False
    correlation = np.corrcoef(image[brain], brain_depth(image, spacing)[brain])[0, 1]
    return bool(correlation >= T1_DEPTH)


def in_common_contrast(moving: np.ndarray, static: np.ndarray, spacing: float
                       ) -> list[np.ndarray]:
    """The pair (moving, static) in one T1-like contrast, the network's, brains posed on one
    working grid.

    A T1-like static scan (:func:`t1_like`) keeps its contrast and the moving scan is mapped onto
    it (:func:`in_contrast_of`); else a T1-like moving scan keeps its own and the static scan
    is mapped onto it; else the static scan is first mapped onto its own brain depth
    (:func:`brain_depth`: deep white matter bright, the edge dark, a T1's order of tissues)
    and the moving scan onto that, scaled as ``pretrained.scaled`` scales a scan. Any contrast
    may be on either side; ``spacing``: the grid's voxel size, mm.

    Returns
    -------
    list of np.ndarray
        ``[moving, static]``, ``(*spatial)`` float32 in [0, 1].
    """
    if t1_like(static, spacing):
        return [in_contrast_of(moving, static, spacing), static]
    if t1_like(moving, spacing):
        return [moving, in_contrast_of(static, moving, spacing)]
    mapped = in_contrast_of(static, brain_depth(static, spacing), spacing)  # 0 off the brain
    static = np.clip(mapped / np.percentile(mapped[mapped > 0], BRIGHT), 0.0, 1.0)
    return [in_contrast_of(moving, static, spacing), static]
