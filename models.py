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
Beside the networks: :func:`build_model` compiles the training objective of Eq. (2),
:func:`register` runs one pair through a model, :func:`register_volumes` does it for volumes
of any size and intensity range, and :func:`evaluate_pairs` scores a set of pairs.
"""
import time

import keras
import numpy as np

import dataloader
import metrics  # also registers the losses, so that saved models load compiled
import utils

ENCODER = (16, 32, 32, 32)
DECODER_VM1 = (32, 32, 32, 32, 8, 8)
DECODER_VM2 = (32, 32, 32, 32, 32, 16, 16)
DIVISOR = 2 ** len(ENCODER)  # spatial sizes must divide by this (four stride-2 levels)
DEFAULT_LAMBDA = {"ncc": 1.0, "mse": 0.01}  # smoothness weights of the papers


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
    # float32 even under a mixed-precision policy: the displacement, the sampler and the losses.
    deformation = conv(ndim, 3, padding="same", name="deformation", dtype="float32",
                       kernel_initializer=keras.initializers.RandomNormal(0.0, 1e-5))(x)
    moved = SpatialTransformer(name="moved", dtype="float32")([moving, deformation])
    return keras.Model({"moving": moving, "static": static},
                       {"moved": moved, "deformation": deformation}, name=name)


def VoxelMorph1(input_shape: tuple[int, ...]) -> keras.Model:
    """VoxelMorph-1: decoder widths [32, 32, 32, 32, 8, 8]. See :func:`voxelmorph`."""
    return voxelmorph(input_shape, DECODER_VM1, name="voxelmorph1")


def VoxelMorph2(input_shape: tuple[int, ...]) -> keras.Model:
    """VoxelMorph-2: decoder widths [32, 32, 32, 32, 32, 16, 16]. See :func:`voxelmorph`."""
    return voxelmorph(input_shape, DECODER_VM2, name="voxelmorph2")


def build_model(input_shape: tuple[int, ...], model: str = "vm2", loss: str = "ncc",
                lamda: float | None = None, lr: float = 1e-3, ncc_window: int = 9) -> keras.Model:
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
        Weight of the smoothness loss (Eq. 3); default ``DEFAULT_LAMBDA[loss]``.
    lr : float
        Adam learning rate.
    ncc_window : int
        Local NCC window width in voxels, per axis.

    Returns
    -------
    keras.Model
        Compiled, ready for ``fit``.
    """
    network = {"vm1": VoxelMorph1, "vm2": VoxelMorph2}[model](input_shape)
    similarity = (metrics.local_normalized_cross_correlation_loss(ncc_window)
                  if loss == "ncc" else metrics.mse_loss())
    network.compile(optimizer=keras.optimizers.Adam(lr),
                    loss={"moved": similarity, "deformation": metrics.gradient_loss()},
                    loss_weights={"moved": 1.0,
                                  "deformation": DEFAULT_LAMBDA[loss] if lamda is None else lamda})
    return network


def input_shape(model: keras.Model) -> tuple[int, ...]:
    """Spatial input shape of a VoxelMorph model."""
    return tuple(model.inputs[0].shape[1:-1])


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


def register_volumes(model: keras.Model, moving: np.ndarray, static: np.ndarray,
                     moving_seg: np.ndarray | None = None) -> dict:
    """Register volumes of any size and intensity range up to the model's input shape.

    The pair is scaled to [0, 1] and zero-padded (centred) to the model's input shape as in
    training, registered by :func:`register`; the moving image's own intensities are then warped
    and every output is cropped back to the input's size.

    Parameters
    ----------
    model : keras.Model
        A VoxelMorph model.
    moving, static : np.ndarray
        ``(*spatial)`` images of one shape, at most the model's input shape, any real dtype.
    moving_seg : np.ndarray, optional
        ``(*spatial)`` integer label map of the moving image.

    Returns
    -------
    dict
        As :func:`register`, at the input's size: ``moved`` ``(*spatial)`` float32 in the moving
        image's intensity units, ``deformation`` ``(*spatial, ndim)`` in voxels, ``seconds``, and
        ``moved_seg`` when ``moving_seg`` is given.

    Raises
    ------
    dataloader.DataError
        If the shapes differ or do not fit the model.
    """
    if moving.shape != static.shape:
        raise dataloader.DataError(f"moving and static shapes differ: {moving.shape} vs "
                                   f"{static.shape}")
    if moving_seg is not None:
        moving_seg = dataloader.as_label_map(moving_seg, "moving label map")
        if moving_seg.shape != moving.shape:
            raise dataloader.DataError(f"moving label map shape {moving_seg.shape} differs "
                                       f"from the moving image's {moving.shape}")
    padding = dataloader.padding_to_shape(moving.shape, input_shape(model))
    padded = [None if image is None else dataloader.pad(image, padding)
              for image in (dataloader.normalize(moving, "moving image"),
                            dataloader.normalize(static, "static image"), moving_seg)]
    registered = register(model, *padded)
    deformation = registered["deformation"]
    moved = utils.warp(dataloader.pad(moving.astype(np.float32), padding)[None, ..., None],
                       deformation[None])
    registered["moved"] = np.asarray(moved)[0, ..., 0]
    registered["deformation"] = np.moveaxis(
        dataloader.crop(np.moveaxis(deformation, -1, 0), padding), 0, -1)
    for key in ("moved", "moved_seg"):
        if key in registered:
            registered[key] = dataloader.crop(registered[key], padding)
    return registered


def evaluate_pairs(model: keras.Model, pairs: dataloader.Pairs, labels=None,
                   keep: int = 0) -> tuple[list[dict], list[dict]]:
    """Register every pair once and score it (see ``metrics.score_registration``).

    Parameters
    ----------
    model : keras.Model
        A VoxelMorph model.
    pairs : dataloader.Pairs
        Pairs of the model's input shape, images in [0, 1].
    labels : sequence of int, optional
        Labels scored with Dice (default: every non-zero label present).
    keep : int
        Also return the arrays of the first ``keep`` registered pairs.

    Returns
    -------
    results : list of dict
        Scores of each pair, plus ``seconds``, the time of its forward pass.
    samples : list of dict
        For the first ``keep`` pairs: ``moving``, ``static``, ``moved``, ``deformation`` and,
        with label maps, ``moving_seg``, ``static_seg``, ``moved_seg``.
    """
    results, samples = [], []
    for moving, static, moving_seg, static_seg in pairs:
        registered = register(model, moving, static, moving_seg)
        scores = metrics.score_registration(moving, static, registered["moved"],
                                            registered["deformation"], moving_seg, static_seg,
                                            registered.get("moved_seg"), labels)
        results.append({**scores, "seconds": registered["seconds"]})
        if len(samples) < keep:
            arrays = {"moving": moving, "static": static, "moving_seg": moving_seg,
                      "static_seg": static_seg, **registered}
            samples.append({key: value for key, value in arrays.items()
                            if value is not None and key != "seconds"})
    return results, samples
