"""ANTs SyN on the real-brain test pairs, its per-pair scores kept in the repository.

ANTs at 128^3 takes 30-70 minutes a pair on a 2-core CPU, so each pair's scores (never image
data) are written to ``ants_syn_scores.json`` beside this file as soon as the pair is done, with
the date, machine and threads of the registration, and reused by every later benchmark run.
antspyx is a benchmark-only dependency, imported when a registration runs.
"""
import json
import os
import sys
import time

import numpy as np

from benchmarks import brains

# ANTs SyN's per-pair scores, committed so that its hours of CPU are spent once (no image data).
ANTS_SCORES = os.path.join(brains.ROOT, "benchmarks", "ants_syn_scores.json")
ANTS_ABOUT = ("ANTs SyN (antspyx registration 'SyNOnly', CC metric of radius 4) of the real-brain "
              "test pairs 'moving->static' at 128^3, scored by benchmarks/real_brains.py "
              "(score_pair); written by it, pair by pair, with the date, machine and threads of "
              "each registration")


def ants_register(fixed_image: np.ndarray, moving_image: np.ndarray, moving_seg: np.ndarray,
                  iterations: list[int] | None, path: str, metric: str = "CC") -> dict:
    """ANTs SyN of one pair, kept in ``path`` (.npz) and reused from there.

    ``metric`` is ``"CC"`` (radius 4, a 9-voxel window) or ``"mattes"`` (mutual information,
    32 bins); ``iterations`` per level, coarse to fine, or None for antspyx's default (40-20-0).

    ANTs' own warp file is also applied to the moving label map by ``main.py apply``, and the
    share of voxels where its labels equal ANTs' is kept (``apply_agreement``).

    Returns
    -------
    dict
        ``moved_seg`` (labels warped by ANTs with nearest neighbour), ``deformation``
        ``(*spatial, 3)`` in voxels along the array axes, ``seconds`` of the registration,
        ``apply_agreement``.
    """
    import ants

    if not os.path.exists(path):
        fixed, moving = ants.from_numpy(fixed_image), ants.from_numpy(moving_image)
        start = time.perf_counter()
        registration = ants.registration(
            fixed, moving, type_of_transform="SyNOnly", syn_metric=metric,
            syn_sampling={"CC": 4, "mattes": 32}[metric],
            **({} if iterations is None else {"reg_iterations": tuple(iterations)}))
        seconds = time.perf_counter() - start
        moved_seg = ants.apply_transforms(fixed, ants.from_numpy(moving_seg.astype(np.float32)),
                                          registration["fwdtransforms"],
                                          interpolator="nearestNeighbor").numpy()
        # With unit spacing, zero origin and identity direction, the warp's physical vectors
        # are displacements in voxels along the array axes, as ours.
        warp = [name for name in registration["fwdtransforms"] if name.endswith(".nii.gz")][0]
        moved_seg = np.rint(moved_seg).astype(np.int32)
        np.savez(path + ".tmp.npz", moved_seg=moved_seg,
                 deformation=ants.image_read(warp).numpy().astype(np.float32), seconds=seconds,
                 apply_agreement=apply_agreement(warp, moving_seg, moved_seg, path))
        os.replace(path + ".tmp.npz", path)
    with np.load(path) as stored:
        return {key: stored[key] for key in ("moved_seg", "deformation", "seconds",
                                             "apply_agreement") if key in stored}


def apply_agreement(warp: str, moving_seg: np.ndarray, ants_moved_seg: np.ndarray,
                    path: str) -> float:
    """Share of voxels where ``main.py apply`` of ANTs' ``warp`` file to the moving label map
    gives ANTs' own labels (the label map written as ANTs writes images, beside ``path``)."""
    import ants
    import main

    seg_file, output = path + ".moving_seg.nii.gz", path + ".applied.nii.gz"
    ants.image_write(ants.from_numpy(moving_seg.astype(np.float32)), seg_file)
    if main.main(["apply", "--warp", warp, "--moving", seg_file, "--output", output,
                  "--interp", "nearest"]) != 0:
        sys.exit("error: main.py apply failed on ANTs' warp")
    applied = np.asanyarray(ants.image_read(output).numpy())
    for name in (seg_file, output):
        os.remove(name)
    return float(np.mean(np.rint(applied) == ants_moved_seg))


def ants_machine() -> dict:
    """Where and how an ANTs registration runs now: date, antspyx version, CPU and threads."""
    import ants

    from benchmarks import bench

    with open("/proc/cpuinfo") as file:
        isa = bench.cpu_isa(file.read())["isa"]
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "antspyx": ants.__version__,
            "cpu": f"{bench.cpu_name()} ({isa}), {os.cpu_count()} cores",
            "threads": int(os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
                                          os.cpu_count()))}


def stored_scores(path: str, iterations: list[int]) -> dict:
    """The per-pair scores kept in ``path`` (JSON, keys ``"m->s"``) for these SyN iterations."""
    if not os.path.exists(path):
        return {}
    with open(path) as file:
        stored = json.load(file)
    return stored["pairs"] if stored["iterations"] == list(iterations) else {}


def store_score(path: str, iterations: list[int], key: str, scores: dict) -> None:
    """Add one pair's scores to ``path`` (written atomically), replacing other iterations'."""
    pairs = {**stored_scores(path, iterations), key: scores}
    text = json.dumps({"about": ANTS_ABOUT, "iterations": list(iterations),
                       "pairs": dict(sorted(pairs.items()))}, indent=1)
    with open(path + ".tmp", "w") as file:
        file.write(text + "\n")
    os.replace(path + ".tmp", path)


def ants_syn(full, pairs, iterations: list[int], folder: str, scores: str = ANTS_SCORES) -> dict:
    """ANTs SyN on every test pair at 128^3, scored as the other methods.

    A pair's scores come from ``scores`` (committed with the repository: scores only, each
    with the date, machine and threads it was made on) when it holds the pair for these
    ``iterations``; otherwise the pair is registered (its warp kept in ``folder``) and its
    scores are added there.
    """
    vols, segs = full[:2]
    results = []
    for m, s in pairs:
        key = f"{m}->{s}"
        if key not in stored_scores(scores, iterations):
            made = ants_machine()
            registered = ants_register(vols[s], vols[m], segs[m], iterations,
                                       os.path.join(folder, f"ants_{m}_{s}.npz"))
            scored = brains.score_pair(full, m, s, registered["moved_seg"],
                                       registered["deformation"])
            store_score(scores, iterations, key, {
                **scored, "seconds": float(registered["seconds"]),
                "apply_agreement": float(registered["apply_agreement"]), "made": made})
        result = {name: value for name, value in stored_scores(scores, iterations)[key].items()
                  if name != "made"}
        results.append(result)
        print(f"  ANTs pair {key}: Dice {np.nanmean(result['dice']):.3f} in "
              f"{result['seconds']:.0f} s; main.py apply of its warp gives its labels at "
              f"{100 * result['apply_agreement']:.3f}% of voxels", flush=True)
    return {"per_pair": results}
