"""The learned template's model: a trainable image that VoxelMorph registers to each scan.

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
the attribute. :func:`build_template_model` builds and compiles the whole; :func:`template_image`
reads the template back and :func:`registration_model` gives the network that registers it to
new scans. Learning a template from the flags of ``main.py template`` is
``template_training.py``'s job; the files of a learned template (its label maps fused onto it)
are ``template_outputs.py``'s. One code path serves 2D and 3D.
"""
import math

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np
import tensorflow as tf

import metrics
import models
import objective

CENTRE_WEIGHT = 1.0  # weight of the centring term (voxels^-2)
TEMPLATE_RATE = 10.0  # the template's learning rate relative to the network's (Template)
MOMENTUM = 0.9  # of the running mean of the displacement: the weight of the batches before
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
        ``(*shape)`` the template's start, the mean of the scans
        (``template_training.mean_image``); each
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
