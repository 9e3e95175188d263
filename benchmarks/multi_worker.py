"""Training with one process and with several workers of ``MultiWorkerMirroredStrategy`` on this
machine: seconds per step and how far apart the trained weights end.

    python3 benchmarks/multi_worker.py                 # 1 and 2 workers, 2D default data
    python3 benchmarks/multi_worker.py --workers 1 2 4 --steps 50

Every case runs ``python3 main.py --ndim 2`` (the embedded default data, VoxelMorph-2, global
batch ``--batch_size``) for two epochs of ``--steps`` steps: as one process, or as N processes
on localhost, each with its ``TF_CONFIG``. It reports the median milliseconds per step of the
second epoch as Keras logs them (the first one traces the step), the steps per second, and the
largest difference between the weights each run's chief saved and the one-process run's. All
workers share this machine's CPU cores, so this is a check that the code path works and what it
costs here, not a scaling measurement.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def train(workers: int, output: str, steps: int, batch_size: int) -> float:
    """Train as ``workers`` processes (1: no ``TF_CONFIG``) into ``output``; the chief's
    milliseconds per step in the second epoch."""
    argv = [sys.executable, "main.py", "--ndim", "2", "--epochs", "2", "--steps_per_epoch",
            str(steps), "--batch_size", str(batch_size), "--output", output]
    sockets = [socket.socket() for _ in range(workers)]
    for free in sockets:
        free.bind(("localhost", 0))
    cluster = {"worker": [f"localhost:{free.getsockname()[1]}" for free in sockets]}
    for free in sockets:
        free.close()
    processes = []
    for index in range(workers):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": cluster,
                                           "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate() for process in processes]
    for process, (_, err) in zip(processes, outputs):
        if process.returncode:
            sys.exit(f"multi_worker.py: a worker failed: {err[-2000:]}")
    value, unit = re.findall(r"(\d+)(ms|s)/step", outputs[0][0])[-1]
    return float(value) * (1 if unit == "ms" else 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30, help="steps per epoch")
    parser.add_argument("--batch_size", type=int, default=2, help="global batch")
    args = parser.parse_args()
    import runtime  # noqa: F401
    import models  # noqa: F401  (registers the layers and losses that the models hold)
    import rundir

    print(f"| workers | ms per step | steps per second | largest weight difference to 1 "
          f"process |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        weights = {}
        for workers in sorted(set(args.workers) | {1}):
            output = os.path.join(folder, f"workers{workers}")
            ms = train(workers, output, args.steps, args.batch_size)
            weights[workers] = rundir.load_model(os.path.join(output, rundir.MODEL)).get_weights()
            difference = max(float(np.abs(a - b).max()) for a, b in zip(weights[1],
                                                                          weights[workers]))
            print(f"| {workers} | {ms:.0f} | {1000 / ms:.2f} | {difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
