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

``unet="official"`` builds the layout of the official VoxelMorph code instead (voxelmorph 0.2's
``VxmDense``, same widths), which departs from the paper's figure: each encoder level is a
stride-1 convolution whose output is the level's skip, followed by 2x max pooling; the first
``len(ENCODER)`` decoder widths are one convolution per level, each followed by upsampling and
its skip; the rest run at full resolution. It computes more at full and half resolution.

Beyond the papers, for scans that are not affinely aligned: :func:`affine_network` (affine or
rigid: points found in both images by one feature network, matched by least squares) and
:func:`joint_network` (the affine stage, then VoxelMorph on its moved image, composed into one
displacement); :func:`cascade_network` (one VoxelMorph network applied twice, the second time
to its own moved image, its two maps composed: a recursive cascade, Zhao et al., ICCV 2019).

The same code builds 2D and 3D networks: layers are chosen by ``ndim = len(input_shape)``; the
project's own layers are in ``layers.py``.
Beside the networks, :func:`build_model` gives an ``objective.TrainingModel``: the network with
the training objective of Eq. (2) (``objective.py``), which it computes from its own inputs and
outputs. Registering and scoring pairs with a trained model is ``registration.py``'s job.

With ``hyper=True`` every convolution of the U-Net takes its weights from HyperMorph's
hypernetwork (``layers.Hypernetwork``, ``layers.HyperConv``; ``hyper.py``).
What reads a trained network back (its kind, integration, stages) is here too;
``rebuilding.py`` builds it again for another shape.
"""
import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras

import layers  # also registers the layers, so that saved models load
import objective  # also registers the training model and losses, so that saved models load

ENCODER = (16, 32, 32, 32)
DECODER_VM1 = (32, 32, 32, 32, 8, 8)
DECODER_VM2 = (32, 32, 32, 32, 32, 16, 16)
KEYPOINTS = 32  # feature maps of the affine network, whose centroids are matched
TRANSFORMS = ("deformable", "affine", "rigid", "joint", "cascade")
CASCADE_PASSES = 2  # passes of a cascade network
UNETS = ("paper", "official")  # U-Net layouts: CVPR 2018 Fig. 3, or the official code's
DIVISOR = 2 ** len(ENCODER)  # spatial sizes must divide by this (four stride-2 levels)
F32 = "float32"  # the field's layers, even under a mixed-precision policy


def _conv(x, filters: int, strides: int = 1, code=None):
    """3x3(x3) convolution, 'same' padding, then LeakyReLU(0.2); with the hypernetwork's
    ``code``, a :class:`layers.HyperConv` whose weights it gives."""
    if code is not None:
        return keras.layers.LeakyReLU(0.2)(layers.HyperConv(filters, strides)([x, code]))
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
               bidir: bool = False, unet: str = "paper", hyper: bool = False,
               lamda: float | None = None) -> keras.Model:
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
        Integrate the velocity at ``1 / int_downsize`` resolution: :class:`layers.ResizeField`
        takes it down to that grid and the integrated displacement back (only with
        ``int_steps``).
    bidir : bool
        Also warp the static image with the inverse field (the negated velocity, or the negated
        displacement without integration).
    unet : {"paper", "official"}
        The U-Net's layout: the paper's, or the official code's (see the module's docstring).
    hyper : bool
        HyperMorph (``hyper.py``): every convolution is a :class:`layers.HyperConv` whose weights
        :class:`layers.Hypernetwork` gives for each sample's smoothness weight, the input
        ``"lamda"`` ``(B, 1)``, or ``lamda`` fixed (:class:`layers.FixedLambda`) when given.
    lamda : float, optional
        With ``hyper``: the smoothness weight the network registers with, in place of an input.

    Returns
    -------
    keras.Model
        Inputs ``{"moving", "static"}`` (and ``"lamda"`` of a hypernetwork without ``lamda``),
        each ``(B, *input_shape, 1)``. Outputs ``"moved"``
        ``(B, *input_shape, 1)`` and ``"deformation"`` ``(B, *input_shape, ndim)``, the
        displacement in voxels, 'ij' order; with integration ``"velocity"`` (at the integration
        grid, in its voxels); with ``bidir`` ``"moved_static"``.
    """
    check_input_shape(input_shape)
    inputs = {"moving": keras.Input((*input_shape, 1), name="moving"),
              "static": keras.Input((*input_shape, 1), name="static")}
    code = None
    if hyper:
        if lamda is None:
            inputs["lamda"] = keras.Input((1,), name="lamda")
        weight = inputs["lamda"] if lamda is None else layers.FixedLambda(
            lamda, name="fixed_lamda", dtype=F32)(inputs["moving"])
        code = layers.Hypernetwork(name="hypernetwork", dtype=F32)(weight)
    unet_layout = {"paper": _unet, "official": _pooled_unet}[unet]
    field = _field(unet_layout(inputs["moving"], inputs["static"], decoder, code), int_steps,
                   code=code)

    outputs = {}
    if int_steps:
        if int_downsize > 1:
            small = tuple(size // int_downsize for size in input_shape)
            field = layers.ResizeField(small, name="velocity", dtype=F32)(field)
        outputs["velocity"] = field
        deformation = layers.IntegrateVelocity(int_steps, name="integrate", dtype=F32)(field)
        if bidir:
            negated = layers.Negate(name="negated_velocity", dtype=F32)(field)
            inverse = layers.IntegrateVelocity(int_steps, name="integrate_inverse",
                                               dtype=F32)(negated)
        if int_downsize > 1:
            deformation = layers.ResizeField(input_shape, name="resize", dtype=F32)(deformation)
            if bidir:
                inverse = layers.ResizeField(input_shape, name="resize_inverse", dtype=F32)(inverse)
    else:
        deformation = field
        if bidir:
            inverse = layers.Negate(name="inverse", dtype=F32)(deformation)
    outputs["moved"] = layers.SpatialTransformer(name="moved", dtype=F32)(
        [inputs["moving"], deformation])
    outputs["deformation"] = deformation
    if bidir:
        outputs["moved_static"] = layers.SpatialTransformer(name="moved_static", dtype=F32)(
            [inputs["static"], inverse])
    return keras.Model(inputs, outputs, name=name)


def _unet(moving, static, decoder: tuple[int, ...], code=None):
    """The paper's U-Net on the concatenated pair (its weights given by the hypernetwork's
    ``code``, if any); returns its last feature map."""
    x = keras.layers.Concatenate(name="pair")([moving, static])
    skips = [x]
    for filters in ENCODER:
        x = _conv(x, filters, strides=2, code=code)
        skips.append(x)
    skips.pop()  # the deepest level feeds the decoder directly

    upsampled, half, full = decoder[:3], decoder[3:5], decoder[5:]
    for filters in upsampled:
        x = _up_and_skip(_conv(x, filters, code=code), skips.pop())
    for filters in half:
        x = _conv(x, filters, code=code)
    x = _up_and_skip(x, skips.pop())
    for filters in full:
        x = _conv(x, filters, code=code)
    return x


def _pooled_unet(moving, static, decoder: tuple[int, ...], code=None):
    """The official code's U-Net layout on the concatenated pair (its weights given by the
    hypernetwork's ``code``, if any); returns its last feature map."""
    ndim = len(moving.shape) - 2
    pooling = getattr(keras.layers, f"MaxPooling{ndim}D")
    x = keras.layers.Concatenate(name="pair")([moving, static])
    skips = []
    for filters in ENCODER:
        x = _conv(x, filters, code=code)
        skips.append(x)
        x = pooling(2)(x)
    for filters in decoder[:len(ENCODER)]:
        x = _up_and_skip(_conv(x, filters, code=code), skips.pop())
    for filters in decoder[len(ENCODER):]:
        x = _conv(x, filters, code=code)
    return x


def _field(x, int_steps: int, name: str | None = None, code=None):
    """The last convolution: ``ndim`` channels, weights from N(0, 1e-5), no activation (with
    the hypernetwork's ``code``, a :class:`layers.HyperConv`)."""
    ndim = len(x.shape) - 2
    name = name or ("velocity_field" if int_steps else "deformation")
    initializer = keras.initializers.RandomNormal(0.0, 1e-5)
    # float32 even under a mixed-precision policy: the field, the sampler and the losses.
    if code is not None:
        return layers.HyperConv(ndim, kernel_initializer=initializer, name=name,
                                dtype="float32")([x, code])
    conv = getattr(keras.layers, f"Conv{ndim}D")
    return conv(ndim, 3, padding="same", name=name, dtype="float32",
                kernel_initializer=initializer)(x)


def VoxelMorph1(input_shape: tuple[int, ...], **options) -> keras.Model:
    """VoxelMorph-1: decoder widths [32, 32, 32, 32, 8, 8]. See :func:`voxelmorph`."""
    return voxelmorph(input_shape, DECODER_VM1, name="voxelmorph1", **options)


def VoxelMorph2(input_shape: tuple[int, ...], **options) -> keras.Model:
    """VoxelMorph-2: decoder widths [32, 32, 32, 32, 32, 16, 16]. See :func:`voxelmorph`."""
    return voxelmorph(input_shape, DECODER_VM2, name="voxelmorph2", **options)


def affine_network(input_shape: tuple[int, ...], rigid: bool = False,
                   name: str | None = None) -> keras.Model:
    """An affine (or rigid) registration network in the VoxelMorph family.

    One feature network runs on each image of the pair (shared weights): the paper's encoder
    (3x3(x3) convolutions with stride 2, widths ``ENCODER``) and a decoder with skips back to
    1/4 resolution, whose last convolution gives ``KEYPOINTS`` non-negative maps (ReLU). The
    centroid of each map is a point the network finds in both images
    (:class:`layers.Centroids`), and :class:`layers.FitAffine` fits the affine map that takes
    the static image's points onto the moving image's, weighted by the maps' masses (as
    SynthMorph's affine model and KeyMorph do). A point found in both images gives the map
    exactly, however far apart they are; zero weights give empty maps and the identity. The
    same code serves 2D and 3D and any input size the deformable network takes.

    Parameters
    ----------
    input_shape : tuple of int
        Spatial shape, each size divisible by ``DIVISOR``.
    rigid : bool
        Rotation and translation only.
    name : str, optional
        Model name (default ``"rigid"`` or ``"affine"``).

    Returns
    -------
    keras.Model
        Inputs ``{"moving", "static"}`` ``(B, *input_shape, 1)``; outputs ``"moved"``,
        ``"deformation"`` ``(B, *input_shape, ndim)`` (the affine map as a displacement in
        voxels, 'ij' order) and ``"affine"`` ``(B, ndim, ndim + 1)``, the map ``[A | b]`` of
        static voxels ``x`` to moving voxels ``A x + b``.
    """
    check_input_shape(input_shape)
    inputs = {"moving": keras.Input((*input_shape, 1), name="moving"),
              "static": keras.Input((*input_shape, 1), name="static")}
    features = _keypoint_features(input_shape)
    centroids = layers.Centroids(input_shape, name="centroids", dtype=F32)
    points = [*centroids(features(inputs["static"])), *centroids(features(inputs["moving"]))]
    matrix = layers.FitAffine(input_shape, rigid, name="affine", dtype=F32)(points)
    deformation = layers.AffineDisplacement(input_shape, name="deformation", dtype=F32)(matrix)
    moved = layers.SpatialTransformer(name="moved", dtype=F32)([inputs["moving"], deformation])
    return keras.Model(inputs, {"moved": moved, "deformation": deformation, "affine": matrix},
                       name=name or ("rigid" if rigid else "affine"))


def _keypoint_features(input_shape: tuple[int, ...]) -> keras.Model:
    """The affine network's feature network: one image -> ``KEYPOINTS`` maps at 1/4 size."""
    image = keras.Input((*input_shape, 1), name="image")
    x, skips = image, []
    for filters in ENCODER:
        x = _conv(x, filters, strides=2)
        skips.append(x)
    skips.pop()
    for filters in (32, 32):  # back up to 1/4 resolution
        x = _up_and_skip(_conv(x, filters), skips.pop())
    conv = getattr(keras.layers, f"Conv{len(input_shape)}D")
    maps = conv(KEYPOINTS, 3, padding="same", activation="relu", name="keypoint_maps")(
        _conv(x, ENCODER[-1]))
    return keras.Model(image, maps, name="keypoint_features")


def joint_network(affine: keras.Model, deformable: keras.Model, name: str = "joint"
                  ) -> keras.Model:
    """The affine stage, then the deformable network on the affinely moved image.

    Parameters
    ----------
    affine : keras.Model
        An :func:`affine_network` (its own stage of the joint model).
    deformable : keras.Model
        A :func:`voxelmorph` network of the same input shape, without labels.
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Inputs ``{"moving", "static"}``. Outputs ``"deformation"``, the composition ``M(x +
        u(x)) - x`` of the deformable stage's displacement ``u`` and the affine map ``M``, in
        voxels; ``"moved"``, the moving image warped once with it; ``"affine"`` and
        ``"moved_affine"``, the affine stage's map and moved image; ``"residual"``, ``u``; with
        integration ``"velocity"``.
    """
    shape = input_shape(deformable)
    inputs = {"moving": keras.Input((*shape, 1), name="moving"),
              "static": keras.Input((*shape, 1), name="static")}
    aligned = affine(inputs)
    refined = deformable({"moving": aligned["moved"], "static": inputs["static"]})
    deformation = layers.AffineDisplacement(shape, name="deformation", dtype=F32)(
        [aligned["affine"], refined["deformation"]])
    outputs = {"moved": layers.SpatialTransformer(name="moved", dtype=F32)([inputs["moving"],
                                                                      deformation]),
               "deformation": deformation, "affine": aligned["affine"],
               "moved_affine": aligned["moved"], "residual": refined["deformation"]}
    if "velocity" in refined:
        outputs["velocity"] = refined["velocity"]
    return keras.Model(inputs, outputs, name=name)


def cascade_network(deformable: keras.Model, passes: int = CASCADE_PASSES,
                    name: str = "cascade") -> keras.Model:
    """One deformable network applied ``passes`` times, each pass to the moving image warped by
    the maps of the passes before, their maps composed (a recursive cascade with shared
    weights, Zhao et al., ICCV 2019). The moving image is resampled once, with the composed map.

    Parameters
    ----------
    deformable : keras.Model
        A :func:`voxelmorph` network without ``bidir``.
    passes : int
        Number of passes, at least 2.
    name : str
        Model name.

    Returns
    -------
    keras.Model
        Inputs ``{"moving", "static"}``. Outputs ``"deformation"``, the composed displacement
        ``u(x) = u_k(x) + u_(k-1)(x + u_k(x))``, ... of the passes' displacements, in voxels;
        ``"moved"``, the moving image warped with it; ``"fields"``, the passes' velocities (or
        displacements without integration) stacked on the channel axis, ``(B, *spatial,
        ndim * passes)``, whose smoothness is trained.
    """
    if passes < 2 or "moved_static" in deformable.output:
        raise ValueError("a cascade takes at least 2 passes of a network without bidir")
    shape = input_shape(deformable)
    inputs = {"moving": keras.Input((*shape, 1), name="moving"),
              "static": keras.Input((*shape, 1), name="static")}
    moved, deformation, fields = inputs["moving"], None, []
    for number in range(passes):
        step = deformable({"moving": moved, "static": inputs["static"]})
        fields.append(step.get("velocity", step["deformation"]))
        if deformation is None:
            deformation = step["deformation"]
        else:  # this pass's map first, then the earlier passes' map at the points it reaches
            carried = layers.SpatialTransformer(name=f"carried_{number}", dtype=F32)(
                [deformation, step["deformation"]])
            deformation = keras.layers.Add(name=f"composed_{number}", dtype=F32)(
                [step["deformation"], carried])
        last = number + 1 == passes
        moved = layers.SpatialTransformer(name="moved" if last else f"moved_{number}",
                                          dtype=F32)([inputs["moving"], deformation])
    stacked = keras.layers.Concatenate(name="fields", dtype=F32)(fields)
    return keras.Model(inputs, {"moved": moved, "deformation": deformation, "fields": stacked},
                       name=name)


def build_model(input_shape: tuple[int, ...], model: str = "vm2", loss: str = "ncc",
                lamda: float | None = None, lr: float = 1e-3, ncc_window: int = 9,
                int_steps: int = 0, int_downsize: int = 1, bidir: bool = False,
                seg_weight: float = 0.0, num_labels: int = 0,
                transform: str = "deformable", unet: str = "paper",
                synth: bool = False, hyper: bool = False) -> objective.TrainingModel:
    """A registration network that trains on Eq. (2): similarity + lambda * smoothness, with Adam.

    Parameters
    ----------
    input_shape : tuple of int
        Spatial shape, each size divisible by ``DIVISOR``.
    model : {"vm1", "vm2"}
        VoxelMorph-1 or VoxelMorph-2 decoder.
    loss : {"ncc", "mse", "mi"}
        Image similarity (:func:`image_similarity`): local NCC over ``ncc_window``-wide
        windows (Eq. 5), MSE (Eq. 4), or mutual information.
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
        the moving image and the static one's (TMI 2019, Sec. IV-C2); both label maps are then
        inputs of the model (``objective.with_label_maps``); needs ``num_labels``.
    num_labels : int
        Number of labels of the one-hot maps (with ``seg_weight``).
    transform : {"deformable", "affine", "rigid", "joint", "cascade"}
        The VoxelMorph network; an :func:`affine_network` (trained on the similarity alone: an
        affine field needs no smoothness term); or both, :func:`joint_network`, trained end to
        end on the similarity of its affine stage's moved image, that of the final moved image
        and the smoothness of the deformable stage's field (not of the affine part); or
        :func:`cascade_network`, trained on the similarity of its final moved image and the
        smoothness of every pass's field.
    unet : {"paper", "official"}
        The deformable network's U-Net layout (see :func:`voxelmorph`).
    synth : bool
        Train from label maps alone (``synthesis.py``): the loss is the soft Dice of the warped
        moving label map and the static one (``num_labels`` one-hot maps, both inputs) plus
        the smoothness term, with no image term; ``loss`` is not used.
    hyper : bool
        HyperMorph (``hyper.py``): the network's weights are given by a hypernetwork of each
        sample's smoothness weight, the input ``"lamda"``, which also weighs the terms
        (``objective.hyper_terms``); ``lamda`` must be None.

    Returns
    -------
    objective.TrainingModel
        Compiled with Adam, ready for ``fit`` on batches of inputs (see ``dataloader.batch``);
        :func:`registration_model` gives the network that registers a pair.
    """
    if (seg_weight or synth) and not num_labels:
        raise ValueError("seg_weight and synth need num_labels > 0")
    if transform != "deformable" and bidir:
        raise ValueError(f"the {transform} transform does not take bidir")
    if transform not in ("deformable", "cascade") and seg_weight:
        raise ValueError(f"the {transform} transform does not take seg_weight")
    if transform in ("affine", "rigid") and int_steps:
        raise ValueError(f"the {transform} transform is not integrated: int_steps must be 0")
    if hyper and (transform != "deformable" or lamda is not None):
        raise ValueError("a hypermodel is deformable, and its smoothness weight is an input")
    if transform in ("affine", "rigid"):
        network = affine_network(input_shape, transform == "rigid")
    else:
        network = {"vm1": VoxelMorph1, "vm2": VoxelMorph2}[model](
            input_shape, int_steps=int_steps, int_downsize=int_downsize, bidir=bidir, unet=unet,
            hyper=hyper)
    if transform == "joint":
        network = joint_network(affine_network(input_shape), network)
    if transform == "cascade":
        network = cascade_network(network)
    inputs, outputs = (objective.with_label_maps(network, num_labels) if seg_weight or synth
                       else (network.input, network.output))
    terms = objective.loss_terms(loss, lamda, ncc_window, bidir, seg_weight, transform,
                                 int_steps, synth)
    if hyper:
        terms = objective.hyper_terms(terms, loss)
    trainable = objective.TrainingModel(inputs, outputs, network.name, terms=terms)
    trainable.compile(optimizer=keras.optimizers.Adam(lr))
    return trainable


def registration_model(model: keras.Model) -> keras.Model:
    """The network that registers a pair: inputs ``moving`` and ``static`` (and a hypermodel's
    ``lamda``), every output but the training-only ``TRAINING_OUTPUTS``. A model without
    training-only inputs or outputs is that network already, and comes back as it is (so that
    registering pair after pair reuses its compiled predict function); else a plain
    ``keras.Model`` (no loss) that shares the model's layers and weights."""
    keys = [key for key in ("moving", "static", "lamda") if key in model.input]
    if set(model.input) == set(keys) and not set(model.output) & set(objective.TRAINING_OUTPUTS):
        return model
    return keras.Model({key: model.input[key] for key in keys},
                       {key: value for key, value in model.output.items()
                        if key not in objective.TRAINING_OUTPUTS}, name=model.name)


def input_shape(model: keras.Model) -> tuple[int, ...]:
    """Spatial input shape of a VoxelMorph model (that of its input ``moving``)."""
    inputs = model.input
    return tuple((inputs["moving"] if isinstance(inputs, dict) else model.inputs[0]).shape[1:-1])


def stages(network: keras.Model) -> list[keras.Model]:
    """The affine and deformable stages of a :func:`joint_network`, or the one network of a
    :func:`cascade_network` (none for other networks): the registration networks it holds
    (inputs ``moving`` and ``static``)."""
    return [layer for layer in network.layers
            if isinstance(layer, keras.Model) and isinstance(layer.input, dict)]


def transform(network: keras.Model) -> str:
    """The transform a registration network predicts: one of ``TRANSFORMS``."""
    held = stages(network)
    if held:
        return "joint" if len(held) > 1 else "cascade"
    fit = [layer for layer in network.layers if isinstance(layer, layers.FitAffine)]
    return ("rigid" if fit[0].rigid else "affine") if fit else "deformable"


def integration(network: keras.Model) -> tuple[int, int]:
    """``(int_steps, int_downsize)`` of a network: ``(0, 1)`` without integration (and for a
    joint network or a cascade, whose velocity is that of the network it holds, not an
    output of its own)."""
    integrate = [layer for layer in network.layers
                 if isinstance(layer, layers.IntegrateVelocity)]
    if not integrate:
        return 0, 1
    return integrate[0].steps, input_shape(network)[0] // network.output["velocity"].shape[1]


def initialise(network: keras.Model, trained: keras.Model) -> None:
    """Copy a trained model's weights into ``network`` (``main.py --init_from``).

    The whole network takes them when both predict the same transform (rigid and affine
    networks have the same weights); a joint network's affine or deformable stage takes those of
    a model of that kind.

    Raises
    ------
    ValueError
        If no part of ``network`` is of ``trained``'s kind, or its weights do not fit (other
        decoder widths).
    """
    source = registration_model(trained)
    family = {"rigid": "affine"}
    kind = family.get(transform(source), transform(source))
    match = [part for part in [network, *stages(network)]
             if family.get(transform(part), transform(part)) == kind]
    if not match:
        raise ValueError(f"a model of kind {kind!r} cannot initialise a network of kind "
                         f"{transform(network)!r}")
    match[0].set_weights(source.get_weights())
