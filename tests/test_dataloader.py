"""Reading data, pairing it, and the Keras loaders."""
import os
import tempfile

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import nibabel as nib
import numpy as np
import pytest

import dataloader
import datasets
import volumes


def test_registration_loader_pairs_every_moving_image_with_the_atlas():
    moving = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    atlas = np.full((16, 16), 0.5, np.float32)
    loader = dataloader.RegistrationDataLoader(moving, atlas, batch_size=2)
    assert len(loader) == 3
    inputs, targets = loader[2]  # the last, smaller batch
    assert inputs["moving"].shape == inputs["static"].shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(inputs["moving"][0, ..., 0], moving[4])
    np.testing.assert_array_equal(targets["moved"], inputs["static"])
    assert targets["deformation"].shape == (1, 16, 16, 2)
    assert not targets["deformation"].any()


def test_registration_loader_accepts_one_static_image_per_moving_image():
    moving = np.zeros((3, 8, 8, 8), np.float32)
    static = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 8, 8, 8))
    inputs, _ = dataloader.RegistrationDataLoader(moving, static)[1]
    assert inputs["static"].shape == (1, 8, 8, 8, 1)
    assert np.all(inputs["static"] == 1.0)


def test_registration_loader_refuses_mismatched_shapes():
    with pytest.raises(volumes.DataError, match="shapes differ"):
        dataloader.RegistrationDataLoader(np.zeros((2, 16, 16)), np.zeros((16, 32)))


def test_scan_to_scan_pairs_are_distinct_volumes():
    pairs = datasets.scan_to_scan_pairs(4, num_pairs=200, seed=0)
    assert pairs.shape == (200, 2)
    assert np.all(pairs[:, 0] != pairs[:, 1])
    assert set(pairs.ravel()) == {0, 1, 2, 3}
    assert len(datasets.scan_to_scan_pairs(3)) == 6  # every ordered pair


def test_scan_to_scan_loader_yields_pairs_of_the_set():
    vols = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 16, 16), np.float32)
    loader = dataloader.ScanToScanDataLoader(vols, batch_size=4, pairs_per_epoch=8, seed=1)
    inputs, _ = loader[0]
    moving, static = inputs["moving"][:, 0, 0, 0], inputs["static"][:, 0, 0, 0]
    assert len(loader) == 2
    assert np.all(moving != static)


def test_make_pairs_keeps_label_maps_aligned_with_their_images():
    vols = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    data = datasets.Dataset(vols=vols, segs=(vols > 0.5).astype(np.int32))
    pairs = datasets.make_pairs(data, "scan_to_scan")
    assert len(pairs) == 6
    for moving, static, moving_seg, static_seg in pairs:
        np.testing.assert_array_equal(moving_seg, moving > 0.5)
        np.testing.assert_array_equal(static_seg, static > 0.5)


def test_normalize_scales_to_unit_range_and_refuses_nan():
    np.testing.assert_allclose(datasets.normalize(np.array([2.0, 4.0, 6.0])), [0.0, 0.5, 1.0])
    with pytest.raises(volumes.DataError, match="NaN or Inf"):
        datasets.normalize(np.array([0.0, np.inf]))


