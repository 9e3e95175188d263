"""Make the top-level modules importable; TensorFlow's settings (runtime.py) before any test."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import runtime  # noqa: E402, F401  (oneDNN on, quiet logs: before TensorFlow loads)


import numpy as np  # noqa: E402
import pytest  # noqa: E402


def make_labelled_pair(shape=(32, 32)):
    """A blob and its copy shifted by two voxels, with their label maps (labels 1 and 2)."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    blob = np.exp(-sum(g**2 for g in grid) / 0.2).astype(np.float32)
    seg = np.digitize(blob, [0.3, 0.7]).astype(np.int32)
    return blob, np.roll(blob, 2, axis=0), seg, np.roll(seg, 2, axis=0)


@pytest.fixture
def labelled_pair():
    """:func:`make_labelled_pair`, for tests that need a small registration problem."""
    return make_labelled_pair


@pytest.fixture
def sigint_in_epoch_2(monkeypatch):
    """Training sends itself SIGINT, as Ctrl-C would, during the first batch of its second
    epoch (``rundir.Checkpoint`` then saves the run where it stopped); the fixture's value is
    the monkeypatch, whose ``undo()`` ends the interruptions (to resume)."""
    import signal

    import rundir

    save_batch = rundir.Checkpoint.on_train_batch_end

    def interrupt_in_epoch_2(self, batch, logs=None):
        if (self.state["epoch"], batch) == (1, 0):
            os.kill(os.getpid(), signal.SIGINT)
        save_batch(self, batch, logs)

    monkeypatch.setattr(rundir.Checkpoint, "on_train_batch_end", interrupt_in_epoch_2)
    return monkeypatch


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep the tests of a module that use its module-scoped fixtures (a trained model, a
    registered pair) on one pytest-xdist worker (``--dist loadgroup``, pytest.ini), so each
    fixture is made once, not once per worker; the other tests are spread one by one."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        shared = sorted(name for name in (info.names_closure if info else ())
                        if any(definition.scope == "module" and
                               definition.baseid.startswith("tests/")
                               for definition in info.name2fixturedefs.get(name, ())))
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
