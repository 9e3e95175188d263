"""The affine stage: affine/rigid networks, the joint model, misaligned loaders, ITK matrices."""
import json

import keras
import nibabel as nib
import numpy as np
import pytest
import scipy.linalg
import SimpleITK as sitk

import augmentation
import dataloader
import layers
import main
import models
import rebuilding
import registration
import transforms
import tuning
import utils
from test_transforms import blob_scan, rotation_affine, sitk_resample, write

SHAPE = (34, 36, 30)  # padded to 48 x 48 x 32: 3 x 3 x 2 voxels at the coarsest level


def image_2d(shape=(48, 64)) -> np.ndarray:
    """An asymmetric image (2D or 3D): three blobs of different sizes, in [0, 1]."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    image = np.zeros(shape)
    for centre, width in (((0.38, 0.34, 0.3), 0.12), ((0.62, 0.69, 0.6), 0.08),
                          ((0.3, 0.72, 0.7), 0.06)):
        centre = np.array(centre[:len(shape)]) * shape
        image += np.exp(-np.sum((grid - centre) ** 2, -1) / (2 * (width * max(shape))**2))
    return (image / image.max()).astype(np.float32)


def homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([matrix, np.eye(len(matrix) + 1)[-1:]])


def voxel_error(predicted: np.ndarray, true: np.ndarray, shape) -> float:
    """Mean distance in voxels between two affine maps of a grid's voxels."""
    coords = transforms.spacing_grid(shape).coordinates()
    difference = predicted - true
    return float(np.linalg.norm(coords @ difference[:, :-1].T + difference[:, -1], axis=-1).mean())


@pytest.mark.parametrize("rigid", [False, True])
def test_affine_network_at_zero_weights_is_the_identity_even_on_a_misaligned_pair(rigid):
    """Zero weights give empty maps: the fit's pull towards the identity alone decides the map,
    whatever the images (here a pair that differs by an affine map, on which a fresh network
    finds another map), and ``moved`` is the moving image unmoved."""
    shape = (32, 32, 16)
    network = models.affine_network(shape, rigid)
    network.set_weights([np.zeros_like(weight) for weight in network.get_weights()])
    moving, static, _ = known_pair(shape, np.random.default_rng(0))
    assert np.abs(moving - static).mean() > 0.02  # the pair is misaligned
    moving, static = moving[None, ..., None], static[None, ..., None]
    outputs = network.predict_on_batch({"moving": moving, "static": static})
    np.testing.assert_array_equal(outputs["affine"][0], np.eye(3, 4))
    np.testing.assert_allclose(outputs["deformation"], 0.0, atol=1e-5)
    np.testing.assert_allclose(outputs["moved"], moving, atol=1e-5)


