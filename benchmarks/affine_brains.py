"""Affine benchmark: real brains moved by known random affine maps, registered back.

    python3 benchmarks/affine_brains.py                  # trains the networks, then scores
    python3 benchmarks/affine_brains.py --finetune_steps 0 25 50

Data: ``../shared/data/fstrain9_128.npz`` (as ``real_brains.py``: 6 training subjects, ordered
pairs of the 3 test subjects, 128^3 at 1.5 mm, affinely pre-aligned to MNI152; never copied into
the project). Each test pair's moving subject is moved by its own known random affine map
(``augmentation.random_affine``, seeded: rotation up to 20 degrees per axis pair, scaling
0.85-1.15, shear 0.1, translation up to 15 mm) and written on another grid, as a scan from
another scanner session would come: FreeSurfer's LIA orientation, 1.25 mm voxels, 176^3
(trilinear for the image, nearest neighbour for its label map).

The networks run on the 64^3 grid at 3 mm (``main.py`` trains them on the training subjects,
``--pairs scan_to_scan --random_affine``): the affine network (``--transform affine``), the
diffeomorphic VM-2 (``--int_steps 7 --int_downsize 2``, the same flags as ``real_brains.py``'s
row) and the joint network, started from those two (``--init_from``) and trained end to end.
Each misaligned pair is registered as ``main.py register`` does it (``registration.register_scans``
with the moving scan on its own grid); the resulting map of static points is taken to the 128^3
grid and the moving label map (on its 1.25 mm LIA grid) sampled through it with nearest neighbour.

Reported per method, over the 6 pairs: Dice over the 30 structures and HD95 at 128^3; for an
affine stage, its recovery error against the known map (distance, in mm, between the point it
maps each static brain voxel to and the true one: mean and 95th percentile over the static
brain); seconds per pair (median, wall time of the whole registration as ``register`` runs it,
resampling included). Beside them: the pre-aligned pairs as they are (the starting point of
``real_brains.py``), the misaligned pairs unregistered, the deformable network alone on both, and,
when ``antspyx`` is installed (benchmark-only), ANTs ``Affine`` (its defaults: mutual information,
four levels) at 128^3 on the same files. Results are kept in ``--output`` and reused.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import brains  # noqa: E402  (numpy only)

LIA = np.array([[-1.0, 0, 0], [0, 0, 1], [0, -1, 0]])  # FreeSurfer's conformed axes (RAS columns)
MISALIGNED_GRID = (176, 1.25)  # voxels per axis, mm


def grids(data: str):
    """The 128^3 grid of the data, the 64^3 grid of the networks (block centres) and the grid of
    the misaligned scans, centred on the same point."""
    import transforms

    with np.load(data) as stored:
        affine = stored["grid_affine"].astype(np.float64)
    full = transforms.Grid((128,) * 3, affine)
    half = np.diag([2.0, 2.0, 2.0, 1.0])
    half[:3, 3] = 0.5  # voxel j of the 64^3 grid is the block of 128^3 voxels 2j, 2j + 1
    centre = affine[:3, :3] @ np.full(3, 63.5) + affine[:3, 3]
    size, spacing = MISALIGNED_GRID
    other = np.eye(4)
    other[:3, :3] = LIA * spacing
    other[:3, 3] = centre - other[:3, :3] @ np.full(3, (size - 1) / 2)
    return full, transforms.Grid((64,) * 3, affine @ half), transforms.Grid((size,) * 3, other)


def misaligned(full_set, pairs, grid, other, seed: int, **limits) -> list[dict]:
    """Every pair's moving subject moved by a known random affine map (of
    ``augmentation.random_affine``, its ranges or ``limits``), on the ``other`` grid.

    Returns
    -------
    list of dict
        ``image`` and ``seg`` on ``other``; ``truth``, the ``(4, 4)`` LPS map of static points to
        the points of the misaligned scan that match them.
    """
    import augmentation
    import sampling
    import transforms

    vols, segs = full_set[:2]
    rng = np.random.default_rng(seed)
    points = other.world(other.coordinates())
    made = []
    for m, _ in pairs:
        moved_by = transforms.world_matrix(augmentation.random_affine(rng, grid.shape, 1.5,
                                                                        **limits), grid)
        coords = grid.voxels(points @ moved_by[:3, :3].T + moved_by[:3, 3])
        made.append({"image": sampling.sample(vols[m], coords),
                     "seg": sampling.sample(segs[m], coords, "nearest"),
                     "truth": np.linalg.inv(moved_by)})
    return made


def recovery(world: np.ndarray, truth: np.ndarray, points: np.ndarray) -> dict:
    """Distance in mm between two affine maps of LPS ``points``: mean and 95th percentile."""
    error = np.linalg.norm(points @ (world - truth)[:3, :3].T + (world - truth)[:3, 3], axis=-1)
    return {"recovery_mm": float(error.mean()), "recovery_p95_mm": float(np.percentile(error, 95))}


def score(full_set, m: int, s: int, grid, other, case: dict, deformation: np.ndarray) -> dict:
    """Scores of a registration given as a displacement on the 128^3 grid, in its voxels, of the
    static points to the misaligned scan's world."""
    import sampling

    points = grid.world(grid.coordinates() + deformation)
    moved_seg = sampling.sample(case["seg"], other.voxels(points), "nearest")
    return brains.score_pair(full_set, m, s, moved_seg, deformation)


