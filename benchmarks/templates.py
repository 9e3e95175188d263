"""Templates of the real brains as atlases: a learned template beside single subjects, the
affine mean and ANTs' template.

    python3 benchmarks/templates.py --figure _images/templates_brains.png

Data: ``../shared/data/fstrain9_128.npz`` beside the repository (see ``brains.py``). Every atlas
is made from the 6 training subjects on the 64^3 grid (3 mm):

- **learned**: ``main.py template`` (``--epochs`` x ``--steps_per_epoch``), its label map made
  at 128^3: each subject's 128^3 label map carried onto the template by the inverse of the
  template network's registration (displacement resized to 128^3), majority vote;
- **subject k**: one training subject and its own label map;
- **affine mean**: the voxelwise mean of the subjects (already affinely aligned) and the
  majority vote of their label maps;
- **ANTs**: ``ants.build_template`` (SyN, CC, ``--ants_iterations``) from the same images,
  timed; its label map carried from every subject by ANTs SyN and voted as the learned one's.

Each atlas is carried to each of the 3 test subjects (atlas moving, subject static) in two ways:
by a network (the learned template by its own; the others by VoxelMorph-2 trained scan-to-scan
on the same 6 subjects with the same budget) and by ANTs SyN (CC) at 64^3, the same for every
atlas. The atlas's 128^3 label map is warped (nearest neighbour) with the displacement resized
to 128^3 and scored by Dice over the 30 structures against the subject's. Each atlas's
sharpness is its mean gradient magnitude inside the brain (:func:`sharpness`); a template's mean
displacement to the training subjects is the length of the mean of its 6 displacements
(template moving, subject static), averaged over voxels, in mm, by ANTs SyN for every template
and by its own network for the learned one. ANTs' registrations are kept in ``--output`` and reused.
Prints a markdown table and writes ``results.json`` into ``--output``.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import brains  # noqa: E402  (numpy only)

FULL = (128, 128, 128)  # the scoring grid


def vote(label_maps: list[np.ndarray]) -> np.ndarray:
    """Majority vote of label maps of one shape (the lowest label on a tie)."""
    labels = np.unique(np.concatenate([np.unique(seg) for seg in label_maps]))
    counts = np.stack([sum((seg == label).astype(np.uint8) for seg in label_maps)
                       for label in labels])
    return labels[np.argmax(counts, axis=0)].astype(np.int32)


def carried(seg: np.ndarray, deformation: np.ndarray) -> np.ndarray:
    """A 128^3 label map warped (nearest) by a 64^3 displacement resized to 128^3."""
    import registration
    import utils

    full = np.asarray(utils.resize_displacement(deformation[None], FULL))[0]
    return registration.warped(seg.astype(np.int32), full, "nearest")


def ants_fields(fixed: np.ndarray, moving: np.ndarray, path: str) -> dict:
    """ANTs SyN (affine then SyN, CC of radius 4) of ``moving`` to ``fixed``, kept in ``path``.

    Returns
    -------
    dict
        ``deformation`` ``(*spatial, 3)`` on the fixed grid and ``inverse`` on the moving grid,
        each composed into one displacement in voxels; ``seconds`` of the registration.
    """
    import ants

    if not os.path.exists(path):
        images = ants.from_numpy(fixed.astype(np.float32)), ants.from_numpy(
            moving.astype(np.float32))
        start = time.perf_counter()
        result = ants.registration(*images, type_of_transform="SyN", syn_metric="CC",
                                   syn_sampling=4)
        seconds = time.perf_counter() - start
        # Unit spacing, zero origin, identity direction: physical vectors are voxels.
        forward = ants.apply_transforms(*images, result["fwdtransforms"], compose=path + "f")
        inverse = ants.apply_transforms(*images[::-1], result["invtransforms"],
                                        whichtoinvert=[True, False], compose=path + "i")
        np.savez(path + ".tmp.npz", seconds=seconds,
                 deformation=ants.image_read(forward).numpy().astype(np.float32),
                 inverse=ants.image_read(inverse).numpy().astype(np.float32))
        for name in (forward, inverse):
            os.remove(name)
        os.replace(path + ".tmp.npz", path)
    with np.load(path) as stored:
        return {key: stored[key] for key in ("deformation", "inverse", "seconds")}


def ants_template(vols: np.ndarray, iterations: int, path: str) -> tuple[np.ndarray, float]:
    """``ants.build_template`` (SyN, CC) of ``vols`` ``(N, *spatial)``, kept in ``path``;
    returns the template and the seconds it took."""
    import ants

    if not os.path.exists(path):
        start = time.perf_counter()
        built = ants.build_template(image_list=[ants.from_numpy(v) for v in vols],
                                    iterations=iterations, type_of_transform="SyN",
                                    syn_metric="CC", syn_sampling=4)
        np.savez(path + ".tmp.npz", template=built.numpy(),
                 seconds=time.perf_counter() - start)
        os.replace(path + ".tmp.npz", path)
    with np.load(path) as stored:
        return stored["template"], float(stored["seconds"])


def learn_template(train_set: str, folder: str, args) -> str:
    """Learn the template with ``main.py template`` (reused when done, resumed when
    interrupted); return its run folder."""
    import main
    import rundir

    run = os.path.join(folder, "learned")
    if not os.path.exists(os.path.join(run, rundir.METRICS)):
        resume = os.path.exists(os.path.join(run, rundir.ARGS))
        code = main.main(["template", "--resume", run] if resume else [
            "template", "--data", train_set, "--output", run, "--epochs", str(args.epochs),
            "--steps_per_epoch", str(args.steps_per_epoch), "--lr", str(args.lr),
            "--seed", str(args.seed)])
        if code:
            sys.exit("error: learning the template failed")
    return run


def mean_displacement_mm(fields: list[np.ndarray]) -> float:
    """Length of the mean of displacements (voxels of 3 mm), averaged over voxels, in mm."""
    import template_outputs

    return template_outputs.mean_displacement(np.mean(fields, axis=0), (3.0,) * 3)["mm"]


def sharpness(image: np.ndarray, brain: np.ndarray) -> float:
    """``template_outputs.sharpness`` over the ``brain`` voxels, the image first scaled so that
    the brain's 1st and 99th percentiles are 0 and 1 (an NCC template's intensities are free up
    to a scale, and its background is not learned)."""
    import template_outputs

    low, high = np.percentile(image[brain], [1, 99])
    return template_outputs.sharpness((image.astype(np.float64) - low) / (high - low), brain)


def make_atlases(vols: np.ndarray, small_segs: np.ndarray, train_segs: np.ndarray, run: str,
                 folder: str, args) -> dict:
    """Every atlas of the training subjects' ``vols`` and label maps (``small_segs`` at 64^3,
    ``train_segs`` at 128^3): ``image`` (64^3), ``seg`` (128^3), ``seconds`` to make it,
    :func:`sharpness` and, for templates, their ``displacement_mm`` to the subjects (by ANTs;
    ``own_displacement_mm`` by the learned template's network)."""
    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import keras
    import models
    import registration
    import rundir
    import volumes

    brain = np.mean(small_segs > 0, axis=0) >= 0.5  # brain in at least half of the subjects
    atlases = {f"subject {k}": {"image": vols[k], "seg": train_segs[k], "seconds": 0.0,
                                "sharpness": sharpness(vols[k], brain)} for k in range(len(vols))}
    atlases["affine mean"] = {"image": vols.mean(axis=0), "seg": vote(list(train_segs)),
                              "seconds": 0.0}
    image, seconds = ants_template(vols, args.ants_iterations, os.path.join(folder, "ants.npz"))
    to_subjects = [ants_fields(v, image, os.path.join(folder, f"ants_to_{k}.npz"))
                   for k, v in enumerate(vols)]
    atlases["ANTs template"] = {
        "image": image, "seconds": seconds,
        "seg": vote([carried(seg, f["inverse"]) for seg, f in zip(train_segs, to_subjects)]),
        "label_seconds": sum(float(f["seconds"]) for f in to_subjects)}
    network = models.registration_model(keras.models.load_model(
        os.path.join(run, rundir.MODEL), compile=False))
    image = volumes.load_volume(os.path.join(run, rundir.TEMPLATE))[0].astype(np.float32)
    own = [registration.register(network, image, v, inverse=True) for v in vols]
    atlases["learned template"] = {
        "image": image, "seconds": rundir.read_json(os.path.join(run, rundir.METRICS))[
            "train_seconds"], "network": network,
        "seg": vote([carried(seg, f["inverse"]) for seg, f in zip(train_segs, own)]),
        "own_displacement_mm": mean_displacement_mm([f["deformation"] for f in own])}
    for name in ("affine mean", "ANTs template", "learned template"):
        tag = name.split()[0].lower()
        atlas = atlases[name]
        fields = [ants_fields(v, atlas["image"], os.path.join(folder, f"{tag}_to_{k}.npz"))
                  for k, v in enumerate(vols)]
        atlas.update(displacement_mm=mean_displacement_mm([f["deformation"] for f in fields]),
                     sharpness=sharpness(atlas["image"], brain))
    return atlases


def segment(atlas: dict, network, test_small: np.ndarray, full, folder: str, tag: str
            ) -> dict:
    """Dice (30 structures, 128^3) of the atlas's labels carried to each test subject by
    ``network`` and by ANTs SyN, and the seconds of each registration."""
    import registration
    import scores

    segs, labels = full[1], full[2]
    out = {"network": [], "ants": [], "network_seconds": [], "ants_seconds": []}
    for s, static in enumerate(test_small):
        registered = registration.register(network, atlas["image"], static)
        by_ants = ants_fields(static, atlas["image"], os.path.join(folder, f"{tag}_on_{s}.npz"))
        for key, field, seconds in (("network", registered["deformation"], registered["seconds"]),
                                    ("ants", by_ants["deformation"], by_ants["seconds"])):
            out[key].append(float(np.nanmean(scores.dice(carried(atlas["seg"], field), segs[s],
                                                         labels))))
            out[f"{key}_seconds"].append(float(seconds))
    return out


def table(atlases: dict, results: dict) -> str:
    """Markdown table: one row per atlas, then the best and the mean single subject."""
    lines = ["| atlas | made in | Dice, VoxelMorph | Dice, ANTs SyN | sharpness | "
             "mean displacement to the subjects (mm) |", "|---|---|---|---|---|---|"]

    def row(name: str, network: float, ants: float, atlas: dict) -> str:
        made = f"{atlas['seconds']:.0f} s" if atlas.get("seconds") else ""
        if "label_seconds" in atlas:
            made += f" (+ {atlas['label_seconds']:.0f} s for its labels)"
        shown = f"{atlas['sharpness']:.4f}" if "sharpness" in atlas else ""
        moved = f"{atlas['displacement_mm']:.2f} (ANTs)" if "displacement_mm" in atlas else ""
        if "own_displacement_mm" in atlas:
            moved += f", {atlas['own_displacement_mm']:.2f} (its network)"
        return f"| {name} | {made} | {network:.3f} | {ants:.3f} | {shown} | {moved} |"

    subjects = [name for name in results if name.startswith("subject")]
    for name in results:
        lines.append(row(name, np.mean(results[name]["network"]), np.mean(results[name]["ants"]),
                         atlases[name]))
    for key, label in (("network", "VoxelMorph"), ("ants", "ANTs SyN")):
        best = max(subjects, key=lambda name: np.mean(results[name][key]))
        lines.append(f"| best single subject by {label} ({best}) | | "
                     + " | ".join(f"{np.mean(results[best][k]):.3f}" for k in ("network", "ants"))
                     + " | | |")
    lines.append("| mean of the single subjects | | " + " | ".join(
        f"{np.mean([np.mean(results[n][k]) for n in subjects]):.3f}" for k in ("network", "ants"))
        + " | | |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default=brains.DATA, help="the real-brain .npz file")
    parser.add_argument("--output", default=os.path.join(ROOT, "runs", "templates"),
                        help="folder of the runs, ANTs' registrations and results.json")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of both trainings")
    parser.add_argument("--steps_per_epoch", type=int, default=100, help="steps per epoch")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of both")
    parser.add_argument("--seed", type=int, default=0, help="random seed of both")
    parser.add_argument("--ants_iterations", type=int, default=3,
                        help="iterations of ants.build_template")
    parser.add_argument("--figure", help="PNG of the templates side by side")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train_set, test_set, full = brains.prepare("templates.py", args.data, 2, args.output)
    import runtime  # noqa: F401  (before TensorFlow: oneDNN on)
    import datasets
    import keras
    import models
    import viz

    with np.load(args.data) as stored:
        train_segs = stored["segs"][:brains.NUM_TRAIN]
    # in [0, 1] as main.py reads them (min-max per scan): the networks' input range
    train_small, test_small = (np.stack([datasets.normalize(v) for v in np.load(path)["vols"]])
                               for path in (train_set, test_set))
    run = learn_template(train_set, args.output, args)
    brains.train("vm2", [], train_set, test_set, args.output, args)
    vm2 = models.registration_model(keras.models.load_model(
        os.path.join(args.output, "vm2", "model.keras"), compile=False))
    atlases = make_atlases(train_small, np.load(train_set)["segs"], train_segs, run, args.output,
                           args)
    results = {}
    for name, atlas in atlases.items():
        tag = name.replace(" ", "_")
        results[name] = segment(atlas, atlas.get("network", vm2), test_small, full,
                                args.output, tag)
        print(f"  {name}: Dice {np.mean(results[name]['network']):.3f} (network), "
              f"{np.mean(results[name]['ants']):.3f} (ANTs SyN)", flush=True)
    print(table(atlases, results))
    facts = {name: {k: v for k, v in atlas.items() if k not in ("image", "seg", "network")}
             for name, atlas in atlases.items()}
    path = os.path.join(args.output, "results.json")
    with open(path + ".tmp", "w") as file:
        json.dump({"atlases": facts, "dice": results}, file, indent=1)
    os.replace(path + ".tmp", path)
    if args.figure:
        best = max((n for n in results if n.startswith("subject")),
                   key=lambda n: np.mean(results[n]["network"]))
        viz.plot_images([(best, atlases[best]["image"])] + [
            (name, atlases[name]["image"]) for name in
            ("affine mean", "ANTs template", "learned template")],
            "Atlases of the 6 training subjects (64^3)", args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
