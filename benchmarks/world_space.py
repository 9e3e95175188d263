"""World-space registration on real brains: scans on another grid, and the inverse warp.

    python3 benchmarks/world_space.py --model runs/real_brains/int_steps/model.keras

Data: the test subjects of ``../shared/data/fstrain9_128.npz`` (see ``real_brains.py``), with a
model trained there on the 64^3 grid at 3 mm (``real_brains.py --downsample 2``). For every
ordered test pair, the static scan is written on a 3 mm grid (the data's 1.5 mm voxels 1, 3, 5,
..., so that labels and image sit where the affine says), and the moving subject twice:

- *same grid*: on the static's 3 mm grid;
- *rotated grid*: resampled from its 1.5 mm original into a grid rotated by ``--degrees``
  about an oblique axis, with ``--voxel`` mm voxels (finer than 3 mm, as 1.2 mm is to 1.5 mm)
  and another shape; ``main.py register`` resamples it back into the static grid.

Each is registered with ``main.py register --warp --inverse_warp``; the moving subject's
original 1.5 mm label map is then carried through the warp with ``main.py apply`` (nearest
neighbour) onto the static grid and scored with Dice over the 30 structures against the
static's labels on that grid. The inverse consistency ``|p - inv(phi(p))|`` is measured from
the two warp files as written, over the static brain. Prints the Dice of both, their
difference, and the inverse consistency; writes ``world_space.json`` into ``--output``.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from scipy.ndimage import convolve1d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import runtime  # noqa: E402, F401  (TensorFlow's settings: before its first import)
import main  # noqa: E402
from benchmarks import brains  # noqa: E402
import sampling  # noqa: E402
import scores  # noqa: E402
import transforms  # noqa: E402
import volumes  # noqa: E402

FACTOR = 2  # the network grid: 64^3 at 3 mm


def grid_affine(spacing: float, shape: int) -> np.ndarray:
    """The data's grid: ``shape`` voxels of ``spacing`` mm per axis, centred on the origin."""
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = -(shape - 1) * spacing / 2
    return affine


def coarse(volume: np.ndarray) -> np.ndarray:
    """A 1.5 mm volume on the 3 mm grid of its voxels 1, 3, 5, ...: smoothed by [1/4, 1/2, 1/4]
    along each axis, then every other voxel taken, so that each value stays where its grid
    places it (a 2x2x2 block mean would move it by 0.75 mm)."""
    for axis in range(volume.ndim):
        volume = convolve1d(volume, [0.25, 0.5, 0.25], axis=axis, mode="constant")
    return volume[(slice(1, None, FACTOR),) * volume.ndim]


