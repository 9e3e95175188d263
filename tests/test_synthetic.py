"""The synthetic default data: the template, random subjects, and their loader."""
import numpy as np

import synthetic


def test_default_data_is_the_template_with_three_tissue_labels():
    data3 = synthetic.load_default_data(3)
    assert data3.atlas.shape == (80, 96, 80)
    assert data3.atlas.min() == 0.0 and data3.atlas.max() == 1.0
    assert set(np.unique(data3.atlas_seg)) == {0, 1, 2, 3}
    data2 = synthetic.load_default_data(2)
    np.testing.assert_array_equal(data2.atlas, data3.atlas[..., synthetic.DEFAULT_SLICE])
    assert data3.spacing == (2.0, 2.0, 2.0) and data2.spacing == (2.0, 2.0)  # the 2 mm template


def test_synthetic_subjects_are_reproducible_deformations_of_the_atlas():
    data = synthetic.load_default_data(2)
    vols, segs = synthetic.synthetic_subjects(data.atlas, 3, seed=7, atlas_seg=data.atlas_seg)
    again, _ = synthetic.synthetic_subjects(data.atlas, 3, seed=7)
    assert vols.shape == segs.shape == (3, 80, 96)
    np.testing.assert_array_equal(vols, again)
    assert 0.0 <= vols.min() and vols.max() <= 1.0
    assert set(np.unique(segs)) <= {0, 1, 2, 3}
    assert not np.array_equal(segs[0], data.atlas_seg)  # moved...
    assert np.mean(segs[0] == data.atlas_seg) > 0.5  # ...but still the same brain


def test_synthetic_loader_makes_new_pairs_with_the_atlas_as_static():
    data = synthetic.load_default_data(2)
    loader = synthetic.SyntheticDataLoader(data.atlas, batch_size=2, steps=3, seed=0)
    first, second = loader[0], loader[1]
    assert len(loader) == 3
    assert first["moving"].shape == (2, 80, 96, 1)
    np.testing.assert_array_equal(first["static"][0, ..., 0], data.atlas)
    assert not np.array_equal(first["moving"], second["moving"])
