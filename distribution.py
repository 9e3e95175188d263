"""Where training runs: one device, several GPUs of one machine, or several machines.

- :func:`distribution_strategy`: TensorFlow's default one-device strategy, or
  ``MirroredStrategy`` over several GPUs (``--gpus``), or, with ``TF_CONFIG`` set,
  :func:`multi_worker_strategy`, in which only the chief writes the run folder
  (:func:`is_chief`) and the other workers report a digest of their weights
  (:func:`worker_summary`); :func:`fit_across_workers` works around two bugs of Keras' ``fit``
  under that strategy.
- :func:`use_mixed_precision`: Keras' ``mixed_float16`` policy on a GPU (``--mixed_precision``).
"""
import hashlib
import os
import sys

import runtime  # noqa: F401  (TensorFlow's settings: before its first import)
import keras
import tensorflow as tf

import volumes


def distribution_strategy(gpus: int | None, batch_size: int,
                          device_type: str = "GPU") -> tf.distribute.Strategy:
    """MirroredStrategy over the first ``gpus`` devices, or the default one-device strategy;
    with ``TF_CONFIG`` set, :func:`multi_worker_strategy`.

    Parameters
    ----------
    gpus : int or None
        Devices to train on; None: all visible ones when there are several, else one.
    batch_size : int
        Global batch size, split across the devices: at least one pair each.
    device_type : str
        "GPU"; "CPU" with logical CPU devices, for tests.

    Returns
    -------
    tf.distribute.Strategy
        Build and compile the model in its ``scope()``; Keras' ``fit`` then splits each global
        batch across the replicas and divides every replica's loss by their number.
    """
    if os.environ.get("TF_CONFIG"):
        return multi_worker_strategy(gpus, batch_size)
    devices = [device.name for device in tf.config.list_logical_devices(device_type)]
    if gpus is not None and gpus > len(devices):
        raise volumes.UsageError(f"--gpus {gpus}, but {len(devices)} {device_type} device(s) "
                                 "are visible")
    count = len(devices) if gpus is None else gpus
    if count < 2:
        return tf.distribute.get_strategy()
    if batch_size < count:
        raise volumes.UsageError(f"--batch_size {batch_size} is split across {count} devices: "
                                 f"give at least {count} pairs, or fewer --gpus")
    return tf.distribute.MirroredStrategy(devices[:count])


def multi_worker_strategy(gpus: int | None, batch_size: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy over the workers that ``TF_CONFIG`` names (it waits until
    all have started): each takes its share of every global batch on all the devices it sees,
    and their gradients are summed across workers every step. It must come before TensorFlow
    runs anything.

    Raises
    ------
    volumes.UsageError
        For ``--gpus`` (limit a worker's GPUs with ``CUDA_VISIBLE_DEVICES``), a ``TF_CONFIG``
        that is not a cluster, or fewer pairs per global batch than replicas.
    """
    if gpus is not None:
        raise volumes.UsageError("--gpus does not combine with TF_CONFIG: every worker trains "
                                 "on all the GPUs it sees (limit them with CUDA_VISIBLE_DEVICES)")
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, KeyError, TypeError) as error:
        raise volumes.UsageError(f"TF_CONFIG does not name a cluster of workers and this "
                                 f"worker's task: {error}") from None
    if batch_size < strategy.num_replicas_in_sync:
        raise volumes.UsageError(f"--batch_size {batch_size} is split across "
                                 f"{strategy.num_replicas_in_sync} replicas on all workers: "
                                 f"give at least {strategy.num_replicas_in_sync} pairs")
    return strategy


def is_chief() -> bool:
    """Whether this process writes the run folder: always, but among the workers of
    ``TF_CONFIG`` only the ``chief`` task or, when there is none, worker 0."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and
                                             resolver.task_id == 0 and
                                             "chief" not in resolver.cluster_spec().jobs)


def fit_across_workers(model: keras.Model) -> None:
    """Let Keras 3's ``fit`` and ``evaluate`` run ``model`` under MultiWorkerMirroredStrategy
    (the caller calls them in the strategy's scope), around two bugs of Keras 3.15.

    Keras first reduces a whole input batch across workers, which fails for a dict of inputs
    (keras-team/keras#20329): forgetting the strategy the model was built in skips that step,
    the model being built already. Keras then averages each step's logs across workers along
    axis 0, which fails for a scalar (tensorflow/tensorflow#72388): the steps return each log
    as a vector of one value, and the average across workers is a scalar again.
    """
    model._distribute_strategy = None
    for name in ("train_step", "test_step"):
        step = getattr(model, name)
        setattr(model, name, lambda data, step=step: {
            key: tf.reshape(value, [1]) for key, value in step(data).items()})


def worker_summary(model: keras.Model, strategy: tf.distribute.Strategy,
                   train_seconds: float) -> dict:
    """What a worker other than the chief reports: its task, and a digest of its weights (equal
    on every worker of a run, the chief's included)."""
    resolver = strategy.cluster_resolver
    digest = hashlib.sha256(b"".join(weight.tobytes() for weight in model.get_weights()))
    return {"worker": f"{resolver.task_type} {resolver.task_id}",
            "weights_sha256": digest.hexdigest(), "train_seconds": round(train_seconds, 1)}


def use_mixed_precision(device: str) -> None:
    """Set Keras' mixed_float16 policy for the models built next (GPU); warn on a CPU."""
    if device == "GPU":
        keras.mixed_precision.set_global_policy("mixed_float16")
    else:
        print("main.py: warning: --mixed_precision is ignored on a CPU (float16 is slower "
              "there); training in float32", file=sys.stderr)
