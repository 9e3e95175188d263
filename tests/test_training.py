"""Training: the distribution strategy splits a global batch as one device would take it."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TWO_REPLICAS = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import models, registration, training

rng = np.random.default_rng(0)
shape = (16, 16)
x = {"moving": rng.random((2, *shape, 1), np.float32),
     "static": rng.random((2, *shape, 1), np.float32)}
y = {"moved": x["static"], "deformation": np.zeros((2, *shape, 2), np.float32)}
results = []
for gpus in (1, 2):
    strategy = training.distribution_strategy(gpus, batch_size=2, device_type="CPU")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = models.build_model(shape, "vm1", "ncc", lamda=1.0, lr=1e-3)
    model.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)
    # Adam's first update is lr * sign(gradient), blind to a wrong loss scale: its first moment
    # (0.1 * gradient) is not, so compare both.
    moments = [v.numpy() for v in model.optimizer.variables if "momentum" in v.path]
    results.append((strategy.num_replicas_in_sync, model.get_weights(), moments))
    registered = registration.register(model, x["moving"][0, ..., 0], x["static"][0, ..., 0])
    assert registered["deformation"].shape == (*shape, 2)
(one, w1, m1), (two, w2, m2) = results
print(json.dumps({"replicas": [one, two], "moments": len(m1),
                  "weights": max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)),
                  "moment": max(float(np.abs(a - b).max() / np.abs(a).max())
                                for a, b in zip(m1, m2))}))
"""


def test_two_replicas_make_the_same_first_update_as_one():
    # Logical devices must be configured before TensorFlow starts: a fresh process.
    done = subprocess.run([sys.executable, "-c", TWO_REPLICAS], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2] and result["moments"] == 22  # 11 kernels, 11 biases
    assert result["weights"] < 1e-5
    assert result["moment"] < 1e-4  # relative to each layer's largest moment
