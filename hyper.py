"""HyperMorph (Hoopes et al., IPMI 2021; MELBA 2022): one model for every smoothness weight.

A hypernetwork (``layers.Hypernetwork``) maps the smoothness weight ``lamda`` of each sample to
the weights of every convolution of the U-Net (``layers.HyperConv``; ``models.voxelmorph(...,
hyper=True)``), and the model trains on ``(1 - lamda) * similarity + lamda * smoothness``
(``objective.hyper_terms``) with ``lamda`` drawn afresh for every sample. One training run then
registers with any weight in ``RANGE``, chosen when registering.

- :func:`draw`: the paper's draws of ``lamda``; :class:`HyperLoader` adds them to the batches of
  any training or validation loader (input ``"lamda"``).
- :func:`at_lambda`: a hypermodel fixed at one weight, an ordinary ``objective.TrainingModel``
  that ``registration.py`` and ``tuning.py`` use as they use any model; :func:`for_registration`
  applies ``--lamda`` (and refuses it for an ordinary model).
- :func:`plain_lambda` and :func:`default_lambda`: how a hypermodel's weight relates to the
  ``--lamda`` of an ordinary model.
- :func:`curve` and :func:`best_lambda`: scores of a set of pairs against ``lamda``, and the
  weight of best mean Dice; :func:`choose` the best of ``CANDIDATES``.

The files and figure of ``evaluate --lamda`` are ``hyper_outputs.py``'s.
"""
import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np

import layers
import metrics
import models
import objective
import rebuilding
import registration
import scores
import volumes

RANGE = (0.0, 1.0)  # the trained weights: the paper's
ENDPOINTS = 0.4  # share of draws put at an end of RANGE (either end alike): the official code's
# oversampling of the extremes, which a uniform draw reaches too rarely
CANDIDATES = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))  # tried by --lamda best
SEED_TAG = 36  # last element of the seed of a batch's draws, apart from its images' draws


def is_hyper(model: keras.Model) -> bool:
    """Whether ``model`` is a hypermodel (its weights given by a hypernetwork)."""
    return any(isinstance(layer, layers.Hypernetwork) for layer in model.layers) or any(
        is_hyper(layer) for layer in model.layers if isinstance(layer, keras.Model))


