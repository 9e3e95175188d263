"""Registering pairs with a trained VoxelMorph model, and scoring sets of pairs.

- :func:`register`: one pair of the model's input shape, images in [0, 1]: one forward pass.
- :func:`network_for`: the network of a trained model for pairs of any size (the U-Net is fully
  convolutional: it is rebuilt for the pair's padded shape with the trained weights).
- :func:`register_padded`: one pair zero-padded (centred) to the network's input shape as in
  training, registered, and every output cropped back to the pair's grid.
- :func:`register_scans`: scans as stored in files, of any size, intensities and grids, in world
  space (``transforms.py``): the moving scan is resampled into the static grid, both are scaled
  to [0, 1] for the network, and the moved outputs, the ITK/ANTs warp and its inverse returned.
- :func:`inverse_displacement`: the inverse of a registered pair's displacement.
- :func:`refine_registered`: a registered pair's displacement refined on its own grid
  (``tuning.Refiner``); fine-tuning the network first is ``tuning.FineTuner``.
- :func:`evaluate_pairs`: every pair of a set registered once and scored on its own grid.
"""
import time

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np

import datasets
import pairing
import rebuilding
import sampling
import scores
import models
import shapes
import transforms
import tuning
import utils
import volumes

VECTORS = ("deformation", "inverse")  # the outputs whose last axis holds vector components


def register(model: keras.Model, moving: np.ndarray, static: np.ndarray,
             moving_seg: np.ndarray | None = None, inverse: bool = False,
             traced: bool = True) -> dict:
    """Register one pair of the model's input shape (one forward pass).

    Parameters
    ----------
    model : keras.Model
        A VoxelMorph model (of a segmentation-aided one, :func:`models.registration_model` is
        used: pass that to register many pairs without rebuilding it each time).
    moving, static : np.ndarray
        ``(*spatial)`` images in [0, 1], of the model's input shape.
    moving_seg : np.ndarray, optional
        ``(*spatial)`` integer label map of the moving image, warped with nearest-neighbour
        interpolation.
    inverse : bool
        Also compute the inverse displacement (:func:`inverse_displacement`).
    traced : bool
        Run the network as Keras' compiled predict function (fast from the second pair on);
        False runs it eagerly, which spares the seconds of building that graph for one pair.

    Returns
    -------
    dict
        ``moved`` ``(*spatial)`` float32, the model's own output; ``deformation``
        ``(*spatial, ndim)`` displacement in voxels, 'ij' order; ``seconds`` of the forward pass
        (on a model's first call it includes building its graph: see :func:`evaluate_pairs`);
        ``moved_seg`` ``(*spatial)``, of ``moving_seg``'s dtype, when ``moving_seg`` is given;
        ``inverse`` ``(*spatial, ndim)`` in voxels with ``inverse``; ``affine`` ``(ndim, ndim +
        1)``, the affine stage's map of static voxels to moving voxels, when the model has one.
    """
    model = models.registration_model(model)
    inputs = {"moving": np.asarray(moving, np.float32)[None, ..., None],
              "static": np.asarray(static, np.float32)[None, ..., None]}
    start = time.perf_counter()
    outputs = model.predict_on_batch(inputs) if traced else model(inputs, training=False)
    seconds = time.perf_counter() - start
    deformation = np.asarray(outputs["deformation"])
    result = {"moved": np.asarray(outputs["moved"])[0, ..., 0],
              "deformation": deformation[0], "seconds": seconds}
    if moving_seg is not None:
        result["moved_seg"] = warped(moving_seg, deformation[0], "nearest")
    if "affine" in outputs:
        result["affine"] = np.asarray(outputs["affine"])[0]
    if inverse:
        result["inverse"] = inverse_displacement(model, outputs)
    return result


