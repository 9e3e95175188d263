"""Speed and memory of VoxelMorph-1 and -2: seconds per training step and per inference.

    python3 benchmarks/bench.py                       # all shapes, both models
    python3 benchmarks/bench.py --shapes 80x96x80 --models vm2 --repeats 10

Each (model, shape) runs in a fresh subprocess, so its peak memory is its own: the process's
peak resident set size (CPU), or TensorFlow's peak GPU allocation when a GPU is present. A
training step is one Adam step on one pair (batch size 1) with local NCC + gradient loss; an
inference is one forward pass on one pair. Both are medians over ``--repeats`` runs after two
warm-up runs. Prints one JSON object.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SHAPES = ("160x192", "80x96x80", "128x128x128")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_seconds(step, repeats: int) -> float:
    """Median wall time of ``step()`` over ``repeats`` runs, after two warm-up runs."""
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model_name: str, shape: tuple[int, ...], repeats: int) -> dict:
    """Time one configuration in this process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, ROOT)
    import numpy as np
    import tensorflow as tf

    import models

    model = models.build_model(shape, model_name, "ncc", lamda=1.0, lr=1e-4)
    rng = np.random.default_rng(0)
    inputs = {"moving": rng.random((1, *shape, 1), np.float32),
              "static": rng.random((1, *shape, 1), np.float32)}
    targets = {"moved": inputs["static"], "deformation": np.zeros((1, *shape, len(shape)),
                                                                   np.float32)}
    train = median_seconds(lambda: model.train_on_batch(inputs, targets), repeats)
    infer = median_seconds(lambda: model.predict_on_batch(inputs), repeats)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        peak_mb = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"model": model_name, "shape": list(shape), "params": model.count_params(),
            "train_step_s": round(train, 4), "inference_s": round(infer, 4),
            "peak_memory_mb": round(peak_mb, 1), "memory": "gpu_peak" if gpus else "cpu_max_rss",
            "device": tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
            if gpus else cpu_name()}


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.lower().split("x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES),
                        help="spatial shapes such as 160x192 or 80x96x80")
    parser.add_argument("--models", nargs="+", choices=("vm1", "vm2"), default=["vm1", "vm2"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child process: one configuration
        print(json.dumps(measure(args.one[0], parse_shape(args.one[1]), args.repeats)))
        return

    results = []
    for shape in args.shapes:
        for model in args.models:
            command = [sys.executable, __file__, "--one", model, shape,
                       "--repeats", str(args.repeats)]
            print(f"measuring {model} {shape} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {json.dumps(results[-1])}", file=sys.stderr, flush=True)
    import tensorflow as tf

    print(json.dumps({"tensorflow": tf.__version__, "cpu_count": os.cpu_count(),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