def draw(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, 1)`` float32 weights: with probability ``ENDPOINTS`` an end of ``RANGE`` (each
    alike), else uniform in it, as the official HyperMorph code draws them."""
    low, high = RANGE
    uniform = rng.uniform(low, high, count)
    ends = rng.choice(RANGE, count)
    return np.where(rng.random(count) < ENDPOINTS, ends, uniform)[:, None].astype(np.float32)


class HyperLoader(keras.utils.PyDataset):
    """The batches of ``loader`` with each sample's smoothness weight added (input ``"lamda"``).

    The weights of batch ``i`` are drawn (:func:`draw`) from ``(seed, epoch, i)`` (from ``(seed,
    i)`` alone when not ``redraw``, for validation: the same weights every epoch), so a resumed
    run draws the same ones. ``epoch`` is the wrapped loader's, so that training sets it there.

    Parameters
    ----------
    loader : keras.utils.PyDataset
        A loader of dict batches with ``"moving"`` ``(B, *spatial, 1)``.
    seed : int
        Seed of the draws.
    redraw : bool
        New weights every epoch (training) or the same (validation).
    """

    def __init__(self, loader: keras.utils.PyDataset, seed: int, redraw: bool = True):
        super().__init__(workers=loader.workers, use_multiprocessing=loader.use_multiprocessing,
                         max_queue_size=loader.max_queue_size)
        self.loader, self.seed, self.redraw = loader, seed, redraw

    @property
    def epoch(self) -> int:
        return getattr(self.loader, "epoch", 0)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.loader.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        batch = self.loader[index]
        seed = (self.seed, self.epoch, index, SEED_TAG) if self.redraw else (self.seed, index,
                                                                             SEED_TAG)
        return {**batch, "lamda": draw(np.random.default_rng(seed), len(batch["moving"]))}

    def on_epoch_end(self) -> None:
        self.loader.on_epoch_end()


def check_lambda(model: keras.Model, lamda: float | str) -> None:
    """Refuse, in one line (``volumes.UsageError``), a weight (or ``"best"``) for an ordinary
    model, or a weight outside ``RANGE``."""
    if not is_hyper(model):
        shown = lamda if isinstance(lamda, str) else f"{lamda:g}"
        raise volumes.UsageError(f"--lamda {shown}: this model is not a hypermodel; its "
                                 f"smoothness weight was fixed when it was trained (main.py "
                                 f"--hyper trains one for every weight)")
    if not isinstance(lamda, str) and not RANGE[0] <= lamda <= RANGE[1]:
        raise volumes.UsageError(f"--lamda {lamda:g} is outside the range the hypermodel was "
                                 f"trained on, [{RANGE[0]:g}, {RANGE[1]:g}]")


def at_lambda(model: objective.TrainingModel, lamda: float) -> objective.TrainingModel:
    """A hypermodel fixed at the smoothness weight ``lamda``: an ordinary model.

    Its network takes ``moving`` and ``static`` alone (``lamda`` fixed inside it,
    ``layers.FixedLambda``), with the hypermodel's weights, and its terms are the hypermodel's
    with their scales applied (``weight * lamda`` or ``weight * (1 - lamda)``), those on
    training-only label maps left out; so registering, fine-tuning and refining treat it as any
    trained model.

    Raises
    ------
    volumes.UsageError
        If ``model`` is not a hypermodel, or ``lamda`` is outside ``RANGE``.
    """
    check_lambda(model, lamda)
    network = models.registration_model(model)
    fixed = rebuilding.rebuild(network, models.input_shape(network), lamda)
    known = {*fixed.input, *fixed.output}
    terms = [term._replace(scale=None, weight=term.weight * (
                 1.0 - lamda if term.scale.startswith("1-") else lamda))
             for term in model.terms if set(term.args) <= known]
    return objective.TrainingModel(fixed.input, fixed.output, fixed.name, terms=terms)


def for_registration(model: keras.Model, lamda: float | None) -> keras.Model:
    """The model that registers with ``--lamda``: a hypermodel at ``lamda`` (default:
    :func:`default_lambda`), an ordinary model as it is (which refuses a ``lamda``)."""
    if lamda is None and not is_hyper(model):
        return model
    return at_lambda(model, default_lambda(model) if lamda is None else lamda)


def _similarity(model: objective.TrainingModel) -> tuple[float, float]:
    """The ordinary default smoothness weight of a hypermodel's loss (``--lamda`` of ``main.py``
    without ``--hyper``) and the factor its similarity is weighed with (``HYPER_MSE_SCALE`` for
    MSE, else 1)."""
    loss = next(term.loss for term in model.terms if term.name == "moved")
    if isinstance(loss, metrics.SoftDice):
        return objective.SYNTH_LAMBDA, 1.0
    if isinstance(loss, metrics.MSE):
        return objective.DEFAULT_LAMBDA["mse"], objective.HYPER_MSE_SCALE
    return objective.DEFAULT_LAMBDA["mi" if isinstance(loss, metrics.MutualInformation)
                                    else "ncc"], 1.0


def plain_lambda(lamda: float, scale: float = 1.0) -> float:
    """The ``--lamda`` of an ordinary model that minimises what a hypermodel at ``lamda`` does:
    ``lamda / ((1 - lamda) * scale)``, ``scale`` the factor of the similarity (for NCC 1: 0.5
    is the papers' 1.0)."""
    return lamda / ((1.0 - lamda) * scale)


def default_lambda(model: objective.TrainingModel) -> float:
    """The weight of a hypermodel equivalent to an ordinary model's default ``--lamda``: 0.5
    for NCC (1.0), 0.8 for MSE (0.01), 0.75 for MI (3.0)."""
    plain, scale = _similarity(model)
    return round(plain * scale / (1.0 + plain * scale), 6)


def curve(model: objective.TrainingModel, pairs, values, labels=None, spacing=None
          ) -> list[dict]:
    """Scores of ``pairs`` registered by the hypermodel at each weight of ``values``.

    Returns
    -------
    list of dict
        Per weight: ``lamda`` and ``scores.summarize`` of its pairs (``registration.
        evaluate_pairs``).
    """
    rows = []
    for lamda in values:
        results, _ = registration.evaluate_pairs(at_lambda(model, lamda), pairs, labels,
                                                 spacing=spacing)
        rows.append({"lamda": float(lamda), **scores.summarize(results)})
    return rows


def best_lambda(rows: list[dict]) -> float:
    """The weight of best mean Dice among the rows of :func:`curve` (the smallest of ties)."""
    if not rows or "dice_after" not in rows[0]:
        raise volumes.DataError("--lamda best needs validation pairs with label maps, to "
                                "score each weight's Dice")
    return max(rows, key=lambda row: (row["dice_after"]["mean"], -row["lamda"]))["lamda"]


def choose(model: objective.TrainingModel, pairs, val_set) -> tuple[float, str]:
    """The weight of best mean Dice over ``CANDIDATES`` on validation ``pairs`` (of the set
    ``val_set``, for its labels and spacing), and a line that says it beside the default's."""
    rows = curve(model, pairs, CANDIDATES, val_set.labels, val_set.spacing)
    best, default = best_lambda(rows), default_lambda(model)
    dice = {row["lamda"]: row["dice_after"]["mean"] for row in rows}
    than = f" (the default {default:g}: {dice[default]:.3f})" if default in dice else ""
    return best, (f"--lamda best: {best:g}, mean Dice {dice[best]:.3f} on the {len(pairs)} "
                  f"validation pairs of its run{than}")


def fixed_lambda(model: keras.Model) -> float | None:
    """The weight a hypermodel registers with (:func:`at_lambda`), None where it is an input."""
    values = [layer.value for layer in model.layers if isinstance(layer, layers.FixedLambda)]
    return values[0] if values else None
