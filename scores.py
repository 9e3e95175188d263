"""Evaluation scores of a registration (TMI 2019, Sec. V; Learn2Reg), as plain numpy functions.

:func:`dice` and :func:`hd95` (95th-percentile Hausdorff distance) of label maps,
:func:`jacobian_determinant`, :func:`folding_fraction` and :func:`sdlogj` (spread of the log
Jacobian determinant) of a displacement field, :func:`score_registration` for one registered
pair and :func:`summarize` over pairs; :func:`headline` says a summary in one line and
:func:`write_dice_csv` writes its per-structure scores as a table.
"""
import csv

import numpy as np
from scipy import ndimage

import metrics
import volumes


def _label_maps(labels_a, labels_b, labels=None) -> tuple[np.ndarray, np.ndarray, list]:
    """Two label maps of one shape as arrays, and the non-zero labels to score in them.

    ``labels`` default to every label present in either map; background (0) is dropped.
    """
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    if labels_a.shape != labels_b.shape:
        raise ValueError(f"label maps differ in shape: {labels_a.shape} vs {labels_b.shape}")
    if labels is None:
        labels = np.union1d(np.unique(labels_a), np.unique(labels_b))
    return labels_a, labels_b, [label for label in np.asarray(labels).ravel() if label != 0]


def dice(labels_a: np.ndarray, labels_b: np.ndarray, labels=None) -> np.ndarray:
    """Hard Dice overlap per label: ``2 |A & B| / (|A| + |B|)``.

    Parameters
    ----------
    labels_a, labels_b : np.ndarray
        Integer label maps of the same shape.
    labels : sequence of int, optional
        Labels to score; by default every non-zero label present in either map. Background (0) is
        never scored.

    Returns
    -------
    np.ndarray
        ``(L,)`` float64 Dice per label, in the order of ``labels``; NaN for a label absent
        from both maps.
    """
    labels_a, labels_b, labels = _label_maps(labels_a, labels_b, labels)
    scores = []
    for label in labels:
        in_a, in_b = labels_a == label, labels_b == label
        total = in_a.sum() + in_b.sum()
        scores.append(2.0 * np.logical_and(in_a, in_b).sum() / total if total else np.nan)
    return np.asarray(scores, dtype=np.float64)


def jacobian_determinant(deformation: np.ndarray) -> np.ndarray:
    """Jacobian determinant of the map ``x -> x + u(x)``, by central differences.

    Parameters
    ----------
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement ``u`` in voxels, 'ij' order (2D or 3D).

    Returns
    -------
    np.ndarray
        ``(*spatial)`` determinant: 1 where the map preserves volume, <= 0 where it folds.
    """
    deformation = np.asarray(deformation, dtype=np.float64)
    ndim = deformation.ndim - 1
    if ndim not in (2, 3) or deformation.shape[-1] != ndim:
        raise ValueError(f"expected a (*spatial, ndim) displacement with ndim 2 or 3, "
                         f"got shape {deformation.shape}")
    partials = np.gradient(deformation, axis=tuple(range(ndim)))  # d u / d x_j, j = 0..ndim-1
    jacobian = np.stack(partials, axis=-1) + np.eye(ndim)  # [..., i, j] = d phi_i / d x_j
    return np.linalg.det(jacobian)


def folding_fraction(deformation: np.ndarray) -> float:
    """Share of voxels where ``x -> x + u(x)`` folds: Jacobian determinant <= 0.

    Parameters
    ----------
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement in voxels, 'ij' order.
    """
    return _folding(jacobian_determinant(deformation))


def _folding(determinant: np.ndarray) -> float:
    return float(np.mean(determinant <= 0))


