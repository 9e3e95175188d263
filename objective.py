"""The training objective: Eq. (2) as loss terms, and the model that computes them.

- :class:`Term`: one term, ``weight * loss(*tensors)``, the tensors named among a model's inputs
  and outputs; :func:`loss_terms` gives those of Eq. (2) for the training flags (the one place
  that says which output carries which term), :func:`image_similarity` the image loss by name.
- :class:`TrainingModel`: a functional ``keras.Model`` whose ``compute_loss`` adds up its terms
  from its own inputs and outputs (no targets), logging each; ``models.build_model`` builds one.
- :func:`with_label_maps`: a network's inputs and outputs with the training-only label maps
  (``TRAINING_INPUTS``, ``TRAINING_OUTPUTS``) that the segmentation and SynthMorph terms compare.
- :func:`from_compiled`: a model saved before these existed (losses compiled per output), as a
  ``TrainingModel``.
"""
from typing import NamedTuple

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import tensorflow as tf

import layers  # also registers the networks' layers: a saved model loads from here alone
import metrics  # also registers the losses, so that saved models load with their terms

DEFAULT_LAMBDA = {"ncc": 1.0, "mse": 0.01, "mi": 3.0, "mind": 0.05}  # smoothness weights: the
# papers' for NCC and MSE; for MI the best Dice of 0.1, 1, 3, 10 on the 2D default data
# (docs/usage.md); for MIND-SSD a first choice, tried in refining 3 validation pairs of the real
# brains (brain-model.md)
LOSSES = tuple(DEFAULT_LAMBDA)
SYNTH_LAMBDA = 1.0  # smoothness weight beside the soft Dice of label maps (SynthMorph's)
TRAINING_INPUTS = ("moving_seg", "static_seg")  # label maps, inputs of the segmentation loss only
TRAINING_OUTPUTS = ("moved_seg",)
HYPER_MSE_SCALE = 1 / 0.05**2  # a hypermodel's MSE divided by the noise variance of HyperMorph's
# code (sigma 0.05), so that the papers' MSE weight 0.01 falls inside [0, 1] (at 0.8)

class Term(NamedTuple):
    """One term of a training loss: ``weight * loss(*tensors)``, logged as ``<name>_loss``.

    ``args`` names the tensors the loss takes, each an input or an output of the model (e.g.
    ``("static", "moved")`` for an image similarity, ``("velocity",)`` for the smoothness of a
    field, ``("static_seg", "moved_seg")`` for a loss on label maps); the loss is one of
    ``metrics.py``'s, whose ``call`` gives one value per sample. ``scale``, if any, names a
    ``(B, 1)`` input or output that weighs each sample's value besides ``weight``, or, written
    ``"1-NAME"``, one minus it: HyperMorph's ``lamda`` and ``1 - lamda`` (:func:`hyper_terms`).
    """
    name: str
    loss: object
    weight: float
    args: tuple[str, ...]
    scale: str | None = None


