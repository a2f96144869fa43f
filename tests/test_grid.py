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