def _log_spread(determinant: np.ndarray) -> float:
    return float(np.std(np.log(np.clip(determinant, 1e-9, 1e9))))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (outside the array counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _nearest_offsets(surface_to: np.ndarray, points: tuple[np.ndarray, ...],
                     spacing: np.ndarray) -> np.ndarray:
    """Offsets from ``points`` to their nearest voxel of ``surface_to``, nearest under ``spacing``.

    Returns
    -------
    np.ndarray
        ``(ndim, P)`` float64 offsets in voxels, from the exact Euclidean feature transform
        (``scipy.ndimage.distance_transform_edt``) with voxel size ``spacing``.
    """
    nearest = ndimage.distance_transform_edt(~surface_to, sampling=spacing,
                                             return_distances=False, return_indices=True)
    return (nearest[(slice(None), *points)] - np.stack(points)).astype(np.float64)


def _lengths(offsets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``(P,)`` lengths of ``(ndim, P)`` offsets in voxels, in units of ``spacing``.

    The arithmetic of ``scipy.ndimage.distance_transform_edt``, so the values are the same bits.
    """
    scaled = offsets * spacing[:, None]
    return np.sqrt(np.add.reduce(scaled * scaled, axis=0))


def _directed_distances(surface_from: np.ndarray, surface_to: np.ndarray,
                        spacings: list[np.ndarray]) -> list[np.ndarray]:
    """Distance from every voxel of ``surface_from`` to the nearest voxel of ``surface_to``.

    One list of distances per voxel size of ``spacings``. Voxel sizes proportional to each other
    (isotropic ones: voxels and mm of cubic voxels) have the same nearest voxels, so one feature
    transform serves them all; any other voxel size needs its own, as the nearest voxel in mm of
    anisotropic voxels is not always the nearest in voxels.
    """
    points = np.nonzero(surface_from)
    offsets, distances = {}, []
    for spacing in spacings:
        proportions = tuple(spacing / spacing[0])
        if proportions not in offsets:
            offsets[proportions] = _nearest_offsets(surface_to, points, spacing)
        distances.append(_lengths(offsets[proportions], spacing))
    return distances


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``, grown by ``margin`` voxels within the array."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(hits[0] - margin, 0), hits[-1] + margin + 1))
    return tuple(box)


def hd95(labels_a: np.ndarray, labels_b: np.ndarray, labels=None, spacing=1.0) -> np.ndarray:
    """95th-percentile Hausdorff distance per label (HD95, as Learn2Reg reports it).

    The surface of a structure is its voxels with a face-neighbour outside it (the mask minus its
    erosion; the array's edge counts as outside). For each voxel of one surface, the Euclidean
    distance to the nearest voxel of the other surface is taken, in both directions; HD95 is the
    larger of the two directions' 95th percentiles. Distances are exact Euclidean distance
    transforms (``scipy.ndimage.distance_transform_edt``), computed only on the structure's
    bounding box (both maps' voxels plus one), which holds both surfaces.

    Parameters
    ----------
    labels_a, labels_b : np.ndarray
        Integer label maps of the same shape, 2D or 3D.
    labels : sequence of int, optional
        Labels to score; by default every non-zero label present in either map. Background (0) is
        never scored.
    spacing : float or sequence of float
        Voxel size, one for all axes or one per axis, e.g. in mm; 1 gives voxels.

    Returns
    -------
    np.ndarray
        ``(L,)`` float64 distance per label, in units of ``spacing``, in the order of ``labels``:
        0 for identical structures; NaN for a label absent from both maps; for a label present in
        one map only, the diagonal of the whole grid (the largest distance it can hold), so that a
        missed structure scores worst and means stay finite.
    """
    return _hd95(labels_a, labels_b, labels, [spacing])[0]


def _hd95(labels_a: np.ndarray, labels_b: np.ndarray, labels,
          spacings: list) -> np.ndarray:
    """:func:`hd95` in several units at once: ``(len(spacings), L)``, one row per voxel size.

    Each structure's surfaces are found once for all units, and its feature transforms once for
    all proportional voxel sizes (see :func:`_directed_distances`).
    """
    labels_a, labels_b, labels = _label_maps(labels_a, labels_b, labels)
    spacings = [volumes.voxel_size(spacing, labels_a.ndim) for spacing in spacings]
    diagonals = [float(np.linalg.norm((np.array(labels_a.shape) - 1) * spacing))
                 for spacing in spacings]
    scores = []
    for label in labels:
        in_a, in_b = labels_a == label, labels_b == label
        present_a, present_b = in_a.any(), in_b.any()
        if not (present_a and present_b):
            scores.append(diagonals if present_a or present_b else [np.nan] * len(spacings))
            continue
        box = _bounding_box(in_a | in_b, margin=1)
        surface_a, surface_b = _surface(in_a[box]), _surface(in_b[box])
        forward = _directed_distances(surface_a, surface_b, spacings)
        backward = _directed_distances(surface_b, surface_a, spacings)
        scores.append([max(np.percentile(there, 95), np.percentile(back, 95))
                       for there, back in zip(forward, backward)])
    return np.asarray(scores, dtype=np.float64).reshape(len(labels), len(spacings)).T


def sdlogj(deformation: np.ndarray) -> float:
    """Standard deviation of the log Jacobian determinant (SDlogJ, as Learn2Reg reports it).

    ``std(log(clip(det J, 1e-9, 1e9)))`` over every voxel of the grid, borders included (where
    :func:`jacobian_determinant` uses one-sided differences); the clipping is Learn2Reg's, so a
    folding voxel (det <= 0) counts as det = 1e-9. 0 for any affine map; it grows with the
    spread of local volume changes, i.e. with how irregular the deformation is.

    Parameters
    ----------
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement in voxels, 'ij' order.
    """
    return _log_spread(jacobian_determinant(deformation))


def score_registration(moving: np.ndarray, static: np.ndarray, moved: np.ndarray,
                       deformation: np.ndarray, moving_seg: np.ndarray | None = None,
                       static_seg: np.ndarray | None = None, moved_seg: np.ndarray | None = None,
                       labels=None, spacing=None) -> dict:
    """Scores of one registered pair, as in the papers.

    Parameters
    ----------
    moving, static, moved : np.ndarray
        ``(*spatial)`` images in [0, 1].
    deformation : np.ndarray
        ``(*spatial, ndim)`` displacement in voxels.
    moving_seg, static_seg, moved_seg : np.ndarray, optional
        ``(*spatial)`` integer label maps; Dice is scored when all three are given.
    labels : sequence of int, optional
        Labels scored with Dice and HD95 (default: every non-zero label present).
    spacing : float or sequence of float, optional
        Voxel size in mm (one for all axes or one per axis); when given, HD95 is also reported
        in mm.

    Returns
    -------
    dict
        ``ncc_before``, ``ncc_after``: local NCC (window 9) with the static image, in [0, 1];
        ``folding_fraction``; ``sdlogj`` (:func:`sdlogj`); and, with label maps,
        ``dice_before``, ``dice_after``: lists of Dice per label, ``hd95``: list of HD95 per
        label after registration in voxels (:func:`hd95`), and ``hd95_mm`` in mm when
        ``spacing`` is given (NaN for a label absent from both maps). ``hd95_mean`` (and
        ``hd95_mm_mean``) average them over the labels that the static and the moving map
        both hold, as Learn2Reg's evaluation does (a label missing from either is NaN there,
        left out of its mean), so a structure labelled in one subject only does not put the
        grid's diagonal into the mean; ``hd95_left_out`` counts those labels (per-label values
        keep the diagonal).
    """
    def ncc(image: np.ndarray) -> float:
        return -float(metrics.LocalNCC()(static[None, ..., None], image[None, ..., None]))

    determinant = jacobian_determinant(deformation)  # once, for folding and SDlogJ
    scores = {"ncc_before": ncc(moving), "ncc_after": ncc(moved),
              "folding_fraction": _folding(determinant), "sdlogj": _log_spread(determinant)}
    if moving_seg is not None and static_seg is not None and moved_seg is not None:
        scores["dice_before"] = dice(moving_seg, static_seg, labels).tolist()
        scores["dice_after"] = dice(moved_seg, static_seg, labels).tolist()
        spacings = [1.0] if spacing is None else [1.0, spacing]  # voxels, and mm
        distances = _hd95(moved_seg, static_seg, labels, spacings)  # in one pass
        in_both = _in_both(moving_seg, static_seg, _label_maps(moved_seg, static_seg, labels)[2])
        for key, values in zip(("hd95", "hd95_mm"), distances):
            scores[key] = values.tolist()
            scores[f"{key}_mean"] = float(np.mean(values[in_both])) if in_both.any() else np.nan
        scores["hd95_left_out"] = int(np.sum(~in_both & ~np.isnan(distances[0])))
    return scores


def _in_both(moving_seg: np.ndarray, static_seg: np.ndarray, labels: list) -> np.ndarray:
    """``(L,)`` bool: which ``labels`` the static and the (unregistered) moving map both hold."""
    held = [set(np.unique(moving_seg).tolist()), set(np.unique(static_seg).tolist())]
    return np.array([all(label in found for found in held) for label in labels], dtype=bool)


def summarize(results: list[dict]) -> dict:
    """Mean and standard deviation over pairs of every score of :func:`score_registration`
    (values that are None or text, notes rather than scores, are left out).

    Per-label scores (Dice, HD95) are first averaged over labels within each pair (labels absent
    from both maps skipped).

    Returns
    -------
    dict
        ``{score: {"mean": float, "std": float}}`` for every score present; per-label scores
        also get ``"per_label"`` and ``"per_label_std"``, the mean and standard deviation
        over pairs of each label.
    """
    summary = {}
    for key in results[0]:
        if any(r[key] is None or isinstance(r[key], str) for r in results):
            continue  # a note, not a score (where fine-tuning or refinement fell back)
        values = np.array([r[key] for r in results], dtype=np.float64)
        if values.ndim == 2:  # (pairs, labels)
            summary[key] = {"per_label": np.nanmean(values, axis=0).tolist(),
                            "per_label_std": np.nanstd(values, axis=0).tolist()}
            values = np.nanmean(values, axis=1)
        summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                        **summary.get(key, {})}
    return summary


def headline(summary: dict) -> str:
    """One line of the headline scores of a :func:`summarize` summary (of training's validation
    pairs or of ``main.py evaluate``'s)."""
    line = (f"NCC {summary['ncc_before']['mean']:.3f} -> {summary['ncc_after']['mean']:.3f}")
    if "dice_after" in summary:
        line += (f", Dice {summary['dice_before']['mean']:.3f} -> "
                 f"{summary['dice_after']['mean']:.3f}, HD95 {summary['hd95_mean']['mean']:.2f} "
                 f"voxels")
        if "hd95_mm" in summary:
            line += f" ({summary['hd95_mm_mean']['mean']:.2f} mm)"
        if summary["hd95_left_out"]["mean"]:
            line += (f" over the structures both maps hold ({summary['hd95_left_out']['mean']:g} "
                     f"per pair left out)")
    line += (f", SDlogJ {summary['sdlogj']['mean']:.3f}, "
             f"folding voxels {100 * summary['folding_fraction']['mean']:.3f}%")
    if "inverse_error" in summary:
        line += f", inverse consistency {summary['inverse_error']['mean']:.3f} voxels"
        if "inverse_error_mm" in summary:
            line += f" ({summary['inverse_error_mm']['mean']:.3f} mm)"
    return line


def write_dice_csv(path: str, labels: list[int], names: list[str] | None, summary: dict) -> None:
    """Write ``rundir.DICE_CSV`` from a :func:`summarize` summary: per-structure scores, mean and
    std over pairs: Dice before and after registration, HD95 after it in voxels and, when the
    spacing is known, in mm."""
    keys = [key for key in ("dice_before", "dice_after", "hd95", "hd95_mm") if key in summary]
    with volumes.atomic_path(path) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["label", "name"] + [f"{key}_{stat}" for key in keys
                                             for stat in ("mean", "std")])
        for i, label in enumerate(labels):
            writer.writerow([label, names[i] if names else label]
                            + [f"{summary[key][stat][i]:.4f}" for key in keys
                               for stat in ("per_label", "per_label_std")])
