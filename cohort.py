"""Registering a cohort: many moving scans in one process (``main.py register --output DIR``);
and what one pair's ``register`` shares with it: its model (:func:`registration_model`), the
checks of its output files (:func:`check_pair`) and its notes (:func:`warn_notes`).

Registering scan after scan with ``main.py register`` pays TensorFlow's start-up, the model's
load and the static scan's preparation again for every scan. Here the model is loaded once, each
static scan is read and prepared once (:func:`registrar`: the shipped model's
``pretrained.prepared_static``; a trained model's network built for the static shape), and each
moving scan is then read, registered and written in turn (:func:`register_all`):

- :func:`listed`: the pairs, from ``--moving A B C --static F`` or a ``--pairs_file`` CSV read
  as training reads one (``filelists.read_columns``, columns ``moving,static`` and optionally
  ``moving_seg``, ``static_seg``);
- :func:`planned`: every output file's name, ``DIR/<name>_moved.nii.gz`` and the other
  ``SUFFIXES`` asked for, ``<name>`` the moving file's name (:func:`output_names`); an output
  that would overwrite an input is refused before any work;
- :func:`register_all`: one progress line per scan with the time left; a scan that cannot be
  registered (unreadable, 2D, too small...) is one line on stderr and the others go on; with
  label maps, ``SCORES`` (Dice per label against the static label map, folding share) is
  rewritten atomically after every scan; at the end one ``volumes.DataError`` names the scans
  that failed (``main.py`` exits with status 2).
"""
import collections
import csv
import dataclasses
import os
import sys
import time
import warnings

import numpy as np

import datasets
import filelists
import hyper
import models
import pretrained
import registration
import rundir
import scores
import transforms
import tuning
import volumes

IN_FOLDER = True  # the value of an output flag given without a file name: into --output
SUFFIXES = {"moved": "_moved.nii.gz", "moved_seg": "_moved_seg.nii.gz", "warp": "_warp.nii.gz",
            "inverse_warp": "_inverse_warp.nii.gz", "deformation": "_deformation.nii.gz",
            "affine": "_affine.txt"}  # DIR/<name><suffix>, the keys of transforms.save_registered
SCORES = "scores.csv"  # per-scan scores, with label maps
COMPILE_FROM = 4  # scans of a cohort from which the shipped model's steps are compiled
EXTENSIONS = volumes.IMAGES + (".npy", ".npz")


@dataclasses.dataclass(frozen=True)
class Scan:
    """One moving scan of a cohort: its files, its static scan's, and where its outputs go."""
    name: str
    moving: str
    static: str
    moving_seg: str | None
    static_seg: str | None
    outputs: dict  # {key of SUFFIXES: path or None}


def is_cohort(output: str | None, moving: list[str] | None, pairs_file: str | None) -> bool:
    """Whether ``register``'s flags ask for a cohort: ``--output``, ``--pairs_file`` or several
    ``--moving`` scans."""
    return output is not None or pairs_file is not None or len(moving or []) > 1


def listed(moving: list[str] | None, static: str | None, moving_segs: list[str] | None,
           static_seg: str | None, pairs_file: str | None) -> list[tuple]:
    """The pairs of a cohort: ``(moving, static, moving_seg, static_seg)`` paths (label maps
    None when not given), from the flags or from the ``pairs_file`` CSV."""
    if pairs_file is not None:
        if moving or static or moving_segs or static_seg:
            raise volumes.UsageError("--pairs_file lists the scans: drop --moving, --static, "
                                     "--moving_seg and --static_seg")
        columns, _ = filelists.read_columns(pairs_file, datasets.PAIR_COLUMNS,
                                            datasets.PAIR_SEG_COLUMNS)
        moving, statics = columns["moving"], columns["static"]
        moving_segs, static_segs = columns["moving_seg"], columns["static_seg"]
    else:
        if not moving or static is None:
            raise volumes.UsageError("register needs --moving and --static, or --pairs_file")
        statics, static_segs = [static] * len(moving), [static_seg] * len(moving)
    if moving_segs is not None and len(moving_segs) != len(moving):
        raise volumes.UsageError(f"{len(moving)} --moving scans but {len(moving_segs)} "
                                 f"--moving_seg label maps: give one for each")
    if moving_segs is None and static_segs is not None and static_segs[0] is not None:
        raise volumes.UsageError("a static label map scores the moved label maps: give the "
                                 "moving scans' too (--moving_seg, or the column moving_seg)")
    moving_segs = moving_segs or [None] * len(moving)
    static_segs = static_segs or [None] * len(moving)
    return list(zip(moving, statics, moving_segs, static_segs))


