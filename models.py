"""VoxelMorph-1 and VoxelMorph-2 (Balakrishnan et al., CVPR 2018, Fig. 3).

A U-Net takes the moving and static images, concatenated, and predicts a dense displacement
field; a spatial transformer resamples the moving image with it. Both networks share the
encoder and differ only in the decoder's widths:

- encoder: 3x3(x3) convolutions with stride 2, widths ``ENCODER`` (1/2 to 1/16 resolution);
- decoder: the first three convolutions are each followed by 2x upsampling and a skip from the
  matching encoder level; the next two run at half resolution; one more upsampling and a skip
  from the input pair; the remaining one (VM-1) or two (VM-2) run at full resolution;
- every convolution but the last is followed by LeakyReLU(0.2); the last one outputs ``ndim``
  channels, the displacement in voxels, with weights drawn from N(0, 1e-5).

The same code builds 2D and 3D networks: layers are chosen by ``ndim = len(input_shape)``.
Beside the networks, :func:`build_model` compiles the training objective of Eq. (2). Registering
and scoring pairs with a trained model is ``registration.py``'s job.
"""
import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras

import metrics  # also registers the losses, so that saved models load compiled
import utils

ENCODER = (16, 32, 32, 32)
DECODER_VM1 = (32, 32, 32, 32, 8, 8)
DECODER_VM2 = (32, 32, 32, 32, 32, 16, 16)
DIVISOR = 2 ** len(ENCODER)  # spatial sizes must divide by this (four stride-2 levels)
DEFAULT_LAMBDA = {"ncc": 1.0, "mse": 0.01}  # smoothness weights of the papers
F32 = "float32"  # the field's layers, even under a mixed-precision policy


