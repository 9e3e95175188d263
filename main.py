"""VoxelMorph (CVPR 2018) from the command line: train, register a pair, evaluate a model, learn
a template.

    python3 main.py                                   # train on the default data
    python3 main.py --epochs 60 --batch_size 1 --lr 1e-3
    python3 main.py --data subjects.npz --pairs scan_to_scan --model vm1
    python3 main.py register --model RUN/model.keras --moving m.nii.gz --static f.nii.gz \
        --moved moved.nii.gz --warp warp.nii.gz --inverse_warp inverse.nii.gz
    python3 main.py register --moving a.nii.gz b.nii.gz --static f.nii.gz --output DIR --warp
    python3 main.py apply --warp warp.nii.gz --moving aseg.mgz --output moved_aseg.nii.gz
    python3 main.py evaluate --model RUN/model.keras --data test.npz
    python3 main.py template --data scans/ --output RUN

This module is the command line only: its parsers, and for each command the inputs it reads and
the files it writes (the output files checked first, ``volumes.check_output_files``; register's
by ``transforms.save_registered``, evaluate's Dice CSV by ``scores.write_dice_csv``). Training
is ``training.train``, whose data rules evaluate shares (``data_sources.py``); registering and
scoring pairs are in ``registration.py``, a cohort in ``cohort.py`` (which also checks and
plans register's files); world-space warps are ``transforms.py``'s; learning
templates is ``template_training.py``'s; a hypermodel's curve and chosen weight are
``hyper_outputs.py``'s; the run folder's files (``rundir.py``) are written atomically.
``python3 main.py COMMAND --help`` lists every option.

Half of it is the parsers, whose help texts document the options (shared flags: ``_add_*_flags``).
"""
import argparse
import os
import sys
import warnings

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import numpy as np

import augmentation
import cohort
import data_sources
import datasets
import hyper
import hyper_outputs
import scores
import models
import objective
import pairing
import pretrained
import registration
import rundir
import template
import template_training
import training
import transforms
import tuning
import viz
import volumes


def _number(kind: type, low: float, high: float = np.inf, low_open: bool = True,
            high_open: bool = True):
    """argparse type: a finite number of ``kind`` in the interval from ``low`` to ``high``."""
    def parse(text: str):
        value = kind(text)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below and np.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {parse.__name__}, got {text}")
        return value
    bounds = ("(" if low_open else "[") + f"{low:.10g}, {high:.10g}" + (")" if high_open else "]")
    parse.__name__ = {(True, np.inf): "positive", (False, np.inf): "non-negative"}.get(
        (low_open, high), f"in {bounds}") if low == 0 else f"in {bounds}"
    return parse


def _lamda_choice(text: str) -> float | str:
    """argparse type of ``--lamda`` of register and evaluate: a number, or ``best``."""
    return text if text == "best" else _number(float, -np.inf)(text)


def _positive(kind: type, zero: bool = False):
    """argparse type: a positive (or, with ``zero``, non-negative) number of ``kind``."""
    return _number(kind, 0, low_open=not zero)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in --help, except None and those the help text already gives."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_run_flags(parser: argparse.ArgumentParser, unit: str, output: str = "") -> None:
    """How a run trains and where it goes, shared by training and ``template``: ``--epochs``,
    ``--batch_size`` (``unit`` per step), ``--lr``, ``--seed``, ``--output``, ``--resume``."""
    parser.add_argument("--epochs", type=_positive(int), default=8, help="training epochs")
    parser.add_argument("--batch_size", type=_positive(int), default=1, help=f"{unit} per step")
    parser.add_argument("--lr", type=_positive(float), default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=_number(int, 0, 2**32, low_open=False), default=0,
                        help="random seed, in [0, 2^32)")
    parser.add_argument("--output", default=None,
                        help="output folder, new or empty (default: runs/<date>-<time>)" + output)
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last checkpoint, with the "
                             "flags stored in RUN_DIR/args.json; only --epochs (to train longer) "
                             "and --lr may be given")