def warped(image: np.ndarray, deformation: np.ndarray, interpolation: str = "linear"
           ) -> np.ndarray:
    """``(*spatial)`` image (or label map, with "nearest") warped by a ``(*spatial, ndim)``
    displacement in voxels; of the image's dtype."""
    image = np.asarray(image)
    moved = utils.warp(image.astype(utils.sampling_dtype(image.dtype, interpolation))
                       [None, ..., None], np.asarray(deformation, np.float32)[None],
                       interpolation)
    return np.asarray(moved)[0, ..., 0].astype(image.dtype)


def refine_registered(refiner: tuning.Refiner | None, registered: dict, moving: np.ndarray,
                      static: np.ndarray, moving_seg: np.ndarray | None = None) -> dict:
    """A pair registered on its grid, its displacement refined there by ``refiner``.

    ``moved``, ``moved_seg`` (with ``moving_seg``) and ``inverse`` (when ``registered`` has
    one: inverted anew, from the network's inverse) follow the refined displacement;
    ``refine_seconds`` is the time of the refinement (0 without ``refiner``, and the rest as
    it was) and ``refine_fallback`` the line that says where it stopped and fell back (None
    when it did not: ``tuning.Refiner.refine``).
    """
    if refiner is None:
        return {**registered, "refine_seconds": 0.0, "refine_fallback": None}
    deformation, seconds, note = tuning.refined(refiner, moving, static, registered["deformation"])
    result = {**registered, "deformation": deformation, "refine_seconds": seconds,
              "refine_fallback": note, "moved": warped(moving, deformation)}
    if moving_seg is not None:
        result["moved_seg"] = warped(moving_seg, deformation, "nearest")
    if "inverse" in registered:
        result["inverse"] = transforms.invert(deformation, registered["inverse"])
    return result


def inverse_displacement(network: keras.Model, outputs: dict) -> np.ndarray:
    """The inverse of the displacement a network predicted for one pair.

    A diffeomorphic network's inverse is the negated velocity integrated as the network
    integrates it (and resized to the full grid); it is then refined, and any other network's
    displacement inverted, by fixed-point iteration (``transforms.invert``).

    Parameters
    ----------
    network : keras.Model
        The registration network that predicted ``outputs``.
    outputs : dict
        Its outputs for one pair: ``deformation`` ``(1, *spatial, ndim)`` and, with
        integration, ``velocity``.

    Returns
    -------
    np.ndarray
        ``(*spatial, ndim)`` inverse displacement in voxels, 'ij' order: ``y + v(y)`` is the
        static-grid point that the displacement takes to ``y``.
    """
    deformation = np.asarray(outputs["deformation"])
    steps, _ = models.integration(network)
    initial = None
    if steps:
        initial = utils.integrate_velocity(-np.asarray(outputs["velocity"]), steps)
        if tuple(initial.shape) != deformation.shape:
            initial = utils.resize_displacement(initial, deformation.shape[1:-1])
        initial = np.asarray(initial)[0]
    return transforms.invert(deformation[0], initial)


def network_for(model: keras.Model, shape: tuple[int, ...]) -> keras.Model:
    """The registration network of ``model`` for pairs of spatial ``shape``, any size.

    The network takes ``shape`` padded to a multiple of ``models.DIVISOR``: ``model``'s own
    registration network when that is its input shape, else one rebuilt for it with the
    trained weights (``rebuilding.rebuild``). Build it once for many pairs of one shape.

    Raises
    ------
    volumes.DataError
        If ``shape`` has another number of dimensions than the model's input.
    """
    network = models.registration_model(model)
    trained = models.input_shape(network)
    if len(shape) != len(trained):
        raise volumes.DataError(f"{len(shape)}D volumes of shape {tuple(shape)}, but the model "
                                f"registers {len(trained)}D images")
    padded = shapes.padded_shape(shape, models.DIVISOR)
    return network if padded == trained else rebuilding.rebuild(network, padded)


