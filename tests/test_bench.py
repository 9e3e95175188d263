"""The benchmark's operation count and peak-rate derivation, checked by hand."""
import keras
import pytest

from benchmarks import bench

INTEL = """processor\t: {n}
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Platinum
physical id\t: 0
core id\t\t: {core}
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw
"""


def test_one_strided_3d_convolution_counted_by_hand():
    # Conv3D 3x3x3, 2 -> 4 channels, stride 2 on 8^3: 4^3 = 64 output voxels, each needing
    # 27 * 2 * 4 = 216 multiply-adds: 2 * 216 * 64 = 27,648 FLOPs.
    inputs = keras.Input((8, 8, 8, 2))
    outputs = keras.layers.Conv3D(4, 3, strides=2, padding="same")(inputs)
    flops = bench.model_flops(keras.Model(inputs, outputs))
    assert flops == {"forward": 27_648, "train_step": 3 * 27_648}


def test_only_convolutions_are_counted():
    # Conv2D 3x3, 1 -> 2 channels on 4x6 (same padding, 24 voxels): 2 * 9 * 2 * 24 = 864; the
    # LeakyReLU and the upsampling after it add nothing.
    inputs = keras.Input((4, 6, 1))
    x = keras.layers.LeakyReLU(0.2)(keras.layers.Conv2D(2, 3, padding="same")(inputs))
    outputs = keras.layers.UpSampling2D(2)(x)
    assert bench.model_flops(keras.Model(inputs, outputs))["forward"] == 864


def test_peak_of_a_two_core_avx512_xeon():
    # 2 cores x 2.0 GHz x 2 FMA units x 16 floats x 2 FLOPs = 256 GFLOP/s.
    cpuinfo = "\n".join(INTEL.format(n=n, core=n) for n in range(2))
    peak = bench.peak_fp32(cpuinfo)
    assert peak["cores"] == 2 and peak["simd_floats"] == 16 and peak["fma_units"] == 2
    assert peak["gflops"] == pytest.approx(256.0)


def test_hyperthreads_share_their_core_and_zen4_runs_avx512_on_256_bit_pipes():
    # Two logical CPUs on one core; AMD family 25: 1 core x 2.0 GHz x 2 x 8 floats x 2 = 64.
    cpuinfo = "\n".join(INTEL.format(n=n, core=0).replace("GenuineIntel", "AuthenticAMD")
                        .replace("family\t: 6", "family\t: 25") for n in range(2))
    peak = bench.peak_fp32(cpuinfo)
    assert peak["cores"] == 1 and peak["simd_floats"] == 8
    assert peak["gflops"] == pytest.approx(64.0)


def test_an_avx2_cap_halves_the_vector_width_and_vnni_means_onednn_by_default():
    cpuinfo = "\n".join(INTEL.format(n=n, core=n) for n in range(2))
    assert bench.peak_fp32(cpuinfo, "AVX2")["gflops"] == pytest.approx(128.0)  # 8 floats
    assert bench.cpu_isa(cpuinfo) == {"isa": "AVX-512", "tensorflow_onednn_default": False}
    vnni = cpuinfo.replace("avx512bw", "avx512bw avx512_vnni")
    assert bench.cpu_isa(vnni) == {"isa": "AVX-512 VNNI", "tensorflow_onednn_default": True}