def stem(path: str) -> str:
    """A file's name without its folder and volume extension (``.nii.gz``, ``.mgz``...)."""
    name = os.path.basename(path)
    for extension in EXTENSIONS:
        if name.endswith(extension):
            return name[:-len(extension)]
    return name


def output_names(paths: list[str]) -> list[str]:
    """A name per moving scan: its file's :func:`stem`, prefixed by its folders' names (joined
    by ``_``) as far as needed to tell scans of one file name apart (``sub-01_T1w``)."""
    full = [os.path.abspath(path) for path in paths]
    twice = [path for path, count in collections.Counter(full).items() if count > 1]
    if twice:
        raise volumes.UsageError(f"{twice[0]} is listed twice as a moving scan")
    parts = [path.split(os.sep)[1:-1] + [stem(path)] for path in full]
    depth = [1] * len(paths)
    while True:
        names = ["_".join(part[-level:]) for part, level in zip(parts, depth)]
        counts = collections.Counter(names)
        clashes = [index for index, name in enumerate(names) if counts[name] > 1]
        if not clashes:
            return names
        for index in clashes:
            if depth[index] == len(parts[index]):
                raise volumes.UsageError(f"{paths[index]} and another moving scan would have "
                                         f"one output name ({names[index]}): rename one")
            depth[index] += 1


def check_pair(outputs: dict, pair: tuple, inputs: list[str]) -> None:
    """Refuse the output files of one pair (``register`` without ``--output``) that could not all
    be written, before any work: ``outputs`` by key of ``SUFFIXES`` (paths or None), ``pair`` of
    :func:`listed`, other ``inputs`` (the model) that no output may overwrite."""
    moving, static, moving_seg, static_seg = pair
    if static_seg is not None:
        raise volumes.UsageError("--static_seg scores a cohort's moved label maps: give --output "
                                 "DIR")
    for key, path in outputs.items():
        if path is IN_FOLDER:
            raise volumes.UsageError(f"--{key} without a file name writes into a cohort's "
                                     f"--output DIR: give a file name, or --output")
    if outputs["moved"] is None:
        raise volumes.UsageError("register needs --moved (the output file), or --output DIR")
    if (moving_seg is None) != (outputs["moved_seg"] is None):
        raise volumes.UsageError("--moving_seg and --moved_seg go together")
    for key in ("warp", "inverse_warp"):
        if outputs[key] and not outputs[key].endswith(volumes.NIFTI):
            raise volumes.UsageError(f"--{key} {outputs[key]}: a warp is written as NIfTI "
                                     f"(.nii, .nii.gz)")
    if outputs["affine"] and not outputs["affine"].endswith(transforms.ITK_TRANSFORM):
        raise volumes.UsageError(f"--affine {outputs['affine']}: an affine map is written as an "
                                 f"ITK text transform (.txt, .tfm)")
    volumes.check_output_files({f"--{key}": path for key, path in outputs.items()},
                               [*inputs, moving, static, moving_seg or ""],
                               other_formats=("--affine",))


