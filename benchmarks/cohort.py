"""Speed of registering a cohort in one process, beside one pair per process and ANTs.

    python3 benchmarks/cohort.py                        # cohorts of 1, 4, 16; pairs at 128^3, 256^3
    python3 benchmarks/cohort.py --sizes 1 2 --grids 128 --repeats 1   # a quick check

Data: ``../shared/data/fstrain9_128.npz`` (``brains.DATA``: 9 skull-stripped T1 brains, 128^3
at 1.5 mm). The static scan is subject 0; the moving scans are the other subjects in turn, each
written with its own random rigid map in its affine (up to ``ROTATION`` degrees per axis and
``SHIFT_MM`` mm: the pose stage has work to do), as uint8 NIfTI files in ``--output``.

For each cohort size N, one ``main.py register --moving (N scans) --static F --output DIR
--warp`` process (moved scans and warps written) is timed: its wall-clock seconds over N
(start-up and the model's load included), the seconds of its loop over N (start-up
excluded, the static scan's preparation included, from its last line) and the median seconds of each scan after
the first (from its progress lines). One pair a process, ``main.py register --moved --warp``,
is timed at 128^3 and on FreeSurfer-like 256^3 grids at 1 mm (as ``brain_model.py speed``),
median of ``--repeats``; and ANTs Affine + SyN (antspyx, mutual information, its default
iterations, as the model card's benchmark) on the 128^3 pair, in the same run. The CPU and
the load average before each timing are printed: compare timings of one quiet machine.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # before this folder: the package's cohort.py, not this file
from benchmarks import affine_brains, bench, brains  # noqa: E402

ROTATION, SHIFT_MM = 10.0, 10.0  # the moving scans' random rigid maps, per axis
SEED = 41  # of those maps
STATIC = 0  # the static subject


def rigid(rng: np.random.Generator) -> np.ndarray:
    """A random ``(4, 4)`` RAS map: rotations up to ``ROTATION`` degrees, shifts up to
    ``SHIFT_MM`` mm, per axis."""
    import transforms

    matrix = np.eye(4)
    matrix[:3, :3] = transforms.rotation_matrix(np.radians(rng.uniform(-ROTATION, ROTATION, 3)))
    matrix[:3, 3] = rng.uniform(-SHIFT_MM, SHIFT_MM, 3)
    return matrix


def conformed(grid):
    """FreeSurfer's conformed grid about ``grid``'s centre: 256^3 at 1 mm, LIA axes."""
    import transforms

    affine = np.eye(4)
    affine[:3, :3] = affine_brains.LIA
    centre = grid.affine[:3, :3] @ np.full(3, (grid.shape[0] - 1) / 2) + grid.affine[:3, 3]
    affine[:3, 3] = centre - affine_brains.LIA @ np.full(3, 127.5)
    return transforms.Grid((256,) * 3, affine)


def write_scans(data: str, count: int, folder: str) -> dict:
    """The benchmark's files in ``folder``: ``static`` and ``count`` ``moving`` scans at 128^3,
    ``static_256`` and ``moving_256`` (the first moving subject, unmoved) at 256^3."""
    import nibabel as nib
    import transforms

    with np.load(data) as stored:
        vols, grid = stored["vols"], transforms.Grid((128,) * 3, stored["grid_affine"])
    rng = np.random.default_rng(SEED)
    others = [index for index in range(len(vols)) if index != STATIC]
    files = {"static": os.path.join(folder, "static.nii.gz"), "moving": []}
    nib.save(nib.Nifti1Image(vols[STATIC], grid.affine), files["static"])
    for number in range(count):
        files["moving"].append(os.path.join(folder, f"moving_{number:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(vols[others[number % len(others)]],
                                 rigid(rng) @ grid.affine), files["moving"][-1])
    big = conformed(grid)
    for name, index in (("static_256", STATIC), ("moving_256", others[0])):
        image = transforms.resample(vols[index].astype(np.float32), grid, big)
        files[name] = os.path.join(folder, f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.clip(np.rint(image), 0, 255).astype(np.uint8), big.affine),
                 files[name])
    return files


def timed(command: list[str]) -> tuple[float, str]:
    """Wall-clock seconds of a command (which must succeed) and its stdout."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"cohort.py: error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def register_command(*flags: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "main.py"), "register", *flags]


