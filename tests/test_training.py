"""Training: the loaders of each kind of data, and a run's tracing (where training runs:
test_distribution.py)."""
import nibabel as nib
import numpy as np
import pytest

import datasets
import filelists
import main
import objective
import training

OPTIONS = {"labels": None}  # of the loaders: no segmentation loss


def save_subjects(folder, count=4, shape=(6, 7)):
    """``count`` distinct 2D NIfTI images in ``folder``, and the same as an ``.npy`` stack."""
    folder.mkdir()
    vols = np.random.default_rng(0).integers(0, 255, size=(count, *shape)).astype(np.uint8)
    for i, volume in enumerate(vols):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / f"s{i}.nii.gz")
    np.save(folder.parent / "vols.npy", vols)
    return vols


@pytest.mark.parametrize("mode", ["atlas", "scan_to_scan"])
def test_lazy_and_in_memory_sets_give_the_same_padded_batches(tmp_path, mode):
    vols = save_subjects(tmp_path / "set")
    np.save(tmp_path / "atlas.npy", vols[0])
    atlas = str(tmp_path / "atlas.npy") if mode == "atlas" else None
    loaders = []
    for path in (tmp_path / "vols.npy", tmp_path / "set"):
        data = datasets.pad_dataset(datasets.load_dataset(str(path), atlas, ndim=2), (16, 16))
        loaders.append(training.training_loader(data, mode, False, 2, 2, 0, False, OPTIONS))
    assert isinstance(loaders[1].moving if mode == "atlas" else loaders[1].vols,
                      filelists.LazyVolumes)
    for _ in range(2):  # epochs
        for index in range(2):
            memory, lazy = loaders[0][index], loaders[1][index]
            assert lazy["moving"].shape == (2, 16, 16, 1)
            for name in ("moving", "static"):
                np.testing.assert_array_equal(lazy[name], memory[name])
        for loader in loaders:
            loader.on_epoch_end()


def test_listed_pairs_are_drawn_once_per_epoch_in_an_order_shuffled_by_seed(tmp_path):
    vols = save_subjects(tmp_path / "set", count=6)
    rows = [(i, (i + 1) % 6) for i in range(6)]
    (tmp_path / "pairs.csv").write_text("moving,static\n" + "".join(
        f"set/s{m}.nii.gz,set/s{s}.nii.gz\n" for m, s in rows))
    data = datasets.load_pairs_file(str(tmp_path / "pairs.csv"))
    normalized = [datasets.normalize(volume) for volume in vols]

    def subject(image):
        return next(i for i, volume in enumerate(normalized) if np.array_equal(image, volume))

    def epochs(seed):
        loader = training.training_loader(data, "listed", False, 4, None, seed, False, OPTIONS)
        drawn = []
        for _ in range(2):
            batches = [loader[i] for i in range(len(loader))]
            drawn.append([(subject(m[..., 0]), subject(s[..., 0])) for inputs in batches
                          for m, s in zip(inputs["moving"], inputs["static"])])
            loader.on_epoch_end()
        return drawn

    first, second = epochs(seed=0)
    assert sorted(first) == sorted(second) == rows  # every listed pair once an epoch
    assert first != second  # shuffled again
    assert epochs(seed=0) == [first, second] and epochs(seed=1) != [first, second]


def test_a_new_run_traces_its_train_step_once(tmp_path, monkeypatch):
    """The optimiser is built before ``fit``: built in the first trace of the train step, its
    new variables would make TensorFlow trace the step a second time (seconds a run)."""
    traces = []
    compute_loss = objective.TrainingModel.compute_loss

    def counted(self, *args, training=True, **kwargs):
        traces.append(training)  # Python runs only while TensorFlow traces the step
        return compute_loss(self, *args, training=training, **kwargs)

    monkeypatch.setattr(objective.TrainingModel, "compute_loss", counted)
    data = str(tmp_path / "set.npy")
    np.save(data, np.random.default_rng(0).random((4, 16, 16)).astype(np.float32))
    assert main.main(["--data", data, "--ndim", "2", "--model", "vm1", "--pairs", "scan_to_scan",
                      "--epochs", "1", "--steps_per_epoch", "2",
                      "--output", str(tmp_path / "run")]) == 0
    assert traces.count(True) == 1