def _add_loss_flags(parser: argparse.ArgumentParser, int_steps: int) -> None:
    """The loss of Eq. (2) and the field it smooths, shared by training and ``template``:
    ``--loss``, ``--lamda``, ``--ncc_window``, ``--int_steps`` (by default ``int_steps``; 0, the
    CVPR displacement, only where it is the default) and ``--int_downsize``."""
    parser.add_argument("--loss", choices=objective.LOSSES, default="ncc",
                        help="image similarity: local NCC, mean squared error, or mutual "
                             "information (for images of different contrasts)")
    parser.add_argument("--lamda", type=_number(float, 0, low_open=False), default=None,
                        help="weight of the smoothness loss (default: 1.0 for ncc, 0.01 for mse)")
    parser.add_argument("--ncc_window", type=_positive(int), default=9,
                        help="width of the local NCC window in voxels, per axis (the paper: 9 "
                             "at 1 mm)")
    parser.add_argument("--int_steps", type=_positive(int, zero=not int_steps), default=int_steps,
                        help="diffeomorphic: integrate a stationary velocity field in this many "
                             "scaling and squaring steps"
                             + ("" if int_steps else " (7 is usual; 0: the CVPR displacement)"))
    parser.add_argument("--int_downsize", type=_positive(int), default=1,
                        help="with --int_steps: integrate at 1/F resolution, then resize")


def _add_data_flags(parser: argparse.ArgumentParser, default: str) -> None:
    """``--data``, ``--atlas`` and ``--pairs``, shared by training and evaluation."""
    parser.add_argument("--data", default=None,
                        help=".npy (N, *spatial), .npz (vols; optional segs, atlas, atlas_seg, "
                             "labels, label_names), a NIfTI file; or, read when a batch needs "
                             "them, a folder of NIfTI/.mgz files, a .txt list of them (one a "
                             "line) or a .csv list (columns image, optional seg) "
                             f"(default: {default})")
    parser.add_argument("--atlas", default=None,
                        help="static atlas (.npy, .npz or NIfTI); overrides one in --data")
    parser.add_argument("--pairs", choices=("atlas", "scan_to_scan"), default=None,
                        help="register every subject to the atlas, or pairs of distinct subjects "
                             "(default: atlas when there is one)")
    parser.add_argument("--pairs_file", default=None,
                        help="CSV of the pairs to use instead of --data: header moving,static "
                             "and optionally moving_seg,static_seg; NIfTI/.mgz paths relative "
                             "to the CSV's folder")


def _add_model_flags(parser: argparse.ArgumentParser, shipped: str) -> None:
    """``--model`` (``shipped`` says what the shipped brain model takes) and the flags of
    instance optimisation on each pair, shared by ``register`` and ``evaluate``."""
    parser.add_argument("--model", default=None,
                        help=f"trained model (.keras); without it, the shipped brain model "
                             f"({shipped})")
    parser.add_argument("--finetune_steps", type=_positive(int, zero=True), default=0,
                        help="instance optimisation: Adam steps on each pair's own image loss "
                             "before registering it (its label maps are never used)")
    parser.add_argument("--finetune_lr", type=_positive(float), default=1e-3,
                        help="learning rate of --finetune_steps")
    parser.add_argument("--refine_steps", type=_positive(int, zero=True), default=0,
                        help="instance optimisation of the displacement itself on the static "
                             "grid, after the network (and --finetune_steps): Adam steps on the "
                             "pair's image loss")
    parser.add_argument("--refine_lr", type=_positive(float), default=None,
                        help="initial learning rate of --refine_steps, in voxels (decayed to 0 "
                             f"along a cosine; default: {tuning.REFINE_LR:g}, for the shipped "
                             f"model's coarse velocity {pretrained.REFINE_LR:g})")
    parser.add_argument("--tune_loss", choices=objective.LOSSES, default=None,
                        help="image similarity of --finetune_steps and --refine_steps (default: "
                             "the model's own; mi or mind for scans of two contrasts)")
    parser.add_argument("--lamda", type=_lamda_choice, nargs="+", default=None,
                        help="a hypermodel's (--hyper) smoothness weight in [0, 1] (default: "
                             "that of the ordinary default, 0.5 for ncc); evaluate: several "
                             "give a curve of the scores (lamda_curve.json, .png), best the "
                             "weight of best Dice on the run's validation pairs")


