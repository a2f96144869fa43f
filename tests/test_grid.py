import numpy as np
from PIL import Image

from pipeline.grid import make_grid, save_panels, to_uint8


def test_to_uint8_maps_the_model_range_onto_bytes():
    x = np.array([-1.0, -0.5, 0.0, 1.0, 3.0], dtype=np.float32)
    assert to_uint8(x).tolist() == [0, 64, 128, 255, 255]


def test_grid_places_image_i_at_row_i_div_nrow_and_column_i_mod_nrow():
    imgs = np.stack([np.full((1, 4, 4), v, np.uint8) for v in (10, 20, 30, 40, 50)])
    grid = make_grid(imgs, nrow=2, padding=1)
    assert grid.shape == (3 * 5 + 1, 2 * 5 + 1, 1)
    assert grid[1, 1, 0] == 10 and grid[1, 6, 0] == 20 and grid[6, 1, 0] == 30 and grid[11, 1, 0] == 50
    assert grid[11, 6, 0] == 0  # the unused sixth cell stays empty


def test_side_by_side_panels_keep_each_set_apart(tmp_path):
    left = np.full((4, 1, 4, 4), 255, np.uint8)
    right = np.zeros((2, 3, 4, 4), np.uint8)
    img = np.asarray(Image.open(save_panels([left, right], tmp_path / "p.png", nrow=2, gap=3, scale=1)))
    assert img.shape == (2 * 6 + 2, 2 * 6 + 2 + 3 + 2 * 6 + 2, 3)  # grey input promoted to RGB
    assert (img[:, 14:17] == 128).all()  # the divider


def test_labelled_figure_puts_each_set_under_its_label_and_the_title_above():
    from pipeline.grid import figure_png, labelled_figure

    dark, light = np.full((4, 1, 4, 4), -1.0, np.float32), np.full((2, 3, 4, 4), 1.0, np.float32)
    fig = labelled_figure([dark, light], ["real $x$", "generated"], "real vs generated, FID 1.5", nrow=2)
    assert fig._suptitle.get_text() == "real vs generated, FID 1.5"
    left, right = fig.axes
    assert (left.get_title(), right.get_title()) == ("real $x$", "generated")
    assert not left.title.get_parse_math()  # a class name with dollars is no formula
    np.testing.assert_array_equal(left.images[0].get_array(), make_grid(dark, 2)[..., 0])
    np.testing.assert_array_equal(right.images[0].get_array(), make_grid(light, 2))

    labels = ["first", "a much longer label of a second set\nin two lines"]
    rows = labelled_figure([dark, light], labels, nrow=4, stacked=True)
    assert [ax.get_ylabel() for ax in rows.axes] == labels and rows._suptitle is None
    figure_png(rows)
    assert rows.axes[0].get_position().y0 > rows.axes[1].get_position().y1  # one below the other
    assert min(ax.yaxis.label.get_window_extent().x0 for ax in rows.axes) >= 0  # no label cut at the left


def test_saved_figure_is_a_png_of_the_figure_without_a_version_stamp(tmp_path):
    from pipeline.grid import figure_png, labelled_figure, save_figure

    def draw():
        return labelled_figure([np.zeros((4, 1, 8, 8), np.uint8)], ["zeros"], "title", nrow=2, scale=4)

    fig = draw()
    img = Image.open(save_figure(fig, tmp_path / "f.png"))
    assert img.size == tuple(round(v * fig.dpi) for v in fig.get_size_inches())
    assert "Software" not in img.info
    assert (tmp_path / "f.png").read_bytes() == figure_png(draw())  # the same picture, the same bytes
