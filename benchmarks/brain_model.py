"""The shipped brain model (``pretrained/brain.keras``): its training data, export and scores.

    python3 benchmarks/brain_model.py data --output runs/brain_model
    python3 main.py --data runs/brain_model/t1_train.npz --val_data runs/brain_model/t1_val.npz \
        --pairs scan_to_scan --model vm2 --unet official --bidir --seg_weight 0.1 \
        --epochs 40 --steps_per_epoch 100 --output runs/brain_model/v2
    python3 benchmarks/brain_model.py export --run runs/brain_model/v2 --int_steps 7
    python3 benchmarks/brain_model.py score --output runs/brain_model

``data`` writes, on the network's 64^3 grid at 3 mm (every second voxel of the shared 128^3
MNI152 grid at 1.5 mm, as ``brains.downsample``):

- ``t1_train.npz``: T1 images and label maps of 5 of the benchmark's 6 training subjects
  (``fstrain9_128.npz``: sub-01, 02, 03, 04, 06), which version 2 trains on;
- ``t1_val.npz``: those of sub-06 and sub-07, its validation pairs (sub-07 never trains);
- ``mixed_train.npz``: those T1s and realistic contrasts of them mapped onto another subject's
  T1 (:func:`mapped_variants`); ``synth_train.npz``: the T1s and T1-like images of the 20
  public SynthSeg label maps (``contrasts.synthetic_t1s``), recipes tried for version 3;
- ``label_maps.npz`` and ``val.npz``: version 1's, trained from label maps (``--synth data``):
  the 20 public SynthSeg label maps (``../shared/data/synthseg20_128.npz``, Apache-2.0) and the
  6 training subjects', skull-stripped (the extra-cerebral 5xx labels and label 24, CSF, set to
  0), with the benchmark's 30 Dice labels less 24 and the choroid plexus (31, 63).

The benchmark's 3 test subjects (sub-08, 09, 10) are in none of them. ``export`` writes a run's
last checkpoint (or ``model.keras``) as ``pretrained/brain.keras`` without the optimiser's
state, with ``--int_steps`` its field integrated as a velocity. ``score`` registers the 6 test
pairs with it, scored at 128^3 by ``brains.score_pair``: aligned and unaligned (the moving scan
moved by a random rigid map of up to ``ROTATION`` degrees and ``SHIFT_MM`` mm per axis, on a
FreeSurfer-like 176^3 grid at 1.25 mm, ``affine_brains.grids``); T1 -> T1, each contrast of
``contrasts.REMAPS`` (T2-like, FLAIR-like, PD-like, made realistic by ``contrasts.realistic``:
per-structure intensities, bias field, noise) -> T1, and T1 -> each contrast; on the unaligned
pairs also with ``--refine_steps`` and, timed one after the other, ANTs Affine + SyN (``SyN``)
with MI at antspyx's default iterations. ``poses`` measures how far the pose stage brings the
unaligned scans to their true pose (the data's alignment), in mm over the static brain's voxels.
"""
import argparse
import hashlib
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import affine_brains, brains, contrasts  # noqa: E402

SYNTHSEG = os.path.join(ROOT, "..", "shared", "data", "synthseg20_128.npz")
NOT_BRAIN = 24  # CSF: extra-cerebral in the SynthSeg maps
UNLABELLED = (24, 31, 63)  # Dice labels the SynthSeg maps do not hold
ROTATION, SHIFT_MM = 15.0, 15.0  # the unaligned pairs' random rigid maps, per axis
SEED = 2026  # of those maps
VALIDATION = 5  # sub-07's index in fstrain9_128.npz: it validates, never trains nor tests
VALIDATION_SEED = 3030  # of the validation pairs' rigid maps; + 1: of their contrasts
CONTRAST_SEED = 2027  # of the benchmark's realistic contrasts (contrasts.realistic)
VARIANTS = 4  # realistic contrasts of each training subject in mixed_train.npz
ORIGINALS = 2  # copies of each T1 image there beside them
SEPARATION = 0.12  # least gap between the CSF, grey and white matter intensities of a variant
VARIANT_SEED = 7  # of their draws (none of the benchmark's seeds)
SYNTH_COPIES = 4  # copies of each T1 image in synth_train.npz beside the 20 synthetic T1s
SYNTH_SEED = 11  # of the synthetic T1s' draws


