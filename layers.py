"""The Keras layers of the networks (``models.py``): the spatial transformer, the field layers of
diffeomorphic integration, the affine stage's centroids, least-squares fit and displacement, and
HyperMorph's hypernetwork and the convolutions whose weights it gives (``hyper.py``).

Each is a thin layer around the maths of ``utils.py`` (or its own, for the affine fit), registered
as serializable, so that saved models load with ``keras.models.load_model`` once this module (or
``models``, which imports it) is imported. Every layer works in 2D and 3D.
"""
import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np
import tensorflow as tf

import utils

FIT_EPS = 1e-5  # pull of the affine least squares towards the identity (voxels^2)


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
        if tf.executing_eagerly():  # one eager call (a single pair): no graph to build
            return utils.integrate_velocity.python_function(velocity, self.steps)
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


@keras.saving.register_keras_serializable(package="voxelmorph")
class Centroids(keras.layers.Layer):
    """Feature maps -> the centroid of each map (its barycentre) and its mass.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the full-resolution grid, whose voxels the centroids are in.
    """

    def __init__(self, shape: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        self.shape = tuple(shape)

    def call(self, features):
        """``(B, *coarse, K)`` non-negative maps -> ``(B, K, ndim)`` centroids in voxels of the
        full grid, 'ij' order, and ``(B, K)`` masses (the maps' means)."""
        ndim, coarse = len(self.shape), features.shape[1:-1]
        ratio = np.array(self.shape) / np.array(coarse)
        axes = np.meshgrid(*[(np.arange(size) + 0.5) * r - 0.5 for size, r in
                             zip(coarse, ratio)], indexing="ij")
        points = tf.constant(np.stack(axes, -1).reshape(-1, ndim), tf.float32)
        maps = tf.reshape(features, [-1, points.shape[0], features.shape[-1]])
        mass = tf.reduce_mean(maps, axis=1)
        centroids = tf.einsum("bnk,nd->bkd", maps, points) / points.shape[0]
        return centroids / (mass[..., None] + 1e-6), mass

    def compute_output_shape(self, input_shape):
        return ((input_shape[0], input_shape[-1], len(self.shape)),
                (input_shape[0], input_shape[-1]))

    def get_config(self) -> dict:
        return {**super().get_config(), "shape": self.shape}


@keras.saving.register_keras_serializable(package="voxelmorph")
class FitAffine(keras.layers.Layer):
    """Matching centroids of two images -> the affine map that takes one set onto the other.

    Weighted least squares: ``y = A (x - c) + c + t`` minimising ``sum_k w_k |y(s_k) - m_k|^2
    + eps |[A - I | t]|^2`` over the static centroids ``s_k`` and moving centroids ``m_k``,
    ``w_k`` the product of their masses (normalised), ``c`` the grid's centre. The small ``eps``
    term makes the identity the answer when the maps are empty (zero weights). The rigid map
    keeps the rotation ``R = expm((L - L^T) / 2)`` of ``A = I + L`` (exactly orthonormal, det 1)
    and the translation ``t``.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the grid, whose voxels the centroids and the map are in.
    rigid : bool
        Rotation and translation only.
    """

    def __init__(self, shape: tuple[int, ...], rigid: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.shape, self.rigid = tuple(shape), rigid

    def call(self, inputs):
        """``[static centroids, static masses, moving centroids, moving masses]`` (``(B, K,
        ndim)`` in voxels and ``(B, K)``) -> ``(B, ndim, ndim + 1)`` map ``[A | b]`` from
        static voxels ``x`` to moving voxels ``A x + b``, 'ij' order."""
        static, static_mass, moving, moving_mass = inputs
        ndim = len(self.shape)
        centre = tf.constant((np.array(self.shape) - 1) / 2, tf.float32)
        weights = static_mass * moving_mass
        weights = weights / (tf.reduce_sum(weights, axis=1, keepdims=True) + 1e-12)
        points = tf.concat([static - centre, tf.ones_like(static[..., :1])], axis=-1)
        weighted = points * weights[..., None]
        identity = tf.eye(ndim + 1, ndim)  # the identity's [A | t]^T
        normal = tf.einsum("bki,bkj->bij", weighted, points) + FIT_EPS * tf.eye(ndim + 1)
        right = tf.einsum("bki,bkj->bij", weighted, moving - centre) + FIT_EPS * identity
        fitted = tf.transpose(tf.linalg.solve(normal, right), [0, 2, 1])  # (B, ndim, ndim + 1)
        matrix, shift = fitted[:, :, :ndim], fitted[:, :, ndim]
        if self.rigid:
            linear = matrix - tf.eye(ndim)
            matrix = tf.linalg.expm(0.5 * (linear - tf.transpose(linear, [0, 2, 1])))
        offset = centre + shift - tf.einsum("bij,j->bi", matrix, centre)
        return tf.concat([matrix, offset[..., None]], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], len(self.shape), len(self.shape) + 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "shape": self.shape, "rigid": self.rigid}


@keras.saving.register_keras_serializable(package="voxelmorph")
class AffineDisplacement(keras.layers.Layer):
    """Keras layer around :func:`utils.affine_displacement`: an affine map as a displacement.

    ``matrix -> M(x) - x`` on a grid of ``shape``, or, given ``[matrix, deformation]``, the
    composition ``M(x + u(x)) - x`` (the deformation first, then the affine map).

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the grid.
    """

    def __init__(self, shape: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        self.shape = tuple(shape)

    def call(self, inputs):
        """``(B, ndim, ndim + 1)`` map, or it and ``(B, *shape, ndim)`` displacement in voxels
        -> ``(B, *shape, ndim)`` displacement in voxels."""
        if isinstance(inputs, (list, tuple)):
            return utils.affine_displacement(*inputs)
        zeros = tf.zeros([tf.shape(inputs)[0], *self.shape, len(self.shape)])
        return utils.affine_displacement(inputs, zeros)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0] if isinstance(input_shape, list) else input_shape[0]
        return (batch, *self.shape, len(self.shape))

    def get_config(self) -> dict:
        return {**super().get_config(), "shape": self.shape}


@keras.saving.register_keras_serializable(package="voxelmorph")
class Hypernetwork(keras.layers.Layer):
    """HyperMorph's hypernetwork (Hoopes et al., IPMI 2021): the smoothness weight of each sample
    -> the code from which every :class:`HyperConv` makes its kernel.

    ``depth`` fully connected layers of ``units``: ReLU, and softmax for the last, so that the
    code is a convex mixture (non-negative, summing to 1) of each convolution's ``units`` kernel
    banks. The paper's layers are ReLU throughout; the softmax keeps the generated kernels
    moving no faster under Adam than an ordinary kernel (every bank gets the same sign of
    gradient: with a code summing to 1 their steps add up to one step, not ``units``).

    Parameters
    ----------
    units, depth : int
        Width and number of the fully connected layers.
    """

    def __init__(self, units: int = 32, depth: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.units, self.depth = units, depth
        self.dense = [keras.layers.Dense(units, activation="softmax" if i == depth - 1
                                         else "relu", name=f"dense_{i}") for i in range(depth)]

    def build(self, input_shape):
        for dense in self.dense:
            dense.build(input_shape)
            input_shape = (input_shape[0], self.units)

    def call(self, lamda):
        """``(B, 1)`` weights -> ``(B, units)`` codes (non-negative, each summing to 1)."""
        for dense in self.dense:
            lamda = dense(lamda)
        return lamda

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "depth": self.depth}


@keras.saving.register_keras_serializable(package="voxelmorph")
class HyperConv(keras.layers.Layer):
    """A 3x3(x3) 'same' convolution whose kernel and bias the hypernetwork gives each sample.

    ``[x, code] -> conv(x, K(code)) + b(code)``, with ``K(code) = K0 + sum_u code_u K_u`` (and
    the bias alike): a base kernel ``K0`` plus the code's mixture of ``units`` kernel banks,
    one linear map of the hypernetwork's last layer, so each sample of a batch is convolved with
    the kernel of its own smoothness weight. Every kernel (base and banks) is drawn from
    ``kernel_initializer``, the biases start at 0.

    Parameters
    ----------
    filters, strides : int
        Output channels and stride, as ``keras.layers.Conv2D``/``Conv3D``.
    kernel_initializer : str or dict
        Initializer of the base kernel and the banks (a Keras name or serialised initializer).
    """

    def __init__(self, filters: int, strides: int = 1, kernel_initializer="he_normal",
                 **kwargs):
        super().__init__(**kwargs)
        self.filters, self.strides = filters, strides
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        image, code = input_shape
        self.kernel_shape = (3,) * (len(image) - 2) + (image[-1], self.filters)
        self.base_kernel = self.add_weight(self.kernel_shape, self.kernel_initializer,
                                           name="base_kernel")
        self.base_bias = self.add_weight((self.filters,), "zeros", name="base_bias")
        self.kernel_banks = self.add_weight((code[-1], *self.kernel_shape),
                                            self.kernel_initializer, name="kernel_banks")
        self.bias_banks = self.add_weight((code[-1], self.filters), "zeros", name="bias_banks")

    def kernels(self, code):
        """``(B, units)`` codes -> ``(B, *kernel_shape)`` kernels and ``(B, filters)`` biases."""
        kernels = self.base_kernel + tf.tensordot(code, self.kernel_banks, axes=1)
        return kernels, self.base_bias + tf.matmul(code, self.bias_banks)

    def call(self, inputs):
        """``[(B, *spatial, C) features, (B, units) codes]`` -> ``(B, *spatial / strides,
        filters)``: each sample convolved with its own kernel."""
        image, code = inputs
        kernels, biases = self.kernels(tf.cast(code, self.base_kernel.dtype))
        kernels, biases = tf.cast(kernels, image.dtype), tf.cast(biases, image.dtype)

        def convolve(sample):
            x, kernel, bias = sample
            return tf.nn.convolution(x[None], kernel, self.strides, "SAME")[0] + bias
        return tf.map_fn(convolve, (image, kernels, biases), fn_output_signature=image.dtype)

    def compute_output_shape(self, input_shape):
        image = input_shape[0]
        spatial = [None if size is None else -(-size // self.strides) for size in image[1:-1]]
        return (image[0], *spatial, self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="voxelmorph")
class FixedLambda(keras.layers.Layer):
    """A hypermodel's smoothness weight fixed at ``value``: image ``(B, ...)`` -> ``(B, 1)``.

    Parameters
    ----------
    value : float
        The weight, in the trained range.
    """

    def __init__(self, value: float, **kwargs):
        super().__init__(**kwargs)
        self.value = float(value)

    def call(self, image):
        return tf.fill([tf.shape(image)[0], 1], tf.constant(self.value, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "value": self.value}