def tune_loss(args: argparse.Namespace) -> str | None:
    """The similarity of instance optimisation: ``--tune_loss``; by default the model's own,
    or for the shipped brain model (no --model), whose scans may differ in contrast,
    ``pretrained.TUNE_LOSS``."""
    return args.tune_loss or (None if args.model else pretrained.TUNE_LOSS)


def refiner(model, args: argparse.Namespace) -> tuning.Refiner | None:
    """The ``--refine_steps`` refiner of ``model`` (the shipped model's: ``pretrained.refiner``),
    or None."""
    if not args.refine_steps:
        return None
    if args.model:
        return tuning.Refiner(model, args.refine_steps, args.refine_lr or tuning.REFINE_LR,
                              tune_loss(args))
    return pretrained.refiner(model, args.refine_steps, args.refine_lr or pretrained.REFINE_LR,
                              tune_loss(args))


def build_parser() -> argparse.ArgumentParser:
    """Training flags (the original script's, with types) and the register/evaluate commands."""
    parser = argparse.ArgumentParser(
        prog="main.py", formatter_class=_HelpFormatter,
        description="Train VoxelMorph (Balakrishnan et al., CVPR 2018) on moving/static pairs. "
                    "Without --data it trains on the embedded default data: synthetic subjects "
                    "made by random smooth deformations of the MNI152 template.")
    _add_run_flags(parser, "pairs")
    _add_loss_flags(parser, int_steps=0)
    parser.add_argument("--hyper", action="store_true",
                        help="HyperMorph: one model for every smoothness weight lambda in [0, 1] "
                             "(loss (1 - lambda) * similarity + lambda * smoothness, lambda "
                             "drawn for every pair), chosen by register and evaluate --lamda")
    parser.add_argument("--model", choices=("vm1", "vm2"), default="vm2",
                        help="VoxelMorph-1 or VoxelMorph-2 decoder")
    parser.add_argument("--unet", choices=models.UNETS, default="paper",
                        help="U-Net layout: the CVPR paper's (stride-2 convolutions) or the "
                             "official code's (stride-1 convolutions and max pooling, more "
                             "computation at full resolution)")
    parser.add_argument("--bidir", action="store_true",
                        help="also warp the static image with the inverse field (symmetric loss)")
    parser.add_argument("--seg_weight", type=_positive(float, zero=True), default=0.0,
                        help="weight of the auxiliary soft-Dice loss of the warped label maps "
                             "(needs label maps for the training data)")
    parser.add_argument("--transform", choices=models.TRANSFORMS, default="deformable",
                        help="what the network predicts: VoxelMorph's dense displacement; an "
                             "affine or rigid map (for scans that are not aligned); joint: "
                             "an affine stage, then VoxelMorph on its moved image, end to end; "
                             "or cascade: VoxelMorph applied twice, the second time to its own "
                             "moved image, the maps composed")
    parser.add_argument("--synth", choices=("data", "shapes"), default=None,
                        help="train from label maps alone (SynthMorph): every step synthesises "
                             "two images of random contrasts from two label maps of --data "
                             "(data) or from random shapes (shapes), and the loss compares the "
                             "label maps (soft Dice), so the model registers any contrast")
    parser.add_argument("--random_affine", action="store_true",
                        help="move every training moving image by a random affine map (rotation "
                             "up to 20 degrees, scaling 0.85-1.15, shear 0.1, translation up to "
                             "15 mm), so that an affine stage learns to undo misalignment")
    parser.add_argument("--init_from", nargs="+", default=None, metavar="MODEL",
                        help="start from trained weights: a model of the same --transform, or "
                             "for joint an affine/rigid model (its affine stage) and/or a "
                             "deformable one (its deformable stage), for cascade a deformable "
                             "one (the network of both passes)")
    _add_data_flags(parser, "the embedded MNI152 data")
    parser.add_argument("--ndim", type=int, choices=(2, 3), default=None,
                        help="dimension of the images: the default data as 3D volumes "
                             "(80x96x80, the default) or 2D axial slices (80x96); with --data, "
                             "needed only for a 3-axis array without an atlas. Shape rule: "
                             + datasets.SHAPE_RULE)
    parser.add_argument("--steps_per_epoch", type=_positive(int), default=None,
                        help=f"training steps per epoch (default: {training.DEFAULT_STEPS} for "
                             "generated pairs, one pass over the subjects for atlas pairs from "
                             "--data)")
    parser.add_argument("--augment", nargs="*", choices=augmentation.AUGMENTATIONS, default=None,
                        help="--data with scan_to_scan pairs: change every training image (and "
                             "its label map) on the fly, by a random smooth deformation "
                             "('elastic') and a random bias field, gamma and noise "
                             "('intensity'); both when none is named (for small sets)")
    parser.add_argument("--val_data", default=None,
                        help="--data only: validation set, in a format of --data (default: hold "
                             "out the last --val_fraction of --data)")
    parser.add_argument("--val_fraction", type=_number(float, 0, 1), default=None,
                        help="--data without --val_data: share of the subjects held out for "
                             f"validation (default: {data_sources.VAL_FRACTION})")
    parser.add_argument("--gpus", type=_positive(int), default=None,
                        help="train on this many GPUs with tf.distribute.MirroredStrategy, "
                             "--batch_size split across them (default: all visible GPUs when "
                             "there are several, else one device)")
    parser.add_argument("--mixed_precision", action="store_true",
                        help="GPU only: float16 convolutions (Keras policy mixed_float16), the "
                             "displacement, sampler and losses in float32; ignored with a "
                             "warning on a CPU")
    parser.add_argument("--keep_best", action="store_true",
                        help="model.keras and the scores are of the epoch of lowest validation "
                             "loss, not the last one (checkpoint.json names it while training)")
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard logs into OUTPUT/tensorboard (needs the "
                             "tensorboard package)")

    commands = parser.add_subparsers(dest="command",
                                     metavar="{register,apply,evaluate,template}",
                                     title="other commands (python3 main.py COMMAND --help)")
    _add_register_parser(commands)
    _add_apply_parser(commands)
    _add_evaluate_parser(commands)
    _add_template_parser(commands)
    return parser


