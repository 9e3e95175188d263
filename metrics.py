"""Training losses (CVPR 2018, Eq. 1-6); the evaluation scores are ``scores.py``'s.

The image and label losses are small ``keras.losses.Loss`` classes (``loss(y_true, y_pred)``);
the smoothness term :class:`Grad` is a regulariser of one field (``loss(field)``). Each is
registered, so that a model that names them in its loss terms (``objective.TrainingModel``) saves
and loads, and each ``call`` returns one value per sample, ``(B,)``. The factories with the
original script's names return configured instances:

- :func:`local_normalized_cross_correlation_loss`: local NCC, Eq. (5);
- :func:`global_normalized_cross_correlation_loss`: NCC over the whole image;
- :func:`mse_loss`: mean squared error, Eq. (4);
- :class:`MutualInformation`: mutual information, across contrasts;
- :class:`MINDSSD`: the squared difference of MIND descriptors, a local similarity across
  contrasts;
- :func:`gradient_loss`: smoothness of the displacement, Eq. (3) and (6), weighted by lambda;
- :class:`SquaredNorm`: the centring term of a learned template.
"""
import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import tensorflow as tf


def _box_sum(x: tf.Tensor, window: int) -> tf.Tensor:
    """Sum over a ``window``-wide cube around each voxel (zero padding), one axis at a time.

    Parameters
    ----------
    x : tf.Tensor
        ``(B, *spatial, 1)``, 2D or 3D.
    window : int
        Window width in voxels per axis.

    Returns
    -------
    tf.Tensor
        ``(B, *spatial, 1)``.
    """
    ndim = len(x.shape) - 2
    conv = {2: tf.nn.conv2d, 3: tf.nn.conv3d}[ndim]  # tf.nn.convolution's eager 3D gradient fails
    for axis in range(ndim):
        kernel_shape = [1] * ndim
        kernel_shape[axis] = window
        x = conv(x, tf.ones(kernel_shape + [1, 1], x.dtype), [1] * (ndim + 2), "SAME")
    return x


def _spatial_mean(x: tf.Tensor) -> tf.Tensor:
    """Mean over all axes but the batch axis: ``(B, ...) -> (B,)``."""
    return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=-1)


@keras.saving.register_keras_serializable(package="voxelmorph")
class LocalNCC(keras.losses.Loss):
    """Negative squared local normalised cross-correlation, CVPR 2018 Eq. (5).

    For every voxel, the squared correlation of the two images over a ``window``-wide neighbourhood,
    averaged over voxels and negated: -1 for images that agree up to local affine intensity
    changes. Local variances are clamped to ``eps``, so flat regions (an all-zero background)
    give a finite loss and finite gradients.

    Parameters
    ----------
    window : int
        Neighbourhood width in voxels per axis (the paper: 9).
    eps : float
        Lower bound on local (co)variances, in intensity^2 times window volume.
    """

    def __init__(self, window: int = 9, eps: float = 1e-5, name: str = "local_ncc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.window = window
        self.eps = eps

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, C)`` static and moved images -> ``(B,)`` loss in [-1, 0]."""
        ndim = len(y_pred.shape) - 2
        channels_first = [ndim + 1, 0] + list(range(1, ndim + 1))
        stats = tf.concat([y_true, y_pred, y_true * y_true, y_pred * y_pred, y_true * y_pred], -1)
        stats = tf.transpose(stats, channels_first)  # (5C, B, *spatial)
        sums = _box_sum(tf.reshape(stats, tf.concat([[-1], tf.shape(stats)[2:], [1]], 0)),
                        self.window)
        sum_i, sum_j, sum_ii, sum_jj, sum_ij = tf.split(
            tf.reshape(sums, tf.shape(stats)), 5, axis=0)
        count = float(self.window**ndim)
        cross = sum_ij - sum_i * sum_j / count
        var_i = tf.maximum(sum_ii - sum_i * sum_i / count, self.eps)
        var_j = tf.maximum(sum_jj - sum_j * sum_j / count, self.eps)
        cc = cross * cross / (var_i * var_j)
        return -_spatial_mean(tf.transpose(cc, [1, 0] + list(range(2, ndim + 2))))

    def get_config(self) -> dict:
        return {**super().get_config(), "window": self.window, "eps": self.eps}


@keras.saving.register_keras_serializable(package="voxelmorph")
class GlobalNCC(keras.losses.Loss):
    """Negative normalised cross-correlation of the whole images (one correlation per sample).

    Parameters
    ----------
    eps : float
        Lower bound on the variances (intensity^2), so flat images stay finite.
    """

    def __init__(self, eps: float = 1e-5, name: str = "global_ncc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.eps = eps

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, C)`` static and moved images -> ``(B,)`` loss in [-1, 1]."""
        centred_i = y_true - _spatial_mean(y_true)[(...,) + (None,) * (len(y_true.shape) - 1)]
        centred_j = y_pred - _spatial_mean(y_pred)[(...,) + (None,) * (len(y_pred.shape) - 1)]
        cross = _spatial_mean(centred_i * centred_j)
        var_i = _spatial_mean(centred_i * centred_i)
        var_j = _spatial_mean(centred_j * centred_j)
        return -cross / tf.sqrt(tf.maximum(var_i, self.eps) * tf.maximum(var_j, self.eps))

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package="voxelmorph")
class MSE(keras.losses.Loss):
    """Mean squared intensity difference, CVPR 2018 Eq. (4)."""

    def __init__(self, name: str = "mse", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, C)`` static and moved images -> ``(B,)`` loss."""
        return _spatial_mean(tf.square(y_true - y_pred))


@keras.saving.register_keras_serializable(package="voxelmorph")
class Grad:
    """Smoothness of a field: mean squared (or absolute) forward difference, CVPR 2018 Eq. (3).

    ``L = 1/ndim * sum_d mean_x |u(x + e_d) - u(x)|^p`` of one field ``u`` (a displacement or a
    velocity): a regulariser, so it takes the field alone, with no target.

    Parameters
    ----------
    norm : {1, 2}
        ``p``: 2 penalises squared differences (the paper), 1 absolute differences.
    """

    def __init__(self, norm: int = 2):
        if norm not in (1, 2):
            raise ValueError(f"norm must be 1 or 2, got {norm!r}")
        self.norm = norm

    def __call__(self, field: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, ndim)`` field -> the loss, averaged over the batch."""
        return tf.reduce_mean(self.call(field))

    def call(self, field: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, ndim)`` field in voxels -> ``(B,)`` loss in voxels^p."""
        field = tf.cast(field, tf.float32)
        ndim = len(field.shape) - 2
        penalties = []
        for axis in range(1, ndim + 1):
            size = tf.shape(field)[axis]
            diff = (tf.gather(field, tf.range(1, size), axis=axis)
                    - tf.gather(field, tf.range(0, size - 1), axis=axis))
            penalties.append(_spatial_mean(tf.square(diff) if self.norm == 2 else tf.abs(diff)))
        return tf.add_n(penalties) / ndim

    def get_config(self) -> dict:
        return {"norm": self.norm}

    @classmethod
    def from_config(cls, config: dict) -> "Grad":
        return cls(**config)


@keras.saving.register_keras_serializable(package="voxelmorph")
class SquaredNorm:
    """Mean squared length of a field's vectors, ``L = mean_x |m(x)|^2``: the centring term of a
    learned template (``template.py``), ``m`` the running mean of the displacements from the
    template to the scans, which it drives to zero. A regulariser of one field, as :class:`Grad`.
    """

    def call(self, field: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, ndim)`` field in voxels -> ``(B,)`` loss in voxels^2."""
        field = tf.cast(field, tf.float32)
        return _spatial_mean(tf.reduce_sum(tf.square(field), axis=-1, keepdims=True))

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> "SquaredNorm":
        return cls(**config)