@keras.saving.register_keras_serializable(package="voxelmorph")
class TrainingModel(keras.Model):
    """A registration network that computes its own training loss from its inputs and outputs.

    A functional ``keras.Model`` (``fit``, ``evaluate``, ``predict``, ``save`` and
    ``keras.models.load_model`` work as usual) whose :meth:`compute_loss` is the weighted sum of
    its ``terms`` (Eq. 2: similarity + lambda * smoothness, and any other :class:`Term`), each
    computed from tensors the model takes or gives: batches hold inputs only, no targets. Every
    term has a ``keras.metrics.Mean`` of its unweighted value, logged as ``<name>_loss`` (and
    ``val_<name>_loss``) beside the total ``loss``; the terms are saved in the model's config.

    Parameters
    ----------
    inputs, outputs : dict
        As for a functional ``keras.Model``: named tensors.
    name : str, optional
        Model name.
    terms : sequence of Term
        The loss terms (keyword only); every name in their ``args`` must be an input or output.
    """

    def __init__(self, inputs, outputs, name=None, *, terms, **kwargs):
        super().__init__(inputs, outputs, name=name, **kwargs)
        known = {*self.input, *self.output}
        terms = [Term(*term) for term in terms]
        for term in terms:
            scale = [term.scale.removeprefix("1-")] if term.scale else []
            missing = {*term.args, *scale} - known
            if missing:
                raise ValueError(f"loss term {term.name!r} takes {term.args}, but the model "
                                 f"has no {sorted(missing)}")
        # sorted by name: the order (and the sum's rounding) of Keras' compiled losses
        self.terms = sorted(terms, key=lambda term: term.name)
        self.trackers = [keras.metrics.Mean(name=f"{term.name}_loss") for term in self.terms]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The total loss of a batch: ``sum_t weight_t * mean over the batch of loss_t``.

        ``x`` (the inputs) and ``y_pred`` (the outputs) are looked up by name; a batch has no
        targets ``y`` (refused: they would be ignored) and ``sample_weight`` is not used. Each
        term's tracker takes its unweighted batch mean; under a distribution strategy, each
        replica's share of the total is divided by the number of replicas (their gradients are
        summed), as Keras does for compiled losses.
        """
        if y is not None:
            raise ValueError("this model computes its loss from its own inputs and outputs: "
                             "give batches of inputs only, without targets")
        tensors = {**x, **y_pred}
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        weighted = []
        for term, tracker in zip(self.terms, self.trackers):
            values = term.loss.call(*(tf.cast(tensors[arg], "float32") for arg in term.args))
            value = tf.reduce_mean(values)
            tracker.update_state(value, sample_weight=tf.shape(values)[0])
            if term.scale is not None:
                value = tf.reduce_mean(values * sample_scale(tensors, term.scale))
            weighted.append(term.weight * value / replicas)
        return sum(weighted)

    def get_config(self) -> dict:
        terms = [{**term._asdict(), "loss": keras.saving.serialize_keras_object(term.loss)}
                 for term in self.terms]
        return {**super().get_config(), "terms": terms}

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "TrainingModel":
        config = dict(config)
        terms = [Term(term["name"], keras.saving.deserialize_keras_object(term["loss"]),
                      term["weight"], tuple(term["args"]), term.get("scale"))
                 for term in config.pop("terms")]
        network = keras.Model.from_config(config, custom_objects)
        return cls(network.input, network.output, network.name, terms=terms)


def sample_scale(tensors: dict, scale: str):
    """The ``(B,)`` weights of a term's ``scale`` (see :class:`Term`) among ``tensors``."""
    values = tf.reshape(tf.cast(tensors[scale.removeprefix("1-")], "float32"), [-1])
    return 1 - values if scale.startswith("1-") else values


def hyper_terms(terms: list[Term], loss: str = "ncc") -> list[Term]:
    """The terms of a HyperMorph model (Hoopes et al., IPMI 2021): ``(1 - lamda) * similarity
    + lamda * smoothness``, ``lamda`` each sample's input.

    Every smoothness term of ``terms`` takes the scale ``lamda`` and weight 1; every other term
    (similarities, soft Dice) keeps its weight, times ``1 - lamda``, so that the hypermodel at
    ``lamda`` minimises what an ordinary model of smoothness weight ``lamda / (1 - lamda)``
    minimises. An MSE image similarity (``loss``) is also divided by the noise variance of
    HyperMorph's code (``HYPER_MSE_SCALE``); a soft Dice is not.
    """
    scale = HYPER_MSE_SCALE if loss == "mse" else 1.0
    return [term._replace(weight=1.0, scale="lamda") if isinstance(term.loss, metrics.Grad)
            else term._replace(scale="1-lamda", weight=term.weight * (
                1.0 if isinstance(term.loss, metrics.SoftDice) else scale))
            for term in terms]


def smoothed_field(transform: str, int_steps: int) -> str:
    """The output whose smoothness is trained: the velocity when integrating, else the
    displacement (for a joint model, that of its deformable stage, ``residual``; for a cascade,
    the ``fields`` of all its passes)."""
    if transform == "cascade":
        return "fields"
    if int_steps:
        return "velocity"
    return "residual" if transform == "joint" else "deformation"


def image_similarity(loss: str, ncc_window: int = 9):
    """The image loss named ``loss``: local NCC over ``ncc_window``-wide windows (Eq. 5), MSE
    (Eq. 4), mutual information (``metrics.MutualInformation``) or the squared difference of
    MIND descriptors (``metrics.MINDSSD``), the last two across contrasts."""
    if loss == "ncc":
        return metrics.local_normalized_cross_correlation_loss(ncc_window)
    return {"mse": metrics.mse_loss, "mi": metrics.MutualInformation,
            "mind": metrics.MINDSSD}[loss]()