@keras.saving.register_keras_serializable(package="voxelmorph")
class SpatialTransformer(keras.layers.Layer):
    """Keras layer around :func:`utils.warp`: ``[moving, deformation] -> moved``.

    Parameters
    ----------
    interpolation : {"linear", "nearest"}
        N-linear for images, nearest-neighbour for label maps.
    """

    def __init__(self, interpolation: str = "linear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        """``[(B, *spatial, C) image, (B, *spatial, ndim) displacement]`` -> ``(B, *spatial, C)``.
        """
        moving, deformation = inputs
        return utils.warp(moving, deformation, self.interpolation)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="voxelmorph")
class IntegrateVelocity(keras.layers.Layer):
    """Keras layer around :func:`utils.integrate_velocity`: velocity -> displacement, same grid.

    Parameters
    ----------
    steps : int
        Scaling and squaring steps.
    """

    def __init__(self, steps: int, **kwargs):
        super().__init__(**kwargs)
        self.steps = steps

    def call(self, velocity):
        """``(B, *spatial, ndim)`` velocity in voxels -> ``(B, *spatial, ndim)`` displacement."""
        return utils.integrate_velocity(velocity, self.steps)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "steps": self.steps}


@keras.saving.register_keras_serializable(package="voxelmorph")
class ResizeField(keras.layers.Layer):
    """Keras layer around :func:`utils.resize_displacement`: a field onto a ``shape`` grid.

    Both sides of a coarse integration use it: the velocity down to the integration grid, the
    displacement back up; the vectors are rescaled so that they stay in voxels of the new grid.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the output grid (same extent as the input's).
    """

    def __init__(self, shape: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        self.shape = tuple(shape)

    def call(self, field):
        """``(B, *in_spatial, ndim)`` in input voxels -> ``(B, *shape, ndim)`` in output voxels."""
        return utils.resize_displacement(field, self.shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.shape, input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "shape": self.shape}


@keras.saving.register_keras_serializable(package="voxelmorph")
class Negate(keras.layers.Layer):
    """``x -> -x``: the inverse of a velocity field (or, to first order, of a displacement)."""

    def call(self, x):
        return -x


def _conv(x, filters: int, strides: int = 1):
    """3x3(x3) convolution, 'same' padding, then LeakyReLU(0.2)."""
    conv = getattr(keras.layers, f"Conv{len(x.shape) - 2}D")
    x = conv(filters, 3, strides=strides, padding="same", kernel_initializer="he_normal")(x)
    return keras.layers.LeakyReLU(0.2)(x)


def _up_and_skip(x, skip):
    """2x nearest-neighbour upsampling, then concatenation with the encoder's ``skip``."""
    upsampling = getattr(keras.layers, f"UpSampling{len(x.shape) - 2}D")
    return keras.layers.Concatenate()([upsampling(2)(x), skip])


def check_input_shape(input_shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``input_shape`` is 2D or 3D with sizes divisible by 16."""
    if len(input_shape) not in (2, 3):
        raise ValueError(f"input_shape must be 2D or 3D, got {tuple(input_shape)}")
    if any(size % DIVISOR or size <= 0 for size in input_shape):
        raise ValueError(f"every size of input_shape must be a positive multiple of {DIVISOR} "
                         f"(four stride-2 levels), got {tuple(input_shape)}")


def voxelmorph(input_shape: tuple[int, ...], decoder: tuple[int, ...],
               name: str = "voxelmorph", int_steps: int = 0, int_downsize: int = 1,
               bidir: bool = False, num_labels: int = 0) -> keras.Model:
    """Build a VoxelMorph network with the paper's encoder and the given decoder widths.

    Parameters
    ----------
    input_shape : tuple of int
        Spatial shape ``(H, W)`` or ``(D, H, W)``, each divisible by 16.
    decoder : tuple of int
        Decoder widths: three for the upsampling levels, two at half resolution, the rest at full
        resolution (``DECODER_VM1`` or ``DECODER_VM2``).
    name : str
        Model name.
    int_steps : int
        0: the last convolution is the displacement (CVPR 2018). Otherwise it is a stationary
        velocity field, integrated by scaling and squaring in ``int_steps`` steps into a
        diffeomorphic displacement (Dalca et al., MICCAI 2018).
    int_downsize : int
        Integrate the velocity at ``1 / int_downsize`` resolution: :class:`ResizeField` takes it
        down to that grid and the integrated displacement back (only with ``int_steps``).
    bidir : bool
        Also warp the static image with the inverse field (the negated velocity, or the negated
        displacement without integration).
    num_labels : int
        With labels, the network also takes the moving image's one-hot label map and warps it
        (linear interpolation), for the auxiliary segmentation loss (TMI 2019, Sec. IV-C2).

    Returns
    -------
    keras.Model
        Inputs ``{"moving", "static"}``, each ``(B, *input_shape, 1)``, and ``"moving_seg"``
        ``(B, *input_shape, num_labels)`` with labels. Outputs ``"moved"`` ``(B, *input_shape,
        1)`` and ``"deformation"`` ``(B, *input_shape, ndim)``, the displacement in voxels, 'ij'
        order; with integration ``"velocity"`` (at the integration grid, in its voxels); with
        ``bidir`` ``"moved_static"``; with labels ``"moved_seg"``.
    """
    check_input_shape(input_shape)
    inputs = {"moving": keras.Input((*input_shape, 1), name="moving"),
              "static": keras.Input((*input_shape, 1), name="static")}
    if num_labels:
        inputs["moving_seg"] = keras.Input((*input_shape, num_labels), name="moving_seg")
    field = _field(_unet(inputs["moving"], inputs["static"], decoder), int_steps)

    outputs = {}
    if int_steps:
        if int_downsize > 1:
            small = tuple(size // int_downsize for size in input_shape)
            field = ResizeField(small, name="velocity", dtype=F32)(field)
        outputs["velocity"] = field
        deformation = IntegrateVelocity(int_steps, name="integrate", dtype=F32)(field)
        if bidir:
            negated = Negate(name="negated_velocity", dtype=F32)(field)
            inverse = IntegrateVelocity(int_steps, name="integrate_inverse", dtype=F32)(negated)
        if int_downsize > 1:
            deformation = ResizeField(input_shape, name="resize", dtype=F32)(deformation)
            if bidir:
                inverse = ResizeField(input_shape, name="resize_inverse", dtype=F32)(inverse)
    else:
        deformation = field
        if bidir:
            inverse = Negate(name="inverse", dtype=F32)(deformation)
    outputs["moved"] = SpatialTransformer(name="moved", dtype=F32)([inputs["moving"], deformation])
    outputs["deformation"] = deformation
    if bidir:
        outputs["moved_static"] = SpatialTransformer(name="moved_static", dtype=F32)(
            [inputs["static"], inverse])
    if num_labels:
        outputs["moved_seg"] = SpatialTransformer(name="moved_seg", dtype=F32)(
            [inputs["moving_seg"], deformation])
    return keras.Model(inputs, outputs, name=name)


def _unet(moving, static, decoder: tuple[int, ...]):
    """The paper's U-Net on the concatenated pair; returns its last feature map."""
    x = keras.layers.Concatenate(name="pair")([moving, static])
    skips = [x]
    for filters in ENCODER:
        x = _conv(x, filters, strides=2)
        skips.append(x)
    skips.pop()  # the deepest level feeds the decoder directly

    upsampled, half, full = decoder[:3], decoder[3:5], decoder[5:]
    for filters in upsampled:
        x = _up_and_skip(_conv(x, filters), skips.pop())
    for filters in half:
        x = _conv(x, filters)
    x = _up_and_skip(x, skips.pop())
    for filters in full:
        x = _conv(x, filters)
    return x


def _field(x, int_steps: int):
    """The last convolution: ``ndim`` channels, weights from N(0, 1e-5), no activation."""
    ndim = len(x.shape) - 2
    conv = getattr(keras.layers, f"Conv{ndim}D")
    # float32 even under a mixed-precision policy: the field, the sampler and the losses.
    return conv(ndim, 3, padding="same", name="velocity_field" if int_steps else "deformation",
                dtype="float32", kernel_initializer=keras.initializers.RandomNormal(0.0, 1e-5))(x)


def VoxelMorph1(input_shape: tuple[int, ...], **options) -> keras.Model:
    """VoxelMorph-1: decoder widths [32, 32, 32, 32, 8, 8]. See :func:`voxelmorph`."""
    return voxelmorph(input_shape, DECODER_VM1, name="voxelmorph1", **options)


def VoxelMorph2(input_shape: tuple[int, ...], **options) -> keras.Model:
    """VoxelMorph-2: decoder widths [32, 32, 32, 32, 32, 16, 16]. See :func:`voxelmorph`."""
    return voxelmorph(input_shape, DECODER_VM2, name="voxelmorph2", **options)


def build_model(input_shape: tuple[int, ...], model: str = "vm2", loss: str = "ncc",
                lamda: float | None = None, lr: float = 1e-3, ncc_window: int = 9,
                int_steps: int = 0, int_downsize: int = 1, bidir: bool = False,
                seg_weight: float = 0.0, num_labels: int = 0) -> keras.Model:
    """A VoxelMorph network compiled with Eq. (2): similarity + lambda * smoothness, and Adam.

    Parameters
    ----------
    input_shape : tuple of int
        Spatial shape, each size divisible by ``DIVISOR``.
    model : {"vm1", "vm2"}
        VoxelMorph-1 or VoxelMorph-2 decoder.
    loss : {"ncc", "mse"}
        Image similarity: local NCC over ``ncc_window``-wide windows (Eq. 5), or MSE (Eq. 4).
    lamda : float, optional
        Weight of the smoothness loss (Eq. 3); default ``DEFAULT_LAMBDA[loss]``. It applies to
        the velocity field when integrating.
    lr : float
        Adam learning rate.
    ncc_window : int
        Local NCC window width in voxels, per axis.
    int_steps, int_downsize : int
        Diffeomorphic integration (see :func:`voxelmorph`); 0 keeps the CVPR model.
    bidir : bool
        Add the symmetric similarity of the static image warped by the inverse field to the
        moving image; both similarity terms then weigh 0.5.
    seg_weight : float
        Weight gamma of the auxiliary soft-Dice loss between the warped one-hot label map of
        the moving image and the static one's; needs ``num_labels``.
    num_labels : int
        Number of labels of the one-hot maps (with ``seg_weight``).

    Returns
    -------
    keras.Model
        Compiled, ready for ``fit``; its loss dictionary's keys are the targets a batch needs
        (see ``dataloader.batch``).
    """
    if seg_weight and not num_labels:
        raise ValueError("seg_weight needs num_labels > 0")
    network = {"vm1": VoxelMorph1, "vm2": VoxelMorph2}[model](
        input_shape, int_steps=int_steps, int_downsize=int_downsize, bidir=bidir,
        num_labels=num_labels if seg_weight else 0)
    similarity = (metrics.local_normalized_cross_correlation_loss(ncc_window)
                  if loss == "ncc" else metrics.mse_loss())
    smooth = "velocity" if int_steps else "deformation"
    losses = {"moved": similarity, smooth: metrics.gradient_loss()}
    weights = {"moved": 0.5 if bidir else 1.0,
               smooth: DEFAULT_LAMBDA[loss] if lamda is None else lamda}
    if bidir:
        losses["moved_static"], weights["moved_static"] = similarity, 0.5
    if seg_weight:
        losses["moved_seg"], weights["moved_seg"] = metrics.SoftDice(), seg_weight
    network.compile(optimizer=keras.optimizers.Adam(lr), loss=losses, loss_weights=weights)
    return network


def targets(model: keras.Model) -> dict[str, tuple[int, ...]]:
    """The outputs a compiled model is trained on (the targets of a batch), by name: the shape
    of one sample of each, e.g. ``{"moved": (*spatial, 1), "velocity": (*coarse, ndim)}``."""
    return {name: tuple(model.output[name].shape[1:])
            for name in model.get_compile_config()["loss"]}


def registration_model(model: keras.Model) -> keras.Model:
    """The part of a model that registers a pair: inputs ``moving`` and ``static`` only.

    A segmentation-aided model also takes the moving label map; its registration network is
    the same, without that input and the ``moved_seg`` output. Other models are returned as
    they are.
    """
    if "moving_seg" not in model.input:
        return model
    outputs = {key: value for key, value in model.output.items() if key != "moved_seg"}
    return keras.Model({key: model.input[key] for key in ("moving", "static")}, outputs,
                       name=model.name)


def input_shape(model: keras.Model) -> tuple[int, ...]:
    """Spatial input shape of a VoxelMorph model."""
    return tuple(model.inputs[0].shape[1:-1])


def integration(network: keras.Model) -> tuple[int, int]:
    """``(int_steps, int_downsize)`` of a network: ``(0, 1)`` without integration."""
    integrate = [layer for layer in network.layers if isinstance(layer, IntegrateVelocity)]
    if not integrate:
        return 0, 1
    return integrate[0].steps, input_shape(network)[0] // network.output["velocity"].shape[1]


def rebuild(network: keras.Model, shape: tuple[int, ...]) -> keras.Model:
    """``network`` built anew for another spatial input ``shape``, with copies of its weights.

    The U-Net is fully convolutional, so a network trained on one shape registers any other:
    its decoder widths, integration and symmetric outputs are read from its layers, the same
    :func:`voxelmorph` builds them for ``shape``, and the weights (in the same order) are copied.

    Parameters
    ----------
    network : keras.Model
        A registration network (inputs ``moving`` and ``static``; see
        :func:`registration_model`).
    shape : tuple of int
        Spatial shape, each size divisible by ``DIVISOR`` (and by ``int_downsize``).
    """
    convs = [layer for layer in network.layers if type(layer).__name__ in ("Conv2D", "Conv3D")]
    int_steps, int_downsize = integration(network)
    rebuilt = voxelmorph(shape, tuple(layer.filters for layer in convs[len(ENCODER):-1]),
                         network.name, int_steps, int_downsize, "moved_static" in network.output)
    rebuilt.set_weights(network.get_weights())
    return rebuilt