def _add_template_parser(commands) -> argparse.ArgumentParser:
    """``main.py template``: learn a template of a set of scans (``template_training.py``)."""
    learn = commands.add_parser(
        "template", formatter_class=_HelpFormatter,
        help="learn a template (an unbiased atlas) of a set of scans",
        description="Learn a template of a set of scans jointly with a diffeomorphic VoxelMorph "
                    "that registers it to each scan (Dalca et al., NeurIPS 2019), centred in "
                    "the population; or, with --model and --value, write a conditional "
                    "template for one value of its attribute.")
    learn.add_argument("--data", default=None,
                       help="the scans, in a format of training's --data (2 or more; their "
                            "'segs' or a CSV's seg column are fused onto the template)")
    learn.add_argument("--ndim", type=int, choices=(2, 3), default=None,
                       help="dimension of the scans, for a 3-axis array")
    learn.add_argument("--condition", default=None, metavar="FILE:COLUMN",
                       help="learn a template that is a function of an attribute: a CSV with "
                            "a column 'scan' (each scan's index from 0, or file name) and the "
                            "numeric COLUMN")
    learn.add_argument("--model", default=None, metavar="RUN",
                       help="with --value: the folder of a conditional template run")
    learn.add_argument("--value", type=_number(float, -np.inf), default=None,
                       help="with --model: write the template for this attribute value")
    _add_run_flags(learn, "scans", "; with --value, the template file")
    learn.add_argument("--steps_per_epoch", type=_positive(int),
                       default=template_training.DEFAULT_STEPS, help="training steps per epoch")
    _add_loss_flags(learn, int_steps=7)
    learn.add_argument("--bidir", action="store_true",
                       help="also compare each scan warped back onto the template with it")
    learn.add_argument("--centre_weight", type=_positive(float, zero=True),
                       default=template.CENTRE_WEIGHT,
                       help="weight of the centring term: the squared mean displacement from the "
                            "template to the scans (running mean over recent batches)")
    return learn