def network(model_path: str, full_set, small, pairs, cases, grids_, finetune_steps: int,
            finetune_lr: float, aligned: bool = False) -> dict:
    """A trained network on every misaligned pair (or, ``aligned``, the pre-aligned ones)."""
    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import registration
    import rundir
    import tuning
    import utils

    grid, half, other = grids_
    model = rundir.load_model(model_path)
    tuner = (tuning.FineTuner(model, finetune_steps, finetune_lr) if finetune_steps
             else None)
    brain = [grid.world(np.argwhere(full_set[1][s] > 0).astype(np.float64)) for _, s in pairs]
    results = []
    for (m, s), case, points in zip(pairs, cases, brain):
        moving, moving_grid = (small[m], half) if aligned else (case["image"], other)
        start = time.perf_counter()
        registered = registration.register_scans(model, moving, small[s], moving_grid, half,
                                                 tuner=tuner)
        seconds = time.perf_counter() - start
        deformation = np.asarray(utils.resize_displacement(registered["deformation"][None],
                                                           grid.shape))[0]
        if aligned:
            scored = brains.score_pair(full_set, m, s, registration.warped(
                full_set[1][m].astype(np.int32), deformation, "nearest"), deformation)
        else:
            scored = score(full_set, m, s, grid, other, case, deformation)
        scored["seconds"] = seconds
        if "affine_world" in registered and not aligned:
            scored.update(recovery(registered["affine_world"], case["truth"], points))
        results.append(scored)
        print(f"  {os.path.basename(os.path.dirname(model_path))} pair {m}->{s}: Dice "
              f"{np.nanmean(scored['dice']):.3f}, {seconds:.2f} s"
              + (f", recovery {scored['recovery_mm']:.2f} mm" if "recovery_mm" in scored
                 else ""), flush=True)
    return {"per_pair": results}


def unregistered(full_set, pairs, cases, grids_) -> dict:
    """The misaligned pairs as they are (the identity map of world points)."""
    grid, _, other = grids_
    zero = np.zeros(grid.shape + (3,), np.float32)
    return {"per_pair": [{**score(full_set, m, s, grid, other, case, zero), "seconds": 0.0}
                         for (m, s), case in zip(pairs, cases)]}


def ants_images(array: np.ndarray, grid):
    """An ANTs image of ``array`` placed on ``grid`` (LPS origin, spacing, direction)."""
    import ants

    matrix = grid.matrix
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    return ants.from_numpy(np.asarray(array, np.float32), origin=matrix[:3, 3].tolist(),
                           spacing=spacing.tolist(), direction=matrix[:3, :3] / spacing)


def ants_affine(full_set, pairs, cases, grids_, folder: str) -> dict:
    """ANTs ``Affine`` of every misaligned pair at 128^3, scored as the networks."""
    import ants

    grid, _, other = grids_
    vols, segs = full_set[:2]
    results = []
    for (m, s), case in zip(pairs, cases):
        path = os.path.join(folder, f"ants_affine_{m}_{s}.json")
        if not os.path.exists(path):
            fixed, moving = ants_images(vols[s], grid), ants_images(case["image"], other)
            start = time.perf_counter()
            registered = ants.registration(fixed, moving, type_of_transform="Affine")
            seconds = time.perf_counter() - start
            transform = ants.read_transform(registered["fwdtransforms"][0])
            with open(path + ".tmp", "w") as file:
                json.dump({"parameters": np.asarray(transform.parameters).tolist(),
                           "centre": np.asarray(transform.fixed_parameters).tolist(),
                           "seconds": seconds}, file)
            os.replace(path + ".tmp", path)
        with open(path) as file:
            stored = json.load(file)
        world = np.eye(4)  # ITK: p -> A (p - c) + c + t
        world[:3, :3] = np.reshape(stored["parameters"][:9], (3, 3))
        centre = np.asarray(stored["centre"])
        world[:3, 3] = np.asarray(stored["parameters"][9:]) + centre - world[:3, :3] @ centre
        deformation = (grid.voxels(grid.world(grid.coordinates()) @ world[:3, :3].T
                                   + world[:3, 3]) - grid.coordinates()).astype(np.float32)
        scored = score(full_set, m, s, grid, other, case, deformation)
        brain = grid.world(np.argwhere(segs[s] > 0).astype(np.float64))
        results.append({**scored, "seconds": stored["seconds"],
                        **recovery(world, case["truth"], brain)})
        print(f"  ANTs Affine pair {m}->{s}: Dice {np.nanmean(scored['dice']):.3f} in "
              f"{stored['seconds']:.1f} s, recovery {results[-1]['recovery_mm']:.2f} mm",
              flush=True)
    return {"per_pair": results}