def map_centroids(maps: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """``(*coarse, K)`` maps -> their barycentres in voxels of the ``shape`` grid (each coarse
    voxel at the centre of the full-grid voxels it covers) and their mean values."""
    axes = [(np.arange(n) + 0.5) * size / n - 0.5 for n, size in zip(maps.shape[:-1], shape)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(shape))
    flat = maps.reshape(-1, maps.shape[-1]).astype(np.float64)
    total = flat.sum(0)[:, None]
    points = np.divide(flat.T @ grid, total, out=np.zeros((len(total), len(shape))),
                       where=total > 0)  # an empty map: weight 0, any point
    return points, total[:, 0] / len(flat)


def least_squares_map(static, static_mass, moving, moving_mass, shape, rigid) -> np.ndarray:
    """FitAffine's documented objective solved as an augmented least-squares system:
    ``sum_k w_k |A (s_k - c) + c + t - m_k|^2 + eps |[A - I | t]|^2``."""
    ndim, centre = len(shape), (np.array(shape) - 1) / 2
    weights = np.sqrt(static_mass * moving_mass / np.sum(static_mass * moving_mass))[:, None]
    rows = np.vstack([weights * np.hstack([static - centre, np.ones((len(static), 1))]),
                      np.sqrt(layers.FIT_EPS) * np.eye(ndim + 1)])
    right = np.vstack([weights * (moving - centre),
                       np.sqrt(layers.FIT_EPS) * np.eye(ndim + 1, ndim)])
    matrix, shift = np.split(np.linalg.lstsq(rows, right, rcond=None)[0].T, [ndim], axis=1)
    if rigid:
        matrix = scipy.linalg.expm(0.5 * (matrix - matrix.T))  # (A - I) - (A - I)^T
    return np.hstack([matrix, centre[:, None] + shift - matrix @ centre[:, None]])


@pytest.mark.parametrize("rigid", [False, True])
def test_affine_network_fits_the_map_of_the_points_its_maps_find_in_each_image(rigid):
    """A fresh network on a misaligned pair: its map is the least-squares map taking the
    centroids of the static image's keypoint maps onto those of the moving image's."""
    shape = (48, 64)
    moving, static, _ = known_pair(shape, np.random.default_rng(0))
    keras.utils.set_random_seed(0)
    network = models.affine_network(shape, rigid)
    pair = {"moving": moving[None, ..., None], "static": static[None, ..., None]}
    found = network.predict_on_batch(pair)["affine"][0]
    maps = network.get_layer("keypoint_features").predict_on_batch(
        np.concatenate([pair["static"], pair["moving"]]))
    expected = least_squares_map(*map_centroids(maps[0], shape), *map_centroids(maps[1], shape),
                                 shape, rigid)
    assert voxel_error(np.eye(2, 3), expected, shape) > 1.0  # not the identity
    assert voxel_error(found, expected, shape) < 1e-3


@pytest.mark.parametrize("ndim", [2, 3])
def test_rigid_network_predicts_rotations(ndim):
    network = models.affine_network((32,) * ndim, rigid=True)
    rng = np.random.default_rng(1)
    network.set_weights([rng.normal(0, 0.3, weight.shape) for weight in network.get_weights()])
    image = rng.random((2, *(32,) * ndim, 1)).astype(np.float32)
    for matrix in network.predict_on_batch({"moving": image, "static": image[::-1]})["affine"]:
        rotation = matrix[:, :ndim]
        assert np.abs(rotation - np.eye(ndim)).max() > 0.05  # a real rotation, not the identity
        np.testing.assert_allclose(rotation.T @ rotation, np.eye(ndim), atol=1e-5)
        assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_fit_affine_takes_the_static_points_onto_the_moving_points(ndim):
    rng = np.random.default_rng(ndim)
    shape = (64, 48, 32)[:ndim]
    true = augmentation.random_affine(rng, shape)
    static = rng.uniform(0, 32, (1, 10, ndim))
    moving = static @ true[:, :ndim].T + true[:, ndim]
    masses = rng.uniform(0.5, 1.0, (2, 1, 10))
    fitted = layers.FitAffine(shape)([static.astype(np.float32), masses[0].astype(np.float32),
                                      moving.astype(np.float32), masses[1].astype(np.float32)])
    np.testing.assert_allclose(np.asarray(fitted)[0], true, atol=1e-2)


def test_centroids_are_the_maps_barycentres_on_the_full_grid():
    maps = np.zeros((1, 4, 4, 2), np.float32)
    maps[0, 1, 2, 0] = 1.0  # one voxel of the 1/4 grid: voxels 4-7, 8-11 of the full grid
    maps[0, 0, 0, 1], maps[0, 3, 3, 1] = 1.0, 1.0
    centroids, mass = layers.Centroids((16, 16))(maps)
    np.testing.assert_allclose(np.asarray(centroids)[0], [[5.5, 9.5], [7.5, 7.5]], atol=1e-3)
    np.testing.assert_allclose(np.asarray(mass)[0], [1 / 16, 2 / 16])


def test_affine_displacement_composes_the_deformation_then_the_map():
    rng = np.random.default_rng(2)
    matrix = np.array([[[0.9, 0.1, 1.5], [-0.2, 1.1, -0.5]]], np.float32)
    deformation = rng.normal(0, 1.0, (1, 8, 10, 2)).astype(np.float32)
    composed = np.asarray(utils.affine_displacement(matrix, deformation))[0]
    x = transforms.spacing_grid((8, 10)).coordinates()
    expected = (x + deformation[0]) @ matrix[0, :, :2].T + matrix[0, :, 2] - x
    np.testing.assert_allclose(composed, expected, atol=1e-5)


def test_joint_network_moves_the_image_once_with_the_composed_field():
    network = models.build_model((32, 32), transform="joint")
    rng = np.random.default_rng(3)
    network.set_weights([w + rng.normal(0, 0.02, w.shape) for w in network.get_weights()])
    image = image_2d((32, 32))[None, ..., None]
    outputs = network.predict_on_batch({"moving": image, "static": image[:, ::-1]})
    expected = utils.affine_displacement(outputs["affine"], outputs["residual"])
    np.testing.assert_allclose(outputs["deformation"], expected, atol=1e-4)
    np.testing.assert_allclose(outputs["moved"], utils.warp(image, outputs["deformation"]),
                               atol=1e-5)


def known_pair(shape, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A blob image moved by a random affine map; the map that registers them back."""
    static = image_2d(shape)
    applied = augmentation.random_affine(rng, shape, rotation=10, scaling=(0.92, 1.08),
                                       shear=0.05, translation=4)
    moving = augmentation.affine_moved(static, applied)
    return moving, static, np.linalg.inv(homogeneous(applied))[:-1]


@pytest.mark.parametrize("ndim", [2, 3])
def test_instance_optimisation_recovers_a_known_affine_map(ndim):
    shape = (48, 64) if ndim == 2 else (32, 32, 32)
    moving, static, true = known_pair(shape, np.random.default_rng(ndim))
    model = models.build_model(shape, transform="affine", loss="mse")
    assert voxel_error(np.eye(ndim, ndim + 1), true, shape) > 1.5  # the pair is misaligned
    network = tuning.FineTuner(model, 100, 3e-3).tune(moving, static)
    found = registration.register_padded(network, moving, static)["affine"]
    assert voxel_error(found, true, shape) < 0.3


@pytest.mark.parametrize("transform", ["affine", "rigid", "joint"])
def test_each_transform_trains_and_lowers_its_loss(transform):
    rng = np.random.default_rng(4)
    moving, static, _ = known_pair((48, 64), rng)
    keras.utils.set_random_seed(0)
    model = models.build_model((48, 64), transform=transform, lr=1e-2)
    inputs = dataloader.batch(moving[None], static[None])
    before = model.test_on_batch(inputs, return_dict=True)["loss"]
    for _ in range(15):
        model.train_on_batch(inputs)
    assert model.test_on_batch(inputs, return_dict=True)["loss"] < before - 0.02


def test_saved_affine_and_joint_models_load_and_rebuild_for_other_shapes(tmp_path):
    image = image_2d((32, 48))[None, ..., None]
    for transform in ("rigid", "joint"):
        model = models.build_model((32, 48), transform=transform, int_steps=3)\
            if transform == "joint" else models.build_model((32, 48), transform=transform)
        model.save(tmp_path / "model.keras")
        loaded = keras.models.load_model(tmp_path / "model.keras")
        assert models.transform(loaded) == transform
        inputs = {"moving": image, "static": image[:, ::-1]}
        np.testing.assert_allclose(loaded.predict_on_batch(inputs)["deformation"],
                                   model.predict_on_batch(inputs)["deformation"], atol=1e-6)
        rebuilt = rebuilding.rebuild(loaded, (48, 64))
        assert models.transform(rebuilt) == transform
        assert models.input_shape(rebuilt) == (48, 64)


def test_initialise_copies_stages_into_a_joint_network():
    affine = models.build_model((32, 32), transform="affine")
    deformable = models.build_model((32, 32), int_steps=3)
    for model in (affine, deformable):
        model.set_weights([w + 1.0 for w in model.get_weights()])
    joint = models.build_model((32, 32), transform="joint", int_steps=3)
    models.initialise(joint, affine)
    models.initialise(joint, deformable)
    stage_affine, stage_deformable = models.stages(joint)
    for stage, model in ((stage_affine, affine), (stage_deformable, deformable)):
        for mine, theirs in zip(stage.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    with pytest.raises(ValueError, match="cannot initialise"):
        models.initialise(affine, deformable)


def test_loader_misaligns_moving_images_by_seed():
    images = np.stack([image_2d(), image_2d()[::-1]])
    loader = dataloader.RegistrationDataLoader(images, images, seed=7, random_affine=True)
    again = dataloader.RegistrationDataLoader(images, images, seed=7, random_affine=True)
    inputs = loader[0]
    np.testing.assert_array_equal(inputs["moving"], again[0]["moving"])
    assert np.abs(inputs["moving"] - inputs["static"]).mean() > 0.01
    np.testing.assert_array_equal(inputs["static"][0, ..., 0], images[0])  # static: unmoved


def test_simpleitk_reads_the_affine_file_as_this_project_maps_points(tmp_path):
    grid = transforms.Grid((20, 22, 18), rotation_affine(3, 25, 1.3, [-9, -12, 4]))
    matrix = augmentation.random_affine(np.random.default_rng(6), grid.shape, 1.3)
    world = transforms.world_matrix(matrix, grid)
    transforms.save_affine(str(tmp_path / "affine.txt"), world)
    transform = sitk.ReadTransform(str(tmp_path / "affine.txt"))
    voxels = np.array([[0, 0, 0], [19, 3, 7], [4.5, 20.2, 17]])
    for voxel in voxels:
        itk_point = transform.TransformPoint(grid.world(voxel).tolist())
        np.testing.assert_allclose(itk_point, grid.world(matrix[:, :3] @ voxel + matrix[:, 3]),
                                   atol=1e-6)


@pytest.fixture(scope="module")
def affine_model(tmp_path_factory):
    """An affine network at its random initial weights: it finds other points in two images,
    so its map is not the identity."""
    keras.utils.set_random_seed(1)
    model = models.build_model((32, 32, 32), transform="affine")
    path = tmp_path_factory.mktemp("model") / "affine.keras"
    model.save(path)
    return str(path)


def test_register_writes_an_affine_that_simpleitk_applies_as_register_does(tmp_path,
                                                                        affine_model, capsys):
    static_affine = rotation_affine(3, 0, 1.0, [-8, -9, -7])
    moving_affine = rotation_affine(3, 15, 1.2, [-7, -12, -8])
    image, labels = blob_scan(SHAPE)
    static, _ = blob_scan(SHAPE, seed=2)
    files = {"static": write(tmp_path / "static.nii.gz", static, static_affine),
             "moving": write(tmp_path / "moving.nii.gz", image, moving_affine),
             "labels": write(tmp_path / "labels.nii.gz", labels, moving_affine)}
    assert main.main(["register", "--model", affine_model, "--moving", files["moving"],
                      "--static", files["static"], "--moving_seg", files["labels"],
                      "--moved", str(tmp_path / "moved.nii.gz"),
                      "--moved_seg", str(tmp_path / "moved_seg.nii.gz"),
                      "--affine", str(tmp_path / "affine.txt")]) == 0
    transform = sitk.ReadTransform(str(tmp_path / "affine.txt"))
    parameters = np.array(transform.GetParameters())
    assert np.abs(parameters[:9] - np.eye(3).ravel()).max() > 0.01  # not the identity
    itk_labels = sitk_resample(files["labels"], files["static"], transform, nearest=True)
    moved_seg = np.asanyarray(nib.load(tmp_path / "moved_seg.nii.gz").dataobj)
    assert np.mean(moved_seg == itk_labels) >= 0.995


def test_ants_reads_the_affine_file_as_simpleitk(tmp_path):
    ants = pytest.importorskip("ants")
    matrix = np.eye(4)
    matrix[:3, :3] = transforms.rotation_matrix(np.radians([10, -5, 20])) * 1.1
    matrix[:3, 3] = [3.0, -2.0, 7.5]
    transforms.save_affine(str(tmp_path / "affine.txt"), matrix)
    point = [12.0, -30.0, 41.0]
    moved = ants.read_transform(str(tmp_path / "affine.txt")).apply_to_point(point)
    np.testing.assert_allclose(moved, matrix[:3, :3] @ point + matrix[:3, 3], atol=1e-6)


def run_main(capsys, *argv) -> tuple[int, str]:
    code = main.main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()[-1]


def test_transform_refuses_flags_it_does_not_take(tmp_path, capsys):
    code, error = run_main(capsys, "--transform", "affine", "--int_steps", "7", "--ndim", "2",
                           "--output", str(tmp_path / "run"))
    assert code == 2 and "--transform affine does not take --int_steps" in error
    assert error.startswith("main.py: error:")
    code, error = run_main(capsys, "--transform", "rigid", "--unet", "official", "--ndim", "2",
                           "--output", str(tmp_path / "run2"))
    assert code == 2 and "--transform rigid does not take --unet official" in error


def test_register_affine_refuses_a_deformable_model_and_other_formats(tmp_path, capsys):
    model = models.build_model((16, 16))
    model.save(tmp_path / "model.keras")
    np.save(tmp_path / "image.npy", image_2d((16, 16)))
    common = ["register", "--model", str(tmp_path / "model.keras"), "--moving",
              str(tmp_path / "image.npy"), "--static", str(tmp_path / "image.npy"), "--moved",
              str(tmp_path / "moved.npy")]
    code, error = run_main(capsys, *common, "--affine", str(tmp_path / "affine.txt"))
    assert code == 2 and "deformable model, without an affine stage" in error
    code, error = run_main(capsys, *common, "--affine", str(tmp_path / "affine.mat"))
    assert code == 2 and "ITK text transform" in error
    assert not (tmp_path / "moved.npy").exists()


def test_training_a_rigid_model_end_to_end_then_registering_with_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main.main(["--transform", "rigid", "--random_affine", "--ndim", "2", "--epochs", "1",
                      "--steps_per_epoch", "2", "--output", str(run)]) == 0
    assert json.loads((run / "args.json").read_text())["transform"] == "rigid"
    model = keras.models.load_model(run / "model.keras")
    assert models.transform(model) == "rigid"
    np.save(tmp_path / "moving.npy", image_2d((80, 96)))
    np.save(tmp_path / "static.npy", image_2d((80, 96))[::-1])
    assert main.main(["register", "--model", str(run / "model.keras"), "--moving",
                      str(tmp_path / "moving.npy"), "--static", str(tmp_path / "static.npy"),
                      "--moved", str(tmp_path / "moved.npy"), "--finetune_steps", "2",
                      "--affine", str(tmp_path / "rigid.txt")]) == 0
    transform = sitk.ReadTransform(str(tmp_path / "rigid.txt"))
    rotation = np.reshape(transform.GetParameters()[:4], (2, 2))
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(2), atol=1e-5)


def test_init_from_a_model_of_another_kind_is_one_line(tmp_path, capsys):
    model = models.build_model((16, 16))
    model.save(tmp_path / "model.keras")
    code, error = run_main(capsys, "--transform", "affine", "--ndim", "2", "--init_from",
                           str(tmp_path / "model.keras"), "--output", str(tmp_path / "run"))
    assert code == 2 and "cannot initialise" in error and error.startswith("main.py: error:")