def _add_register_parser(commands) -> None:
    """``main.py register``: one pair, or a cohort of moving scans, with a trained model."""
    register = commands.add_parser(
        "register", formatter_class=_HelpFormatter,
        help="register one pair, or a cohort, with a trained model",
        description="Register one moving image to a static image with a trained model (with "
                    "--output: several, the model loaded and the static prepared once). Inputs "
                    "and outputs are .npy, .npz, NIfTI (.nii, .nii.gz) or FreeSurfer .mgz; "
                    "outputs are on the static image's grid and keep its affine (and header). "
                    "Scans on different grids (shape, voxel size, orientation) are aligned "
                    "through their affines: the moving scan is resampled into the static grid "
                    "before the network, and that resampling is part of every output. Images of "
                    "any size are scaled to [0, 1] and zero-padded to sizes divisible by 16 as "
                    "in training (the network is built for that shape with the trained weights)."
                    " .npy/.npz inputs are taken as 1 mm voxels on RAS axes.")
    _add_model_flags(register, "3D skull-stripped brain MRI of any contrast, any grid, not "
                               "aligned: docs/brain-model.md")
    register.add_argument("--moving", nargs="+", help="moving image (several: a cohort)")
    register.add_argument("--static", help="static (fixed) image")
    register.add_argument("--moved", help="output: the moving image warped onto the static one, "
                                          "in the moving image's intensity units (float32)")
    register.add_argument("--warp", nargs="?", const=cohort.IN_FOLDER, metavar="FILE",
                          help="output: the transform as an ITK/ANTs displacement field (NIfTI "
                               "vector image (x, y, z, 1, 3) on the static grid, LPS mm, mapping "
                               "each static-space point to the moving-space point it samples), "
                               "for antsApplyTransforms, SimpleITK/3D Slicer and main.py apply")
    register.add_argument("--inverse_warp", nargs="?", const=cohort.IN_FOLDER, metavar="FILE",
                          help="output: the inverse transform, the same kind of file on the "
                               "moving image's grid (the negated velocity integrated for "
                               "--int_steps models, refined by fixed-point iteration; a "
                               "fixed-point inverse otherwise); prints its inverse consistency")
    register.add_argument("--affine", nargs="?", const=cohort.IN_FOLDER, metavar="FILE",
                          help="output: the affine stage's map (models of --transform affine, "
                               "rigid, joint) as an ITK text transform (.txt, .tfm) in LPS mm, "
                               "static-space point -> moving-space point, for "
                               "antsApplyTransforms, SimpleITK and 3D Slicer")
    register.add_argument("--deformation", nargs="?", const=cohort.IN_FOLDER, metavar="FILE",
                          help="output: this project's own format: (*spatial, ndim) float32 "
                               "displacement in voxels of the static grid, 'ij' order: "
                               "moved[x] = moving_on_static_grid[x + u(x)]")
    register.add_argument("--moving_seg", nargs="+",
                          help="label map of each moving image, warped with nearest neighbour")
    register.add_argument("--moved_seg", help="output: the warped label map (its dtype)")
    register.add_argument("--output", metavar="DIR",
                          help="a cohort: DIR/<name>_moved.nii.gz per moving scan; --warp, "
                               "--affine ... given alone add <name>_warp.nii.gz ... (usage.md)")
    register.add_argument("--static_seg", help="with --output and --moving_seg: the static "
                                               "image's label map, scored in DIR/scores.csv")
    register.add_argument("--pairs_file", help="with --output: CSV of moving,static (optional "
                                               "moving_seg, static_seg) instead of the flags")


