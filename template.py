"""Learning a template (an unbiased atlas) of a set of scans, jointly with VoxelMorph.

Dalca, Rakic, Guttag, Sabuncu, "Learning Conditional Deformable Templates with Convolutional
Networks", NeurIPS 2019: the template is a trainable image, initialised at the mean of the scans
(:class:`Template`); a diffeomorphic VoxelMorph (``models.voxelmorph``) registers it to each scan
(``moving``: the template, ``static``: the scan), and the loss (``objective.TrainingModel``,
computed from the model's own inputs and outputs) is

- the image similarity of the warped template and the scan (``objective.loss_terms``; with
  ``bidir`` half of it plus half that of the scan warped back onto the template);
- lambda times the smoothness of the velocity;
- the centring term: ``CENTRE_WEIGHT`` times ``|m|^2`` (``metrics.SquaredNorm``), ``m`` the
  mean displacement from the template to the scans, a running mean over recent batches
  (:class:`RunningMean`), so that the template sits in the middle of the population rather than
  drifting towards one scan.

With an attribute per scan (``--condition``), a small decoder turns the attribute into an image
added to the learned mean template (:func:`attribute_decoder`): the template is a function of
the attribute. Training reuses ``training.py``'s run folder (checkpoints, ``--resume``, the
divergence stop, the lock, several GPUs or workers); :func:`write_outputs` writes the template in
the data's world space, the scans' label maps carried onto it and fused, the model that
registers the template to new scans, the loss curves and a figure of the template's epochs.
One code path serves 2D and 3D.
"""
import contextlib
import csv
import functools
import math
import os

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np
import tensorflow as tf

import dataloader
import datasets
import distribution
import filelists
import metrics
import models
import objective
import registration
import rundir
import shapes
import training
import transforms
import viz
import volumes

CENTRE_WEIGHT = 1.0  # weight of the centring term (voxels^-2)
TEMPLATE_RATE = 10.0  # the template's learning rate relative to the network's (Template)
MOMENTUM = 0.9  # of the running mean of the displacement: the weight of the batches before
DEFAULT_STEPS = 100  # training steps per epoch
DECODER_WIDTH = 16  # feature maps of the attribute decoder
DECODER_LEVELS = 3  # its upsamplings: it starts at 1/8 of the template's size


@keras.saving.register_keras_serializable(package="voxelmorph")
class Template(keras.layers.Layer):
    """A trainable image: the learned template, the same for every scan of a batch.

    The weight holds the image divided by ``rate``: with Adam, whose steps are about the
    learning rate whatever the gradient's scale, the image then learns ``rate`` times faster
    than the network's weights (an intensity in [0, 1] moves by ``rate * lr`` a step).

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the template (the network's input shape).
    rate : float
        The image's learning rate relative to the optimizer's.
    """

    def __init__(self, shape: tuple[int, ...], rate: float = TEMPLATE_RATE, **kwargs):
        super().__init__(**kwargs)
        self.shape, self.rate = tuple(shape), rate
        self.scaled = self.add_weight(shape=(*self.shape, 1), initializer="zeros", name="image")

    @property
    def image(self) -> tf.Tensor:
        """``(*shape, 1)`` the template's intensities."""
        return self.rate * tf.convert_to_tensor(self.scaled)

    def assign(self, image: np.ndarray) -> None:
        """Set the template to ``(*shape, 1)`` intensities."""
        self.scaled.assign(np.asarray(image, np.float32) / self.rate)

    def call(self, scans):
        """``(B, *shape, 1)`` scans -> ``(B, *shape, 1)``: the template for each of them."""
        return tf.broadcast_to(tf.cast(self.image, scans.dtype)[None], tf.shape(scans))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "shape": self.shape, "rate": self.rate}


