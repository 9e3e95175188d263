"""Reading and writing volume files; damaged or foreign files give one DataError."""
import errno
import os
import tempfile
import zlib

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import nibabel as nib
import numpy as np
import pytest

import datasets
import volumes


def test_missing_files_and_unknown_types_are_refused(tmp_path):
    with pytest.raises(volumes.DataError, match="no such file"):
        datasets.load_dataset(str(tmp_path / "missing.npz"))
    (tmp_path / "data.png").write_bytes(b"\x89PNG")
    with pytest.raises(volumes.DataError, match="unsupported file type"):
        datasets.load_dataset(str(tmp_path / "data.png"))


def test_label_maps_must_hold_integers():
    assert volumes.as_label_map(np.array([0.0, 3.0, 17.0])).dtype == np.float64
    with pytest.raises(volumes.DataError, match="integer labels"):
        volumes.as_label_map(np.array([0.0, 0.5]))


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".nii.gz", ".mgz"])
def test_save_volume_then_load_volume_round_trips(tmp_path, suffix):
    volume = np.random.default_rng(0).integers(0, 40, size=(6, 7, 8)).astype(np.int16)
    path = str(tmp_path / f"vol{suffix}")
    volumes.save_volume(path, volume)
    loaded, image = volumes.load_volume(path)
    np.testing.assert_array_equal(loaded, volume)
    assert loaded.dtype == np.int16  # a label map keeps its dtype
    assert (image is not None) == (suffix in (".nii.gz", ".mgz"))


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


@pytest.mark.parametrize("dtype, suffix, stored", [
    (np.uint16, ".nii.gz", np.uint16), (np.int8, ".nii.gz", np.int8),
    (np.int64, ".nii.gz", np.uint8), (np.bool_, ".nii.gz", np.uint8),
    (np.uint16, ".mgz", np.uint8), (np.float64, ".mgz", np.float32)])
def test_image_files_keep_the_label_dtypes_viewers_open(tmp_path, dtype, suffix, stored):
    volume = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    volumes.save_volume(str(tmp_path / f"v{suffix}"), volume, np.diag([2.0, 3.0, 4.0, 1.0]))
    loaded, image = volumes.load_volume(str(tmp_path / f"v{suffix}"))
    assert loaded.dtype == stored and np.array_equal(loaded, volume.astype(stored))
    np.testing.assert_allclose(image.affine, np.diag([2.0, 3.0, 4.0, 1.0]))


def test_a_failed_write_is_a_write_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "vol.npy")
    volumes.save_volume(path, np.zeros(3))

    def disk_full(file, array):
        open(file, "wb").write(b"\x93NUMPY")  # a partial file, as a full disk leaves one
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(volumes.WriteError, match=f"^cannot write {path}: No space left on device$"):
        volumes.save_volume(path, np.ones(3))
    assert os.listdir(tmp_path) == ["vol.npy"]  # no temporary file left
    np.testing.assert_array_equal(volumes.read_npy(path), np.zeros(3))


def test_a_nifti_gz_compressed_in_blocks_is_one_image_to_itk_and_nibabel(tmp_path):
    """``write_image`` cuts a ``.nii.gz`` into gzip members compressed on several threads;
    SimpleITK (zlib's ``gzread``, as ANTs) and nibabel read them as one file."""
    import SimpleITK as sitk

    vectors = np.random.default_rng(0).normal(size=(9, 8, 7, 1, 3)).astype(np.float32)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    path = str(tmp_path / "vectors.nii.gz")
    image = nib.Nifti1Image(vectors, affine)
    image.header.set_intent("vector")  # read as a 3D image of vectors, as a warp
    volumes.write_image(image, path, block=1000)
    with open(path, "rb") as file:
        first = zlib.decompressobj(31)
        first.decompress(file.read())
    assert len(first.unused_data) > 0  # more than one member follows the first
    np.testing.assert_array_equal(nib.load(path).get_fdata(dtype=np.float32), vectors)
    read = sitk.GetArrayFromImage(sitk.ReadImage(path))  # (z, y, x, components)
    np.testing.assert_array_equal(np.transpose(read, (2, 1, 0, 3)), vectors[:, :, :, 0])


def test_voxel_size_is_one_value_for_every_axis_or_one_per_axis():
    np.testing.assert_array_equal(volumes.voxel_size(1.5, 3), [1.5, 1.5, 1.5])
    np.testing.assert_array_equal(volumes.voxel_size([1.0, 2.0], 2), [1.0, 2.0])
    for bad in ([1.0, 2.0], 0.0, [1.0, np.inf, 1.0]):
        with pytest.raises(ValueError, match="spacing must be positive"):
            volumes.voxel_size(bad, 3)


def test_output_files_are_checked_before_any_work(tmp_path):
    moving, moved = str(tmp_path / "m.npy"), str(tmp_path / "o.npy")
    volumes.check_output_files({"--moved": moved, "--warp": None}, [moving])  # None: not asked
    for paths, message in (({"--moved": moving}, "--moved .* would overwrite an input file"),
                           ({"--moved": moved, "--deformation": moved},
                            "--moved, --deformation must be different files"),
                           ({"--moved": str(tmp_path / "no" / "o.npy")}, "no such folder"),
                           ({"--moved": str(tmp_path / "o.png")}, "unsupported file type")):
        with pytest.raises((volumes.UsageError, volumes.DataError), match=message):
            volumes.check_output_files(paths, [moving])
    volumes.check_output_files({"--affine": str(tmp_path / "a.txt")}, [], ("--affine",))