def crop_outputs(arrays: dict, padding: list[tuple[int, int]]) -> dict:
    """Undo the padding of every array of a registered pair (``shapes.crop``).

    Parameters
    ----------
    arrays : dict
        ``(*padded)`` images and label maps, and the ``VECTORS`` ``(*padded, ndim)``, whose
        vector axis stays whole; other values (numbers, None) are left out.
    padding : list of (int, int)
        The padding of each spatial axis, as ``shapes.padding_to_shape`` gives it.
    """
    return {key: shapes.crop(value, padding + [(0, 0)] * (key in VECTORS))
            for key, value in arrays.items() if isinstance(value, np.ndarray)}


def register_padded(model: keras.Model, moving: np.ndarray, static: np.ndarray,
                    moving_seg: np.ndarray | None = None, inverse: bool = False) -> dict:
    """:func:`register` for a pair no larger than the network's input shape, on the pair's grid.

    The pair is zero-padded (centred) to the network's input shape, as training pads its sets;
    every output is cropped back, so that no score or file sees the padding. For a pair of any
    size, pass ``network_for(model, moving.shape)``.

    Returns
    -------
    dict
        As :func:`register`, on the pair's own grid.
    """
    padding = shapes.padding_to_shape(moving.shape, models.input_shape(model))
    padded = [None if image is None else shapes.pad(image, padding)
              for image in (moving, static, moving_seg)]
    registered = register(model, *padded, inverse=inverse)
    cropped = crop_outputs({key: value for key, value in registered.items() if key != "affine"},
                           padding)
    if "affine" in registered:  # x + p on the padded grid is x on the pair's
        matrix, before = registered["affine"].copy(), np.array([low for low, _ in padding])
        matrix[:, -1] += matrix[:, :-1] @ before - before
        cropped["affine"] = matrix
    return {**cropped, "seconds": registered["seconds"]}