def _add_apply_parser(commands) -> None:
    """``main.py apply``: a saved warp applied to another image or label map."""
    apply = commands.add_parser(
        "apply", formatter_class=_HelpFormatter,
        help="apply a saved warp to an image or label map",
        description="Warp an image or label map given in the moving space (on any grid) with "
                    "a warp written by register --warp or by ANTs (an ITK displacement field), "
                    "onto the warp's grid. Points outside the moving image read 0.")
    apply.add_argument("--warp", required=True, help="ITK/ANTs displacement field (NIfTI)")
    apply.add_argument("--moving", required=True,
                       help="image or label map in the moving space (.npy, .npz, NIfTI, .mgz; "
                            ".npy/.npz are taken as 1 mm voxels on RAS axes)")
    apply.add_argument("--output", required=True,
                       help="output on the warp's grid, with its affine (.npy, .npz, NIfTI, .mgz)")
    apply.add_argument("--interp", choices=("linear", "nearest"), default=None,
                       help="interpolation (default: nearest for integer label maps, which keep "
                            "their labels and dtype; linear, float32, otherwise)")
    apply.add_argument("--reference", default=None,
                       help="the static image: checked to be on the warp's grid, and its header "
                            "given to the output")


def _add_evaluate_parser(commands) -> None:
    """``main.py evaluate``: scores of a trained model on labelled pairs."""
    evaluate = commands.add_parser(
        "evaluate", formatter_class=_HelpFormatter,
        help="score a trained model on labelled pairs",
        description="Register every test pair with a trained model and score it as the papers "
                    "and Learn2Reg do, on the data's own grid: Dice per label before and after "
                    "(labels warped with nearest neighbour), HD95 per label after (voxels, and "
                    "mm when the data gives the voxel size), SDlogJ, share of voxels with "
                    "Jacobian determinant <= 0, inverse consistency of the fixed-point inverse "
                    "(mm), seconds per pair. Writes eval.json, dice_per_structure.csv and "
                    "dice_boxplot.png.")
    _add_model_flags(evaluate, "docs/brain-model.md; needs --output")
    _add_data_flags(evaluate, "the default data's validation subjects")
    evaluate.add_argument("--labels", type=int, nargs="+", default=None,
                          help="labels scored with Dice (default: 'labels' in --data, else every "
                               "non-zero label present)")
    evaluate.add_argument("--max_pairs", type=_positive(int), default=None,
                          help="score only the first pairs (default: all)")
    evaluate.add_argument("--output", default=None,
                          help="output folder (default: the model's folder)")


def resumed_args(args, parser: argparse.ArgumentParser,
                 argv: list[str] | None) -> argparse.Namespace:
    """The flags stored in ``RUN_DIR/args.json`` for ``--resume RUN_DIR``, but ``--epochs`` and
    ``--lr`` when ``argv`` gives them (``rundir.RESUMABLE``); any other flag is refused."""
    unset = argparse.Namespace(**dict.fromkeys(vars(args)))  # argparse keeps what it finds set
    given = {key for key, value in vars(parser.parse_args(argv, unset)).items()
             if value is not None and key != "resume"}
    refused = sorted(f"--{key}" for key in given - set(rundir.RESUMABLE))
    if refused:
        raise volumes.UsageError(f"--resume takes every flag from {args.resume}/{rundir.ARGS} "
                                 f"but --epochs and --lr; drop {', '.join(refused)}")
    stored = rundir.read_json(os.path.join(args.resume, rundir.ARGS))
    stored.pop("resumes", None)
    return argparse.Namespace(**{**vars(args), **stored,
                                 **{key: getattr(args, key) for key in given},
                                 "resume": args.resume, "output": args.resume})


def train(args) -> str:
    """Train (or resume) a model as the flags say (``training.train``); one line of scores."""
    summary = training.train(args)
    if "worker" in summary:  # not the chief, which writes the run folder and scores
        return (f"{summary['worker']} trained in {summary['train_seconds']:.0f} s, weights "
                f"sha256 {summary['weights_sha256']}")
    return scores.headline(summary) + f", trained in {summary['train_seconds']:.0f} s"


