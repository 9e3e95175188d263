"""Sets of volumes: loading, normalising, padding, splitting, pairing; spacing."""

import nibabel as nib
import numpy as np
import pytest

import datasets
import filelists
import pairing
import volumes


def test_scan_to_scan_pairs_are_distinct_volumes():
    pairs = pairing.scan_to_scan_pairs(4, num_pairs=200, seed=0)
    assert pairs.shape == (200, 2)
    assert np.all(pairs[:, 0] != pairs[:, 1])
    assert set(pairs.ravel()) == {0, 1, 2, 3}
    assert len(pairing.scan_to_scan_pairs(3)) == 6  # every ordered pair


def test_make_pairs_keeps_label_maps_aligned_with_their_images():
    vols = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    data = datasets.Dataset(vols=vols, segs=(vols > 0.5).astype(np.int32))
    pairs = pairing.make_pairs(data, "scan_to_scan")
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
        vols = np.asarray(data.vols)  # the folder's are read now
        assert data.vols.shape == vols.shape == (2, 8, 12, 16)
        assert vols.dtype == np.float32
        assert vols.min() == 0.0 and vols.max() == 1.0
        np.testing.assert_allclose(vols, from_npy.vols)
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


def test_an_atlas_of_another_shape_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "vols.npy", rng.random((2, 16, 16)))
    np.save(tmp_path / "atlas.npy", rng.random((16, 32)))
    with pytest.raises(volumes.DataError, match="shapes differ"):
        datasets.load_dataset(str(tmp_path / "vols.npy"), str(tmp_path / "atlas.npy"))


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
    np.savez(tmp_path / "set.npz", vols=np.random.default_rng(0).random((2, 4, 4, 4)),
             spacing=spacing)
    with pytest.raises(volumes.DataError, match="spacing must be one positive value or 3"):
        datasets.load_dataset(str(tmp_path / "set.npz"))


def test_padding_and_splitting_keep_the_spacing():
    data = datasets.Dataset(vols=np.zeros((3, 6, 6), np.float32), spacing=(1.0, 2.0))
    assert datasets.pad_dataset(data, (16, 16)).spacing == (1.0, 2.0)
    assert all(part.spacing == (1.0, 2.0) for part in pairing.split(data, 1))


