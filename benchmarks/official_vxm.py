"""Train the official VoxelMorph (PyPI voxelmorph 0.2, TensorFlow) on the real-brain benchmark.

A measuring stick for ``real_brains.py --methods official``, which runs it: it never runs in this
project's environment and nothing of the project imports it. It needs the official package in a
throw-away virtual environment, as ``../shared/bench/anchor_official_vxm.py`` sets it up:

    python3 -m venv vxm-official
    vxm-official/bin/pip install tensorflow-cpu==2.21.0 tf-keras==2.21.0 voxelmorph==0.2 neurite==0.2
    TF_USE_LEGACY_KERAS=1 vxm-official/bin/python benchmarks/official_vxm.py --output runs/rb/official

The budget is the project's VM-2 row: ``VxmDense`` with the same channels (encoder 16-32-32-32,
decoder 32-32-32-32-32-16-16), no integration, local NCC with a 9-voxel window plus 1.0 times
the l2 gradient loss of the displacement, Adam, batch 1, the same training subjects on the same
grid (block means of the 128^3 volumes, each scaled to [0, 1] by its minimum and maximum, with the
project's ``datasets.normalize``), scan-to-scan pairs of distinct subjects drawn at random,
the same number of steps and learning rate. Writes ``flows.npz``: the displacement of every
ordered test pair (``brains.test_pairs`` order) on the network's grid, in voxels, 'ij'
order (the official convention is the project's: ``moved(x) = moving(x + u(x))``), with the
training and inference seconds.
"""
import argparse
import collections
import inspect
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
import runtime  # noqa: E402, F401  (oneDNN on and quiet logs, as for this project's rows)
import datasets  # noqa: E402  (numpy only: the intensity scaling)
from benchmarks import brains  # noqa: E402  (numpy only: the sets and the pairs)

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# neurite 0.2 calls inspect.getargspec, which Python 3.11 removed.
if not hasattr(inspect, "getargspec"):
    _ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")
    inspect.getargspec = lambda func: _ArgSpec(*inspect.getfullargspec(func)[:4])

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import voxelmorph as vxm  # noqa: E402

VM2 = [[16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=brains.DATA)
    parser.add_argument("--downsample", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="folder of flows.npz")
    args = parser.parse_args()

    with np.load(args.data) as stored:
        vols, _ = brains.downsample(stored["vols"], stored["segs"], args.downsample)
    vols = np.stack([datasets.normalize(volume) for volume in vols])[..., None]
    train, test = vols[:brains.NUM_TRAIN], vols[brains.NUM_TRAIN:]
    tf.keras.utils.set_random_seed(args.seed)
    model = vxm.networks.VxmDense(train.shape[1:-1], VM2, int_steps=0)
    ncc, grad = vxm.losses.NCC(win=[9] * 3).loss, vxm.losses.Grad("l2").loss
    optimizer = tf.keras.optimizers.Adam(args.lr)

    @tf.function
    def train_step(moving, fixed):
        with tf.GradientTape() as tape:
            moved, flow = model([moving, fixed])
            loss = tf.reduce_mean(ncc(fixed, moved)) + 1.0 * tf.reduce_mean(grad(None, flow))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for step in range(args.steps):
        moving, fixed = rng.choice(len(train), 2, replace=False)
        loss = float(train_step(train[moving:moving + 1], train[fixed:fixed + 1]))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{args.steps}: loss {loss:.4f}", flush=True)
    train_seconds = time.perf_counter() - start

    flows, seconds = [], []
    for m, s in brains.test_pairs(len(test), None):
        start = time.perf_counter()
        flows.append(model.predict([test[m:m + 1], test[s:s + 1]], verbose=0)[1][0])
        seconds.append(time.perf_counter() - start)
    os.makedirs(args.output, exist_ok=True)
    np.savez(os.path.join(args.output, "flows.tmp.npz"), flows=np.stack(flows),
             seconds=np.array(seconds), train_seconds=train_seconds,
             pairs=np.array(brains.test_pairs(len(test), None)))
    os.replace(os.path.join(args.output, "flows.tmp.npz"), os.path.join(args.output, "flows.npz"))
    print(f"trained {args.steps} steps in {train_seconds:.0f} s; wrote {args.output}/flows.npz")


if __name__ == "__main__":
    main()
