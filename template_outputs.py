"""A learned template's files: its label maps fused, its scores, its model and figures.

:func:`fuse_labels` registers the template to every scan and carries each scan's label map onto
it (fused by majority vote); :func:`write_outputs` writes the run folder of ``main.py template``
(``template_training.py``): the template in the data's world space, the fused label maps, the
model that registers the template to new scans, the loss curves and a figure of the template's
epochs, with a summary of how centred (:func:`mean_displacement`) and how sharp
(:func:`sharpness`) the template is. :func:`write_for_value` writes a learned conditional
template for one value of its attribute. One code path serves 2D and 3D.
"""
import functools
import os

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np

import dataloader
import datasets
import registration
import rundir
import shapes
import template
import viz
import volumes


def fuse_labels(network: keras.Model, template: np.ndarray, data: datasets.Dataset
                ) -> dict[str, np.ndarray]:
    """Register the template to every scan; carry each scan's label map onto the template.

    Each label map is warped with the inverse of its registration (scan to template, nearest
    neighbour) and the maps are fused by majority vote.

    Parameters
    ----------
    network : keras.Model
        The registration network (``moving`` the template, ``static`` a scan).
    template : np.ndarray
        ``(*spatial)`` template on the network's grid.
    data : datasets.Dataset
        The scans (and label maps) on the same grid.

    Returns
    -------
    dict
        ``mean_deformation`` ``(*spatial, ndim)``, the mean displacement from the template to
        the scans in voxels; with label maps, ``labels`` ``(K,)`` every label present (0
        included), ``probabilities`` ``(*spatial, K)``, the share of scans giving each, and
        ``seg`` ``(*spatial)`` int32, the most frequent (the lowest label on a tie).
    """
    total, counts, labels = 0.0, 0.0, None
    if data.segs is not None:
        labels = np.unique(np.concatenate([np.unique(data.segs[i]) for i in range(len(data.segs))]))
    for i in range(len(data.vols)):
        registered = registration.register(network, template, data.vols[i],
                                           inverse=labels is not None)
        total = total + registered["deformation"]
        if labels is not None:
            carried = registration.warped(data.segs[i], registered["inverse"], "nearest")
            counts = counts + dataloader.one_hot(carried, labels)
    fused = {"mean_deformation": total / len(data.vols)}
    if labels is not None:
        probabilities = (counts / len(data.vols)).astype(np.float32)
        fused.update(labels=labels, probabilities=probabilities,
                     seg=labels[np.argmax(probabilities, axis=-1)].astype(np.int32))
    return fused


def sharpness(image: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean gradient magnitude of an image (intensity per voxel), over the voxels ``where`` is
    true (a boolean mask) or every voxel: higher is sharper."""
    magnitude = np.linalg.norm(np.stack(np.gradient(image.astype(np.float64))), axis=0)
    return float(np.mean(magnitude if where is None else magnitude[where]))


def mean_displacement(field: np.ndarray, spacing: tuple[float, ...] | None) -> dict:
    """The mean over voxels of the length of a ``(*spatial, ndim)`` displacement: in voxels and,
    with the voxel size, in mm."""
    result = {"voxels": float(np.mean(np.linalg.norm(field, axis=-1)))}
    if spacing is not None:
        result["mm"] = float(np.mean(np.linalg.norm(field * np.asarray(spacing), axis=-1)))
    return result


def write_outputs(model: keras.Model, data: datasets.Dataset, mean: np.ndarray,
                  padding: list[tuple[int, int]], reference, output: str, facts: dict,
                  options: dict, value: float | None) -> dict:
    """Write a learned template's run folder; return its summary (``rundir.METRICS``).

    ``TEMPLATE`` (cropped to the data's grid, in its world space: ``reference``), the fused
    label maps ``TEMPLATE_SEG`` and ``TEMPLATE_PROBABILITIES`` (``(*spatial, [1,] K)``: a 4D
    NIfTI, one volume per label) when the scans have label maps, ``TEMPLATE_MODEL`` (the
    template with its network), ``MODEL`` (the network that registers the template, moving,
    to a scan, static, for ``register``/``evaluate``), the loss curves and ``TEMPLATE_PLOT``.
    A conditional template is written for the scans' mean attribute ``value``. ``data`` and
    ``mean`` (the mean of the scans) are on the network's grid, ``padding`` away from the
    data's; ``facts`` go into the summary as they are; ``options`` are the flags of the loss.
    """
    path = functools.partial(os.path.join, output)
    image = template.template_image(model, value)
    rundir.save_model(model, path(rundir.TEMPLATE_MODEL))
    rundir.save_model(template.registration_model(model, options), path(rundir.MODEL))
    fused = fuse_labels(template.registration_network(model), image, data)
    volumes.save_volume(path(rundir.TEMPLATE), shapes.crop(image, padding), reference)
    summary = {**facts, "scans": len(data.vols),
               "mean_displacement": mean_displacement(
                   shapes.crop(fused["mean_deformation"], padding + [(0, 0)]), data.spacing),
               "sharpness": {"template": sharpness(shapes.crop(image, padding)),
                             "mean": sharpness(shapes.crop(mean, padding))}}
    if "seg" in fused:
        probabilities = shapes.crop(fused["probabilities"], padding + [(0, 0)])
        ndim = len(padding)
        volumes.save_volume(path(rundir.TEMPLATE_SEG), shapes.crop(fused["seg"], padding),
                            reference)
        volumes.save_volume(path(rundir.TEMPLATE_PROBABILITIES), probabilities.reshape(
            *probabilities.shape[:ndim], *(1,) * (3 - ndim), -1), reference)
        summary["labels"] = fused["labels"].tolist()
    viz.render_run(output, figures=("loss", "template"))
    rundir.write_json(path(rundir.METRICS), summary)
    return summary


def write_for_value(run: str, value: float, output: str) -> str:
    """Write the conditional template of a run for the attribute ``value``, on the grid and in
    the world space of the run's ``TEMPLATE``; return one line saying so.

    Raises
    ------
    volumes.UsageError
        If the run's template is not conditional, or ``output`` cannot be written.
    """
    model_path, reference_path = (os.path.join(run, name) for name in (rundir.TEMPLATE_MODEL,
                                                                        rundir.TEMPLATE))
    volumes.check_output_files({"--output": output}, [model_path, reference_path])
    if not os.path.isfile(model_path):
        raise volumes.UsageError(f"--model {run}: no {rundir.TEMPLATE_MODEL} in it (not a "
                                 f"finished template run)")
    model = rundir.load_model(model_path)
    if "attribute" not in model.input:
        raise volumes.UsageError(f"--value: the template of {run} is not conditional (learn "
                                 f"one with --condition FILE:COLUMN)")
    grid, reference = volumes.load_volume(reference_path)
    padding = shapes.padding_to_shape(grid.shape, model.get_layer("template").shape)
    volumes.save_volume(output, shapes.crop(template.template_image(model, value), padding),
                        reference)
    return f"wrote the template of {run} for the value {value:g} to {output}"
