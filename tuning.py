"""Instance optimisation: a trained registration improved on the pair it registers.

- :class:`FineTuner`: the network's weights trained on the pair itself (TMI 2019, Sec. V-E),
  one compiled network for every pair, its trained weights restored before each.
- :class:`Refiner`: the displacement itself optimised on the pair's full-resolution grid,
  starting from the network's (resized to that grid when the network ran on a coarser one),
  as Learn2Reg's instance optimisation does.

Both minimise the model's own training loss terms (``objective.TrainingModel.terms``) that need no
label map (:func:`image_terms`): the pair's label maps are never used.
"""
import time

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import numpy as np
import tensorflow as tf

import dataloader
import metrics
import models
import objective
import rebuilding
import shapes
import transforms
import utils
import volumes

REFINE_LR = 0.1  # Adam's rate of --refine_steps, voxels per step at the start of its schedule
MAX_OUTSIDE = 0.5  # share of the grid a sound displacement may send outside it
MIN_RISE = 1e-3  # a loss has risen far above its start when by more than |start| and this


def outside_share(deformation: np.ndarray) -> float:
    """The share of voxels that a ``(*spatial, ndim)`` displacement (voxels; a leading batch
    axis of one allowed) sends outside its grid, or 1 when it is not finite."""
    deformation = np.asarray(deformation)
    deformation = deformation.reshape(deformation.shape[-deformation.shape[-1] - 1:])
    if not np.all(np.isfinite(deformation)):
        return 1.0
    shape = deformation.shape[:-1]
    coords = transforms.spacing_grid(shape).coordinates() + deformation
    return float(np.mean(np.any((coords < -0.5) | (coords > np.array(shape) - 0.5), axis=-1)))


class Watch:
    """The loss of an optimisation, step by step: where it stopped, and its best state.

    :meth:`step` takes the loss of the state before each step; the optimisation stops at a
    loss that is not finite or has risen far above the first (by more than ``|first|`` and
    ``MIN_RISE``: the rate is too high), and then falls back to the state before step
    :attr:`best_step`, the lowest loss seen (0: where it started), which the caller keeps.
    """

    def __init__(self):
        self.first, self.best_loss, self.best_step = None, np.inf, 0
        self.stopped = None  # why it stopped, in words

    def step(self, step: int, loss: float) -> bool:
        """Whether to go on after the loss ``loss`` of the state before step ``step`` (counted
        from 0); :attr:`best_step` becomes ``step`` when it is the lowest yet."""
        self.first = loss if self.first is None else self.first
        if not np.isfinite(loss) or loss > self.first + max(abs(self.first), MIN_RISE):
            self.stopped = (f"stopped at step {step + 1} (loss {loss:.4g}, "
                            f"{'not finite' if not np.isfinite(loss) else 'far above'} the "
                            f"first {self.first:.4g})")
            return False
        if loss < self.best_loss:
            self.best_loss, self.best_step = loss, step
        return True

    def fell_back(self, what: str, rate: str) -> str:
        """One line: where the optimisation stopped, what it fell back to, what to try."""
        kept = (f"kept step {self.best_step}'s {what} (loss {self.best_loss:.4g})"
                if self.best_step else f"kept the network's own {what}")
        return f"{self.stopped}: {kept}; try a lower {rate}"


def fallback_notes(results: list[dict], source: str) -> list[str]:
    """One line for each instance optimisation (fine-tuning, refinement) that fell back on some
    of ``results`` (one dict per pair, with ``finetune_fallback`` and ``refine_fallback``), whose
    notes are in the file ``source``."""
    return [f"{sum(bool(result[key]) for result in results)} of {len(results)} pairs "
            f"fell back in {what} (see {key} in {source})"
            for key, what in (("finetune_fallback", "fine-tuning"),
                              ("refine_fallback", "refinement"))
            if any(result[key] for result in results)]


