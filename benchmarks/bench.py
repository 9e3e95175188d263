"""Speed and memory of VoxelMorph-1 and -2 beside the official TF release and the CPU's peak.

    python3 benchmarks/bench.py                       # all shapes, both models
    python3 benchmarks/bench.py --shapes 80x96x80 --models vm2 --repeats 10 --json bench.json
    python3 benchmarks/bench.py --kernels eigen onednn_avx2 --shapes 64x64x64 128x128x128

``--kernels`` chooses TensorFlow's CPU kernels, passed to both sides through the environment
(:data:`KERNELS`): ``onednn`` (this package's setting, ``runtime.py``), ``eigen``
(``TF_ENABLE_ONEDNN_OPTS=0``: what TensorFlow picks by itself on a CPU without AVX-512 VNNI/BF16
or AMX, i.e. this package before ``runtime.py``) and ``onednn_avx2`` (oneDNN limited to AVX2 by
``ONEDNN_MAX_CPU_ISA``: an AVX2 CPU's oneDNN kernels, measured on an AVX-512 one). Every run
reports the CPU's instruction sets and whether oneDNN was on.

For each (shape, model) it times this package and the official VoxelMorph TF release
(``../shared/bench/anchor_official_vxm.py``, run by the Python of its own virtual environment,
``--official_python``; skipped with a note when that is absent), one after the other, each in a
fresh process, alternating which goes first, and records the load average before each run: the
CPU may be shared, and both sides of a ratio should see the same load.

A training step is one Adam step on one pair (batch size 1) with local NCC (window 9) + gradient
loss; an inference is one forward pass on one pair. Both are medians over ``--repeats`` runs
after two warm-up runs. Peak memory is the process's peak resident set size (CPU), or
TensorFlow's peak GPU allocation for this package when a GPU is present.

Floating-point operations are counted from the model's convolution layers (see
:func:`conv_flops`, :func:`model_flops`); the achieved rate is that count over the measured time,
next to the processor's peak FP32 rate derived from ``/proc/cpuinfo`` (:func:`peak_fp32`).
Prints a Markdown table and the conventions; ``--json`` also writes every figure.
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SHAPES = ("160x192", "80x96x80", "128x128x128")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANCHOR = os.path.join(ROOT, "..", "shared", "bench", "anchor_official_vxm.py")
OFFICIAL_PYTHON = os.path.join(ROOT, "..", "vxm-official", "bin", "python")
KERNELS = {"onednn": {"TF_ENABLE_ONEDNN_OPTS": "1"},
           "eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"},
           "onednn_avx2": {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
TRAIN_TO_FORWARD = 3  # a training step's convolution FLOPs per forward FLOP (see model_flops)
CONVENTIONS = (
    "FLOPs: convolutions only, 2 * K^ndim * Cin * Cout per output voxel (one multiply and one "
    "add per weight), batch 1. Neglected: bias adds, LeakyReLU, upsampling, concatenation, the "
    "sampler, the losses and Adam (a few hundred FLOPs per voxel: ~2% of the convolutions' "
    "count in 2D, under 1% in 3D). A training step counts 3x the forward convolutions: the "
    "forward pass, the gradient with respect to each layer's input and the one with respect "
    "to its weights cost one forward pass each (the first layer's input gradient, which is "
    "not computed, is included, an over-count of ~1%).")


def conv_flops(kernel_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> int:
    """Floating-point operations of one convolution: ``2 * K^ndim * Cin * Cout * voxels``.

    Parameters
    ----------
    kernel_shape : tuple of int
        ``(*kernel_size, Cin, Cout)``, as Keras stores a convolution's kernel.
    output_shape : tuple of int
        ``(*spatial, Cout)`` of the convolution's output for one sample (stride included).

    Returns
    -------
    int
        One multiply and one add per kernel weight and output voxel; bias adds not counted.
    """
    return 2 * math.prod(kernel_shape) * math.prod(output_shape[:-1])


def model_flops(model) -> dict:
    """Convolution FLOPs of one forward pass and of one training step of a Keras model.

    Parameters
    ----------
    model : keras.Model
        A built functional model; its ``Conv2D``/``Conv3D`` layers are counted for batch 1.

    Returns
    -------
    dict
        ``forward`` and ``train_step`` (``TRAIN_TO_FORWARD`` times ``forward``) in FLOPs.
    """
    forward = sum(conv_flops(tuple(layer.kernel.shape), tuple(layer.output.shape[1:]))
                  for layer in model.layers if hasattr(layer, "kernel") and
                  type(layer).__name__ in ("Conv2D", "Conv3D"))
    return {"forward": forward, "train_step": TRAIN_TO_FORWARD * forward}


def cpu_isa(cpuinfo: str) -> dict:
    """The vector instruction sets of the first processor, and TensorFlow's oneDNN default.

    ``cpuinfo`` is the text of Linux's ``/proc/cpuinfo``; its first ``flags`` line is read.
    Returns a dict: ``isa``, the widest of "AVX-512", "AVX2+FMA", "AVX", "SSE" (with " VNNI"
    when AVX-512 VNNI is present), and ``tensorflow_onednn_default``, whether TensorFlow turns
    oneDNN on by itself on this CPU (x86 with AVX-512 VNNI or BF16, AVX-VNNI or AMX).
    """
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx512f" in flags:
        isa = "AVX-512" + (" VNNI" if "avx512_vnni" in flags else "")
    elif {"avx2", "fma"} <= flags:
        isa = "AVX2+FMA"
    else:
        isa = "AVX" if "avx" in flags else "SSE"
    modern = {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"}
    return {"isa": isa, "tensorflow_onednn_default": bool(flags & modern)}


def peak_fp32(cpuinfo: str, max_isa: str | None = None) -> dict:
    """The processor's peak FP32 rate: cores x clock x FMA units x SIMD floats x 2.

    Parameters
    ----------
    cpuinfo : str
        The text of Linux's ``/proc/cpuinfo``.

    Returns
    -------
    dict
        ``gflops`` and the factors (``cores``, ``ghz``, ``fma_units``, ``simd_floats``) with
        ``derivation``, a sentence stating the assumptions. Cores are physical cores (distinct
        ``physical id``/``core id`` pairs, else processors); the clock is the reported ``cpu MHz``
        (no turbo). AVX-512 counts 16 floats per vector and 2 FMA units on Intel (Xeon Gold and
        Platinum; 1 unit on some Silver and Bronze parts); AMD Zen 4 (family 25) runs 512-bit
        instructions as two 256-bit halves on 2 FMA pipes, so 8 floats x 2 units; AVX2 with FMA
        8 floats x 2 units; otherwise SSE, 4 floats x 1 unit.
    max_isa : {"AVX2"}, optional
        Count the peak of the kernels limited to this instruction set (``ONEDNN_MAX_CPU_ISA``):
        AVX-512 is then ignored.
    """
    blocks = [dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
              for block in cpuinfo.strip().split("\n\n")]
    blocks = [{key.strip(): value.strip() for key, value in block.items()} for block in blocks]
    if all("core id" in block for block in blocks):
        cores = len({(block.get("physical id"), block["core id"]) for block in blocks})
    else:
        cores = len(blocks)
    first = blocks[0]
    ghz = float(first.get("cpu MHz", "0")) / 1000
    flags = set(first.get("flags", "").split())
    if max_isa == "AVX2":
        flags = {flag for flag in flags if not flag.startswith("avx512")}
    amd = first.get("vendor_id") == "AuthenticAMD"
    family = int(first.get("cpu family", "0"))
    if "avx512f" in flags and not (amd and family <= 25):
        fma_units, simd, isa = 2, 16, "AVX-512 (16 floats), 2 FMA units"
    elif "avx512f" in flags:
        fma_units, simd, isa = 2, 8, "AVX-512 run as 2x256-bit (AMD Zen 4): 8 floats, 2 FMA pipes"
    elif {"avx2", "fma"} <= flags:
        fma_units, simd, isa = 2, 8, "AVX2 + FMA (8 floats), 2 FMA units"
    else:
        fma_units, simd, isa = 1, 4, "SSE (4 floats), 1 multiply-add unit"
    gflops = cores * ghz * fma_units * simd * 2
    derivation = (f"{cores} cores x {ghz:.3f} GHz x {fma_units} FMA units x {simd} floats x 2 "
                  f"= {gflops:.1f} GFLOP/s ({isa}; the clock is /proc/cpuinfo's cpu MHz, no "
                  "turbo; all cores busy with FMAs every cycle)")
    return {"gflops": gflops, "cores": cores, "ghz": ghz, "fma_units": fma_units,
            "simd_floats": simd, "derivation": derivation}


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
    """Time one configuration of this package in this process."""
    sys.path.insert(0, ROOT)
    import runtime  # noqa: F401  (before TensorFlow; the parent set the kernels in the env)
    import numpy as np
    import tensorflow as tf

    from tensorflow.python.util import _pywrap_util_port

    import models

    model = models.build_model(shape, model_name, "ncc", lamda=1.0, lr=1e-4)
    rng = np.random.default_rng(0)
    inputs = {"moving": rng.random((1, *shape, 1), np.float32),
              "static": rng.random((1, *shape, 1), np.float32)}
    train = median_seconds(lambda: model.train_on_batch(inputs), repeats)
    infer = median_seconds(lambda: model.predict_on_batch(inputs), repeats)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        peak_mb = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"model": model_name, "shape": list(shape), "params": model.count_params(),
            "flops": model_flops(model),
            "train_step_s": round(train, 4), "inference_s": round(infer, 4),
            "peak_memory_mb": round(peak_mb, 1), "memory": "gpu_peak" if gpus else "cpu_max_rss",
            "onednn": _pywrap_util_port.IsMklEnabled(),
            "device": tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
            if gpus else cpu_name()}


def run_child(command: list[str], env: dict[str, str]) -> tuple[dict, float]:
    """Run a benchmark process with ``env`` added to the environment: the JSON of its last
    stdout line, and its peak RSS in MB."""
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   env={**os.environ, **env})
        stdout = process.stdout.read()
        process.stdout.close()
        _, status, usage = os.wait4(process.pid, 0)  # the rusage of this child alone
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            stderr.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.read()[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), usage.ru_maxrss / 1024  # kB on Linux


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


def compare(shape: str, model: str, kernels: str, repeats: int, official_python: str | None,
            official_first: bool) -> dict:
    """This package and the official release on one configuration, one after the other, both
    with the CPU kernels ``kernels`` (a key of :data:`KERNELS`)."""
    ours_command = [sys.executable, os.path.abspath(__file__), "--one", model, shape,
                    "--repeats", str(repeats)]
    runs = [("ours", ours_command)]
    if official_python:
        runs.append(("official", [official_python, ANCHOR, "--model", model, "--shape",
                                  *shape.lower().split("x"), "--repeats", str(repeats)]))
    if official_first:
        runs.reverse()
    result = {"kernels": kernels}
    for side, command in runs:
        load = os.getloadavg()[0]
        figures, peak_mb = run_child(command, KERNELS[kernels])
        figures.setdefault("peak_memory_mb", round(peak_mb, 1))
        result[side] = {**figures, "load_average_1min": round(load, 2)}
    return result


def rates(result: dict, peak_gflops: float) -> dict:
    """Achieved GFLOP/s of ours and its share of peak, and the ratios ours / official."""
    ours, official = result["ours"], result.get("official")
    derived = {}
    for kind, seconds, flops in (("train", "train_step_s", "train_step"),
                                 ("inference", "inference_s", "forward")):
        gflops = ours["flops"][flops] / ours[seconds] / 1e9
        derived[f"{kind}_gflops_per_s"] = round(gflops, 1)
        derived[f"{kind}_share_of_peak"] = round(gflops / peak_gflops, 3)
        if official:
            derived[f"{kind}_ratio"] = round(ours[seconds] / official[seconds], 2)
    return derived


def table(results: list[dict]) -> str:
    """One Markdown table: kernels, ours, official, ratio, GFLOP/s, share of peak, memory, load."""
    lines = ["| shape | model | kernels (oneDNN) | GFLOP forward / step "
             "| train step s: ours / official (ratio) "
             "| inference s: ours / official (ratio) | GFLOP/s train / inference "
             "| % of peak train / inference | peak MB: ours / official | load avg |",
             "|" + "---|" * 10]
    for r in results:
        ours, official, d = r["ours"], r.get("official"), r["derived"]

        def side(key: str, kind: str) -> str:
            if not official:
                return f"{ours[key]:.3f} / - (-)"
            return f"{ours[key]:.3f} / {official[key]:.3f} ({d[kind + '_ratio']:.2f})"

        memory = f"{ours['peak_memory_mb']:,.0f} / " + (
            f"{official['peak_memory_mb']:,.0f}" if official else "-")
        load = f"{ours['load_average_1min']:.1f}" + (
            f" / {official['load_average_1min']:.1f}" if official else "")
        lines.append(
            f"| {'x'.join(map(str, ours['shape']))} | {ours['model'].upper()} "
            f"| {r['kernels']} ({'on' if ours.get('onednn') else 'off'}) "
            f"| {ours['flops']['forward'] / 1e9:.1f} / {ours['flops']['train_step'] / 1e9:.1f} "
            f"| {side('train_step_s', 'train')} | {side('inference_s', 'inference')} "
            f"| {d['train_gflops_per_s']:.1f} / {d['inference_gflops_per_s']:.1f} "
            f"| {100 * d['train_share_of_peak']:.0f} / {100 * d['inference_share_of_peak']:.0f} "
            f"| {memory} | {load} |")
    return "\n".join(lines)


def speedups(results: list[dict], before: str = "eigen") -> str:
    """A Markdown table of how many times faster each kernel setting is than ``before``.

    One row per (shape, model, setting other than ``before``): the ``before`` run's seconds
    over this setting's, for a training step and an inference, ours and the official release's.
    Empty when ``before`` was not run.
    """
    base = {(tuple(r["ours"]["shape"]), r["ours"]["model"]): r for r in results
            if r["kernels"] == before}
    lines = []
    for r in results:
        old = base.get((tuple(r["ours"]["shape"]), r["ours"]["model"]))
        if r["kernels"] == before or old is None:
            continue
        cells = []
        for side in ("ours", "official"):
            for key in ("train_step_s", "inference_s"):
                if side in r and side in old:
                    cells.append(f"{old[side][key] / r[side][key]:.1f}x")
                else:
                    cells.append("-")
        lines.append(f"| {'x'.join(map(str, r['ours']['shape']))} | {r['ours']['model'].upper()} "
                     f"| {before} -> {r['kernels']} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join(["| shape | model | kernels | train step: ours | inference: ours "
                      "| train step: official | inference: official |", "|" + "---|" * 7,
                      *lines])


def write_json(path: str, content: dict) -> None:
    """Write ``content`` atomically: a temporary file in the same folder, then a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as file:
        json.dump(content, file, indent=2)
    os.replace(file.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES),
                        help="spatial shapes such as 160x192 or 80x96x80")
    parser.add_argument("--models", nargs="+", choices=("vm1", "vm2"), default=["vm1", "vm2"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--kernels", nargs="+", choices=tuple(KERNELS), default=["onednn"],
                        help="TensorFlow's CPU kernels for both sides (default: onednn, this "
                             "package's setting); several settings are run one after the other")
    parser.add_argument("--official_python", default=OFFICIAL_PYTHON,
                        help="Python of the official release's virtual environment (set up as "
                             "the anchor's docstring says)")
    parser.add_argument("--json", default=None, help="also write every figure to this file")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # child process: one configuration
        print(json.dumps(measure(args.one[0], parse_shape(args.one[1]), args.repeats)))
        return

    official = args.official_python if (os.path.exists(args.official_python)
                                        and os.path.exists(ANCHOR)) else None
    if official is None:
        print(f"note: official release skipped ({args.official_python} or {ANCHOR} is absent)",
              file=sys.stderr)
    with open("/proc/cpuinfo") as file:
        cpuinfo = file.read()
    peaks = {kernels: peak_fp32(cpuinfo, KERNELS[kernels].get("ONEDNN_MAX_CPU_ISA"))
             for kernels in args.kernels}
    results = []
    for shape in args.shapes:
        for model in args.models:
            for kernels in args.kernels:
                print(f"measuring {model} {shape} {kernels} ...", file=sys.stderr, flush=True)
                result = compare(shape, model, kernels, args.repeats, official,
                                 len(results) % 2 == 1)
                result["derived"] = rates(result, peaks[kernels]["gflops"])
                results.append(result)
                print(f"  {json.dumps(result)}", file=sys.stderr, flush=True)
    isa = cpu_isa(cpuinfo)
    print(table(results))
    if speedups(results):
        print("\n" + speedups(results))
    for kernels, peak in peaks.items():
        print(f"\nPeak FP32 ({kernels}): {peak['derivation']}.", end="")
    default = "on" if isa["tensorflow_onednn_default"] else "off"
    print(f"\n{CONVENTIONS}\nCPU: {cpu_name()}, {isa['isa']} (TensorFlow's own oneDNN default "
          f"here: {default}), {os.cpu_count()} logical CPUs; load average (1 min) before each "
          "run in the last column (ours / official).")
    if args.json:
        write_json(args.json, {"cpu": cpu_name(), "isa": isa, "peak_fp32": peaks,
                               "kernels": {k: KERNELS[k] for k in args.kernels},
                               "conventions": CONVENTIONS, "results": results})


if __name__ == "__main__":
    main()
