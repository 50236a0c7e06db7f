"""Plotting helpers: figure files, error maps, case selection and evaluation figures."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from medseg_tf import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_save_figure_writes_png_in_figures_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_FIGURES_DIR", str(tmp_path))
    fig, ax = plt.subplots(figsize=(1, 1))
    path = plots.save_figure(fig, "05_test")
    assert path == tmp_path / "05_test.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_error_map_codes_every_category():
    ref = np.array([[0, 1, 1, 2, 0]])
    pred = np.array([[0, 1, 0, 1, 2]])
    codes = plots.error_map(ref, pred)
    assert codes.dtype == np.uint8
    # background, match, false negative, wrong class, false positive
    np.testing.assert_array_equal(codes, [[0, 1, 3, 4, 2]])


def test_error_map_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        plots.error_map(np.zeros((3, 4)), np.zeros((4, 3)))


def test_error_overlay_colours_the_right_pixels():
    image = np.arange(12, dtype=float).reshape(3, 4)
    ref = np.zeros((3, 4), int)
    pred = np.zeros((3, 4), int)
    ref[0, 0] = pred[0, 0] = 1   # match
    pred[2, 3] = 2               # false positive
    ref[1, 2] = 1                # false negative
    fig, ax = plt.subplots()
    plots.error_overlay(ax, image, ref, pred, alpha=0.5, title="t", legend=True)
    rgba = np.asarray(ax.get_images()[1].get_array())
    assert rgba.shape == (4, 3, 4)  # displayed transposed: (cols, rows)
    expected = {(0, 0): 1, (2, 3): 2, (1, 2): 3}
    for (i, j), code in expected.items():
        color = mcolors.to_rgba(plots.ERROR_COLORS[code][1])
        np.testing.assert_allclose(rgba[j, i], (*color[:3], 0.5))
    assert np.count_nonzero(rgba[..., 3]) == 3
    assert ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [n for n, _ in plots.ERROR_COLORS.values()]


def test_error_overlay_needs_2d():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="2D"):
        plots.error_overlay(ax, np.zeros((2, 2, 2)), np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int))


def test_pick_slice_most_foreground_and_middle_when_empty():
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[1, 1, 2] = 1
    lab[0:3, 2, 4] = 2
    assert plots.pick_slice(lab, axis=2) == 4
    assert plots.pick_slice(lab, axis=1) == 2
    assert plots.pick_slice(lab, axis=-3) == 1  # x=1 holds 2 voxels, x=0 and x=2 one each
    assert plots.pick_slice(np.zeros((4, 5, 6)), axis=0) == 2
    with pytest.raises(ValueError, match="3D"):
        plots.pick_slice(np.zeros((4, 5)))


def test_best_median_worst_orders_and_breaks_ties_by_id():
    scores = pd.Series({"c": 0.5, "a": 0.9, "b": 0.1, "d": 0.5, "e": np.nan})
    assert plots.best_median_worst(scores) == [("best", "a"), ("median", "d"), ("worst", "b")]
    assert plots.best_median_worst({"x": 0.3}) == [("best", "x"), ("median", "x"), ("worst", "x")]
    with pytest.raises(ValueError, match="finite"):
        plots.best_median_worst({"x": float("nan")})


def test_segmentation_gallery_rows_slices_and_aspect():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 7, 8)).astype(np.float32)
    ref = np.zeros((6, 7, 8), np.uint8)
    ref[2:4, 2:5, 5] = 1
    pred = np.zeros_like(ref)
    cases = [{"title": "best", "image": image, "reference": ref, "prediction": ref},
             {"title": "worst", "image": image, "reference": np.zeros_like(ref), "prediction": pred,
              "spacing": (1.0, 2.0, 3.0)}]
    fig = plots.segmentation_gallery(cases, axis=2)
    axes = fig.axes
    assert len(axes) == 8
    assert axes[0].get_title() == "best (z=5)"
    assert axes[4].get_title() == "worst (z=4)"  # both empty: middle slice
    assert [a.get_title() for a in axes[1:4]] == ["reference", "prediction", "errors"]
    assert axes[4].get_aspect() == pytest.approx(2.0)
    # a perfect prediction has only "match" pixels in the error panel
    err = np.asarray(axes[3].get_images()[1].get_array())
    match = mcolors.to_rgba(plots.ERROR_COLORS[1][1])[:3]
    shown = err[err[..., 3] > 0][:, :3]
    assert len(shown) == 6 and np.allclose(shown, match)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [n for n, _ in plots.ERROR_COLORS.values()]
    with pytest.raises(ValueError, match="one shape"):
        plots.segmentation_gallery([{"title": "x", "image": image, "reference": ref[:-1],
                                     "prediction": pred}])
    with pytest.raises(ValueError, match="at least one"):
        plots.segmentation_gallery([])


def _table():
    rng = np.random.default_rng(1)
    n = 12
    return pd.DataFrame({"case": [f"c{i // 2}" for i in range(n)], "class": ["A", "B"] * (n // 2),
                         "dice": rng.uniform(0.5, 1.0, n), "hd95": rng.uniform(0, 10, n),
                         "variant": ["plain"] * (n // 2) + ["tta"] * (n // 2)})


def test_metric_boxplots_one_panel_per_metric_with_every_case_as_dot():
    df = _table()
    fig = plots.metric_boxplots(df, ["dice", "hd95"], titles={"hd95": "HD95 (mm)"})
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["dice", "HD95 (mm)"]
    dots = np.concatenate([c.get_offsets() for c in axes[1].collections])
    assert len(dots) == len(df)
    np.testing.assert_allclose(np.sort(dots[:, 1]), np.sort(df.hd95.to_numpy()))


def test_metric_boxplots_hue_adds_legend_and_checks_columns():
    df = _table()
    fig = plots.metric_boxplots(df, ["dice"], hue="variant")
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["plain", "tta"]
    with pytest.raises(ValueError, match="nsd"):
        plots.metric_boxplots(df, ["dice", "nsd"])
    with pytest.raises(ValueError, match="at least one"):
        plots.metric_boxplots(df, [])


def test_save_figure_default_is_150_dpi(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_FIGURES_DIR", str(tmp_path))
    fig = plt.figure(figsize=(2, 1))
    path = plots.save_figure(fig, "dpi")
    from PIL import Image

    with Image.open(path) as im:
        assert im.info["dpi"] == pytest.approx((150, 150), abs=0.5)


@pytest.mark.parametrize("plane,letters", [("axial", "LRPA"), ("coronal", "LRIS"), ("sagittal", "PAIS")])
def test_orientation_labels_put_the_patient_directions_on_the_edges(plane, letters):
    fig, ax = plt.subplots()
    plots.orientation_labels(ax, plane)
    texts = {t.get_text(): t.get_position() for t in ax.texts}
    left, right, bottom, top = letters
    assert texts[left][0] < 0.1 and texts[right][0] > 0.9
    assert texts[bottom][1] < 0.1 and texts[top][1] > 0.9
    with pytest.raises(ValueError, match="plane"):
        plots.orientation_labels(ax, "transverse")


def test_ras_display_puts_patient_right_on_viewer_right():
    # x grows toward the patient's Right; overlay draws the first axis left to right
    image = np.zeros((5, 3))
    image[-1, 1] = 1.0  # the voxel farthest to the patient's Right
    fig, ax = plt.subplots()
    plots.overlay(ax, image, plane="axial")
    shown = np.asarray(ax.get_images()[0].get_array())
    assert shown.shape == (3, 5) and shown[1, -1] == 1.0  # last display column = viewer's right
    assert plots.ORIENTATION_LETTERS["axial"][1] == "R"
    assert [plots.plane_of_axis(a) for a in (0, 1, 2, -1)] == ["sagittal", "coronal", "axial", "axial"]


def test_scale_bar_length_in_pixels_and_nice_default():
    fig, ax = plt.subplots()
    plots.overlay(ax, np.zeros((40, 20)), spacing=(0.5, 2.0), scale_mm=5)
    assert ax.get_aspect() == pytest.approx(4.0)
    bars = [a for a in ax.artists if a.__class__.__name__ == "AnchoredSizeBar"]
    assert len(bars) == 1
    rect = bars[0].size_bar.get_children()[0]
    assert rect.get_width() == pytest.approx(10.0)  # 5 mm at 0.5 mm per pixel
    assert bars[0].txt_label.get_text() == "5 mm"
    assert [plots.nice_length(w) for w in (35, 100, 9, 240)] == [5.0, 20.0, 2.0, 50.0]
    with pytest.raises(ValueError, match="spacing"):
        plots.scale_bar(ax, 5, 0.0)


def test_triplanar_panels_carry_letters_and_scale_bars():
    vol = np.zeros((6, 8, 10))
    fig = plots.triplanar(vol, spacing=(1.0, 1.0, 2.0), scale_mm=2)
    for ax, plane in zip(fig.axes, ("axial", "coronal", "sagittal")):
        assert ax.get_title().startswith(plane)
        assert {t.get_text() for t in ax.texts} == set(plots.ORIENTATION_LETTERS[plane])
        assert len(ax.artists) == 1
    assert fig.axes[1].get_aspect() == pytest.approx(2.0)


@pytest.mark.parametrize("shape, spacing", [((36, 52, 38), (1.0, 1.0, 1.0)), ((40, 20, 12), (0.8, 1.2, 3.0)),
                                           ((20, 60, 20), (1.0, 1.0, 1.0))])
def test_triplanar_panels_share_one_display_scale(shape, spacing):
    """Screen pixels per mm are the same in the three panels (the sizes compare as the anatomy does)."""
    fig = plots.triplanar(np.zeros(shape), spacing=spacing, scale_mm=5, title="t")
    fig.canvas.draw()
    extents_mm = [shape[0] * spacing[0], shape[0] * spacing[0], shape[1] * spacing[1]]
    px_per_mm = [ax.get_window_extent().width / w for ax, w in zip(fig.axes, extents_mm)]
    assert max(px_per_mm) / min(px_per_mm) == pytest.approx(1.0, abs=0.01), px_per_mm
    fig = plots.triplanar(np.zeros(shape), spacing=spacing, same_scale=False)
    fig.canvas.draw()
    px_per_mm = [ax.get_window_extent().width / w for ax, w in zip(fig.axes, extents_mm)]
    assert max(px_per_mm) / min(px_per_mm) > 1.05  # each panel fills its own third: scales differ
    fig = plots.triplanar(np.zeros(shape), spacing=spacing)  # one scale: one bar length by default
    assert len({ax.artists[0].txt_label.get_text() for ax in fig.axes}) == 1

def test_metric_boxplots_wrap_onto_rows():
    df = _table()
    fig = plots.metric_boxplots(df, ["dice", "hd95", "dice"], ncols=2)
    assert len(fig.axes) == 3
    rows = sorted({round(ax.get_position().y0, 3) for ax in fig.axes})
    assert len(rows) == 2


def test_svg_copies_on_request(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from medseg_tf import plots

    monkeypatch.setenv("MEDSEG_FIGURES_DIR", str(tmp_path))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    monkeypatch.setenv("MEDSEG_FIGURE_FORMATS", "png,svg")
    path = plots.save_figure(fig, "toy")
    assert path.suffix == ".png" and path.with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    monkeypatch.setenv("MEDSEG_FIGURE_FORMATS", "png,gif")
    with pytest.raises(ValueError, match="gif"):
        plots.save_figure(fig, "toy2")
    plt.close(fig)