def register(args) -> str:
    """Register one pair of files with a trained model and write the outputs; with --output, a
    cohort of moving scans in one process (``cohort.py``)."""
    outputs = {key: getattr(args, key) for key in cohort.SUFFIXES}
    pairs = cohort.listed(args.moving, args.static, args.moving_seg, args.static_seg,
                          args.pairs_file)
    if cohort.is_cohort(args.output, args.moving, args.pairs_file):
        scans = cohort.planned(pairs, args.output, outputs, [args.model or pretrained.FILE])
    else:
        scans, ((moving_path, static_path, moving_seg_path, _),) = None, pairs
        cohort.check_pair(outputs, pairs[0], [args.model or pretrained.FILE])
    model = cohort.registration_model(args.model, args.lamda, args.affine is not None)
    if scans is not None:
        return cohort.register_all(scans, *cohort.registrar(
            model, args.model is None, args.finetune_steps, args.finetune_lr,
            refiner(model, args), tune_loss(args), args.inverse_warp is not None,
            len(scans) >= cohort.COMPILE_FROM), args.output)
    moving, _, moving_grid = transforms.load_scan(moving_path, "moving")
    static, static_image, static_grid = transforms.load_scan(static_path, "static")
    moving_seg = transforms.load_label_map(moving_seg_path, moving_grid)
    if args.model:
        registered = registration.register_scans(
            model, moving, static, moving_grid, static_grid, moving_seg, args.finetune_steps,
            args.finetune_lr, inverse=args.inverse_warp is not None,
            refiner=refiner(model, args), tune_loss=tune_loss(args))
    else:
        registered = pretrained.register_brains(
            model, moving, static, moving_grid, static_grid, moving_seg, args.finetune_steps,
            args.finetune_lr, refiner(model, args), tune_loss(args), args.inverse_warp is not None)
    transforms.save_registered(registered, outputs, static_grid, moving_grid, static_image)
    tuned = (f" after {args.finetune_steps} fine-tuning steps "
             f"({registered['finetune_seconds']:.1f} s)" if args.finetune_steps else "")
    if registered["finetune_fallback"]:
        tuned = f" with fine-tuning stopped early ({registered['finetune_seconds']:.1f} s)"
    tuned += (f", refined in {args.refine_steps} steps ({registered['refine_seconds']:.1f} s)"
              if args.refine_steps else "")
    posed = f" with the shipped brain model (posed in {registered.get('pose_seconds', 0):.1f} s)"
    grids = ("" if moving_grid.same_as(static_grid) else " (moving scan resampled to its grid)"
             ) if args.model else posed
    line = (f"registered {moving_path} to {static_path}{grids} in {registered['seconds']:.3f} s "
            f"(one forward pass){tuned}, wrote {args.moved}")
    if args.inverse_warp:
        error = registered["inverse_error"]
        line += (f"; inverse consistency |x - inv(phi(x))|: mean {error['mean_mm']:.3f} mm, "
                 f"95th percentile {error['p95_mm']:.3f} mm")
    cohort.warn_notes(registered)
    return line


def apply(args) -> str:
    """Apply a saved warp to an image or label map in the moving space; write it."""
    volumes.check_output_files({"--output": args.output},
                               [args.warp, args.moving, args.reference or ""])
    warp, grid = transforms.load_warp(args.warp)
    volume, _, moving_grid = transforms.load_scan(args.moving, "moving")
    if moving_grid.ndim != grid.ndim:
        raise volumes.DataError(f"{args.moving} is {moving_grid.ndim}D but the warp "
                                f"{args.warp} is {grid.ndim}D")
    reference = grid.affine
    if args.reference is not None:
        _, image, reference_grid = transforms.load_scan(args.reference, "reference")
        if not reference_grid.same_as(grid):
            raise volumes.DataError(f"the warp's grid (shape {grid.shape}) is not the grid of "
                                    f"--reference {args.reference} (shape "
                                    f"{reference_grid.shape}, or its affine differs)")
        reference = grid.affine if image is None else image
    labels = volume.dtype.kind in "biu"
    interpolation = args.interp or ("nearest" if labels else "linear")
    moved = transforms.apply_warp(warp, grid, volume, moving_grid, interpolation)
    volumes.save_volume(args.output, moved, reference)
    return (f"warped {args.moving} with {args.warp} ({interpolation} interpolation) onto its "
            f"{'x'.join(map(str, grid.shape))} grid, wrote {args.output}")