def test_npy_npz_and_nifti_load_alike(tmp_path):
    vols = np.random.default_rng(0).integers(0, 255, size=(2, 8, 12, 16)).astype(np.uint8)
    np.save(tmp_path / "vols.npy", vols)
    np.savez(tmp_path / "set.npz", vols=vols, segs=vols // 100, atlas=vols[0])
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    (tmp_path / "nifti").mkdir()
    for i, vol in enumerate(vols):
        nib.save(nib.Nifti1Image(vol, affine), tmp_path / "nifti" / f"sub{i}.nii.gz")

    from_npy = datasets.load_dataset(str(tmp_path / "vols.npy"))
    from_npz = datasets.load_dataset(str(tmp_path / "set.npz"))
    from_nifti = datasets.load_dataset(str(tmp_path / "nifti"))
    for data in (from_npy, from_npz, from_nifti):
        assert data.vols.shape == (2, 8, 12, 16)
        assert data.vols.dtype == np.float32
        assert data.vols.min() == 0.0 and data.vols.max() == 1.0
        np.testing.assert_allclose(data.vols, from_npy.vols)
    assert from_npz.segs.dtype == np.int32 and from_npz.atlas.shape == (8, 12, 16)


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 4)), "expected volumes of shape"),
    (np.zeros((2, 4, 4, 4, 4, 4)), "expected volumes of shape"),
    (np.array([[[[0.0, np.nan]]]]), "NaN or Inf"),
])
def test_bad_arrays_are_refused_with_a_clear_message(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(volumes.DataError, match=message):
        datasets.load_dataset(str(tmp_path / "bad.npy"))


def test_missing_files_and_unknown_types_are_refused(tmp_path):
    with pytest.raises(volumes.DataError, match="no such file"):
        datasets.load_dataset(str(tmp_path / "missing.npz"))
    (tmp_path / "data.txt").write_text("1 2 3")
    with pytest.raises(volumes.DataError, match="unsupported file type"):
        datasets.load_dataset(str(tmp_path / "data.txt"))


def test_an_atlas_of_another_shape_is_refused(tmp_path):
    np.save(tmp_path / "vols.npy", np.zeros((2, 16, 16)))
    np.save(tmp_path / "atlas.npy", np.zeros((16, 32)))
    with pytest.raises(volumes.DataError, match="shapes differ"):
        datasets.load_dataset(str(tmp_path / "vols.npy"), str(tmp_path / "atlas.npy"))


def test_padding_makes_sizes_divisible_and_crop_undoes_it():
    volume = np.random.default_rng(0).random((2, 20, 33))
    shape = datasets.padded_shape(volume.shape[1:], 16)
    padding = datasets.padding_to_shape(volume.shape[1:], shape)
    padded = datasets.pad(volume, padding)
    assert shape == (32, 48) and padded.shape == (2, 32, 48)
    assert padding == [(6, 6), (7, 8)]  # centred
    np.testing.assert_array_equal(datasets.crop(padded, padding), volume)


def test_volumes_larger_than_the_target_shape_are_refused():
    with pytest.raises(volumes.DataError, match="do not fit the model's input shape"):
        datasets.padding_to_shape((20, 40), (32, 32))


def test_label_maps_must_hold_integers():
    assert volumes.as_label_map(np.array([0.0, 3.0, 17.0])).dtype == np.float64
    with pytest.raises(volumes.DataError, match="integer labels"):
        volumes.as_label_map(np.array([0.0, 0.5]))


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".nii.gz"])
def test_save_volume_then_load_volume_round_trips(tmp_path, suffix):
    volume = np.random.default_rng(0).integers(0, 40, size=(6, 7, 8)).astype(np.int16)
    path = str(tmp_path / f"vol{suffix}")
    volumes.save_volume(path, volume)
    loaded, image = volumes.load_volume(path)
    np.testing.assert_array_equal(loaded, volume)
    assert loaded.dtype == (np.uint8 if suffix == ".nii.gz" else np.int16)  # NIfTI: smallest fit
    assert (image is not None) == (suffix == ".nii.gz")


def test_nifti_output_keeps_the_reference_affine_and_takes_its_own_dtype(tmp_path):
    affine = np.array([[0, 0, 1.5, -10], [-2, 0, 0, 20], [0, 1, 0, 5], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.uint8), affine), tmp_path / "ref.nii.gz")
    _, reference = volumes.load_volume(str(tmp_path / "ref.nii.gz"))
    field = np.random.default_rng(1).normal(size=(4, 5, 6, 3)).astype(np.float32)
    volumes.save_volume(str(tmp_path / "out.nii.gz"), field, reference, vector=True)
    saved = nib.load(tmp_path / "out.nii.gz")
    np.testing.assert_allclose(saved.affine, affine)
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj)[:, :, :, 0], field)
    assert saved.get_data_dtype() == np.float32 and saved.header.get_intent()[0] == "vector"