def planned(pairs: list[tuple], folder: str | None, asked: dict, inputs: list[str]
            ) -> list[Scan]:
    """Every scan of a cohort and its output files in ``folder`` (made by :func:`register_all`).

    Parameters
    ----------
    pairs : list of tuple
        :func:`listed`.
    asked : dict
        ``{key of SUFFIXES: value of its flag}``: ``moved`` is always written, ``moved_seg``
        for scans with a label map, the others where their flag is ``IN_FOLDER``.
    inputs : list of str
        Other input files (the model), which no output may overwrite.

    Raises
    ------
    volumes.UsageError
        Without ``folder``, for an output flag given a file name, or an output that would
        overwrite an input (before any work).
    """
    if folder is None:
        raise volumes.UsageError("a cohort (several --moving scans, or --pairs_file) is "
                                 "written into a folder: give --output DIR")
    for key in ("moved", "moved_seg"):
        if asked[key] is not None:
            raise volumes.UsageError(f"--{key}: with --output each scan's outputs are "
                                     f"DIR/<name>{SUFFIXES['moved']} (and "
                                     f"{SUFFIXES['moved_seg']} for a --moving_seg): drop it")
    for key, value in asked.items():
        if value not in (None, IN_FOLDER):
            raise volumes.UsageError(f"--{key} {value}: with --output give --{key} alone, which "
                                     f"writes DIR/<name>{SUFFIXES[key]}")
    rundir.output_folder(folder)
    scans = []
    for name, (moving, static, moving_seg, static_seg) in zip(
            output_names([pair[0] for pair in pairs]), pairs):
        wanted = {key: key == "moved" or (key == "moved_seg" and moving_seg is not None)
                  or asked[key] is IN_FOLDER for key in SUFFIXES}
        outputs = {key: os.path.join(folder, name + suffix) if wanted[key] else None
                   for key, suffix in SUFFIXES.items()}
        scans.append(Scan(name, moving, static, moving_seg, static_seg, outputs))
    check_overwrites(scans, folder, inputs)
    return scans


def check_overwrites(scans: list[Scan], folder: str, inputs: list[str]) -> None:
    """Refuse outputs (and ``SCORES``) that would overwrite an input file of the cohort."""
    read = {os.path.realpath(path) for scan in scans for path in (
        scan.moving, scan.static, scan.moving_seg, scan.static_seg) if path} | {
        os.path.realpath(path) for path in inputs}
    written = [path for scan in scans for path in scan.outputs.values() if path]
    for path in written + [os.path.join(folder, SCORES)]:
        if os.path.realpath(path) in read:
            raise volumes.UsageError(f"--output {folder}: {path} would overwrite an input file")


def registration_model(path: str | None, lamda: list | None, affine: bool):
    """``register``'s model: ``--model`` at ``path`` or the shipped one (``pretrained.load``), a
    hypermodel's at its ``--lamda`` (one value); refused with ``affine`` (``--affine`` asked for)
    when a trained model has no affine stage."""
    if lamda and (len(lamda) > 1 or lamda[0] == "best"):
        raise volumes.UsageError("register takes one --lamda value (evaluate chooses or curves)")
    model = hyper.for_registration(rundir.load_model(path) if path else pretrained.load(),
                                   lamda[0] if lamda else None)
    if affine and path and models.transform(models.registration_model(model)) == "deformable":
        raise volumes.UsageError(f"--affine: {path} is a deformable model, without an affine "
                                 f"stage (train one with --transform affine, rigid or joint)")
    return model


def warn_notes(registered: dict, where: str = "") -> None:
    """A registration's notes (the pose stage's, fine-tuning's and refinement's fallbacks) as
    ``volumes.DataWarning`` lines, after ``where`` (e.g. the scan) when given."""
    for note in (registered.get("pose_note"), registered["finetune_fallback"],
                 registered["refine_fallback"]):
        if note:
            warnings.warn(f"{where}: {note}" if where else note, volumes.DataWarning)