def test_a_folder_of_freesurfer_mgz_files_is_a_dataset_with_their_voxel_size(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    for name in ("sub1.mgz", "sub2.mgz"):
        volume = rng.integers(0, 255, size=(8, 9, 10)).astype(np.uint8)
        nib.save(nib.MGHImage(volume, np.diag([1.2, 1.2, 1.5, 1.0])), tmp_path / name)
    data = datasets.load_dataset(str(tmp_path))
    assert data.vols.shape == (2, 8, 9, 10)
    np.testing.assert_allclose(data.spacing, (1.2, 1.2, 1.5), rtol=1e-6)
    for volume in data.vols:
        assert volume.min() == 0.0 and volume.max() == 1.0  # scaled per volume


def save_slices(folder, count, shape=(6, 7), seed=0):
    """``count`` 2D NIfTI images (uint8) and their label maps in ``folder``: the file names."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        image = rng.integers(0, 255, size=shape).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, np.eye(4)), folder / f"img{i:02d}.nii.gz")
        nib.save(nib.Nifti1Image((image > 127).astype(np.uint8), np.eye(4)),
                 folder / f"seg{i:02d}.nii.gz")
        names.append((f"img{i:02d}.nii.gz", f"seg{i:02d}.nii.gz"))
    return names


def test_a_folder_is_read_when_indexed_through_a_bounded_cache(tmp_path, monkeypatch):
    save_slices(tmp_path / "set", 12)
    for name in (tmp_path / "set").glob("seg*"):
        name.unlink()
    reads = []
    load_volume = volumes.load_volume
    monkeypatch.setattr(volumes, "load_volume", lambda path: reads.append(path) or
                        load_volume(path))
    data = datasets.load_dataset(str(tmp_path / "set"))
    assert isinstance(data.vols, filelists.LazyVolumes) and data.shape == (6, 7)
    assert len(data.vols) == 12 and reads == []  # shapes from the headers only
    view = data.vols[[11, 11, 5]]
    assert reads == [] and view.shape == (3, 6, 7)
    for _ in range(2):
        for i in range(12):
            volume = data.vols[i]
            assert volume.dtype == np.float32 and volume.min() == 0 and volume.max() == 1
    assert len(reads) == 24  # 12 > CACHE_SIZE: each pass reads every file again
    assert data.vols.read.cache_info().currsize == datasets.CACHE_SIZE
    np.testing.assert_array_equal(view[1], data.vols[11])  # views share the cache
    assert len(reads) == 24


def test_text_and_csv_lists_give_paths_relative_to_the_list(tmp_path):
    names = save_slices(tmp_path / "images", 3)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "set.txt").write_text("".join(f"../images/{image}\n"
                                                        for image, _ in names))
    (tmp_path / "lists" / "set.csv").write_text("image,seg\n" + "".join(
        f"../images/{image},{tmp_path / 'images' / seg}\n" for image, seg in names))
    listed = datasets.load_dataset(str(tmp_path / "lists" / "set.txt"))
    labelled = datasets.load_dataset(str(tmp_path / "lists" / "set.csv"))
    assert listed.segs is None and labelled.segs.shape == labelled.vols.shape == (3, 6, 7)
    for i, (image, seg) in enumerate(names):
        stored = np.asarray(nib.load(tmp_path / "images" / image).dataobj)
        np.testing.assert_array_equal(listed.vols[i], datasets.normalize(stored))
        np.testing.assert_array_equal(labelled.vols[i], listed.vols[i])
        assert labelled.segs[i].dtype == np.int32
        np.testing.assert_array_equal(labelled.segs[i], stored > 127)


def test_a_pairs_file_gives_its_pairs_in_order_with_their_label_maps(tmp_path):
    names = save_slices(tmp_path, 3)
    rows = [(2, 0), (0, 1), (2, 1)]  # a longitudinal list need not pair distinct subjects
    (tmp_path / "pairs.csv").write_text("moving,static,moving_seg,static_seg\n" + "".join(
        f"{names[m][0]},{names[s][0]},{names[m][1]},{names[s][1]}\n" for m, s in rows))
    data = datasets.load_pairs_file(str(tmp_path / "pairs.csv"))
    assert pairing.pairing_mode(data) == "listed"
    pairs = pairing.make_pairs(data, "listed")
    assert len(pairs) == 3
    for (moving, static, moving_seg, static_seg), (m, s) in zip(pairs, rows):
        for volume, seg, subject in ((moving, moving_seg, m), (static, static_seg, s)):
            stored = np.asarray(nib.load(tmp_path / names[subject][0]).dataobj)
            np.testing.assert_array_equal(volume, datasets.normalize(stored))
            np.testing.assert_array_equal(seg, stored > 127)
    train, val = pairing.split_pairs(data, 0.3, "pairs.csv")
    assert len(train.pairs) == 2 and len(val.pairs) == 1
    np.testing.assert_array_equal(val.pairs, data.pairs[2:])


@pytest.mark.parametrize("kind", ["pairs", "csv", "txt"])
def test_lists_saved_by_a_spreadsheet_with_a_byte_order_mark_and_crlf_are_read(tmp_path, kind):
    names = save_slices(tmp_path, 2)
    text = {"pairs": f"moving,static\r\n{names[0][0]},{names[1][0]}\r\n",
            "csv": f"image,seg\r\n{names[0][0]},{names[0][1]}\r\n{names[1][0]},{names[1][1]}\r\n",
            "txt": f"{names[0][0]}\r\n{names[1][0]}\r\n"}[kind]
    path = tmp_path / f"list.{'txt' if kind == 'txt' else 'csv'}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # "CSV UTF-8" as Excel saves it
    data = (datasets.load_pairs_file(str(path)) if kind == "pairs"
            else datasets.load_dataset(str(path)))
    assert len(data.vols) == 2
    stored = np.asarray(nib.load(tmp_path / names[1][0]).dataobj)
    np.testing.assert_array_equal(data.vols[1], datasets.normalize(stored))


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_an_image_of_one_intensity_is_refused(value):
    with pytest.raises(volumes.DataError, match=f"moving image has no intensity range "
                                                 f"\\(every voxel is {value:g}\\)"):
        datasets.normalize(np.full((4, 5), value), "moving image")
