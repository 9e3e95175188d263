"""A trained network built anew for another spatial shape (or a hypermodel at a fixed weight).

``registration.network_for`` rebuilds a model for the padded shape of a set of pairs,
``tuning.py`` a copy for the pair it tunes on, and ``hyper.at_lambda`` a hypermodel at one
smoothness weight; the kind, integration and stages it reads are ``models.py``'s readers.
"""
import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras

import layers
import models


def rebuild(network: keras.Model, shape: tuple[int, ...], lamda: float | None = None
            ) -> keras.Model:
    """``network`` built anew for another spatial input ``shape``, with copies of its weights.

    Every network is fully convolutional, so a network trained on one shape registers any
    other: its kind, U-Net layout, decoder widths, integration, symmetric outputs and
    hypernetwork are read from its layers, the same builder builds it for ``shape``, and the
    weights (in the same order) are copied.

    Parameters
    ----------
    network : keras.Model
        A registration network (inputs ``moving`` and ``static``; see
        ``models.registration_model``).
    shape : tuple of int
        Spatial shape, each size divisible by ``models.DIVISOR`` (and by ``int_downsize``).
    lamda : float, optional
        A hypernetwork's smoothness weight, fixed (:class:`layers.FixedLambda`): the network
        then takes ``moving`` and ``static`` alone. By default, the network's own (an input, or
        the value it has fixed).
    """
    kind = models.transform(network)
    if kind == "joint":
        return models.joint_network(*(rebuild(stage, shape) for stage in models.stages(network)),
                                    name=network.name)
    if kind == "cascade":
        return models.cascade_network(rebuild(models.stages(network)[0], shape),
                                      network.output["fields"].shape[-1] // len(shape),
                                      network.name)
    if kind != "deformable":
        rebuilt = models.affine_network(shape, kind == "rigid", network.name)
    else:
        convs = [layer for layer in network.layers
                 if type(layer).__name__ in ("Conv2D", "Conv3D", "HyperConv")]
        int_steps, int_downsize = models.integration(network)
        pooled = any(type(layer).__name__.startswith("MaxPooling") for layer in network.layers)
        fixed = [layer.value for layer in network.layers if isinstance(layer, layers.FixedLambda)]
        decoder = tuple(layer.filters for layer in convs[len(models.ENCODER):-1])
        rebuilt = models.voxelmorph(shape, decoder, network.name, int_steps, int_downsize,
                                    "moved_static" in network.output,
                                    unet="official" if pooled else "paper",
                                    hyper=isinstance(convs[0], layers.HyperConv),
                                    lamda=lamda if lamda is not None or not fixed else fixed[0])
    rebuilt.set_weights(network.get_weights())
    return rebuilt
