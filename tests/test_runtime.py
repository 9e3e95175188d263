"""TensorFlow's settings are made before it loads, in every module that imports it."""
import ast
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import os, models; from tensorflow.python.util import _pywrap_util_port as port; "
         "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], port.IsMklEnabled())")


def first_imports(path: str) -> list[str]:
    """Top-level module names imported by a file, in order (function bodies included)."""
    names = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append((node.lineno, node.module.split(".")[0]))
    return [name for _, name in sorted(names)]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "*.py"))
                                        + glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))))
def test_runtime_is_imported_before_tensorflow(path):
    names = first_imports(path)
    framework = [i for i, name in enumerate(names) if name in ("tensorflow", "keras")]
    if framework:
        assert "runtime" in names[:framework[0]], f"{path} imports TensorFlow before runtime"


def probed(code: str, variable: str, setting: str | None) -> tuple[list[str], str]:
    """The words ``code`` prints in a fresh interpreter with the environment ``variable`` unset
    (``setting`` None) or set to ``setting``, and the end of its stderr."""
    env = {key: value for key, value in os.environ.items() if key != variable}
    if setting is not None:
        env[variable] = setting
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                            capture_output=True, timeout=120)
    return result.stdout.split(), result.stderr[-2000:]


@pytest.mark.parametrize("setting, expected", [(None, "1 True"), ("0", "0 False")])
def test_onednn_is_on_unless_the_user_turned_it_off(setting, expected):
    words, stderr = probed(PROBE, "TF_ENABLE_ONEDNN_OPTS", setting)
    assert words[-2:] == expected.split(), stderr


HUGEPAGE = "import runtime, numpy as np; print(np._core.multiarray._set_madvise_hugepage(True))"


@pytest.mark.parametrize("setting, expected", [(None, "False"), ("1", "True")])
def test_numpy_asks_for_no_huge_pages_unless_the_user_said_so(setting, expected):
    words, stderr = probed(HUGEPAGE, "NUMPY_MADVISE_HUGEPAGE", setting)
    assert words == [expected], stderr


def test_main_imports_runtime_before_numpy():
    names = first_imports(os.path.join(ROOT, "main.py"))
    assert names.index("runtime") < names.index("numpy")


PREDICT = """
import sys, numpy as np, keras, models
path, out = sys.argv[1], sys.argv[2]
if sys.argv[3] == "build":  # a 3D VM-2 with weights away from the near-zero initial field
    keras.utils.set_random_seed(0)
    model = models.build_model((16, 16, 16), "vm2")
    rng = np.random.default_rng(1)
    for weight in model.weights:
        weight.assign(weight.numpy() + rng.normal(0, 0.05, weight.shape))
    model.save(path)
model = keras.models.load_model(path)
rng = np.random.default_rng(2)
pair = {key: rng.random((1, 16, 16, 16, 1), np.float32) for key in ("moving", "static")}
np.save(out, model.predict_on_batch(pair)["deformation"])
"""


def test_onednn_and_eigen_kernels_give_the_same_field(tmp_path):
    fields = []
    for setting, step in (("1", "build"), ("0", "load")):
        out = tmp_path / f"field{setting}.npy"
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting}
        result = subprocess.run([sys.executable, "-c", PREDICT, str(tmp_path / "m.keras"),
                                 str(out), step], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        fields.append(np.load(out))
    largest = np.abs(fields[0]).max()
    assert largest > 0.01  # a field worth comparing
    # float32 round-off, summed in another order by each library over 18 convolutions
    assert np.abs(fields[0] - fields[1]).max() < 1e-3 * largest