def moving_label_map(moving_seg: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """``moving_seg`` checked: integer labels, of the moving image's ``shape`` (None passes)."""
    if moving_seg is not None:
        moving_seg = volumes.as_label_map(moving_seg, "moving label map")
        if moving_seg.shape != shape:
            raise volumes.DataError(f"moving label map shape {moving_seg.shape} differs "
                                    f"from the moving image's {shape}")
    return moving_seg


def register_scans(model: keras.Model, moving: np.ndarray, static: np.ndarray,
                   moving_grid: transforms.Grid, static_grid: transforms.Grid,
                   moving_seg: np.ndarray | None = None, finetune_steps: int = 0,
                   finetune_lr: float = 1e-3, inverse: bool = False,
                   tuner: tuning.FineTuner | None = None,
                   refiner: tuning.Refiner | None = None, tune_loss: str | None = None) -> dict:
    """Register scans on any grids (shapes, voxel sizes, orientations) through world space.

    A moving scan on another grid is resampled into the static grid through both affines
    (trilinear, zero outside its field of view). Both images are scaled to [0, 1] (min-max, as
    training does) and registered by :func:`register_padded` with the network for the static
    shape (:func:`network_for`, fine-tuned on the pair first with ``finetune_steps``).
    The moved image and label map are then sampled once from the original moving scan, at the
    resampling composed with the displacement, so they carry a single interpolation, and read 0
    where they sample outside it: what ITK or ANTs give with the warp, which maps static-space
    points to the moving-space points they sample, whatever the grids.

    Parameters
    ----------
    model : keras.Model
        A VoxelMorph model.
    moving, static : np.ndarray
        ``(*moving_spatial)`` and ``(*spatial)`` images, any size of the model's dimension,
        any real dtype.
    moving_grid, static_grid : transforms.Grid
        Their grids.
    moving_seg : np.ndarray, optional
        Integer label map on the moving grid.
    finetune_steps, finetune_lr
        Fine-tune the network on the pair first (``tuning.FineTuner``).
    inverse : bool
        Also compute the inverse warp and the inverse-consistency error.
    tuner : tuning.FineTuner, optional
        The fine-tuner to use instead of one built for this pair (build it once, for the static
        shape padded to ``models.DIVISOR``, to register many pairs).
    refiner : tuning.Refiner, optional
        Refine the displacement on the static grid after the network
        (:func:`refine_registered`).
    tune_loss : {"ncc", "mse", "mi"}, optional
        The image similarity of ``finetune_steps``, in place of the model's own.

    Returns
    -------
    dict
        On the static grid: ``moved`` ``(*spatial)`` float32 in the moving scan's units,
        ``moved_seg`` of its dtype with ``moving_seg``, ``deformation`` ``(*spatial, ndim)`` in
        static voxels, ``warp`` ``(*spatial, ndim)`` in LPS mm (``transforms.to_world``),
        ``seconds``, ``finetune_seconds`` and ``refine_seconds``, ``finetune_fallback`` and
        ``refine_fallback`` (a line where either stopped and fell back, else None); with
        ``inverse``: ``inverse`` in static voxels,
        ``inverse_warp`` ``(*moving_spatial, ndim)`` in LPS mm on the moving grid
        (``transforms.inverse_on``) and ``inverse_error``
        (``transforms.inverse_consistency``); for models with an affine stage, ``affine`` (static
        voxels) and ``affine_world`` ``(ndim + 1, ndim + 1)``, its map of LPS points in mm
        (``transforms.world_matrix``).

    Raises
    ------
    volumes.DataError
        If the images' dimensions differ or are not the model's, or an image is unusable
        (``datasets.normalize``).
    """
    if moving.ndim != static.ndim:
        raise volumes.DataError(f"the moving image is {moving.ndim}D and the static image "
                                f"{static.ndim}D")
    same = moving_grid.same_as(static_grid)
    moving_seg = moving_label_map(moving_seg, moving.shape)
    on_static = moving if same else transforms.resample(moving, moving_grid, static_grid)
    scaled = [datasets.normalize(image, name) for image, name in
              ((on_static, "moving image"), (static, "static image"))]
    network = network_for(model, static.shape)
    shape = models.input_shape(network)
    if tuner is None and finetune_steps:
        tuner = tuning.FineTuner(model, finetune_steps, finetune_lr, shape, tune_loss)
    network, finetune_seconds, note = tuning.finetuned(network, tuner, *scaled)
    registered = refine_registered(refiner, register_padded(network, *scaled, inverse=inverse),
                                   *scaled)
    registered.update(finetune_seconds=finetune_seconds, finetune_fallback=note)
    deformation = registered["deformation"]
    coords = static_grid.coordinates() + deformation
    if not same:  # the resampling composed with the displacement: one interpolation
        coords = moving_grid.voxels(static_grid.world(coords))
    registered["moved"] = sampling.sample(moving, coords)
    if moving_seg is not None:
        registered["moved_seg"] = sampling.sample(moving_seg, coords, "nearest")
    registered["warp"] = transforms.to_world(deformation, static_grid)
    if "affine" in registered:  # moving-image voxels are the static grid's, resampled or not
        registered["affine_world"] = transforms.world_matrix(registered["affine"], static_grid)
    if inverse:
        registered["inverse_error"] = transforms.inverse_consistency(
            deformation, registered["inverse"], static_grid)
        registered["inverse_warp"] = transforms.inverse_on(registered["inverse"], static_grid,
                                                           moving_grid)
    return registered


def evaluate_pairs(model: keras.Model, pairs: pairing.Pairs, labels=None, keep: int = 0,
                   spacing=None, finetune_steps: int = 0, finetune_lr: float = 1e-3,
                   inverse: bool = False, refiner: tuning.Refiner | None = None,
                   tune_loss: str | None = None) -> tuple[list[dict], list[dict]]:
    """Register every pair once and score it on the pairs' own grid.

    Parameters
    ----------
    model : keras.Model
        A VoxelMorph model.
    pairs : pairing.Pairs
        Pairs of one shape (any size), images in [0, 1]; they are registered by the network
        for that shape (:func:`network_for`, built once), padded to its input shape and every
        output cropped back (:func:`register_padded`), so the padding counts in no score.
    labels : sequence of int, optional
        Labels scored with Dice and HD95 (default: every non-zero label present).
    keep : int
        Also return the arrays of the first ``keep`` registered pairs.
    spacing : float or sequence of float, optional
        Voxel size in mm, for HD95 in mm (see ``scores.score_registration``).
    finetune_steps, finetune_lr
        Fine-tune the network on each pair first (``tuning.FineTuner``).
    inverse : bool
        Also invert each displacement (:func:`inverse_displacement`) and score its
        inverse consistency (``transforms.inverse_consistency``, mm with ``spacing``).
    refiner : tuning.Refiner, optional
        Refine each displacement on the pair's grid after the network
        (:func:`refine_registered`).
    tune_loss : {"ncc", "mse", "mi"}, optional
        The image similarity of ``finetune_steps``, in place of the model's own.

    Returns
    -------
    results : list of dict
        Scores of each pair (``scores.score_registration``), plus ``seconds``, the time of its
        forward pass (the network's graph is built on the first pair beforehand, untimed),
        ``finetune_seconds`` and ``refine_seconds``, those of fine-tuning and refining,
        ``finetune_fallback`` and ``refine_fallback``, the line that says where either stopped
        and what it fell back to (None when it did not), and with ``inverse``
        ``inverse_error`` and ``inverse_error_p95``, the mean and 95th percentile of
        ``|x - phi_inv(phi(x))|`` in voxels, and with ``spacing`` the same in mm
        (``inverse_error_mm``, ``inverse_error_p95_mm``).
    samples : list of dict
        For the first ``keep`` pairs: ``moving``, ``static``, ``moved``, ``deformation`` and,
        with label maps, ``moving_seg``, ``static_seg``, ``moved_seg``.
    """
    network = network_for(model, pairs.moving.shape[1:])  # built once
    shape = models.input_shape(network)
    tuner = (tuning.FineTuner(model, finetune_steps, finetune_lr, shape, tune_loss)
             if finetune_steps else None)
    grid = transforms.spacing_grid(pairs.moving.shape[1:], spacing)  # voxels when spacing is None
    results, samples = [], []
    for moving, static, moving_seg, static_seg in pairs:
        tuned, finetune_seconds, note = tuning.finetuned(network, tuner, moving, static)
        if not results:  # build the graph untimed, so that every pair's seconds compare
            register_padded(tuned, moving, static)
        registered = refine_registered(
            refiner, register_padded(tuned, moving, static, moving_seg, inverse), moving, static,
            moving_seg)
        arrays = {"moving": moving, "static": static, "moving_seg": moving_seg,
                  "static_seg": static_seg, **registered}
        scored = scores.score_registration(
            moving, static, arrays["moved"], arrays["deformation"], moving_seg, static_seg,
            arrays.get("moved_seg"), labels, spacing)
        results.append({**scored, "seconds": registered["seconds"],
                        "finetune_seconds": finetune_seconds, "finetune_fallback": note,
                        "refine_seconds": registered["refine_seconds"],
                        "refine_fallback": registered["refine_fallback"]})
        if inverse:
            error = transforms.inverse_consistency(registered["deformation"],
                                                   registered["inverse"], grid)
            results[-1].update({f"inverse_error{stat}{unit}": error[f"{name}_{key}"]
                                for name, stat in (("mean", ""), ("p95", "_p95"))
                                for key, unit in (("voxels", ""), ("mm", "_mm"))
                                if unit == "" or spacing is not None})
        if len(samples) < keep:
            samples.append({key: value for key, value in arrays.items()
                            if isinstance(value, np.ndarray)})
    return results, samples