def loss_terms(loss: str = "ncc", lamda: float | None = None, ncc_window: int = 9,
               bidir: bool = False, seg_weight: float = 0.0, transform: str = "deformable",
               int_steps: int = 0, synth: bool = False) -> list[Term]:
    """The terms of Eq. (2) for a model of these options (see :func:`build_model`); with
    ``synth``, the soft Dice of the label maps in place of the image similarity."""
    if synth:
        dice = Term("moved_seg", metrics.SoftDice(), 1.0, ("static_seg", "moved_seg"))
        if transform in ("affine", "rigid"):  # an affine map needs no smoothness term
            return [dice]
        field = smoothed_field(transform, int_steps)
        return [dice, Term(field, metrics.gradient_loss(),
                           SYNTH_LAMBDA if lamda is None else lamda, (field,))]
    similarity = image_similarity(loss, ncc_window)
    terms = [Term("moved", similarity, 0.5 if bidir else 1.0, ("static", "moved"))]
    if transform in ("deformable", "joint", "cascade"):
        field = smoothed_field(transform, int_steps)
        terms.append(Term(field, metrics.gradient_loss(),
                          DEFAULT_LAMBDA[loss] if lamda is None else lamda, (field,)))
    if transform == "joint":
        terms.append(Term("moved_affine", similarity, 1.0, ("static", "moved_affine")))
    if bidir:
        terms.append(Term("moved_static", similarity, 0.5, ("moving", "moved_static")))
    if seg_weight:
        terms.append(Term("moved_seg", metrics.SoftDice(), seg_weight,
                          ("static_seg", "moved_seg")))
    return terms


def with_label_maps(network: keras.Model, num_labels: int) -> tuple[dict, dict]:
    """The inputs and outputs of ``network`` with the training-only label maps added: inputs
    ``moving_seg`` and ``static_seg`` ``(B, *spatial, num_labels)`` one-hot, and output
    ``moved_seg``, the moving one warped with the displacement (linear interpolation)."""
    inputs, outputs = dict(network.input), dict(network.output)
    spatial = tuple(network.input["moving"].shape[1:-1])
    for key in TRAINING_INPUTS:
        inputs[key] = keras.Input((*spatial, num_labels), name=key)
    outputs["moved_seg"] = layers.SpatialTransformer(name="moved_seg", dtype="float32")(
        [inputs["moving_seg"], outputs["deformation"]])
    return inputs, outputs


def from_compiled(network: keras.Model, compile_config: dict) -> TrainingModel:
    """A model saved before :class:`TrainingModel` existed, as one: the same network and terms.

    Such a model is a functional ``keras.Model`` compiled with one loss per output, trained on
    made-up targets; a segmentation-aided one has the input ``moving_seg`` (its static label
    map was a target) and gains the input ``static_seg``. The loss of each output becomes a
    :class:`Term` with its weight; Adam starts anew at the saved learning rate (its moments are
    not kept).

    Parameters
    ----------
    network : keras.Model
        The saved model, loaded without compiling.
    compile_config : dict
        Its saved ``compile_config``: ``loss`` and ``loss_weights`` by output, ``optimizer``.
    """
    inputs, outputs = dict(network.input), dict(network.output)
    if "moving_seg" in inputs:
        inputs["static_seg"] = keras.Input(inputs["moving_seg"].shape[1:], name="static_seg")
    kinds = {"LocalNCC": metrics.LocalNCC, "GlobalNCC": metrics.GlobalNCC, "MSE": metrics.MSE,
             "Grad": metrics.Grad, "SoftDice": metrics.SoftDice}
    compared = {"moved": "static", "moved_affine": "static", "moved_static": "moving",
                "moved_seg": "static_seg"}
    terms = []
    for name, loss in compile_config["loss"].items():
        if not isinstance(loss, dict) or loss.get("class_name") not in kinds:
            raise ValueError(f"its loss of {name!r} ({loss}) is not one of this project's: "
                             f"train the model again with main.py")
        options = {key: loss["config"][key] for key in ("window", "eps", "norm")
                   if key in loss["config"]}
        args = (compared[name], name) if name in compared else (name,)
        terms.append(Term(name, kinds[loss["class_name"]](**options),
                          compile_config["loss_weights"][name], args))
    model = TrainingModel(inputs, outputs, network.name, terms=terms)
    rate = compile_config["optimizer"]["config"]["learning_rate"]
    model.compile(optimizer=keras.optimizers.Adam(rate if isinstance(rate, float) else 1e-3))
    return model