def registrar(model, shipped: bool, finetune_steps: int = 0, finetune_lr: float = 1e-3,
              refiner: tuning.Refiner | None = None, tune_loss: str | None = None,
              inverse: bool = False, compiled: bool = False):
    """``(prepare, register)`` of a cohort: ``prepare(static, static_grid)`` once per static
    scan, ``register(moving, moving_grid, prepared, moving_seg)`` per moving scan, which returns
    what ``transforms.save_registered`` writes.

    The shipped model (``shipped``) prepares the static side by ``pretrained.prepared_static``
    and registers by ``pretrained.register_prepared`` with its network built once (one traced
    graph for every scan), ``compiled`` (worth its seconds from ``COMPILE_FROM`` scans on) or
    not; a trained model builds its network (and fine-tuner) for the static shape once and
    registers by ``registration.register_scans``.
    """
    if shipped:
        tuner = pretrained.finetuner(model, finetune_steps, finetune_lr, tune_loss)
        network = registration.network_for(model, pretrained.SHAPE)  # once: one traced graph

        def register_shipped(moving, moving_grid, static, moving_seg):
            return pretrained.register_prepared(network, moving, moving_grid, static,
                                                moving_seg, tuner, refiner, inverse, compiled)
        return pretrained.prepared_static, register_shipped

    def prepare(static, static_grid):
        network = registration.network_for(model, static.shape)
        tuner = (tuning.FineTuner(model, finetune_steps, finetune_lr,
                                  models.input_shape(network), tune_loss)
                 if finetune_steps else None)
        return network, tuner, static, static_grid

    def register_trained(moving, moving_grid, prepared, moving_seg):
        network, tuner, static, static_grid = prepared
        return registration.register_scans(network, moving, static, moving_grid, static_grid,
                                           moving_seg, inverse=inverse, tuner=tuner,
                                           refiner=refiner, tune_loss=tune_loss)
    return prepare, register_trained


def static_label_map(path: str | None, grid: transforms.Grid) -> np.ndarray | None:
    """The static scan's label map at ``path`` (None: none), checked to be on its ``grid``."""
    if path is None:
        return None
    labels, _, labels_grid = transforms.load_scan(path, "static label map")
    if not labels_grid.same_as(grid):
        raise volumes.DataError(f"{path} is not on the static scan's grid (shape "
                                f"{labels_grid.shape} vs {grid.shape}, or affine)")
    return volumes.as_label_map(labels, path)


def scored(registered: dict, static_seg: np.ndarray | None) -> dict:
    """A scan's row of ``SCORES``: Dice of ``moved_seg`` and ``static_seg`` per non-zero label
    of ``static_seg`` (``dice_<label>``) and their mean, the folding share (Jacobian
    determinant <= 0) and, with an inverse, its mean inverse-consistency error (mm)."""
    if static_seg is None:
        return {}
    labels = [int(label) for label in np.unique(static_seg) if label != 0]
    dice = scores.dice(registered["moved_seg"], static_seg, labels)
    row = {"dice_mean": float(np.nanmean(dice)) if labels else np.nan,
           "folding_share": scores.folding_fraction(registered["deformation"]),
           **{f"dice_{label}": float(value) for label, value in zip(labels, dice)}}
    if "inverse_error" in registered:
        row["inverse_error_mm"] = registered["inverse_error"]["mean_mm"]
    return row