def skull_stripped(segs: np.ndarray) -> np.ndarray:
    """Label maps with the extra-cerebral labels (5xx and ``NOT_BRAIN``) set to 0, as uint8."""
    return np.where((segs >= 500) | (segs == NOT_BRAIN), 0, segs).astype(np.uint8)


def write_data(args) -> None:
    """``data``: the training files of both versions, in ``--output``."""
    for path in (args.data, args.synthseg):
        if not os.path.exists(path):
            sys.exit(f"brain_model.py: error: {path} not found (expected in ../shared/data)")
    with np.load(args.data) as bench, np.load(args.synthseg) as public:
        vols, segs = brains.downsample(bench["vols"][:brains.NUM_TRAIN],
                                       bench["segs"][:brains.NUM_TRAIN], 2)
        full_public = skull_stripped(public["segs"])
        public_segs = full_public[:, 1::2, 1::2, 1::2]  # the voxels brains.downsample keeps
        synthetic = contrasts.synthetic_t1s(full_public, bench["vols"][:5], bench["segs"][:5], SYNTH_SEED)
        all_labels = [int(x) for x in bench["labels"]]
    labels = [label for label in all_labels if label not in UNLABELLED]
    os.makedirs(args.output, exist_ok=True)
    maps = skull_stripped(np.concatenate([public_segs, segs]))
    names = [brains.FREESURFER_NAMES[label] for label in labels]
    t1 = {"vols": np.round(vols).astype(np.uint8), "segs": segs}
    for name, arrays in (("label_maps", {"segs": maps}),
                         ("val", {"vols": vols, "segs": skull_stripped(segs)}),
                         ("t1_train", {key: value[:5] for key, value in t1.items()}),
                         ("t1_val", {key: value[4:6] for key, value in t1.items()}),
                         ("mixed_train", {
                             "vols": np.concatenate([*[t1["vols"][:5]] * ORIGINALS, mapped_variants(
                                 t1["vols"][:5], segs[:5], VARIANTS, VARIANT_SEED)]),
                             "segs": np.concatenate([segs[:5]] * ORIGINALS + [np.repeat(
                                 segs[:5], VARIANTS, axis=0)])}),
                         ("synth_train", {
                             "vols": np.concatenate([t1["vols"][:5]] * SYNTH_COPIES + [synthetic]),
                             "segs": np.concatenate([segs[:5]] * SYNTH_COPIES + [
                                 public_segs])})):
        if name.startswith(("t1_", "mixed_", "synth_")):  # all 30 labels
            labels, names = all_labels, [brains.FREESURFER_NAMES[x] for x in all_labels]
        path = os.path.join(args.output, f"{name}.npz")
        np.savez(path + ".tmp.npz", **arrays, labels=labels, label_names=names, spacing=3.0)
        os.replace(path + ".tmp.npz", path)
        print(f"wrote {path}: {', '.join(f'{k} {v.shape}' for k, v in arrays.items())}")