def table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table: Dice, HD95, recovery error, folding, median seconds per pair."""
    lines = ["| method | pairs | mean Dice (30 structures) | HD95 (mm) | affine recovery error, "
             "mean / p95 (mm) | % det(J) <= 0 | s per pair (median, CPU) |",
             "|---|---|---|---|---|---|---|"]
    for name, result in rows:
        stats = brains.summary(result)
        per_pair = result["per_pair"]
        seconds = np.median([row["seconds"] for row in per_pair])
        error = (f"{stats['recovery_mm']['mean']:.2f} / {stats['recovery_p95_mm']['mean']:.2f}"
                 if "recovery_mm" in stats else "-")
        lines.append(f"| {name} | {len(per_pair)} | {stats['dice']['mean']:.3f} ± "
                     f"{stats['dice']['std']:.3f} | {stats['hd95_mm_mean']['mean']:.2f} | "
                     f"{error} | {100 * stats['folding_fraction']['mean']:.4f} | "
                     + (f"{seconds:.2f} |" if seconds else "- |"))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=brains.DATA, help="the fstrain9_128.npz file")
    parser.add_argument("--affine_epochs", type=int, default=40,
                        help="epochs of 100 steps of the affine network")
    parser.add_argument("--deformable_epochs", type=int, default=10,
                        help="epochs of 100 steps of the deformable network")
    parser.add_argument("--joint_epochs", type=int, default=10,
                        help="epochs of 100 steps of the joint network, from the other two")
    parser.add_argument("--finetune_steps", type=int, nargs="+", default=[0, 10, 50],
                        help="instance optimisation steps of the affine and joint rows")
    parser.add_argument("--finetune_lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--pair_seed", type=int, default=16, help="seed of the known maps")
    parser.add_argument("--output", default=os.path.join(brains.ROOT, "runs",
                                                         "affine_brains"))
    return parser


def main() -> None:
    args = build_parser().parse_args()
    started = time.perf_counter()
    train_set, test_set, full_set = brains.prepare("affine_brains.py", args.data, 2,
                                                        args.output)
    pairs = brains.test_pairs(len(full_set[0]), None)
    grids_ = grids(args.data)
    cases = misaligned(full_set, pairs, grids_[0], grids_[2], args.pair_seed)

    def trained(name: str, epochs: int, flags: list[str]) -> str:
        import rundir

        training = argparse.Namespace(epochs=epochs, steps_per_epoch=100, lr=1e-3, seed=args.seed)
        brains.train(name, flags, train_set, test_set, args.output, training)
        return os.path.join(args.output, name, rundir.MODEL)

    affine = trained("affine", args.affine_epochs, ["--transform", "affine", "--random_affine"])
    integrate = ["--int_steps", "7", "--int_downsize", "2"]
    deformable = trained("deformable", args.deformable_epochs, integrate)
    joint = trained("joint", args.joint_epochs, ["--transform", "joint", "--random_affine",
                                                 *integrate, "--init_from", affine, deformable])

    import datasets

    small = datasets.load_dataset(test_set).vols
    rows = [("pre-aligned pairs, not registered", brains.affine_only(full_set, pairs)),
            ("misaligned pairs, not registered", unregistered(full_set, pairs, cases, grids_))]
    try:
        rows.append(("ANTs Affine (antspyx defaults, MI), 128^3",
                     ants_affine(full_set, pairs, cases, grids_, args.output)))
    except ImportError:
        print("antspyx is not installed: skipping ANTs Affine (pip install antspyx)")

    def run(key: str, label: str, model: str, steps: int = 0, aligned: bool = False):
        """Score one network row, kept as ``key``.json."""
        if steps:
            key, label = f"{key}_ft{steps}", f"{label} + --finetune_steps {steps}"
        rows.append((label, brains.cached(
            os.path.join(args.output, f"{key}.json"), pairs, lambda: network(
                model, full_set, small, pairs, cases, grids_, steps, args.finetune_lr,
                aligned))))

    for steps in args.finetune_steps:
        run("affine", "affine network, 64^3", affine, steps)
    run("deformable_misaligned", "VM-2 diffeomorphic alone, misaligned pairs", deformable)
    run("deformable_aligned", "VM-2 diffeomorphic alone, pre-aligned pairs", deformable,
        aligned=True)
    for steps in args.finetune_steps:
        run("joint", "joint network (affine + VM-2 diffeomorphic), 64^3", joint, steps)
    with open(os.path.join(args.output, "results.json"), "w") as file:
        json.dump({"pairs": pairs, "rows": {name: result for name, result in rows},
                   "summary": {name: brains.summary(result) for name, result in rows}},
                  file, indent=2)
    print(f"\nNetworks on 64^3 at 3 mm; scores at 128^3 over {len(full_set[2])} structures and "
          f"{len(pairs)} test pairs; misaligned scans on a {MISALIGNED_GRID[0]}^3 LIA grid at "
          f"{MISALIGNED_GRID[1]} mm; benchmark {(time.perf_counter() - started) / 60:.0f} min\n")
    print(table(rows))


if __name__ == "__main__":
    main()