@keras.saving.register_keras_serializable(package="voxelmorph")
class RunningMean(keras.layers.Layer):
    """The mean of a tensor over the samples of recent batches: an exponential moving average.

    In training, every batch updates the stored mean ``s <- momentum s + (1 - momentum) b`` (``b``
    the batch's mean) and returns it, differentiable through ``b`` alone; otherwise it returns
    ``s``. It lives in a non-trainable weight, saved with the model (and averaged across
    replicas).

    Parameters
    ----------
    momentum : float
        Weight of the mean so far, in [0, 1).
    """

    def __init__(self, momentum: float = MOMENTUM, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum

    def build(self, input_shape) -> None:
        self.mean = self.add_weight(shape=tuple(input_shape[1:]), initializer="zeros",
                                    trainable=False, aggregation="mean", name="mean")

    def call(self, x, training=None):
        """``(B, *spatial, C)`` -> ``(B, *spatial, C)``: the running mean, for every sample."""
        mean = tf.convert_to_tensor(self.mean)
        if training:
            mean = self.momentum * tf.stop_gradient(mean) + \
                (1.0 - self.momentum) * tf.reduce_mean(x, axis=0)
            self.mean.assign(tf.stop_gradient(mean))
        return tf.broadcast_to(mean[None], tf.shape(x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum}


def attribute_decoder(shape: tuple[int, ...], values: np.ndarray) -> keras.Model:
    """The conditional part of the template: an attribute -> an image added to the mean template.

    The attribute is standardised by the mean and variance of ``values``; a dense layer makes
    ``DECODER_WIDTH`` maps at 1/8 of ``shape``, and ``DECODER_LEVELS`` times 2x upsampling and
    a 3x3(x3) convolution (LeakyReLU 0.2) bring them to ``shape``; a last convolution, of
    weights near zero, gives the image (so that training starts from the mean template).

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the template, divisible by ``2 ** DECODER_LEVELS``.
    values : np.ndarray
        ``(N,)`` the attribute of every training scan.

    Returns
    -------
    keras.Model
        ``(B, 1)`` attribute -> ``(B, *shape, 1)`` intensities.
    """
    ndim = len(shape)
    conv, upsampling = (getattr(keras.layers, f"{kind}{ndim}D") for kind in ("Conv", "UpSampling"))
    coarse = tuple(size // 2 ** DECODER_LEVELS for size in shape)
    attribute = keras.Input((1,), name="attribute")
    x = keras.layers.Normalization(mean=float(np.mean(values)),
                                   variance=float(np.var(values)) or 1.0)(attribute)
    x = keras.layers.Dense(math.prod(coarse) * DECODER_WIDTH)(x)
    x = keras.layers.LeakyReLU(0.2)(keras.layers.Reshape((*coarse, DECODER_WIDTH))(x))
    for _ in range(DECODER_LEVELS):
        x = keras.layers.LeakyReLU(0.2)(conv(DECODER_WIDTH, 3, padding="same")(upsampling(2)(x)))
    image = conv(1, 3, padding="same", name="attribute_image",
                 kernel_initializer=keras.initializers.RandomNormal(0.0, 1e-5))(x)
    return keras.Model(attribute, image, name="attribute_decoder")


def template_terms(loss: str, lamda: float | None, ncc_window: int, bidir: bool,
                   int_steps: int, centre_weight: float) -> list[objective.Term]:
    """The terms of the template's loss: Eq. (2) of the template warped to each scan (the
    symmetric term comparing the scan warped back with the template), and the centring term."""
    terms = [term._replace(args=tuple("template" if arg == "moving" else arg for arg in term.args))
             for term in objective.loss_terms(loss, lamda, ncc_window, bidir, int_steps=int_steps)]
    return terms + [objective.Term("mean_deformation", metrics.SquaredNorm(), centre_weight,
                                   ("mean_deformation",))]


def build_template_model(initial: np.ndarray, options: dict,
                         attributes: np.ndarray | None = None) -> objective.TrainingModel:
    """The template and the network that registers it to each scan, compiled with Adam.

    Parameters
    ----------
    initial : np.ndarray
        ``(*shape)`` the template's start, the mean of the scans (:func:`mean_image`); each
        size divisible by ``models.DIVISOR``.
    options : dict
        ``loss``, ``lamda``, ``ncc_window``, ``bidir``, ``int_steps``, ``int_downsize``,
        ``centre_weight``, ``momentum`` and ``lr``, as the flags of ``main.py template``.
    attributes : np.ndarray, optional
        ``(N,)`` attribute of every scan: the template is then conditional
        (:func:`attribute_decoder`).

    Returns
    -------
    objective.TrainingModel
        Inputs ``static`` ``(B, *shape, 1)`` (a scan) and, conditional, ``attribute``
        ``(B, 1)``; outputs ``template`` ``(B, *shape, 1)``, the VoxelMorph outputs of the
        template registered to the scan (``moved``, ``deformation``, ``velocity``, with
        ``bidir`` ``moved_static``) and ``mean_deformation``, their running mean.
    """
    shape = initial.shape
    scan = keras.Input((*shape, 1), name="static")
    inputs = {"static": scan}
    template = Template(shape, name="template", dtype=models.F32)(scan)
    if attributes is not None:
        inputs["attribute"] = keras.Input((1,), name="attribute")
        template = keras.layers.Add(name="conditional_template", dtype=models.F32)(
            [template, attribute_decoder(shape, attributes)(inputs["attribute"])])
    network = models.VoxelMorph2(shape, int_steps=options["int_steps"],
                                 int_downsize=options["int_downsize"], bidir=options["bidir"])
    outputs = {"template": template, **network({"moving": template, "static": scan})}
    outputs["mean_deformation"] = RunningMean(options["momentum"], name="mean_deformation",
                                              dtype=models.F32)(outputs["deformation"])
    terms = template_terms(options["loss"], options["lamda"], options["ncc_window"],
                           options["bidir"], options["int_steps"], options["centre_weight"])
    model = objective.TrainingModel(inputs, outputs, "template", terms=terms)
    model.compile(optimizer=keras.optimizers.Adam(options["lr"]))
    model.get_layer("template").assign(initial[..., None])
    return model


def mean_image(scans: np.ndarray | filelists.LazyVolumes) -> np.ndarray:
    """``(*spatial)`` float32 voxelwise mean of ``(N, *spatial)`` scans, read one at a time."""
    total = np.zeros(scans.shape[1:], np.float64)
    for i in range(len(scans)):
        total += scans[i]
    return (total / len(scans)).astype(np.float32)


def template_image(model: keras.Model, value: float | None = None) -> np.ndarray:
    """``(*shape)`` the template of a :func:`build_template_model` model: its learned image
    and, for a conditional one, the decoder's image of the attribute ``value``."""
    image = np.asarray(model.get_layer("template").image)[..., 0]
    if "attribute" in model.input:
        decoder = model.get_layer("attribute_decoder")
        image = image + np.asarray(decoder(np.array([[value]], np.float32)))[0, ..., 0]
    return image


def registration_network(model: keras.Model) -> keras.Model:
    """The VoxelMorph network of a template model: inputs ``moving`` (the template) and
    ``static`` (a scan)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model)
                and isinstance(layer.input, dict) and set(layer.input) == {"moving", "static"})


def registration_model(model: keras.Model, options: dict) -> objective.TrainingModel:
    """The network of a template model as a model of ``main.py`` training: the pairwise loss
    terms of ``options`` (for ``register``/``evaluate``'s instance optimisation), compiled."""
    network = registration_network(model)
    terms = objective.loss_terms(options["loss"], options["lamda"], options["ncc_window"],
                                 options["bidir"], int_steps=options["int_steps"])
    trainable = objective.TrainingModel(network.input, network.output, network.name, terms=terms)
    trainable.compile(optimizer=keras.optimizers.Adam(options["lr"]))
    trainable.optimizer.build(trainable.trainable_variables)  # saved with its moments, as trained
    return trainable


class ScanLoader(dataloader.PairLoader):
    """Batches of random training scans (and their attributes): batch ``i`` of epoch ``e``
    drawn from ``(seed, e, i)`` alone (``dataloader.PairLoader``), so that a run resumes
    exactly.

    Parameters
    ----------
    scans : np.ndarray or filelists.LazyVolumes
        ``(N, *spatial)`` scans in [0, 1].
    batch_size, steps : int
        Scans per batch, batches per epoch.
    seed : int
        Seed of the draws.
    attributes : np.ndarray, optional
        ``(N,)`` attribute of each scan.
    **kwargs
        Passed to ``keras.utils.PyDataset`` (``workers``).
    """

    def __init__(self, scans, batch_size: int, steps: int, seed: int,
                 attributes: np.ndarray | None = None, **kwargs):
        super().__init__(batch_size, seed, **kwargs)
        self.scans, self.steps, self.attributes = scans, steps, attributes

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        """``static`` ``(B, *spatial, 1)`` float32 and, with attributes, ``attribute``
        ``(B, 1)``."""
        chosen = np.random.default_rng(self.seed_of(index)).integers(len(self.scans),
                                                                     size=self.batch_size)
        batch = {"static": filelists.take(self.scans, chosen)[..., None].astype(np.float32)}
        if self.attributes is not None:
            batch["attribute"] = self.attributes[chosen, None].astype(np.float32)
        return batch


class TemplateSnapshots(keras.callbacks.Callback):
    """Keep the template after every epoch in ``rundir.TEMPLATE_EPOCHS``, for its figure.

    Parameters
    ----------
    path : str
        The file (written atomically at every epoch's end): ``epochs`` ``(E,)``, ``templates``
        ``(E, *spatial)`` and ``mean`` ``(*spatial)``, the mean of the scans; a resumed run
        keeps the epochs its checkpoint has done.
    mean : np.ndarray
        ``(*spatial)`` the mean of the scans, on their own grid.
    padding : list of (int, int)
        The data's padding, cropped away.
    epochs_done : int
        Epochs of the checkpoint resumed (0 for a new run).
    value : float, optional
        The attribute of a conditional template's snapshot (the scans' mean).
    """

    def __init__(self, path: str, mean: np.ndarray, padding: list[tuple[int, int]],
                 epochs_done: int = 0, value: float | None = None):
        super().__init__()
        self.path, self.mean, self.padding, self.value = path, mean, padding, value
        self.epochs, self.templates = [], []
        if epochs_done and os.path.exists(path):
            stored = rundir.read_samples(path)
            kept = stored["epochs"] <= epochs_done
            self.epochs, self.templates = list(stored["epochs"][kept]), list(
                stored["templates"][kept])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append(epoch + 1)
        self.templates.append(shapes.crop(template_image(self.model, self.value), self.padding))
        with volumes.atomic_path(self.path) as tmp:
            np.savez_compressed(tmp, epochs=np.array(self.epochs),
                                templates=np.stack(self.templates), mean=self.mean)


def read_condition(spec: str, data: datasets.Dataset) -> np.ndarray:
    """``(N,)`` float attribute of every scan from ``--condition FILE:COLUMN``.

    ``FILE`` is a CSV with a column ``scan`` naming each scan (its index in ``--data`` from 0,
    or for files its name or path as listed) and the numeric ``COLUMN``; other rows are ignored.

    Raises
    ------
    volumes.UsageError
        If ``spec`` is not ``FILE:COLUMN``.
    volumes.DataError
        If the file cannot be read, lacks a column, misses a scan or holds a value that is not
        a finite number.
    """
    path, _, column = spec.rpartition(":")
    if not path or not column:
        raise volumes.UsageError(f"--condition {spec}: give FILE:COLUMN, e.g. ages.csv:age")
    volumes.check_exists(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            rows = [(reader.line_num, row) for row in reader]
            header = [name.strip() for name in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise volumes.DataError(f"cannot read {path}: {volumes.one_line(error)}") from error
    missing = [name for name in ("scan", column) if name not in header]
    if missing:
        raise volumes.DataError(f"{path}: no column {', '.join(missing)} in its header "
                                f"({', '.join(header) or 'none'})")
    rows = [(line, {key.strip(): (value or "").strip() for key, value in row.items() if key})
            for line, row in rows]
    by_name = {row["scan"]: (line, row[column]) for line, row in rows}
    return np.array([_attribute(path, column, by_name, names)
                     for names in scan_names(data)], np.float64)


def scan_names(data: datasets.Dataset) -> list[tuple[str, ...]]:
    """The names a condition file may give each scan of ``data``: its index and, for files,
    the file's name and path."""
    paths = getattr(data.vols, "paths", None)
    if paths is None:
        return [(str(i),) for i in range(len(data.vols))]
    return [(str(i), os.path.basename(path), path) for i, path in enumerate(paths)]


def _attribute(path: str, column: str, by_name: dict, names: tuple[str, ...]) -> float:
    """The finite number that ``by_name`` (``{scan: (line, text)}``) gives the scan ``names``."""
    found = next((by_name[name] for name in names if name in by_name), None)
    if found is None:
        raise volumes.DataError(f"{path} has no row for scan {names[-1]} (column 'scan': its "
                                f"index {names[0]}" + (", file name or path" if len(names) > 1
                                                       else "") + ")")
    line, text = found
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise volumes.DataError(f"{path} line {line}: {column} {text!r} is not a number")
    return value


def load_scans(path: str, ndim: int | None) -> datasets.Dataset:
    """The scans of ``--data`` (any format of training's ``--data``): two or more, one shape."""
    data = datasets.load_dataset(path, None, ndim)
    if len(data.vols) < 2:
        raise volumes.DataError(f"{path} holds {len(data.vols)} scan: a template needs two or "
                                f"more")
    return data


def world_reference(data: datasets.Dataset, shape: tuple[int, ...]):
    """Where the template lies in the world: the first scan's NIfTI/MGH image for scans read
    from files, else the ``(4, 4)`` affine of the data's voxel size (1 mm when unknown)."""
    paths = getattr(data.vols, "paths", None)
    if paths is not None:
        return volumes.read_image(paths[0])[1]
    return transforms.spacing_grid(shape, data.spacing).affine


def check_flags(args) -> None:
    """Refuse flags of ``main.py template`` that do not go together, in one line."""
    if args.data is None:
        raise volumes.UsageError("main.py template needs --data (the scans), or --model RUN "
                                 "--value V to write a conditional template")
    if args.int_downsize > 1 and not args.int_steps:
        raise volumes.UsageError(f"--int_downsize {args.int_downsize} needs --int_steps")


def train(args) -> dict:
    """Learn a template as the flags of ``main.py template`` say; write the run folder.

    Returns
    -------
    dict
        What ``rundir.METRICS`` holds (:func:`write_outputs`), or for a worker other than the
        chief ``distribution.worker_summary``.

    Raises
    ------
    volumes.DataError, volumes.UsageError
        Before any file is written, for data or flags that cannot be used.
    rundir.Diverged, rundir.Stopped, volumes.WriteError
        As ``training.train``.
    """
    check_flags(args)
    with contextlib.ExitStack() as lock:
        return _locked_train(args, lock)


def padded_scans(args) -> tuple[datasets.Dataset, np.ndarray | None, list[tuple[int, int]]]:
    """The scans of ``--data`` zero-padded to sizes the network takes, the attribute of each
    (``--condition``; None without), and the padding per axis."""
    data = load_scans(args.data, args.ndim)
    attributes = read_condition(args.condition, data) if args.condition else None
    shape = shapes.padded_shape(data.shape, models.DIVISOR)
    if args.int_downsize > 1 and any(size % args.int_downsize for size in shape):
        raise volumes.UsageError(f"--int_downsize {args.int_downsize} must divide the padded "
                                 f"shape {shape}")
    return (datasets.pad_dataset(data, shape), attributes,
            shapes.padding_to_shape(data.shape, shape))


def _locked_train(args, lock: contextlib.ExitStack) -> dict:
    """:func:`train`, the run folder's lock taken into ``lock`` (``training.locked_train``)."""
    strategy = distribution.distribution_strategy(None, args.batch_size)
    chief = distribution.is_chief()
    output = args.resume or (rundir.new_run_folder(args.output) if chief
                             else args.output or "the chief's run folder")
    if args.resume and chief:
        lock.enter_context(rundir.locked(output))
    data, attributes, padding = padded_scans(args)
    mean = mean_image(data.vols)
    keras.utils.set_random_seed(args.seed)
    options = {key: getattr(args, key) for key in ("loss", "lamda", "ncc_window", "bidir",
                                                   "int_steps", "int_downsize", "centre_weight",
                                                   "lr")}
    with strategy.scope():
        model, state = rundir.load_checkpoint(output, chief) if args.resume else (
            build_template_model(mean, {**options, "momentum": MOMENTUM}, attributes), None)
    if state:
        training.check_resumed_epochs(args.epochs, state, output)
        model.optimizer.learning_rate = args.lr
    lazy = isinstance(data.vols, filelists.LazyVolumes)
    loader = ScanLoader(data.vols, args.batch_size, args.steps_per_epoch, args.seed, attributes,
                        workers=2 if lazy else 1)
    run_dir = training.claim_run_folder(output, args, chief, lock, state)
    print(f"template of {len(data.vols)} scans of shape {shapes.crop(mean, padding).shape}"
          + (f" (padded to {data.shape})" if any(sum(axis) for axis in padding) else "")
          + (f", conditioned on {args.condition}" if args.condition else "")
          + f", output in {output}" + (f", resumed {rundir.position(state)}" if state else ""))
    value = None if attributes is None else float(np.mean(attributes))
    snapshots = TemplateSnapshots(os.path.join(run_dir, rundir.TEMPLATE_EPOCHS),
                                  shapes.crop(mean, padding), padding,
                                  state["epoch"] if state else 0, value)
    seconds, _ = training.fit_run(
        model, loader, None, args.epochs, args.steps_per_epoch, output, run_dir, state,
        strategy, training.divergence_hint(args.lr, args.lamda,
                                           objective.DEFAULT_LAMBDA[args.loss]),
        training.training_callbacks(run_dir, state) + [snapshots])
    if not chief:
        return distribution.worker_summary(model, strategy, seconds)
    reference = world_reference(data, shapes.crop(mean, padding).shape)
    return write_outputs(model, data, mean, padding, reference, output,
                         {"args": vars(args), "output": output,
                          "train_seconds": round(seconds, 1), "shape": data.shape}, options, value)


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
    template = template_image(model, value)
    rundir.save_model(model, path(rundir.TEMPLATE_MODEL))
    rundir.save_model(registration_model(model, options), path(rundir.MODEL))
    fused = fuse_labels(registration_network(model), template, data)
    volumes.save_volume(path(rundir.TEMPLATE), shapes.crop(template, padding), reference)
    summary = {**facts, "scans": len(data.vols),
               "mean_displacement": mean_displacement(
                   shapes.crop(fused["mean_deformation"], padding + [(0, 0)]), data.spacing),
               "sharpness": {"template": sharpness(shapes.crop(template, padding)),
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
    volumes.save_volume(output, shapes.crop(template_image(model, value), padding), reference)
    return f"wrote the template of {run} for the value {value:g} to {output}"


def command(args) -> str:
    """``main.py template``: learn a template, or (``--model``, ``--value``) write one."""
    if args.model is not None or args.value is not None:
        if args.model is None or args.value is None or args.output is None or args.data:
            raise volumes.UsageError("--value V, --model RUN and --output FILE go together, "
                                     "without --data")
        return write_for_value(args.model, args.value, args.output)
    summary = train(args)
    if "worker" in summary:
        return f"{summary['worker']} trained in {summary['train_seconds']:.0f} s"
    shift = summary["mean_displacement"]
    return (f"template learned in {summary['train_seconds']:.0f} s: mean displacement to the "
            f"scans {shift['voxels']:.3f} voxels"
            + (f" ({shift['mm']:.3f} mm)" if "mm" in shift else "")
            + f", sharpness {summary['sharpness']['template']:.4f} (the mean of the scans: "
            f"{summary['sharpness']['mean']:.4f}); wrote {summary['output']}")