def write_scores(path: str, rows: list[dict]) -> None:
    """``SCORES``: a row per scan (``name``, ``moving``, ``static``, ``seconds``, the scores of
    :func:`scored`, ``error`` for a scan that failed), atomically; empty cells for none."""
    first = ["name", "moving", "static", "seconds", "dice_mean", "folding_share",
             "inverse_error_mm"]
    labels = sorted({key for row in rows for key in row if key.startswith("dice_")} - set(first),
                    key=lambda key: int(key.split("_")[1]))
    present = {key for row in rows for key in row}
    header = [key for key in first if key in present] + labels + ["error"]

    def cell(value) -> str:
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.6g}"
        return "" if value is None else str(value)
    with volumes.atomic_path(path) as tmp, open(tmp, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows([cell(row.get(key)) for key in header] for row in rows)


def register_one(scan: Scan, register, prepared, static_grid: transforms.Grid, static_image,
                 static_seg: np.ndarray | None) -> dict:
    """Read one moving scan (and label map), register it, write its outputs; its row of
    ``SCORES`` (without the seconds), and its notes (pose, fallbacks) as warnings."""
    moving, _, moving_grid = transforms.load_scan(scan.moving, "moving")
    moving_seg = transforms.load_label_map(scan.moving_seg, moving_grid)
    registered = register(moving, moving_grid, prepared, moving_seg)
    transforms.save_registered(registered, scan.outputs, static_grid, moving_grid, static_image)
    warn_notes(registered, scan.moving)
    return scored(registered, static_seg)


def register_all(scans: list[Scan], prepare, register, folder: str) -> str:
    """Register every scan of a cohort (:func:`planned`) with :func:`registrar`'s ``prepare`` and
    ``register``, each static scan read and prepared once; one line per scan on stdout (on
    stderr when it fails), the time left estimated from the scans so far.

    Returns
    -------
    str
        The line that sums it up.

    Raises
    ------
    volumes.DataError
        At the end, when a scan (or a static scan) could not be registered: naming them.
    """
    rundir.make_folder(folder)
    groups = collections.defaultdict(list)  # by static scan and label map, in order
    for index, scan in enumerate(scans):
        groups[scan.static, scan.static_seg].append(index)
    rows, start = [None] * len(scans), time.perf_counter()
    for (static_path, static_seg_path), members in groups.items():
        try:
            static, static_image, static_grid = transforms.load_scan(static_path, "static")
            static_seg = static_label_map(static_seg_path, static_grid)
            prepared = prepare(static, static_grid)
        except (volumes.DataError, volumes.UsageError) as error:
            print(f"main.py: skipped the {len(members)} scans to {static_path}: "
                  f"{volumes.one_line(error)}", file=sys.stderr, flush=True)
            for index in members:
                rows[index] = {"error": volumes.one_line(error)}
            tabled(scans, rows, folder)
            continue
        for index in members:
            scan, began = scans[index], time.perf_counter()
            try:
                rows[index] = register_one(scan, register, prepared, static_grid, static_image,
                                           static_seg)
                rows[index]["seconds"] = time.perf_counter() - began
                line, stream = f"{scan.name}: {rows[index]['seconds']:.1f} s", sys.stdout
            except (volumes.DataError, volumes.UsageError) as error:
                rows[index] = {"error": volumes.one_line(error)}
                line, stream = f"skipped {scan.moving}: {rows[index]['error']}", sys.stderr
            done = sum(row is not None for row in rows)
            elapsed = time.perf_counter() - start
            print(f"[{done}/{len(scans)}] {line} ({elapsed:.0f} s elapsed, about "
                  f"{elapsed / done * (len(scans) - done):.0f} s left)", file=stream, flush=True)
            tabled(scans, rows, folder)
    seconds = time.perf_counter() - start
    failed = [scan.moving for scan, row in zip(scans, rows) if "error" in row]
    if failed:
        raise volumes.DataError(f"{len(failed)} of {len(scans)} moving scans could not be "
                                f"registered ({', '.join(failed)}); the other "
                                f"{len(scans) - len(failed)} are in {folder}")
    scoring = any(scan.static_seg for scan in scans)
    return (f"registered {len(scans)} moving scans to {len(groups)} static scan"
            f"{'s' * (len(groups) > 1)} in {seconds:.1f} s ({seconds / len(scans):.1f} s a "
            f"scan), wrote {folder}" + (f", scores in {SCORES}" if scoring else ""))


def tabled(scans: list[Scan], rows: list[dict | None], folder: str) -> None:
    """``SCORES`` of the scans done so far (:func:`write_scores`), when they have label maps."""
    if any(scan.static_seg for scan in scans):
        write_scores(os.path.join(folder, SCORES), [
            {"name": scan.name, "moving": scan.moving, "static": scan.static, **row}
            for scan, row in zip(scans, rows) if row is not None])
