"""Rebuild ``data/mni152_2mm.npz``, the embedded default data, from the nilearn wheel.

The MNI ICBM152 2009a symmetric T1 template and its grey- and white-matter maps ship inside
the ``nilearn`` wheel (``nilearn/datasets/data/``, 197x233x189 at 1 mm). This script crops a
160x192x160 mm box centred on the brain, averages 2x2x2 blocks down to 80x96x80 at 2 mm, and
stores uint8 arrays:

- ``t1``: the T1 template, 0..255;
- ``gm``, ``wm``: grey- and white-matter maps, 0..255 (partial volume);
- ``labels``: tissue labels, 0 background, 1 CSF, 2 grey matter, 3 white matter: inside the
  brain mask (T1 above 20% of its maximum, as nilearn makes it) the class with the largest share,
  CSF taking what GM and WM leave;
- ``affine``: voxel (i, j, k) -> MNI mm, float64 (4, 4); ``label_names``.

nilearn is needed only here, never at run time::

    pip install nilearn && python3 data/make_default_data.py

The template's licence notice is in ``data/LICENSE-MNI152.txt``.
"""
import os

import nibabel as nib
import numpy as np

FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
BOX_MM = (160, 192, 160)  # field of view kept, 1 mm voxels
FACTOR = 2  # 1 mm -> 2 mm
LABEL_NAMES = ("background", "csf", "grey_matter", "white_matter")


def crop_around(volume: np.ndarray, centre: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    """Crop (zero-padding where needed) a ``box``-sized block centred on voxel ``centre``."""
    start = np.asarray(centre) - np.asarray(box) // 2
    padded = np.pad(volume, [(max(-s, 0), max(s + b - n, 0))
                             for s, b, n in zip(start, box, volume.shape)])
    start = np.maximum(start, 0)
    return padded[tuple(slice(s, s + b) for s, b in zip(start, box))]


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Average non-overlapping ``factor``-wide blocks along every axis."""
    shape = [n // factor for n in volume.shape]
    blocks = volume.reshape([v for n in shape for v in (n, factor)])
    return blocks.mean(axis=tuple(range(1, 2 * volume.ndim, 2)))


def main() -> None:
    import nilearn  # only to find the wheel's data folder

    folder = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")
    images = {key: nib.load(os.path.join(folder, name)) for key, name in FILES.items()}
    t1 = images["t1"].get_fdata()
    brain = np.argwhere(t1 > 0.2 * t1.max())
    centre = (brain.min(0) + brain.max(0) + 1) // 2
    start = centre - np.asarray(BOX_MM) // 2

    arrays = {key: block_mean(crop_around(image.get_fdata(), centre, BOX_MM), FACTOR)
              for key, image in images.items()}
    mask = arrays["t1"] > 0.2 * arrays["t1"].max()
    csf = np.clip(255.0 - arrays["gm"] - arrays["wm"], 0.0, None)
    labels = np.where(mask, np.argmax(np.stack([csf, arrays["gm"], arrays["wm"]]), 0) + 1, 0)

    affine = images["t1"].affine.copy()
    affine[:3, 3] = affine[:3, :3] @ (start + (FACTOR - 1) / 2) + affine[:3, 3]
    affine[:3, :3] *= FACTOR
    out = {key: np.round(value).astype(np.uint8) for key, value in arrays.items()}
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mni152_2mm.npz")
    np.savez_compressed(path, **out, labels=labels.astype(np.uint8), affine=affine,
                        label_names=np.array(LABEL_NAMES))
    print(f"wrote {path}: shape {out['t1'].shape}, {os.path.getsize(path) / 1e3:.0f} kB, "
          f"label voxels {np.bincount(labels.ravel()).tolist()}")


if __name__ == "__main__":
    main()
