"""Peak memory and seconds per training step: a set held in memory (``.npz``) or read lazily
(a folder of NIfTI files, ``filelists.LazyVolumes``).

    python3 benchmarks/lazy_memory.py                        # 64^3, 10 and 200 subjects
    python3 benchmarks/lazy_memory.py --size 128 --subjects 10 200 --steps 5

Writes synthetic subjects (int16 noise, ``--size`` voxels a side; 64 by default, as writing
and training on 200 volumes of 128^3 takes long on a small CPU) into a temporary folder, as
``.nii.gz`` files and as one ``.npz`` per set size. Each case trains VoxelMorph-1 (MSE,
scan-to-scan pairs, batch size 1) for ``--steps`` steps in a fresh process after one warm-up
step, and reports that process's peak resident set size (``VmHWM``) and the median seconds per
step. Prints a Markdown table.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_subjects(folder: str, count: int, size: int, ndim: int = 3) -> tuple[str, str]:
    """``count`` int16 volumes ``size^ndim`` as NIfTI files in ``folder/nifti{count}`` and as
    ``folder/set{count}.npz``: the two paths."""
    import nibabel as nib

    rng = np.random.default_rng(count)
    images = os.path.join(folder, f"nifti{count}")
    os.makedirs(images)
    vols = rng.integers(0, 1000, size=(count,) + (size,) * ndim).astype(np.int16)
    for i, volume in enumerate(vols):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), os.path.join(images, f"sub{i:03d}.nii.gz"))
    stacked = os.path.join(folder, f"set{count}.npz")
    np.savez(stacked, vols=vols)
    return stacked, images


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (``VmHWM`` of ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def train_steps(path: str, steps: int) -> dict:
    """In this process: load ``path``, train ``steps`` scan-to-scan steps after one warm-up
    step; seconds per step (median) and the peak RSS."""
    sys.path.insert(0, ROOT)
    import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
    import keras
    import datasets
    import models
    import shapes
    import training

    data = datasets.load_dataset(path, ndim=3)
    shape = shapes.padded_shape(data.shape, models.DIVISOR)
    data = datasets.pad_dataset(data, shape)
    model = models.build_model(shape, "vm1", "mse", None, 1e-4)
    loader = training.training_loader(data, "scan_to_scan", False, 1, steps + 1, 0, False,
                                      {"labels": []})
    ends = []
    timer = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
    model.fit(loader, epochs=1, verbose=0, callbacks=[timer])
    return {"seconds_per_step": float(statistics.median(np.diff(ends))),
            "peak_rss_mb": peak_rss_mb()}


def run_case(path: str, steps: int) -> dict:
    """:func:`train_steps` in a fresh process."""
    done = subprocess.run([sys.executable, __file__, "--child", path, "--steps", str(steps)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="voxels a side (3D)")
    parser.add_argument("--subjects", type=int, nargs="+", default=[10, 200])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_steps(args.child, args.steps)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for count in args.subjects:
            start = time.perf_counter()
            stacked, images = write_subjects(folder, count, args.size)
            print(f"wrote {count} subjects of {args.size}^3 in "
                  f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
            for kind, path in (("in memory (.npz)", stacked), ("lazy (NIfTI folder)", images)):
                result = run_case(path, args.steps)
                rows.append((count, kind, result))
                print(f"{count} {kind}: {result}", file=sys.stderr)
    print(f"| subjects ({args.size}^3) | data | peak RSS (MB) | s / step |")
    print("|---|---|---|---|")
    for count, kind, result in rows:
        print(f"| {count} | {kind} | {result['peak_rss_mb']:.0f} | "
              f"{result['seconds_per_step']:.2f} |")


if __name__ == "__main__":
    main()