def evaluate(args) -> str:
    """Score a trained model on every test pair; write eval.json, a CSV and a box plot."""
    if args.model is None and args.output is None:
        raise volumes.UsageError("evaluate with the shipped brain model (no --model) needs "
                                 "--output, the folder to write its scores in")
    output = rundir.output_folder(args.output or os.path.dirname(os.path.abspath(args.model)))
    if "best" in (args.lamda or []) and len(args.lamda) > 1:
        raise volumes.UsageError("--lamda best chooses one weight: give it alone")
    model = rundir.load_model(args.model) if args.model else pretrained.load()
    lamdas = ([hyper_outputs.chosen_lambda(model, args.model)] if args.lamda == ["best"]
              else args.lamda or [])
    shape = models.input_shape(model)
    data = data_sources.evaluation_set(args.data, args.atlas, args.pairs, shape,
                                        args.pairs_file)
    mode = pairing.pairing_mode(data, args.pairs)
    pairs = pairing.make_pairs(data, mode, args.max_pairs)
    labels, names = datasets.scored_labels(data, args.labels)
    if len(lamdas) > 1:
        return hyper_outputs.write_curve(model, lamdas, pairs, labels, data.spacing, output)
    model = hyper.for_registration(model, lamdas[0] if lamdas else None)
    print(f"evaluating {args.model or 'the shipped brain model'} on {len(pairs)} {mode} pairs "
          f"of shape {data.shape}, {len(labels)} labels" + (
              f", at --lamda {hyper.fixed_lambda(model):g}" if hyper.is_hyper(model) else ""))
    if args.model:
        results, _ = registration.evaluate_pairs(
            model, pairs, labels or None, spacing=data.spacing,
            finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr, inverse=True,
            refiner=refiner(model, args), tune_loss=tune_loss(args))
    else:
        results = pretrained.evaluate_pairs(model, pairs, labels or None, data.spacing,
                                            args.finetune_steps, args.finetune_lr,
                                            refiner(model, args), tune_loss(args))
    summary = scores.summarize(results)
    rundir.make_folder(output)
    evaluation = os.path.join(output, rundir.EVALUATION)
    rundir.write_json(evaluation, {"model": args.model or pretrained.FILE,
                                   **({"lamda": hyper.fixed_lambda(model)}
                                      if hyper.is_hyper(model) else {}),
                                   "data": args.pairs_file or args.data or "default",
                                   "pairs": mode, "labels": labels, "label_names": names,
                                   "spacing": data.spacing, "summary": summary,
                                   "per_pair": pairing.per_pair(data, pairs, results)})
    if "dice_after" in summary:
        scores.write_dice_csv(os.path.join(output, rundir.DICE_CSV), labels, names, summary)
        viz.plot_dice(evaluation, os.path.join(output, rundir.DICE_PLOT))
    for line in tuning.fallback_notes(results, rundir.EVALUATION):
        warnings.warn(line, volumes.DataWarning)
    return scores.headline(summary) + (f", {summary['seconds']['mean']:.3f} s per pair; "
                              f"wrote {evaluation}")


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Data warnings as one line ``main.py: warning: ...``; others as Python prints them."""
    if issubclass(category, volumes.DataWarning):
        print(f"main.py: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = {"register": register, "apply": apply, "evaluate": evaluate,
               "template": template_training.command}.get(args.command, train)
    with warnings.catch_warnings():
        warnings.showwarning = _print_warning
        try:
            if args.command is None and args.resume:
                args = resumed_args(args, parser, argv)
            elif args.command == "template" and args.resume:
                argv = sys.argv[1:] if argv is None else argv
                args = resumed_args(args, _add_template_parser(argparse.ArgumentParser(
                    prog="main.py").add_subparsers()), argv[argv.index("template") + 1:])
            print(command(args))
        except rundir.Stopped as stop:
            print(f"main.py: {stop}", file=sys.stderr)
            return 128 + stop.signum
        except (volumes.DataError, volumes.UsageError, volumes.WriteError,
                rundir.Diverged) as error:
            print(f"main.py: error: {' '.join(str(error).split())}", file=sys.stderr)
            return 2 if isinstance(error, (volumes.DataError, volumes.UsageError)) else 1
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # epoch lines reach a log file or pipe at once
    sys.exit(main())