def test_spacing_comes_from_nifti_zooms_or_the_npz_and_is_otherwise_unknown(tmp_path):
    vols = np.random.default_rng(0).random((2, 6, 7, 8)).astype(np.float32)
    affine = np.array([[0, 0, 1.5, 0], [-0.8, 0, 0, 0], [0, 1.2, 0, 0], [0, 0, 0, 1.0]])
    (tmp_path / "nifti").mkdir()
    for i, vol in enumerate(vols):
        nib.save(nib.Nifti1Image(vol, affine), tmp_path / "nifti" / f"sub{i}.nii.gz")
    np.savez(tmp_path / "one.npz", vols=vols, spacing=2.0)
    np.savez(tmp_path / "axes.npz", vols=vols, spacing=[1.0, 1.25, 3.0])
    np.save(tmp_path / "vols.npy", vols)
    nifti = datasets.load_dataset(str(tmp_path / "nifti"))
    assert nifti.spacing == pytest.approx((0.8, 1.2, 1.5))  # header zooms, in array axis order
    assert datasets.load_dataset(str(tmp_path / "one.npz")).spacing == (2.0, 2.0, 2.0)
    assert datasets.load_dataset(str(tmp_path / "axes.npz")).spacing == (1.0, 1.25, 3.0)
    assert datasets.load_dataset(str(tmp_path / "vols.npy")).spacing is None


def test_nifti_files_that_disagree_on_spacing_leave_it_unknown(tmp_path):
    for i, zoom in enumerate((1.0, 2.0)):
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.diag([zoom] * 3 + [1.0])),
                 tmp_path / f"sub{i}.nii")
    assert datasets.load_dataset(str(tmp_path)).spacing is None


@pytest.mark.parametrize("spacing", [0.0, [1.0, -1.0, 1.0], [1.0, 1.0], "1mm", np.nan])
def test_a_bad_npz_spacing_is_refused(tmp_path, spacing):
    np.savez(tmp_path / "set.npz", vols=np.zeros((2, 4, 4, 4)), spacing=spacing)
    with pytest.raises(volumes.DataError, match="spacing must be one positive value or 3"):
        datasets.load_dataset(str(tmp_path / "set.npz"))


def test_padding_and_splitting_keep_the_spacing():
    data = datasets.Dataset(vols=np.zeros((3, 6, 6), np.float32), spacing=(1.0, 2.0))
    assert datasets.pad_dataset(data, (16, 16)).spacing == (1.0, 2.0)
    assert all(part.spacing == (1.0, 2.0) for part in datasets.split(data, 1))


def _loads_or_refuses(path: str) -> None:
    """Every reader either reads ``path`` or raises DataError: never another exception."""
    for read in (volumes.load_volume, datasets.load_dataset,
                 lambda p: datasets.load_dataset(p, ndim=2)):
        try:
            read(path)
        except volumes.DataError:
            pass


SUFFIXES = st.sampled_from([".npy", ".npz", ".nii", ".nii.gz"])


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(data=st.binary(max_size=600), suffix=SUFFIXES,
                  keep_header=st.booleans())
def test_random_bytes_in_any_format_give_only_data_errors(data, suffix, keep_header):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz" + suffix)
        if keep_header:  # a real header of the format, then garbage: damaged, not foreign
            volumes.save_volume(path, np.ones((4, 4, 4), np.float32))
            data = open(path, "rb").read()[:len(data) // 2] + data
        with open(path, "wb") as file:
            file.write(data)
        _loads_or_refuses(path)


ARRAYS = hnp.arrays(dtype=st.one_of(hnp.scalar_dtypes(), hnp.unicode_string_dtypes()),
                    shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4))


@hypothesis.settings(max_examples=60, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(array=ARRAYS, suffix=SUFFIXES, key=st.sampled_from(["vols", "segs", "vol"]))
def test_random_arrays_in_any_format_give_only_data_errors(array, suffix, key):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz" + suffix)
        if suffix == ".npy":
            np.save(path, array)
        elif suffix == ".npz":
            np.savez(path, **{key: array, "vols" if key == "segs" else "segs": array})
        else:
            try:  # nibabel refuses some arrays itself: those cannot be fuzzed as NIfTI
                nib.save(nib.Nifti1Image(array, np.eye(4)), path)
            except Exception:
                hypothesis.reject()
        _loads_or_refuses(path)