def mapped_variants(vols: np.ndarray, segs: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` realistic contrasts of each T1 image (``contrasts.realistic``: random anchors
    whose CSF, grey and white matter lie ``SEPARATION`` apart,
    per-structure offsets, bias field, noise), each scaled as ``register`` scales a scan and
    mapped onto another subject's T1 by ``register``'s contrast mapping
    (``contrast_mapping.in_contrast_of``): the imperfect T1-like images the network meets when a
    scan is not a T1. ``(len(vols) * count, *spatial)`` uint8, subject by subject."""
    import contrast_mapping
    import pretrained

    rng = np.random.default_rng(seed)
    t1s = [pretrained.scaled(vol.astype(np.float32), "T1") for vol in vols]
    out = []
    for index, (t1, seg) in enumerate(zip(t1s, segs)):
        for _ in range(count):
            anchors = rng.uniform(0.1, 1.0, size=5)
            while np.diff(np.sort(anchors[1:4])).min() < SEPARATION:  # tissues told apart
                anchors = rng.uniform(0.1, 1.0, size=5)
            image = pretrained.scaled(contrasts.realistic(t1, seg, anchors, rng), "variant")
            other = rng.choice([i for i in range(len(vols)) if i != index])
            out.append(np.round(255 * contrast_mapping.in_contrast_of(
                image, t1s[other], pretrained.SPACING_MM)))
    return np.asarray(out, np.uint8)


def export(args) -> None:
    """``export``: the run's newest model, without its optimiser, as the shipped file; with
    ``--int_steps``, its field read as a stationary velocity and integrated in that many
    scaling-and-squaring steps (the same network, diffeomorphic)."""
    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import models
    import pretrained
    import rundir

    source = os.path.join(args.run, rundir.MODEL)  # else the newest checkpoint
    if not os.path.exists(source):
        source = os.path.join(args.run, rundir.read_json(os.path.join(
            args.run, rundir.STATE))["model"])
    model = rundir.load_model(source)
    if args.int_steps:
        flags = rundir.read_json(os.path.join(args.run, rundir.ARGS))
        built = models.build_model(models.input_shape(model), flags["model"], flags["loss"],
                                   flags["lamda"], ncc_window=flags["ncc_window"],
                                   int_steps=args.int_steps, bidir=flags["bidir"],
                                   unet=flags["unet"],
                                   transform=flags.get("transform", "deformable"))
        bare = built.__class__.from_config(built.get_config())  # no optimiser
        models.initialise(bare, model)
        source += f", integrated in {args.int_steps} steps"
    else:
        bare = model.__class__.from_config(model.get_config())
        bare.set_weights(model.get_weights())
    for path in args.stages:  # a stage trained on its own replaces the run's
        stage = rundir.load_model(path)
        models.initialise(bare, stage)
        source += f" with the {models.transform(models.registration_model(stage))} stage of {path}"
    os.makedirs(os.path.dirname(pretrained.FILE), exist_ok=True)
    bare.save(pretrained.FILE + ".tmp.keras")
    os.replace(pretrained.FILE + ".tmp.keras", pretrained.FILE)
    print(f"wrote {pretrained.FILE} ({os.path.getsize(pretrained.FILE) / 2**20:.1f} MB) "
          f"from {source}")


def cases(full, pairs, grids, seed: int, keep=None, contrast_seed: int = CONTRAST_SEED
          ) -> dict:
    """The scans of every condition, by name (``"unaligned, T2-like -> T1"``): per pair
    ``(moving image, moving seg, moving grid, static image)``. The moving scan aligned or
    unaligned; T1 -> T1, each contrast of ``contrasts.REMAPS`` -> T1, and T1 -> each contrast.
    A contrast is :func:`contrasts.realistic` (per-structure intensities, bias field, noise),
    drawn from ``contrast_seed``, the condition and the pair. ``keep``: only the conditions
    whose name holds one of these strings."""
    grid, _, other = grids
    unaligned = affine_brains.misaligned(full, pairs, grid, other, seed, rotation=ROTATION,
                                         scaling=(1.0, 1.0), shear=0.0, translation=SHIFT_MM)
    vols, segs = full[:2]
    scans = {"aligned": [(vols[m], segs[m], grid) for m, _ in pairs],
             "unaligned": [(case["image"], case["seg"], other) for case in unaligned]}
    sides = [("T1", "T1")] + [(c, "T1") for c in contrasts.REMAPS] + [
        ("T1", c) for c in contrasts.REMAPS]
    out = {}
    for pose, moving in scans.items():
        for number, (moving_contrast, static_contrast) in enumerate(sides):
            name = f"{pose}, {moving_contrast} -> {static_contrast}"
            if keep and not any(part in name for part in keep):
                continue
            rows = []
            for index, ((image, seg, image_grid), (_, s)) in enumerate(zip(moving, pairs)):
                rng = np.random.default_rng([contrast_seed, number, index])
                if moving_contrast != "T1":
                    image = contrasts.realistic(image, seg, moving_contrast, rng)
                static = vols[s] if static_contrast == "T1" else contrasts.realistic(
                    vols[s], segs[s], static_contrast, rng)
                rows.append((image, seg, image_grid, static))
            out[name] = rows
    return out


def shipped(full, pairs, moving, grid, refine_steps: int = 0, model=None,
            similarity: str | None = None) -> dict:
    """The shipped model (or ``model``, one like it) on every pair of one condition: one
    forward pass each (after the pose stage), or with ``refine_steps`` of refinement by
    ``similarity`` (``register``'s default when None); the seconds are the whole
    registration's (pose stage, forward pass, refinement, outputs)."""
    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import pretrained

    model = model or pretrained.load()
    refiner = pretrained.refiner(model, refine_steps, similarity=similarity or
                                 pretrained.TUNE_LOSS) if refine_steps else None
    results = []
    for (m, s), (image, seg, moving_grid, static) in zip(pairs, moving):
        start = time.perf_counter()
        out = pretrained.register_brains(model, image, static, moving_grid, grid, seg,
                                         refiner=refiner)
        seconds = time.perf_counter() - start
        scored = brains.score_pair(full, m, s, out["moved_seg"], out["deformation"])
        results.append({**scored, "seconds": seconds, "pose_seconds": out["pose_seconds"],
                        "network_seconds": out["seconds"],
                        "refine_seconds": out["refine_seconds"]})
        print(f"  pair {m}->{s}: Dice {np.nanmean(scored['dice']):.3f} in {seconds:.1f} s",
              flush=True)
    return {"per_pair": results}


def ants_pairs(full, pairs, moving, grid, metric: str, folder: str) -> dict:
    """ANTs Affine + SyN (``SyN``, ``metric``, default iterations) on every pair of one
    condition; folding and SDlogJ from its SyN warp (its affine map has one Jacobian)."""
    import ants

    import transforms

    results = []
    for (m, s), (image, seg, moving_grid, static) in zip(pairs, moving):
        fixed = affine_brains.ants_images(static, grid)
        start = time.perf_counter()
        registered = ants.registration(fixed, affine_brains.ants_images(image, moving_grid),
                                       type_of_transform="SyN", syn_metric=metric,
                                       syn_sampling={"CC": 4, "mattes": 32}[metric])
        seconds = time.perf_counter() - start
        moved_seg = ants.apply_transforms(fixed, affine_brains.ants_images(seg, moving_grid),
                                          registered["fwdtransforms"],
                                          interpolator="nearestNeighbor").numpy()
        warp = [name for name in registered["fwdtransforms"] if name.endswith(".nii.gz")][0]
        deformation = transforms.from_world(ants.image_read(warp).numpy(), grid)
        scored = brains.score_pair(full, m, s, np.rint(moved_seg).astype(np.int32), deformation)
        results.append({**scored, "seconds": seconds})
        print(f"  ANTs {metric} pair {m}->{s}: Dice {np.nanmean(scored['dice']):.3f} in "
              f"{seconds:.0f} s", flush=True)
    return {"per_pair": results}


def score(args) -> None:
    """``score``: the shipped model (and ANTs) on the test pairs of every condition; on each
    unaligned condition the refined shipped model and ANTs are timed one after the other."""
    full = brains.full_resolution_test_set(args.data)
    grids = affine_brains.grids(args.data)
    pairs = brains.test_pairs(len(full[0]), args.max_pairs)
    moving = cases(full, pairs, grids, SEED, args.conditions)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(ROOT, "pretrained", "brain.keras"), "rb") as file:
        model = {"model_md5": hashlib.md5(file.read()).hexdigest()}  # a new model scores anew
    rows = [("affine only (the data's alignment)", "aligned", brains.affine_only(full, pairs))]
    for condition, scans in moving.items():
        name = condition.replace(", ", "_").replace(" -> ", "_to_")
        if "shipped" in args.methods:
            result = brains.cached(os.path.join(args.output, f"shipped_{name}.json"), pairs,
                                   lambda: shipped(full, pairs, scans, grids[0]), model)
            rows.append(("shipped model, one forward pass", condition, result))
        if not condition.startswith("unaligned"):
            continue
        if "refined" in args.methods:
            steps = {"refine_steps": args.refine_steps}
            result = brains.cached(
                os.path.join(args.output, f"refined_{name}.json"), pairs,
                lambda: shipped(full, pairs, scans, grids[0], **steps), {**model, **steps})
            rows.append((f"shipped model + --refine_steps {args.refine_steps}", condition,
                         result))
        if "ants" in args.methods:
            result = brains.cached(os.path.join(args.output, f"ants_mattes_{name}.json"),
                                   pairs, lambda: ants_pairs(full, pairs, scans, grids[0],
                                                             "mattes", args.output))
            rows.append(("ANTs Affine + SyN (MI), default 40-20-0", condition, result))
    print(f"\n{len(pairs)} test pairs, scored at 128^3\n")
    print("| method | moving -> static scan | mean Dice (30 structures) | lowest pair | HD95 (mm) | SDlogJ "
          "| % det(J) <= 0, mean (max) | s per pair (CPU) |\n|---|---|---|---|---|---|---|---|")
    for method, condition, result in rows:
        stats = brains.summary(result)
        lowest = min(np.nanmean(row["dice"]) for row in result["per_pair"])
        folding = max(row["folding_fraction"] for row in result["per_pair"])
        print(f"| {method} | {condition} | {stats['dice']['mean']:.3f} ± "
              f"{stats['dice']['std']:.3f} | {lowest:.3f} | "
              f"{stats['hd95_mm_mean']['mean']:.2f} | {stats['sdlogj']['mean']:.3f} | "
              f"{100 * stats['folding_fraction']['mean']:.4f} ({100 * folding:.4f}) | "
              f"{stats['seconds']['mean']:.1f} |")


def validate(args) -> None:
    """``validate``: each model (a run's checkpoints, or shipped files) registers sub-07 to and
    from each training subject (10 pairs), unaligned, as ``score`` registers the test pairs but
    with seeds of its own; the mean Dice at 128^3 of each condition, to choose a checkpoint on
    what the test pairs measure without them; with ``--refine_steps``, refined by
    ``--tune_loss``."""
    import rundir

    full = brains.full_resolution_test_set(args.data, [VALIDATION, *range(VALIDATION)])
    pairs = ([(0, k) for k in range(1, VALIDATION + 1)]
             + [(k, 0) for k in range(1, VALIDATION + 1)])[:args.max_pairs]
    grids = affine_brains.grids(args.data)
    moving = cases(full, pairs, grids, VALIDATION_SEED, args.conditions,
                   VALIDATION_SEED + 1)
    print("| model | " + " | ".join(moving) + " |\n|---|" + "---|" * len(moving))
    for path in args.models:
        model = rundir.load_model(path)
        dice = [np.mean([np.nanmean(row["dice"]) for row in shipped(
            full, pairs, scans, grids[0], args.refine_steps, model, args.tune_loss)["per_pair"]])
            for scans in moving.values()]
        print(f"| {path} | " + " | ".join(f"{value:.3f}" for value in dice) + " |", flush=True)


def speed(args) -> None:
    """``speed``: wall-clock seconds of ``main.py register`` with the shipped model on a pair of
    FreeSurfer-like 256^3 scans at 1 mm (reading, resampling, registering, writing), median of
    ``--repeats`` runs in fresh processes."""
    import subprocess

    import nibabel as nib

    from benchmarks import bench

    import transforms

    full = brains.full_resolution_test_set(args.data)
    grid = affine_brains.grids(args.data)[0]
    conformed = np.eye(4)
    conformed[:3, :3] = affine_brains.LIA
    centre = grid.affine[:3, :3] @ np.full(3, 63.5) + grid.affine[:3, 3]  # RAS mm
    conformed[:3, 3] = centre - affine_brains.LIA @ np.full(3, 127.5)
    target = transforms.Grid((256,) * 3, conformed)
    os.makedirs(args.output, exist_ok=True)
    files = {}
    for name, index in (("moving", 0), ("static", 1)):
        image = transforms.resample(full[0][index] * 255, grid, target)
        files[name] = os.path.join(args.output, f"speed_{name}.nii.gz")
        nib.save(nib.Nifti1Image(image.astype(np.uint8), conformed), files[name])
    command = [sys.executable, os.path.join(ROOT, "main.py"), "register", "--moving",
               files["moving"], "--static", files["static"], "--moved",
               os.path.join(args.output, "speed_moved.nii.gz"), "--warp",
               os.path.join(args.output, "speed_warp.nii.gz")]
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        seconds.append(time.perf_counter() - start)
    with open("/proc/cpuinfo") as file:
        isa = bench.cpu_isa(file.read())["isa"]
    print(f"main.py register, shipped model, 256^3 at 1 mm (uint8 NIfTI), moved image and warp "
          f"written: median {np.median(seconds):.1f} s of {args.repeats} runs "
          f"({', '.join(f'{x:.1f}' for x in seconds)}); {bench.cpu_name()} ({isa}), "
          f"{os.cpu_count()} cores")


def poses(args) -> None:
    """``poses``: the distance (mean mm over every 50th voxel of the static brain) between the
    true map of the unaligned pairs (T1 and T2-like) and the map of: the brain centres alone,
    the centres and principal axes (``pose.principal_rotation``), and the whole pose stage
    (``pose.estimate``, which ``register`` writes as ``--affine``)."""
    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import pose
    import pretrained

    full = brains.full_resolution_test_set(args.data)
    grid, _, other = affine_brains.grids(args.data)
    pairs = brains.test_pairs(len(full[0]), None)
    unaligned = affine_brains.misaligned(full, pairs, grid, other, SEED, rotation=ROTATION,
                                         scaling=(1.0, 1.0), shear=0.0, translation=SHIFT_MM)
    errors = {}
    for contrast in ("T1", "T2-like"):
        for (_, s), case in zip(pairs, unaligned):
            points = grid.world(np.argwhere(full[1][s] > 0)[::50].astype(float))
            moving = case["image"] if contrast == "T1" else contrasts.t2_like(case["image"])
            images = [pretrained.scaled(moving, "moving"), pretrained.scaled(full[0][s], "static")]
            moments = [pose.brain_moments(image, image_grid)
                       for image, image_grid in zip(images, (other, grid))]
            (moving_centre, moving_spread), (static_centre, static_spread) = moments
            start = time.perf_counter()
            found = {"brain centres": pose.turned_about(np.eye(3), moving_centre, static_centre),
                     "centres and principal axes": pose.turned_about(
                         pose.principal_rotation(moving_spread, static_spread), moving_centre,
                         static_centre),
                     "the pose stage": pose.estimate(images, [other, grid], moments,
                                                     pretrained.working_grid(static_centre))[0]}
            print(f"  {contrast} pair to {s}: pose stage {time.perf_counter() - start:.1f} s",
                  flush=True)
            for name, world_map in found.items():
                errors.setdefault((name, contrast), []).append(
                    affine_brains.recovery(world_map, case["truth"], points)["recovery_mm"])
    print("| pose from | moving scan | error, mean of 6 pairs (mm) | per pair (mm) |\n"
          "|---|---|---|---|")
    for (name, contrast), values in errors.items():
        print(f"| {name} | {contrast} | {np.mean(values):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in values)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    data = steps.add_parser("data", help="write the training label maps")
    data.add_argument("--synthseg", default=SYNTHSEG, help="the synthseg20_128.npz file")
    data.add_argument("--output", required=True, help="folder to write the two files into")
    run = steps.add_parser("export", help="write a run's model as pretrained/brain.keras")
    run.add_argument("--run", required=True, help="the training's run folder")
    run.add_argument("--int_steps", type=int, default=0,
                     help="read the run's displacement as a stationary velocity and integrate "
                          "it in this many scaling-and-squaring steps (diffeomorphic)")
    run.add_argument("--stages", nargs="*", default=[],
                     help="model files whose weights replace the matching stage of the run's "
                          "model (e.g. a deformable stage trained on its own)")
    scored = steps.add_parser("score", help="score the shipped model on the test pairs")
    scored.add_argument("--output", default=os.path.join(ROOT, "runs", "brain_model"))
    scored.add_argument("--methods", nargs="+", default=["shipped", "refined", "ants"],
                        choices=["shipped", "refined", "ants"],
                        help="'refined': the shipped model with --refine_steps; 'ants': ANTs "
                             "Affine + SyN with MI (needs antspyx); both on the unaligned pairs")
    scored.add_argument("--refine_steps", type=int, default=25, help="of the 'refined' rows")
    scored.add_argument("--max_pairs", type=int, default=None)
    scored.add_argument("--conditions", nargs="+", default=None,
                        help="score only the conditions whose name holds one of these, e.g. "
                             "'unaligned' or '-> T2-like'")
    timed = steps.add_parser("speed", help="time main.py register with the shipped model")
    timed.add_argument("--output", default=os.path.join(ROOT, "runs", "brain_model"))
    timed.add_argument("--repeats", type=int, default=3)
    posed = steps.add_parser("poses", help="how far register's stages bring unaligned scans")
    checked = steps.add_parser("validate", help="Dice of models on sub-07's pairs at 128^3")
    checked.add_argument("--models", nargs="+", required=True, help="model files to compare")
    checked.add_argument("--conditions", nargs="+", default=["unaligned, T1 -> T1",
                                                             "unaligned, FLAIR-like -> T1"],
                         help="conditions as score names them")
    checked.add_argument("--max_pairs", type=int, default=None, help="the first pairs only")
    checked.add_argument("--refine_steps", type=int, default=0,
                         help="Adam steps refining each pair (0: one pass)")
    checked.add_argument("--tune_loss", choices=("ncc", "mi", "mind"), default=None,
                         help="the refinement's similarity (default: register's)")
    for step in (data, scored, timed, posed, checked):
        step.add_argument("--data", default=brains.DATA, help="the fstrain9_128.npz file")
    args = parser.parse_args()
    {"data": write_data, "export": export, "score": score, "speed": speed,
     "poses": poses, "validate": validate}[args.step](args)


if __name__ == "__main__":
    main()