@keras.saving.register_keras_serializable(package="voxelmorph")
class SoftDice(keras.losses.Loss):
    """Soft Dice loss of one-hot label maps (TMI 2019, Eq. 8): ``1 - mean_k Dice_k``.

    ``Dice_k = 2 sum_x a_k b_k / (sum_x a_k + sum_x b_k)``, over the labels ``k`` present in
    either map (empty in both: left out); 0 for identical maps, 1 for disjoint ones.
    """

    def __init__(self, eps: float = 1e-5, name: str = "soft_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.eps = eps

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, K)`` one-hot (or soft) maps -> ``(B,)`` loss in [0, 1]."""
        axes = list(range(1, len(y_pred.shape) - 1))
        y_true = tf.cast(y_true, y_pred.dtype)
        overlap = 2.0 * tf.reduce_sum(y_true * y_pred, axes)
        total = tf.reduce_sum(y_true, axes) + tf.reduce_sum(y_pred, axes)
        present = tf.cast(total > self.eps, y_pred.dtype)
        dice = overlap / tf.maximum(total, self.eps)
        return 1.0 - tf.reduce_sum(dice * present, -1) / tf.maximum(tf.reduce_sum(present, -1),
                                                                     1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package="voxelmorph")
class MutualInformation(keras.losses.Loss):
    """Negative mutual information of two images' intensities, from a Parzen-window joint
    histogram: a similarity for images of different contrasts (Viola and Wells 1997; Mattes
    et al. 2003, as ANTs' ``MI`` metric).

    Intensities in [0, 1] (as the loaders scale them) fall into ``bins`` bins with centres
    ``c_b = b / (bins - 1)``; each voxel adds the Gaussian weights ``exp(-(x - c_b)^2 /
    (2 sigma^2))``, normalised over ``b``, to the histogram, with ``sigma = width`` bin
    spacings. The soft binning keeps the loss differentiable in the intensities. Defaults:
    32 bins, as ANTs' default (fewer lose contrast detail, more leave each bin few voxels at
    64^3), and ``sigma`` half a bin spacing, wide enough that every voxel reaches two bins (a
    gradient everywhere) and narrow enough that the estimate stays close to the hard histogram's.

    Parameters
    ----------
    bins : int
        Histogram bins per image.
    width : float
        Gaussian kernel's sigma, in bin spacings.
    """

    def __init__(self, bins: int = 32, width: float = 0.5, name: str = "mutual_information",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.bins, self.width = bins, width

    def soft_bins(self, image: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, 1)`` intensities -> ``(B, N, bins)`` Parzen weights, summing to 1."""
        centres = tf.linspace(0.0, 1.0, self.bins)
        sigma = self.width / (self.bins - 1)
        values = tf.reshape(tf.clip_by_value(image, 0.0, 1.0), [tf.shape(image)[0], -1, 1])
        weights = tf.exp(-tf.square(values - centres) / (2.0 * sigma**2))
        return weights / tf.reduce_sum(weights, axis=-1, keepdims=True)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, 1)`` static and moved images in [0, 1] -> ``(B,)`` loss, -MI in nats
        (0 for independent intensities, ``-log(bins)`` at most)."""
        return self.from_bins(self.soft_bins(y_true), self.soft_bins(y_pred))

    @staticmethod
    def from_bins(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        """``(B, N, bins)`` Parzen weights of two images (:meth:`soft_bins`) -> ``(B,)`` -MI."""
        joint = tf.matmul(a, b, transpose_a=True) / tf.cast(tf.shape(a)[1], a.dtype)
        outer = (tf.reduce_sum(joint, axis=2, keepdims=True)
                 * tf.reduce_sum(joint, axis=1, keepdims=True))
        ratio = tf.math.divide_no_nan(joint, outer)
        return -tf.reduce_sum(joint * tf.math.log(ratio + 1e-12), axis=[1, 2])

    def get_config(self) -> dict:
        return {**super().get_config(), "bins": self.bins, "width": self.width}


@keras.saving.register_keras_serializable(package="voxelmorph")
class MINDSSD(keras.losses.Loss):
    """Mean squared difference of two images' MIND descriptors: a local similarity for images of
    different contrasts (Heinrich et al., *MIND: Modality independent neighbourhood descriptor
    for multi-modal deformable registration*, Medical Image Analysis 16(7), 2012).

    The descriptor of a voxel has one channel per neighbour of the six-neighbourhood (four in
    2D) at ``radius`` voxels: ``exp(-D_r(x) / V(x))``, ``D_r`` the mean squared difference
    between the patch of ``2 * patch + 1`` voxels per axis around ``x`` and the patch around
    ``x + r``, ``V`` the mean of the ``D_r`` (a local noise estimate), each voxel's channels
    divided by their largest. It describes which way the image's structure runs around each
    voxel, not its intensities, so a T1 and a T2 of one anatomy have nearly the same descriptors.

    Parameters
    ----------
    radius : int
        Distance to the neighbours, in voxels.
    patch : int
        Half-width of the patches, in voxels.
    eps : float
        Floor of ``V``, so flat regions (the background) stay finite.
    """

    def __init__(self, radius: int = 1, patch: int = 1, eps: float = 1e-4,
                 name: str = "mind_ssd", **kwargs):
        super().__init__(name=name, **kwargs)
        self.radius, self.patch, self.eps = radius, patch, eps

    def descriptors(self, image: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, 1)`` image -> ``(B, *spatial, 2 * ndim)`` MIND descriptors in (0, 1]."""
        ndim = len(image.shape) - 2
        width = 2 * self.patch + 1
        pads = [[0, 0]] + [[self.radius, self.radius]] * ndim + [[0, 0]]
        padded = tf.pad(image, pads, mode="SYMMETRIC")
        distances = []
        for axis in range(ndim):
            for shift in (-self.radius, self.radius):
                begin = [0] + [self.radius] * ndim + [0]
                begin[axis + 1] += shift
                neighbour = tf.slice(padded, begin, tf.shape(image))
                distances.append(_box_sum(tf.square(image - neighbour), width) / width**ndim)
        distances = tf.concat(distances, axis=-1)
        variance = tf.maximum(tf.reduce_mean(distances, axis=-1, keepdims=True), self.eps)
        mind = tf.exp(-distances / variance)
        return mind / tf.reduce_max(mind, axis=-1, keepdims=True)

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        """``(B, *spatial, 1)`` static and moved images -> ``(B,)`` loss, 0 for equal
        descriptors."""
        return _spatial_mean(tf.square(self.descriptors(y_true) - self.descriptors(y_pred)))

    def get_config(self) -> dict:
        return {**super().get_config(), "radius": self.radius, "patch": self.patch,
                "eps": self.eps}


def local_normalized_cross_correlation_loss(window: int = 9, eps: float = 1e-5) -> LocalNCC:
    """Local NCC loss over ``window``-wide neighbourhoods (see :class:`LocalNCC`)."""
    return LocalNCC(window=window, eps=eps)


def global_normalized_cross_correlation_loss(eps: float = 1e-5) -> GlobalNCC:
    """Whole-image NCC loss (see :class:`GlobalNCC`)."""
    return GlobalNCC(eps=eps)


def mse_loss() -> MSE:
    """Mean squared error loss (see :class:`MSE`)."""
    return MSE()


def gradient_loss(norm: int = 2) -> Grad:
    """Smoothness loss on the displacement (see :class:`Grad`)."""
    return Grad(norm=norm)