def image_terms(model: keras.Model, similarity: str | None = None,
                lamda: float | None = None) -> list[objective.Term]:
    """The loss terms of a trained model that need no label map (its image similarities and
    smoothness, with its weights): those instance optimisation minimises.

    Parameters
    ----------
    model : objective.TrainingModel
        A trained model.
    similarity : {"ncc", "mse", "mi"}, optional
        Use this image similarity (``objective.image_similarity``) in place of the model's own,
        e.g. mutual information for a pair of two contrasts; the weights stay the model's. A
        model trained from label maps (``--synth``) has none: it gets this one, of weight 1,
        and its smoothness the weight ``objective.DEFAULT_LAMBDA`` gives this similarity.
    lamda : float, optional
        The smoothness weight relative to the image similarity's, in place of the model's (e.g.
        ``objective.DEFAULT_LAMBDA`` of a similarity given in place of the model's own).

    Raises
    ------
    volumes.DataError
        If the model holds no training loss (a registration network saved on its own).
    """
    if not isinstance(model, objective.TrainingModel):
        raise volumes.DataError("instance optimisation needs the model's training loss: a "
                                "model saved by training (main.py writes one)")
    terms = [term for term in model.terms if not set(term.args) & {
        *objective.TRAINING_INPUTS, *objective.TRAINING_OUTPUTS}]
    if all(isinstance(term.loss, metrics.Grad) for term in terms):  # trained from label maps
        if similarity is None:
            raise volumes.UsageError("this model was trained from label maps and has no image "
                                     "loss of its own: give --tune_loss (mi across contrasts)")
        terms = [objective.Term("moved", objective.image_similarity(similarity), 1.0,
                                ("static", "moved")),
                 *(term._replace(weight=objective.DEFAULT_LAMBDA[similarity]) for term in terms)]
    elif similarity is not None:
        terms = [term if isinstance(term.loss, metrics.Grad) else
                 term._replace(loss=objective.image_similarity(similarity)) for term in terms]
    if lamda is None:
        return terms
    weight = next(term.weight for term in terms if term.name == "moved")
    return [term._replace(weight=lamda * weight) if isinstance(term.loss, metrics.Grad) else term
            for term in terms]


class FineTuner:
    """Instance-specific optimisation (TMI 2019, Sec. V-E): the network trained on each pair.

    The registration network is copied once, as a ``objective.TrainingModel`` with the model's own
    loss terms that need no label map (similarity, symmetric similarity, smoothness), and
    compiled with Adam; for every pair, :meth:`tune` restores the trained weights and a fresh
    optimizer state, then takes ``steps`` Adam steps on that pair alone. The compiled training
    step is traced on the first pair only.

    Parameters
    ----------
    model : objective.TrainingModel
        A trained VoxelMorph model (as ``models.build_model`` or ``rundir.load_model`` give);
        it is left as it is.
    steps : int
        Optimisation steps per pair.
    lr : float
        Adam learning rate.
    shape : tuple of int, optional
        Input shape of the tuned network (multiples of ``models.DIVISOR``); default the model's.
    similarity : {"ncc", "mse", "mi", "mind"}, optional
        The image similarity to tune with, in place of the model's own (:func:`image_terms`).
    lamda : float, optional
        Its smoothness weight relative to the similarity's, in place of the model's.
    """

    def __init__(self, model: keras.Model, steps: int, lr: float = 1e-3,
                 shape: tuple[int, ...] | None = None, similarity: str | None = None,
                 lamda: float | None = None):
        terms = image_terms(model, similarity, lamda)
        network = models.registration_model(model)
        rebuilt = rebuilding.rebuild(network, shape or models.input_shape(network))
        self.network = objective.TrainingModel(rebuilt.input, rebuilt.output, rebuilt.name,
                                            terms=terms)
        self.trained = network.get_weights()
        self.network.compile(optimizer=keras.optimizers.Adam(lr))
        self.network.optimizer.build(self.network.trainable_variables)
        self.fresh = [variable.numpy() for variable in self.network.optimizer.variables]
        self.steps, self.lr, self.note = steps, lr, None

    def tune(self, moving: np.ndarray, static: np.ndarray) -> keras.Model:
        """The network fine-tuned on one pair no larger than its input shape, images in [0, 1]
        (zero-padded to it, centred, as ``registration.register_padded`` pads).

        Tuning stops at a loss that is not finite or rose far above the first (:class:`Watch`)
        and keeps the weights of the best step seen; tuned weights whose displacement sends
        more than ``MAX_OUTSIDE`` of the grid outside it give way to the trained ones. Either
        way :attr:`note` says so in one line (else None).

        Returns
        -------
        keras.Model
            The tuned registration network (inputs ``moving`` and ``static``); it is tuned
            again, from the trained weights, by the next call.
        """
        self.start(moving, static)
        network = self.train(self.steps)
        outside = outside_share(network.predict_on_batch(self.batch)["deformation"])
        if outside > MAX_OUTSIDE:
            network.set_weights(self.trained)
            self.note = (f"fine-tuning sent {outside:.0%} of the image outside the grid: kept "
                         f"the network's own registration; try a lower --finetune_lr (now "
                         f"{self.lr:g})")
        return network

    def start(self, moving: np.ndarray, static: np.ndarray) -> None:
        """Restore the trained weights and a fresh Adam, and take the pair as the batch of
        :meth:`train`."""
        self.network.set_weights(self.trained)
        for variable, value in zip(self.network.optimizer.variables, self.fresh):
            variable.assign(value)  # step count 0, zero moments: Adam as new
        padding = shapes.padding_to_shape(moving.shape, models.input_shape(self.network))
        self.batch = dataloader.batch(shapes.pad(np.asarray(moving)[None], padding),
                                      shapes.pad(np.asarray(static)[None], padding))
        self.watch, self.done, self.best, self.note = Watch(), 0, self.trained, None

    def train(self, steps: int) -> keras.Model:
        """``steps`` more Adam steps on the pair of :meth:`start` (none once stopped); the
        tuned network, with the best step's weights once :class:`Watch` stopped it."""
        for _ in range(0 if self.watch.stopped else steps):
            before = self.network.get_weights()
            loss = float(self.network.train_on_batch(self.batch, return_dict=True)["loss"])
            if not self.watch.step(self.done, loss):
                self.network.set_weights(self.best)
                self.note = "fine-tuning " + self.watch.fell_back(
                    "weights", f"--finetune_lr (now {self.lr:g})")
                break
            if self.watch.best_step == self.done:
                self.best = before
            self.done += 1
        return self.network


