"""When training stops before its last epoch: a loss that diverged, or a signal.

- :class:`StopOnDivergence` stops training at the first batch whose loss is NaN or Inf and
  records where (``rundir.Checkpoint`` writes no epoch whose losses are not all finite).
- :func:`stop_signals`: SIGTERM and SIGINT ask the ``rundir.Checkpoint`` to write a checkpoint at
  the end of the next batch, then stop; :func:`agreed_signal` makes every worker of a
  multi-worker run stop after the same batch (:func:`signals_across_workers`).
"""
import contextlib
import math
import signal
import threading
from collections.abc import Iterator

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import tensorflow as tf


class StopOnDivergence(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or Inf.

    Parameters
    ----------
    batch : int
        Batches of the first epoch done before this ``fit`` (a run resumed in an epoch's middle).

    Attributes
    ----------
    diverged : tuple or None
        ``(epoch, step, loss)`` of that batch, counted from 1 as Keras prints them; None while
        the losses are finite.
    """

    def __init__(self, batch: int = 0):
        super().__init__()
        self.epoch, self.done, self.diverged = 0, batch, None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.done = 0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss) and self.diverged is None:
            self.diverged = (self.epoch + 1, self.done + batch + 1, loss)
            self.model.stop_training = True


def agreed_signal(signum: int | None) -> int | None:
    """``signum``; under MultiWorkerMirroredStrategy, SIGTERM too once another worker has a
    signal, so that all stop after the same batch (one that went on alone would wait forever
    for the others' part of its next step).
    """
    if not isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return signum
    stopping = float(signals_across_workers(tf.constant(float(signum is not None)))) > 0
    return signum or (signal.SIGTERM if stopping else None)


@tf.function
def signals_across_workers(flag: tf.Tensor) -> tf.Tensor:
    """The sum of ``flag`` (1: a signal came, else 0) over the replicas of every worker."""
    strategy = tf.distribute.get_strategy()
    flags = strategy.run(lambda replica_flag: tf.distribute.get_replica_context().all_reduce(
        "SUM", tf.identity(replica_flag)), args=(flag,))  # identity: placed on the replica
    return strategy.experimental_local_results(flags)[0]


@contextlib.contextmanager
def stop_signals(saver: keras.callbacks.Callback) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT ask ``saver`` (a ``rundir.Checkpoint``: they set
    its ``signal``) to write a checkpoint at the end of the next batch and stop (a second one
    acts as before: at once); the previous handlers come back when it ends. Outside the main
    thread, where Python takes no signal, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame) -> None:
        saver.signal = signum
        signal.signal(signum, previous[signum])

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