def rotated_affine(degrees: float, spacing: float, shape: int) -> np.ndarray:
    """A grid of ``shape`` voxels of ``spacing`` mm, rotated by ``degrees`` about the axis
    (1, 1, 1), on the same centre as :func:`grid_affine`."""
    axis = np.ones(3) / np.sqrt(3)
    angle = np.deg2rad(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    affine = np.eye(4)
    affine[:3, :3] = rotation * spacing
    affine[:3, 3] = -affine[:3, :3] @ np.full(3, (shape - 1) / 2)
    return affine


def write_scans(data: str, folder: str, degrees: float, voxel: float) -> dict:
    """NIfTI files of the test subjects: 3 mm images and labels, the rotated images, and the
    1.5 mm originals' label maps."""
    with np.load(data) as stored:
        vols = stored["vols"][brains.NUM_TRAIN:].astype(np.float32) / 255.0
        segs = stored["segs"][brains.NUM_TRAIN:]
        labels = [int(label) for label in stored["labels"]]
    full = transforms.Grid(vols.shape[1:], grid_affine(1.5, vols.shape[1]))
    shape = int(np.ceil(vols.shape[1] * 1.5 / voxel * 1.15))  # the rotated grid's field of view
    rotated = transforms.Grid((shape,) * 3, rotated_affine(degrees, voxel, shape))
    every_other = np.diag([FACTOR] * 3 + [1.0])
    every_other[:3, 3] = 1  # 3 mm voxel j is the data's voxel 2j + 1
    three_mm = full.affine @ every_other
    files = {}
    for index in range(len(vols)):
        name = os.path.join(folder, f"subject{index}")
        labels_3mm = segs[index][(slice(1, None, FACTOR),) * 3]
        arrays = {"": (coarse(vols[index]), three_mm), "_seg": (labels_3mm, three_mm),
                  "_rotated": (transforms.resample(vols[index], full, rotated), rotated.affine),
                  "_seg_1.5mm": (segs[index], full.affine)}
        for suffix, (array, affine) in arrays.items():
            volumes.save_volume(f"{name}{suffix}.nii.gz", array, affine)
        files[index] = name
    return {"files": files, "labels": labels, "rotated_shape": rotated.shape}


def register_pair(model: str, moving: str, labels: str, static: str, out: str) -> dict:
    """``main.py register`` with both warps, then ``main.py apply`` of the ``labels`` file;
    the moved label map, the inverse consistency of the two warp files and the seconds taken."""
    start = time.perf_counter()
    assert main.main(["register", "--model", model, "--moving", moving, "--static", static,
                      "--moved", f"{out}_moved.nii.gz", "--warp", f"{out}_warp.nii.gz",
                      "--inverse_warp", f"{out}_inverse.nii.gz"]) == 0
    seconds = time.perf_counter() - start
    assert main.main(["apply", "--warp", f"{out}_warp.nii.gz", "--moving", labels,
                      "--output", f"{out}_moved_seg.nii.gz"]) == 0
    brain = volumes.load_volume(static)[0] > 0
    error = file_consistency(f"{out}_warp.nii.gz", f"{out}_inverse.nii.gz")[brain]
    return {"moved_seg": volumes.load_volume(f"{out}_moved_seg.nii.gz")[0],
            "inverse_mean_mm": float(np.mean(error)),
            "inverse_p95_mm": float(np.percentile(error, 95)), "seconds": seconds}


def file_consistency(warp: str, inverse: str) -> np.ndarray:
    """``|p - inv(phi(p))|`` in mm at every static voxel, from the two warp files as written:
    each static point ``p`` goes to ``q = p + d(p)``, and back by the inverse warp (on the
    moving grid) interpolated at ``q``."""
    forward, grid = transforms.load_warp(warp)
    backward, moving_grid = transforms.load_warp(inverse)
    points = transforms.warped_points(forward, grid)
    back = points + sampling.sample(backward, moving_grid.voxels(points))
    return np.linalg.norm(back - grid.world(grid.coordinates()), axis=-1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="a model trained on the 64^3 grid")
    parser.add_argument("--data", default=brains.DATA, help="the fstrain9_128.npz file")
    parser.add_argument("--degrees", type=float, default=15.0)
    parser.add_argument("--voxel", type=float, default=2.4,
                        help="voxel size of the rotated grid, mm (the static's: 3)")
    parser.add_argument("--max_pairs", type=int, default=None)
    parser.add_argument("--output", default=os.path.join(ROOT, "runs", "world_space"))
    return parser


def run() -> None:
    args = build_parser().parse_args()
    os.makedirs(args.output, exist_ok=True)
    scans = write_scans(args.data, args.output, args.degrees, args.voxel)
    pairs = brains.test_pairs(len(scans["files"]), args.max_pairs)
    rows = []
    for m, s in pairs:
        moving, static = scans["files"][m], scans["files"][s]
        static_seg, image = volumes.load_volume(f"{static}_seg.nii.gz")
        original, original_image = volumes.load_volume(f"{moving}_seg_1.5mm.nii.gz")
        unregistered = transforms.resample(  # the affinely aligned start, on the static grid
            original, transforms.Grid.of(original_image, original.shape),
            transforms.Grid.of(image, static_seg.shape), "nearest")
        row = {"pair": [m, s], "dice_before": float(np.nanmean(
            scores.dice(unregistered, static_seg, scans["labels"])))}
        for kind, path in (("same", f"{moving}.nii.gz"), ("rotated", f"{moving}_rotated.nii.gz")):
            result = register_pair(args.model, path, f"{moving}_seg_1.5mm.nii.gz",
                                   f"{static}.nii.gz",
                                   os.path.join(args.output, f"{kind}_{m}_{s}"))
            dice = scores.dice(result.pop("moved_seg"), static_seg, scans["labels"])
            row[kind] = {"dice": float(np.nanmean(dice)), **result}
        rows.append(row)
        print(f"pair {m}->{s}: Dice same grid {row['same']['dice']:.4f}, rotated grid "
              f"{row['rotated']['dice']:.4f}; inverse consistency mean "
              f"{row['same']['inverse_mean_mm']:.3f} / {row['rotated']['inverse_mean_mm']:.3f} "
              f"mm", flush=True)
    summary = {kind: {key: float(np.mean([row[kind][key] for row in rows]))
                      for key in rows[0][kind]} for kind in ("same", "rotated")}
    summary["dice_difference"] = summary["rotated"]["dice"] - summary["same"]["dice"]
    summary["dice_before"] = float(np.mean([row["dice_before"] for row in rows]))
    with open(os.path.join(args.output, "world_space.json"), "w") as file:
        json.dump({"model": args.model, "degrees": args.degrees, "voxel_mm": args.voxel,
                   "rotated_shape": scans["rotated_shape"], "rows": rows, "summary": summary},
                  file, indent=2)
    print("\n| moving scan given on | mean Dice (30 structures, 3 mm grid) | inverse consistency "
          "mean / p95 (mm) | s per pair |\n|---|---|---|---|")
    for kind, label in (("same", "the static's 3 mm grid"),
                        ("rotated", f"a grid rotated {args.degrees:g} deg, {args.voxel:g} mm")):
        row = summary[kind]
        print(f"| {label} | {row['dice']:.4f} | {row['inverse_mean_mm']:.3f} / "
              f"{row['inverse_p95_mm']:.3f} | {row['seconds']:.1f} |")
    largest = max(abs(row["rotated"]["dice"] - row["same"]["dice"]) for row in rows)
    print(f"\nDice difference (rotated - same): {summary['dice_difference']:+.4f} over "
          f"{len(rows)} pairs (largest for one pair {largest:.4f}); before registration "
          f"(affinely aligned): {summary['dice_before']:.4f}")


if __name__ == "__main__":
    run()
