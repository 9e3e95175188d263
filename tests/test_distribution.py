"""Where training runs: several replicas split a global batch as one device would take it;
several workers train as one process; the chief writes the run folder (distribution.py)."""
import hashlib
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

import distribution
import main
import rundir
import volumes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TWO_REPLICAS = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import distribution, models, registration

rng = np.random.default_rng(0)
shape, hyper = (16, 16), sys.argv[1] == "hyper"  # a hypermodel: each pair its own lambda
x = {"moving": rng.random((2, *shape, 1), np.float32),
     "static": rng.random((2, *shape, 1), np.float32)}
if hyper:
    x["lamda"] = np.array([[0.2], [0.7]], np.float32)
results = []
for gpus in (1, 2):
    strategy = distribution.distribution_strategy(gpus, batch_size=2, device_type="CPU")
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = models.build_model(shape, "vm1", "ncc", lamda=None if hyper else 1.0, lr=1e-3,
                                   hyper=hyper)
    model.fit(x, batch_size=2, epochs=1, shuffle=False, verbose=0)
    # Adam's first update is lr * sign(gradient), blind to a wrong loss scale: its first moment
    # (0.1 * gradient) is not, so compare both.
    moments = [v.numpy() for v in model.optimizer.variables if "momentum" in v.path]
    results.append((strategy.num_replicas_in_sync, model.get_weights(), moments))
    if gpus == 1:
        continue  # the model trained on two replicas registers a pair, as any model does
    if hyper:
        import hyper as hypermorph
        model = hypermorph.at_lambda(model, 0.5)
    registered = registration.register(model, x["moving"][0, ..., 0], x["static"][0, ..., 0])
    assert registered["deformation"].shape == (*shape, 2)
(one, w1, m1), (two, w2, m2) = results
print(json.dumps({"replicas": [one, two], "moments": len(m1),
                  "weights": max(float(np.abs(a - b).max()) for a, b in zip(w1, w2)),
                  "moment": max(float(np.abs(a - b).max() / np.abs(a).max())
                                for a, b in zip(m1, m2))}))
"""


@pytest.mark.parametrize("kind, moments", [
    ("plain", 22),  # 11 kernels, 11 biases
    ("hyper", 52),  # 11 base kernels, base biases, kernel banks, bias banks; 4 dense layers
])
def test_two_replicas_make_the_same_first_update_as_one(kind, moments):
    # Logical devices must be configured before TensorFlow starts: a fresh process.
    done = subprocess.run([sys.executable, "-c", TWO_REPLICAS, kind], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2] and result["moments"] == moments
    assert result["weights"] < 1e-5
    assert result["moment"] < 1e-4  # relative to each layer's largest moment


def run_workers(argv: list[str], count: int = 2) -> list[tuple[int, str, str]]:
    """``python3 main.py argv`` as ``count`` workers of one cluster on localhost (``TF_CONFIG``):
    each one's exit status, stdout and stderr."""
    sockets = [socket.socket() for _ in range(count)]
    for free in sockets:
        free.bind(("localhost", 0))
    cluster = {"worker": [f"localhost:{free.getsockname()[1]}" for free in sockets]}
    for free in sockets:
        free.close()
    workers = [subprocess.Popen(
        [sys.executable, "main.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index in range(count)]
    return [(worker.wait(timeout=300), *worker.communicate()) for worker in workers]


def weights_sha256(model) -> str:
    return hashlib.sha256(b"".join(weight.tobytes() for weight in model.get_weights())).hexdigest()


def test_two_workers_train_and_resume_as_one_process_with_their_global_batch(tmp_path):
    np.save(tmp_path / "vols.npy", np.random.default_rng(0).random((6, 16, 16)))
    flags = ["--data", str(tmp_path / "vols.npy"), "--ndim", "2", "--model", "vm1",
             "--batch_size", "2", "--steps_per_epoch", "2"]
    run = str(tmp_path / "workers")
    for argv in (flags + ["--epochs", "1", "--output", run], ["--resume", run, "--epochs", "2"]):
        (chief, out, err), (other, other_out, other_err) = run_workers(argv)
        assert chief == other == 0, err[-2000:] + other_err[-2000:]
    assert "worker 1 trained" in other_out
    assert main.main(flags + ["--epochs", "2", "--output", str(tmp_path / "one")]) == 0
    together = rundir.load_model(os.path.join(run, rundir.MODEL))
    alone = rundir.load_model(str(tmp_path / "one" / rundir.MODEL))
    # the chief wrote the run folder, and every worker ends with the same weights, bit for bit
    assert weights_sha256(together) in other_out.splitlines()[-1]
    assert json.loads((tmp_path / "workers" / rundir.ARGS).read_text())["resumes"][0]["epoch"] == 1
    for a, b in zip(together.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("config, gpus, message", [
    ("not json", None, "TF_CONFIG does not name a cluster"),
    ('{"cluster": {"worker": ["localhost:1"]}}', None, "specify `task_type` and `task_id`"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}', 1,
     "--gpus does not combine with TF_CONFIG")])
def test_a_cluster_that_cannot_be_used_is_one_line(monkeypatch, config, gpus, message):
    monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(volumes.UsageError, match=re.escape(message)):
        distribution.distribution_strategy(gpus, batch_size=2)


@pytest.mark.parametrize("config, chief", [
    (None, True), ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", '
                   '"index": 0}}', True),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}', False),
    ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", '
     '"index": 0}}', False),
    ('{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", '
     '"index": 0}}', True)])
def test_one_worker_writes_the_run_folder(monkeypatch, config, chief):
    if config:
        monkeypatch.setenv("TF_CONFIG", config)
    else:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribution.is_chief() == chief
