"""data.source emoji: colour emoji drawn offline from Debian's fonts-noto-color-emoji, a class per
Unicode block (`make test` installs the font when missing, as it does Chromium)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import EMOJI_BLOCKS, ConfigError, DataConfig, parse_params
from pipeline.data import emoji
from pipeline.data.prepare import DataError, prepare

TWO_BLOCKS = ["Emoticons", "Transport and Map Symbols"]  # 80 + 105 emoji: a second's rendering


@pytest.fixture(scope="module")
def font() -> str:
    assert Path(emoji.DEFAULT_FONT).is_file(), "Debian's fonts-noto-color-emoji is needed (`make test` installs it)"
    return emoji.DEFAULT_FONT


def _prepare(tmp: Path, size: int = 16) -> Path:
    cfg = DataConfig(source="emoji", image_size=size, channels=3, emoji={"blocks": TWO_BLOCKS})
    prepare(cfg, tmp / "prepared", tmp / "report.json")
    return tmp / "prepared"


def test_the_emoji_are_colour_rgb_images_of_the_size_asked_one_class_per_block(font, tmp_path):
    out = _prepare(tmp_path)
    train, val = np.load(out / "train_images.npy"), np.load(out / "val_images.npy")
    assert train.dtype == np.uint8 and train.shape[1:] == val.shape[1:] == (3, 16, 16)
    assert len(train) + len(val) == 80 + 105
    assert json.loads((out / "manifest.json").read_text())["classes"] == TWO_BLOCKS  # the blocks' order
    labels = np.concatenate([np.load(out / "train_labels.npy"), np.load(out / "val_labels.npy")])
    assert np.bincount(labels).tolist() == [80, 105]
    r, g, b = train[:, 0].astype(int), train[:, 1].astype(int), train[:, 2].astype(int)
    assert ((r != g) | (g != b)).mean(axis=(1, 2)).min() > 0.05  # every image is in colour, none grey
    assert np.median(train[:, :, 0, 0], axis=0).tolist() == [255, 255, 255]  # on white (some scenes fill corners)
    report = json.loads((tmp_path / "report.json").read_text())["emoji"]
    assert report["per_block"] == {"Emoticons": 80, "Transport and Map Symbols": 105} and report["blank"] == []
    assert "emoji: 185 of 185 code points drawn" in (tmp_path / "report.md").read_text()


def test_the_prepared_bytes_are_the_same_every_time(font, tmp_path):
    first, second = _prepare(tmp_path / "1"), _prepare(tmp_path / "2")
    for name in ("train_images.npy", "val_images.npy", "train_labels.npy", "val_labels.npy"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_a_drawn_emoji_is_the_full_colour_glyph_and_skin_tone_swatches_are_left_out(font):
    face, cmap = emoji.open_font(font)
    grin = emoji.render(0x1F600, face, (255, 255, 255))
    assert grin.shape == (emoji.CANVAS, emoji.CANVAS, 3) and grin.dtype == np.uint8
    assert np.array_equal(grin, emoji.render(0x1F600, face, (255, 255, 255)))
    ink = (grin != 255).any(axis=2)
    ys, xs = np.nonzero(ink)
    assert ink[0].sum() == ink[-1].sum() == ink[:, 0].sum() == ink[:, -1].sum() == 0  # nothing cut off
    assert 50 < xs.mean() < 78 and 50 < ys.mean() < 78  # centred
    on_black = emoji.render(0x1F600, face, (0, 0, 0))
    assert (on_black[0, 0] == 0).all()
    assert not np.array_equal(on_black[ink], grin[ink])  # the antialiased edges blend with the background
    assert 0x1F3FB in cmap  # the font has the modifiers, the source leaves them out
    src = emoji.emoji_source(font, ["Miscellaneous Symbols and Pictographs"], (255, 255, 255))
    names = [rec.name for rec in src.records]
    assert len(names) == src.total and not any(n.endswith(("U+1F3FB", "U+1F3FF")) for n in names)


def test_a_missing_font_is_one_line_naming_the_debian_package(tmp_path):
    cfg = DataConfig(source="emoji", image_size=16, channels=3, emoji={"font": str(tmp_path / "NotoColorEmoji.ttf")})
    with pytest.raises(DataError) as err:
        prepare(cfg, tmp_path / "prepared", tmp_path / "report.json")
    message = str(err.value)
    assert "\n" not in message and "fonts-noto-color-emoji" in message and "apt-get install" in message
    assert not (tmp_path / "prepared").exists()


def test_the_blocks_are_checked_when_params_are_read():
    assert list(emoji.BLOCKS) == list(EMOJI_BLOCKS)  # the config's names are the source's
    assert all(b in EMOJI_BLOCKS for b in DataConfig().emoji.blocks)
    assert DataConfig().emoji.font == emoji.DEFAULT_FONT
    with pytest.raises(ConfigError, match=r"data.emoji.blocks.0"):
        parse_params({"data": {"source": "emoji", "emoji": {"blocks": ["Emojis"]}}}, "p.yaml")
    with pytest.raises(ConfigError, match=r"data.emoji.background"):
        parse_params({"data": {"emoji": {"background": [0, 0, 256]}}}, "p.yaml")
