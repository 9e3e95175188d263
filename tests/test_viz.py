"""Figures: PNG sizes in 2D and 3D, what each figure draws, run folders and the command line."""
import json

import numpy as np
import pytest
from matplotlib.image import imread

import scores
import viz

SHAPES = {2: (16, 24), 3: (16, 24, 20)}


def images(shape, count=1, seed=0):
    """``count`` random ``(*shape)`` images in [0, 1]."""
    return list(np.random.default_rng(seed).random((count, *shape)).astype(np.float32))


def constant_field(shape, *displacement):
    """``(*shape, ndim)`` displacement that is the same everywhere."""
    return np.broadcast_to(np.array(displacement, np.float32), (*shape, len(shape))).copy()


def folded_field(shape):
    """A displacement pulling everything towards the centre, so strongly that it folds there."""
    grid = np.stack(np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij"), -1)
    return -2.0 * grid * np.exp(-(grid**2).sum(-1, keepdims=True) / 20.0)


FIGURES = {
    "overlay": lambda shape, fname: viz.overlay_slices(*images(shape, 3), fname=fname),
    "grid": lambda shape, fname: viz.plot_deformation_grid(
        folded_field(shape), images(shape)[0], fname=fname),
    "displacement": lambda shape, fname: viz.plot_displacement(folded_field(shape), fname=fname),
    "jacobian": lambda shape, fname: viz.plot_jacobian(folded_field(shape), fname=fname),
    "template": lambda shape, fname: viz.plot_template(
        images(shape)[0], np.stack(images(shape, 6)), range(1, 7), 4, fname=fname),
}


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figures_save_pngs_of_the_figure_size(tmp_path, name, ndim):
    fname = tmp_path / f"{name}.png"
    fig = FIGURES[name](SHAPES[ndim], str(fname))
    height, width = imread(fname).shape[:2]
    expected_width, expected_height = fig.get_size_inches() * viz.DPI
    assert abs(width - expected_width) <= 1 and abs(height - expected_height) <= 1


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_3d_figures_show_three_views_one_row_each(tmp_path, name):
    flat, volume = (FIGURES[name](SHAPES[ndim], None) for ndim in (2, 3))
    assert len(image_axes(volume)) == 3 * len(image_axes(flat))
    assert volume.get_size_inches()[1] > 2.5 * flat.get_size_inches()[1]
    labels = [ax.get_ylabel() for ax in image_axes(volume)]
    assert [label for label in labels if label] == list(viz.VIEW_NAMES)


def test_3d_views_cut_through_the_slice_index():
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    sagittal, coronal, axial = viz._slices(volume, (1, 2, 3))
    np.testing.assert_array_equal(sagittal, volume[1])
    np.testing.assert_array_equal(coronal, volume[:, 2])
    np.testing.assert_array_equal(axial, volume[:, :, 3])


@pytest.mark.parametrize("ndim", [2, 3])
def test_grid_points_move_by_the_in_plane_displacement(ndim):
    shape = SHAPES[ndim]
    displacement = (1.5, -2.0, 0.5)[:ndim]
    fig = viz.plot_deformation_grid(constant_field(shape, *displacement), spacing=4)
    planes = [(0, 1)] if ndim == 2 else [(1, 2), (0, 2), (0, 1)]
    for ax, (a, b) in zip(image_axes(fig), planes):
        segments = ax.collections[0].get_segments()
        assert len(segments) == -(-shape[a] // 4) + -(-shape[b] // 4)
        first = segments[0]  # the grid line through voxel 0 of the view's first axis
        np.testing.assert_allclose(first[:, 0], displacement[a])
        np.testing.assert_allclose(first[:, 1], np.arange(shape[b]) + displacement[b])


def test_displacement_shows_the_magnitude_in_voxels():
    fig = viz.plot_displacement(constant_field(SHAPES[3], 0.0, 3.0, 4.0))
    for ax in image_axes(fig):
        np.testing.assert_allclose(ax.images[0].get_array(), 5.0)
    assert "max 5.0 voxels" in fig.get_suptitle()
    assert any("voxels" in ax.get_ylabel() for ax in fig.axes if not ax.images)  # colour bar


@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_marks_folding_voxels_and_reports_their_share(ndim):
    field = folded_field(SHAPES[ndim])
    share = scores.folding_fraction(field)
    assert share > 0
    fig = viz.plot_jacobian(field)
    folded = round(share * np.prod(SHAPES[ndim]))
    assert f"folding: {folded} voxels, {100 * share:.3f}%" in fig.get_suptitle()
    determinant = scores.jacobian_determinant(field)
    for ax, view in zip(image_axes(fig), viz._slices(determinant)):
        rings = ax.collections[0].get_offsets()  # (x, y) = (axis 0, axis 1) of the view
        assert len(rings) > 0
        np.testing.assert_array_equal(rings, np.argwhere(view <= 0))


def test_jacobian_of_no_deformation_is_one_without_folding():
    fig = viz.plot_jacobian(np.zeros((*SHAPES[2], 2)))
    ax = image_axes(fig)[0]
    np.testing.assert_allclose(ax.images[0].get_array(), 1.0)
    assert len(ax.collections[0].get_offsets()) == 0
    assert "folding: 0 voxels, 0.000%" in fig.get_suptitle()
    assert ax.images[0].norm.vmin + ax.images[0].norm.vmax == 2.0  # centred at 1


def test_shape_errors_name_the_expected_layout():
    with pytest.raises(ValueError, match="ndim"):
        viz.plot_deformation_grid(np.zeros((8, 8, 3)))


def history_rows(epochs=3, keys=("loss", "moved_loss", "deformation_loss")):
    return {prefix + key: list(np.linspace(1.0, 0.1, epochs) * (1 + i))
            for i, key in enumerate(keys) for prefix in ("", "val_")}


def write_history(path, history):
    keys = list(history)
    lines = [",".join(["epoch"] + keys)]
    lines += [",".join([str(e)] + [str(history[k][e]) for k in keys])
              for e in range(len(history[keys[0]]))]
    path.write_text("\n".join(lines) + "\n")


def test_history_plots_train_and_validation_of_every_loss(tmp_path):
    write_history(tmp_path / "history.csv", history_rows())
    fig = viz.plot_history(str(tmp_path / "history.csv"), str(tmp_path / "loss.png"))
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["total loss", "image similarity",
                                               "smoothness of the displacement $u$"]
    for ax in axes:
        assert [line.get_label() for line in ax.lines] == ["train", "validation"]
        assert list(ax.lines[0].get_xdata()) == [1, 2, 3]
    assert axes[0].get_ylabel() == "similarity + $\\lambda$ smoothness of $u$"
    assert axes[2].get_yscale() == "log"
    assert imread(tmp_path / "loss.png").shape[0] > 0


def test_history_of_a_diffeomorphic_run_draws_the_smoothness_of_the_velocity():
    fig = viz.plot_history(history_rows(keys=("loss", "moved_loss", "velocity_loss")))
    smoothness = fig.axes[2]
    assert smoothness.get_title() == "smoothness of the velocity $v$"
    assert [line.get_label() for line in smoothness.lines] == ["train", "validation"]
    np.testing.assert_allclose(smoothness.lines[0].get_ydata(), [3.0, 1.65, 0.3])
    assert "smoothness of $v$" in fig.axes[0].get_ylabel()


def test_history_of_a_bidirectional_segmentation_run_draws_and_names_every_term():
    keys = ("loss", "moved_loss", "velocity_loss", "moved_static_loss", "moved_seg_loss")
    fig = viz.plot_history(history_rows(keys=keys))
    total, similarity, _, segmentation = fig.axes
    assert total.get_ylabel() == ("$\\frac{1}{2}$ similarity + $\\frac{1}{2}$ symmetric similarity"
                                  "\n+ $\\lambda$ smoothness of $v$ + $\\gamma$ soft Dice")
    assert [line.get_label() for line in similarity.lines] == [
        "moved vs static, train", "moved vs static, validation", "static vs moving, train",
        "static vs moving, validation"]
    np.testing.assert_allclose(similarity.lines[2].get_ydata(), [4.0, 2.2, 0.4])
    assert segmentation.get_title() == "segmentation"
    np.testing.assert_allclose(segmentation.lines[1].get_ydata(), [5.0, 2.75, 0.5])


def test_history_of_a_joint_run_draws_both_similarities_and_the_residual_smoothness():
    fig = viz.plot_history(history_rows(keys=("loss", "moved_loss", "residual_loss",
                                              "moved_affine_loss")))
    total, similarity, smoothness = fig.axes
    assert [line.get_label() for line in similarity.lines] == [
        "final, train", "final, validation", "affine stage, train", "affine stage, validation"]
    assert smoothness.get_title() == "smoothness of the deformable stage's displacement $u$"
    assert "affine stage's similarity" in total.get_ylabel()


def test_history_of_an_affine_run_is_one_panel_of_its_similarity():
    fig = viz.plot_history(history_rows(keys=("loss",)))
    assert [ax.get_title() for ax in fig.axes] == ["image similarity"]
    assert [line.get_label() for line in fig.axes[0].lines] == ["train", "validation"]


def evaluation(labels, names=None, pairs=4, seed=0):
    """An ``eval.json``-like dict with random Dice, one NaN among the scores."""
    rng = np.random.default_rng(seed)
    per_pair = [{"moving": i, "static": "atlas", "folding_fraction": 0.0, "seconds": 0.1,
                 "ncc_before": 0.3, "ncc_after": 0.5,
                 "dice_before": rng.uniform(0.3, 0.6, len(labels)).tolist(),
                 "dice_after": rng.uniform(0.6, 0.9, len(labels)).tolist()}
                for i in range(pairs)]
    per_pair[0]["dice_after"][0] = float("nan")  # a structure absent from both maps
    summary = {key: {"mean": 0.5, "std": 0.1} for key in ("dice_before", "dice_after")}
    return {"model": "model.keras", "data": "default", "pairs": "atlas", "labels": labels,
            "label_names": names, "summary": summary, "per_pair": per_pair}


def test_dice_box_plot_reads_eval_json_and_skips_nan(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(evaluation([1, 2, 3], ["csf", "grey_matter", "white_matter"])))
    assert "NaN" in path.read_text()
    fig = viz.plot_dice(str(path), str(tmp_path / "dice.png"))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["csf", "grey matter", "white matter"]
    assert len(ax.patches) == 6  # a box before and after per structure
    assert all(np.all(np.isfinite(line.get_ydata())) for line in ax.lines)
    assert "4 scan-to-atlas pairs" in ax.get_title()
    assert imread(tmp_path / "dice.png").shape[0] > 0


@pytest.mark.parametrize("key, unit", [("hd95_mm", "mm"), ("hd95", "voxels")])
def test_box_plot_adds_an_hd95_panel_that_skips_null_values(tmp_path, key, unit):
    scores = evaluation([1, 2, 3])
    for i, pair in enumerate(scores["per_pair"]):
        pair[key] = [1.0 + i, 2.0 + i, None if i == 0 else 3.0 + i]  # null: an absent structure
    scores["summary"][key] = {"mean": 3.4, "std": 1.0}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(scores))
    fig = viz.plot_dice(str(path))
    dice_ax, hd95_ax = fig.axes[:2]
    assert len(dice_ax.patches) == 6 and len(hd95_ax.patches) == 3  # one HD95 box per structure
    assert hd95_ax.get_ylabel() == f"HD95 ({unit})" and f"3.40 {unit}" in hd95_ax.get_title()
    assert all(np.all(np.isfinite(line.get_ydata())) for line in hd95_ax.lines)
    third = np.concatenate([line.get_ydata() for line in hd95_ax.lines
                            if len(line.get_xdata()) and abs(np.mean(line.get_xdata()) - 2) < 0.3])
    assert (third.min(), third.max()) == (4.0, 6.0)  # structure 3: pairs 1-3 only
    assert [t.get_text() for t in hd95_ax.get_xticklabels()] == ["1", "2", "3"]


def test_dice_box_plot_of_30_structures_uses_label_ids_and_widens():
    few, many = viz.plot_dice(evaluation([1, 2, 3])), viz.plot_dice(evaluation(list(range(30))))
    ticks = [t.get_text() for t in many.axes[0].get_xticklabels()]
    assert ticks == [str(label) for label in range(30)]
    assert many.axes[0].get_xticklabels()[0].get_rotation() == 45
    assert many.get_size_inches()[0] > 2 * few.get_size_inches()[0]


def fake_run(run_dir, ndim=2, pairs=2):
    """A tiny main.py run folder: history, samples and an evaluation."""
    shape = SHAPES[ndim]
    run_dir.mkdir(exist_ok=True)
    write_history(run_dir / "history.csv", history_rows())
    np.savez(run_dir / "samples.npz", moving=np.stack(images(shape, pairs)),
             static=np.stack(images(shape, pairs, seed=1)),
             moved=np.stack(images(shape, pairs, seed=2)),
             deformation=np.stack([folded_field(shape)] * pairs).astype(np.float32))
    (run_dir / "eval.json").write_text(json.dumps(evaluation([1, 2, 3])))
    return run_dir


@pytest.mark.parametrize("ndim", [2, 3])
def test_render_run_draws_every_figure_of_a_run(tmp_path, ndim):
    run_dir = fake_run(tmp_path / "run", ndim)
    written = viz.render_run(str(run_dir))
    expected = ["loss.png", "dice_boxplot.png"] + [f"{kind}_{i}.png" for i in range(2) for kind in
                                                   ("overlay", "grid", "displacement", "jacobian")]
    assert sorted(written) == sorted(str(run_dir / name) for name in expected)
    assert all((run_dir / name).stat().st_size > 0 for name in expected)


def test_render_run_into_another_folder_with_a_prefix(tmp_path):
    run_dir = fake_run(tmp_path / "run")
    written = viz.render_run(str(run_dir), str(tmp_path / "out"), "x_", pairs=1,
                             figures=("overlay", "dice"))
    assert written == [str(tmp_path / "out" / "x_overlay_0.png"),
                       str(tmp_path / "out" / "x_dice_boxplot.png")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x_dice_boxplot.png",
                                                                     "x_overlay_0.png"]


def test_render_run_skips_what_the_folder_lacks(tmp_path):
    write_history(tmp_path / "history.csv", history_rows())
    assert viz.render_run(str(tmp_path)) == [str(tmp_path / "loss.png")]


def test_command_line_draws_a_run(tmp_path, capsys):
    run_dir = fake_run(tmp_path / "run", pairs=1)
    assert viz.main([str(run_dir), "--output", str(tmp_path / "out"), "--figures",
                     "jacobian"]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / "jacobian_0.png")]


@pytest.mark.parametrize("argv, message", [([], "run_dir"), (["nope"], "no such folder"),
                                           ([".", "--pairs", "0"], "--pairs must be positive"),
                                           ([".", "--figures", "loss", "x"], "invalid choice"),
                                           (["--help"], "--figures")])
def test_command_line_help_and_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        viz.main(argv)
    out, err = capsys.readouterr()
    assert message in out + err
    assert exit_info.value.code == (0 if argv == ["--help"] else 2)
