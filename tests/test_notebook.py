"""voxelmorph.ipynb runs top to bottom (quick mode), scores main.py's validation subjects, and
is committed without outputs."""
import os
import re

import nbclient
import nbformat
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "voxelmorph.ipynb")
CELL_TIMEOUT = 300  # seconds


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def dice_before_registration(path) -> tuple[float, dict[str, float]]:
    """Dice of each subject's label map with the atlas's (the ``.npz`` at ``path``), per label,
    by numpy: the mean over labels then subjects, and the mean of each label over subjects."""
    with np.load(path) as stored:
        atlas, labels, names = stored["atlas_seg"], stored["labels"], stored["label_names"]
        dice = np.array([[2 * np.sum((seg == label) & (atlas == label))
                          / (np.sum(seg == label) + np.sum(atlas == label)) for label in labels]
                         for seg in stored["segs"]])
    return float(dice.mean(axis=1).mean()), dict(zip(names.tolist(), dice.mean(axis=0)))


def test_notebook_runs_top_to_bottom_in_quick_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("VOXELMORPH_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    reference = tmp_path / "validation.npz"  # main.py's validation set, saved by one more cell
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import numpy, synthetic\n_set = synthetic.default_validation_set(2)\n"
        f"numpy.savez({str(reference)!r}, segs=_set.segs, atlas_seg=_set.atlas_seg, "
        "labels=_set.labels, label_names=_set.label_names)"))
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": ROOT}})
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in code_cells(notebook) for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    figures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(figures) >= 8  # framework, data, history, overlay, grid, displacement, ...
    printed = "".join(output.get("text", "") for output in outputs)
    # the scores it prints: Dice of main.py's validation subjects before and after registration
    before, after, folding = map(float, re.search(
        r"^Dice (\d\.\d{3}) -> (\d\.\d{3}), folding (\d+\.\d{3})% of voxels", printed,
        re.MULTILINE).groups())
    mean, per_label = dice_before_registration(reference)
    assert abs(before - mean) <= 5e-4 + 1e-9  # printed with 3 decimals
    assert 0.0 < after <= 1.0 and 0.0 <= folding <= 100.0
    for name, expected in per_label.items():
        line = re.search(rf"^ *{re.escape(name)}: Dice (\d\.\d{{3}}) -> (\d\.\d{{3}})$",
                         printed, re.MULTILINE)
        assert abs(float(line[1]) - expected) <= 5e-4 + 1e-9 and 0.0 < float(line[2]) <= 1.0