def cohort_row(files: dict, size: int, folder: str) -> dict:
    """One cohort of ``size`` moving scans in one process: seconds per scan with and without
    start-up, and the median of the scans after the first."""
    output = os.path.join(folder, f"cohort_{size}")
    load = os.getloadavg()[0]
    wall, stdout = timed(register_command("--moving", *files["moving"][:size], "--static",
                                          files["static"], "--output", output, "--warp"))
    scans = [float(seconds) for seconds in re.findall(r"^\[\d+/\d+\] \S+: ([\d.]+) s", stdout,
                                                      re.MULTILINE)]
    loop = float(re.search(r"in ([\d.]+) s \(", stdout.strip().splitlines()[-1]).group(1))
    return {"what": f"cohort of {size}, one process", "load": load, "wall": wall,
            "with_startup": wall / size, "without_startup": loop / size,
            "further": statistics.median(scans[1:]) if len(scans) > 1 else None}


def pair_row(moving: str, static: str, size: int, repeats: int, folder: str) -> dict:
    """One pair a process at ``size``^3: median wall-clock seconds of ``repeats`` runs."""
    load, seconds = os.getloadavg()[0], []
    for _ in range(repeats):
        seconds.append(timed(register_command(
            "--moving", moving, "--static", static, "--moved",
            os.path.join(folder, f"pair_{size}_moved.nii.gz"), "--warp",
            os.path.join(folder, f"pair_{size}_warp.nii.gz")))[0])
    median = statistics.median(seconds)
    return {"what": f"main.py register, one pair at {size}^3 ({repeats} runs)", "load": load,
            "wall": median, "with_startup": median, "without_startup": None, "further": None}


def ants_row(moving: str, static: str) -> dict:
    """ANTs Affine + SyN (mutual information, default iterations) of the 128^3 pair, in this
    process: the registration's seconds (reading the files excluded)."""
    import ants

    fixed, image = ants.image_read(static), ants.image_read(moving)
    load, start = os.getloadavg()[0], time.perf_counter()
    ants.registration(fixed, image, type_of_transform="SyN", syn_metric="mattes",
                      syn_sampling=32)
    seconds = time.perf_counter() - start
    return {"what": "ANTs Affine + SyN (MI), one pair at 128^3, in process", "load": load,
            "wall": seconds, "with_startup": seconds, "without_startup": seconds,
            "further": None}


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table, seconds to one decimal."""
    def cell(value):
        return "" if value is None else f"{value:.1f}"
    lines = ["| run | load before | wall s | s per scan, start-up included | s per scan, "
             "start-up excluded | s per further scan (median) |", "|---|---|---|---|---|---|"]
    lines += [f"| {row['what']} | {row['load']:.1f} | {cell(row['wall'])} | "
              f"{cell(row['with_startup'])} | {cell(row['without_startup'])} | "
              f"{cell(row['further'])} |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=brains.DATA, help="the fstrain9_128.npz file")
    parser.add_argument("--output", default=os.path.join(ROOT, "runs", "cohort_bench"),
                        help="folder of the scans and outputs")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16],
                        help="moving scans of each cohort")
    parser.add_argument("--grids", type=int, nargs="*", choices=(128, 256), default=[128, 256],
                        help="single-pair sizes (none: no single-pair rows)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each single pair")
    parser.add_argument("--no_ants", action="store_true", help="leave ANTs out")
    args = parser.parse_args()
    if not os.path.exists(args.data):
        print(f"cohort.py: skipped: {args.data} not found (internal benchmark data, expected in "
              f"../shared/data beside the repository)")
        return 0
    with open("/proc/cpuinfo") as file:
        isa = bench.cpu_isa(file.read())["isa"]
    print(f"{bench.cpu_name()} ({isa}), {len(os.sched_getaffinity(0))} cores")
    os.makedirs(args.output, exist_ok=True)
    files = write_scans(args.data, max(args.sizes), args.output)
    rows = []
    for size in args.sizes:
        rows.append(cohort_row(files, size, args.output))
        print(f"  {rows[-1]['what']}: {rows[-1]['wall']:.1f} s", flush=True)
    pairs = {128: (files["moving"][0], files["static"]),
             256: (files["moving_256"], files["static_256"])}
    for size in args.grids:
        rows.append(pair_row(*pairs[size], size, args.repeats, args.output))
        print(f"  {rows[-1]['what']}: {rows[-1]['wall']:.1f} s", flush=True)
    if not args.no_ants:
        rows.append(ants_row(*pairs[128]))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
