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
"""
import time

import keras
import numpy as np

import metrics  # noqa: F401  registers the losses, so that saved models load compiled
import utils

ENCODER = (16, 32, 32, 32)
DECODER_VM1 = (32, 32, 32, 32, 8, 8)
DECODER_VM2 = (32, 32, 32, 32, 32, 16, 16)
DIVISOR = 2 ** len(ENCODER)  # spatial sizes must divide by this (four stride-2 levels)


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
        """``[(B, *spatial, C) image, (B, *spatial, ndim) displacement]`` -> ``(B, *spatial, C)``."""
        moving, deformation = inputs
        return utils.warp(moving, deformation, self.interpolation)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "interpolation": self.interpolation}


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
               name: str = "voxelmorph") -> keras.Model:
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

    Returns
    -------
    keras.Model
        Inputs ``{"moving", "static"}``, each ``(B, *input_shape, 1)``; outputs
        ``{"moved": (B, *input_shape, 1), "deformation": (B, *input_shape, ndim)}``, the
        displacement in voxels, 'ij' order.
    """
    check_input_shape(input_shape)
    ndim = len(input_shape)
    moving = keras.Input((*input_shape, 1), name="moving")
    static = keras.Input((*input_shape, 1), name="static")

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

    conv = getattr(keras.layers, f"Conv{ndim}D")
    deformation = conv(ndim, 3, padding="same", name="deformation",
                       kernel_initializer=keras.initializers.RandomNormal(0.0, 1e-5))(x)
    moved = SpatialTransformer(name="moved")([moving, deformation])
    return keras.Model({"moving": moving, "static": static},
                       {"moved": moved, "deformation": deformation}, name=name)


def VoxelMorph1(input_shape: tuple[int, ...]) -> keras.Model:
    """VoxelMorph-1: decoder widths [32, 32, 32, 32, 8, 8]. See :func:`voxelmorph`."""
    return voxelmorph(input_shape, DECODER_VM1, name="voxelmorph1")


def VoxelMorph2(input_shape: tuple[int, ...]) -> keras.Model:
    """VoxelMorph-2: decoder widths [32, 32, 32, 32, 32, 16, 16]. See :func:`voxelmorph`."""
    return voxelmorph(input_shape, DECODER_VM2, name="voxelmorph2")


def register(model: keras.Model, moving: np.ndarray, static: np.ndarray,
             moving_seg: np.ndarray | None = None) -> dict:
    """Register one pair with a trained model (one forward pass).

    Parameters
    ----------
    model : keras.Model
        A VoxelMorph model.
    moving, static : np.ndarray
        ``(*spatial)`` images in [0, 1], of the model's input shape.
    moving_seg : np.ndarray, optional
        ``(*spatial)`` integer label map of the moving image, warped with nearest-neighbour
        interpolation.

    Returns
    -------
    dict
        ``moved`` ``(*spatial)`` float32; ``deformation`` ``(*spatial, ndim)`` displacement in
        voxels, 'ij' order; ``seconds`` of the forward pass (on a model's first call, an untimed
        pass builds its graph first); and ``moved_seg`` ``(*spatial)``, of
        ``moving_seg``'s dtype, when ``moving_seg`` is given.
    """
    inputs = {"moving": np.asarray(moving, np.float32)[None, ..., None],
              "static": np.asarray(static, np.float32)[None, ..., None]}
    if model.predict_function is None:  # the first pass builds the graph: keep it out of the timing
        model.predict_on_batch(inputs)
    start = time.perf_counter()
    outputs = model.predict_on_batch(inputs)
    seconds = time.perf_counter() - start
    deformation = np.asarray(outputs["deformation"])
    result = {"moved": np.asarray(outputs["moved"])[0, ..., 0],
              "deformation": deformation[0], "seconds": seconds}
    if moving_seg is not None:
        moved_seg = utils.warp(np.asarray(moving_seg, np.int32)[None, ..., None], deformation,
                               "nearest")
        result["moved_seg"] = np.asarray(moved_seg)[0, ..., 0].astype(np.asarray(moving_seg).dtype)
    return result
