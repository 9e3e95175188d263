"""Time of synthesising a training pair from label maps (--synth) beside a training step.

For each cube size: the median seconds of one pair of ``synthesis.SynthLoader`` (two label maps
of random shapes, each warped, an image synthesised from each, in TensorFlow on the CPU) and of
one training step of VoxelMorph-2 on such a pair (medians after two untimed calls), and their ratio: the share of a step that the
synthesis would add if it did not overlap with training (the loader's worker threads overlap it).

    python3 benchmarks/synthesis_speed.py --sizes 64 128 --repeats 3
"""
import argparse
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runtime  # noqa: E402, F401  (TensorFlow's settings: before its first import)
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
import synthesis  # noqa: E402
from benchmarks.bench import median_seconds  # noqa: E402

LABELS = 8


def cpu_name() -> str:
    """The processor's model name (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as file:
            return next(line.split(":", 1)[1].strip() for line in file
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores of {cpu_name()}; "
          f"{'GPU' if tf.config.list_physical_devices('GPU') else 'no GPU'}")
    print("| size | synthesis per pair (s) | training step (s) | share of a step |")
    print("|---|---|---|---|")
    for size in args.sizes:
        shape = (size,) * 3
        loader = synthesis.SynthLoader(None, shape, range(LABELS), range(1, LABELS), 1, 10**6,
                                       seed=0)
        index = iter(range(10**6))
        synth = median_seconds(lambda: loader[next(index)], args.repeats)
        model = models.build_model(shape, "vm2", num_labels=LABELS - 1, synth=True)
        batch = loader[0]
        step = median_seconds(lambda: model.train_on_batch(batch), args.repeats)
        print(f"| {size}^3 | {synth:.2f} | {step:.2f} | {synth / step:.0%} |")


if __name__ == "__main__":
    main()