def finetuned(model: keras.Model, tuner: FineTuner | None, moving: np.ndarray,
              static: np.ndarray) -> tuple[keras.Model, float, str | None]:
    """``tuner``'s network tuned on the pair, the seconds it took and its :attr:`FineTuner.note`
    (None when it did not fall back); without one, ``model``."""
    if tuner is None:
        return model, 0.0, None
    start = time.perf_counter()
    network = tuner.tune(moving, static)
    return network, time.perf_counter() - start, tuner.note


class Refiner:
    """Instance optimisation of a displacement on the pair's own (full-resolution) grid.

    ``steps`` Adam steps minimise the model's image similarity of the moving image warped by
    the field, plus the smoothness of the field with the weight the model was trained with.
    Without ``int_steps`` they move the field's voxels themselves (the refined field may then
    fold). With ``int_steps`` they move a stationary velocity ``v`` (from 0) whose exponential,
    by ``int_steps`` scaling-and-squaring steps, the starting map is composed with:
    ``phi = phi_start o exp(v)``, the refined displacement ``e(x) + d(x + e(x))`` for ``e`` of
    ``exp(v)`` and ``d`` the starting one; a diffeomorphic start stays diffeomorphic, whatever
    the steps do (``v`` may live on a coarser grid: ``int_downsize``). The smoothness is that
    of the whole refined displacement in both cases. The learning rate decays from ``lr`` to 0
    along a cosine. The step is compiled once per grid shape, and the optimizer starts anew for
    every pair.

    Parameters
    ----------
    model : objective.TrainingModel
        A trained VoxelMorph model with a deformable stage: its loss terms give the similarity,
        the smoothness and lambda.
    steps : int
        Optimisation steps per pair.
    lr : float
        Adam's initial learning rate, in voxels.
    similarity : {"ncc", "mse", "mi", "mind"}, optional
        The image similarity to refine with, in place of the model's own (:func:`image_terms`).
    lamda : float, optional
        Its smoothness weight relative to the similarity's, in place of the model's.
    int_steps : int
        0: refine the displacement; else: a velocity composed with it, integrated in this many
        scaling-and-squaring steps.
    int_downsize : int
        With ``int_steps``, the velocity lives (and is integrated) on a grid this many times
        coarser per axis, its exponential resized to the pair's grid.
    """

    def __init__(self, model: keras.Model, steps: int, lr: float = REFINE_LR,
                 similarity: str | None = None, lamda: float | None = None, int_steps: int = 0,
                 int_downsize: int = 1):
        terms = {term.name: term for term in image_terms(model, similarity, lamda)}
        smooth = [term for term in terms.values() if isinstance(term.loss, metrics.Grad)]
        if not smooth:
            raise volumes.UsageError("refinement optimises a deformable field: this model has "
                                     "an affine stage only (use --finetune_steps)")
        self.similarity, self.smoothness = terms["moved"].loss, smooth[0].loss
        self.lamda = smooth[0].weight / terms["moved"].weight
        self.steps, self.lr, self.field, self.note = steps, lr, None, None
        self.int_steps, self.int_downsize = int_steps, int_downsize

    def refine(self, moving: np.ndarray, static: np.ndarray,
               deformation: np.ndarray) -> np.ndarray:
        """The displacement refined on one pair.

        Parameters
        ----------
        moving, static : np.ndarray
            ``(*spatial)`` images in [0, 1] on one grid.
        deformation : np.ndarray
            ``(*spatial, ndim)`` starting displacement in voxels of that grid, 'ij' order.

        Returns
        -------
        np.ndarray
            ``(*spatial, ndim)`` float32 refined displacement in voxels. Refinement stops at a
            loss that is not finite or rose far above the first (:class:`Watch`) and returns
            the best step's field; a field that sends more than ``MAX_OUTSIDE`` of the grid
            outside it gives way to ``deformation``. Either way :attr:`note` says so in one
            line (else None).
        """
        start = np.asarray(deformation, np.float32)[None]
        # what the steps move: the displacement itself, or a velocity from 0 (maybe coarser)
        origin = start if not self.int_steps else np.zeros(
            (1, *(n // self.int_downsize for n in start.shape[1:-1]), start.shape[-1]),
            np.float32)
        if self.field is None or tuple(self.start.shape) != start.shape:
            self.start = tf.Variable(start)
            self.field, self.best = tf.Variable(origin), tf.Variable(origin)
            self.optimizer = keras.optimizers.Adam(self.lr)
            self.optimizer.build([self.field])
            self.fresh = [variable.numpy() for variable in self.optimizer.variables]
            self.compiled = tf.function(self._step)  # traced once for this shape
        self.start.assign(start)
        self.field.assign(origin)
        self.best.assign(origin)
        for variable, value in zip(self.optimizer.variables, self.fresh):
            variable.assign(value)
        pair = [tf.constant(np.asarray(image, np.float32)[None, ..., None])
                for image in (moving, static)]
        watch, self.note = Watch(), None
        for step in range(self.steps):
            self.optimizer.learning_rate.assign(
                self.lr * 0.5 * (1 + np.cos(np.pi * step / self.steps)))
            loss, before = self.compiled(*pair)
            if not watch.step(step, float(loss)):
                self.note = "refinement " + watch.fell_back(
                    "field", f"--refine_lr (now {self.lr:g})")
                self.field.assign(self.best)
                break
            if watch.best_step == step:
                self.best.assign(before)
        refined = self.displacement(self.field).numpy()[0]
        outside = outside_share(refined)
        if outside > MAX_OUTSIDE:
            self.note = (f"refinement sent {outside:.0%} of the image outside the grid: kept the "
                         f"network's own field; try a lower --refine_lr (now {self.lr:g})")
            return start[0]
        return refined

    def displacement(self, field: tf.Tensor) -> tf.Tensor:
        """The refined ``(1, *spatial, ndim)`` displacement that ``field`` (what the steps move)
        stands for: itself, or with ``int_steps`` the start composed with its exponential."""
        if not self.int_steps:
            return field
        step = utils.integrate_velocity(field, self.int_steps)
        if self.int_downsize > 1:
            step = utils.resize_displacement(step, self.start.shape[1:-1])
        return step + utils.warp(self.start, step)

    def _step(self, moving: tf.Tensor, static: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One Adam step of the field; the loss before it, and the field it was of."""
        before = tf.identity(self.field)
        with tf.GradientTape() as tape:
            displacement = self.displacement(self.field)
            loss = (self.similarity(static, utils.warp(moving, displacement))
                    + self.lamda * self.smoothness(displacement))
        self.optimizer.apply_gradients([(tape.gradient(loss, self.field), self.field)])
        return loss, before


def refined(refiner: Refiner | None, moving: np.ndarray, static: np.ndarray,
            deformation: np.ndarray) -> tuple[np.ndarray, float, str | None]:
    """``refiner``'s refinement of ``deformation``, its seconds and its :attr:`Refiner.note`
    (None when it did not fall back); without one, as it is."""
    if refiner is None:
        return deformation, 0.0, None
    start = time.perf_counter()
    deformation = refiner.refine(moving, static, deformation)
    return deformation, time.perf_counter() - start, refiner.note
