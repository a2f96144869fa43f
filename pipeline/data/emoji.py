"""The `emoji` source: colour emoji rendered offline from Debian's Noto Color Emoji font.

Every single code point the font maps in the chosen Unicode blocks is drawn in colour (the
font's CBDT bitmaps, which FreeType gives only at their own strike size, 109 px, ink within
128x128), composited on a fixed background and yielded as RGB pixels; `prepare` resizes them to
`data.image_size` like any other source. The class is the Unicode block, so a model that draws
its class from the noise draws faces, animals and objects, vehicles and so on.

Left out on purpose: sequences (ZWJ families, flags, keycaps, skin tones applied to a base),
which are several code points; the five skin-tone modifiers (U+1F3FB..U+1F3FF), which draw a
colour swatch, not an emoji; and a code point that renders with no ink (counted in the report).

The font is a system dependency, like Chromium for the page test: nothing is downloaded while
the pipeline runs. Without it, prepare stops with one line naming the Debian package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.data.sources import Record, Source, SourceError

DEBIAN_PACKAGE = "fonts-noto-color-emoji"
DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
STRIKE = 109  # the pixel size of the font's colour bitmaps: the only size FreeType renders it at
CANVAS = 128  # every glyph's ink lies within this square, centred on its advance and line box

# Unicode blocks (name -> first, last code point) that hold colour emoji in Noto Color Emoji.
BLOCKS: dict[str, tuple[int, int]] = {
    "Miscellaneous Symbols": (0x2600, 0x26FF),
    "Dingbats": (0x2700, 0x27BF),
    "Enclosed Alphanumeric Supplement": (0x1F100, 0x1F1FF),
    "Miscellaneous Symbols and Pictographs": (0x1F300, 0x1F5FF),
    "Emoticons": (0x1F600, 0x1F64F),
    "Transport and Map Symbols": (0x1F680, 0x1F6FF),
    "Geometric Shapes Extended": (0x1F780, 0x1F7FF),
    "Supplemental Symbols and Pictographs": (0x1F900, 0x1F9FF),
    "Symbols and Pictographs Extended-A": (0x1FA70, 0x1FAFF),
}
# The default classes (data.emoji.blocks): the six blocks with at least 80 emoji in the font (Debian
# 12's 2.042: 632, 242, 107, 105, 83, 80); Dingbats (33), the enclosed letters (mostly halves of
# flags) and the 13 geometric shapes are too few, or not pictures, to be a class of their own.
SKIN_TONES = range(0x1F3FB, 0x1F400)


def missing_font_message(font: str) -> str:
    return (f"data.emoji.font: {font} not found: install Debian's {DEBIAN_PACKAGE} "
            f"(apt-get install {DEBIAN_PACKAGE}), or point data.emoji.font at a colour emoji font")  # fmt: skip


def open_font(font: str) -> tuple[ImageFont.FreeTypeFont, frozenset[int]]:
    """The font at its colour strike and the code points it maps, or a one-line SourceError."""
    from pipeline.data.glyphs import _cmap

    path = Path(font).expanduser()
    if not path.is_file():
        raise SourceError(missing_font_message(font))
    try:
        face = ImageFont.truetype(str(path), STRIKE)
    except OSError as err:
        raise SourceError(f"data.emoji.font: {path} cannot be opened at {STRIKE} px, the colour bitmaps' "
                          f"size of Noto Color Emoji ({err})") from None  # fmt: skip
    return face, _cmap(path, 0)


def render(cp: int, face: ImageFont.FreeTypeFont, background: tuple[int, int, int]) -> np.ndarray:
    """One emoji in colour on `background`: uint8 [CANVAS, CANVAS, 3]. The font's alpha edges are
    composited exactly (Pillow's integer alpha blend), so the bytes depend on nothing but the font."""
    glyph = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(glyph).text((CANVAS / 2, CANVAS / 2), chr(cp), font=face, embedded_color=True, anchor="mm")
    if glyph.getchannel("A").getbbox() is None:
        return np.empty((0, 0, 3), dtype=np.uint8)
    canvas = Image.new("RGBA", (CANVAS, CANVAS), (*background, 255))
    return np.asarray(Image.alpha_composite(canvas, glyph).convert("RGB"), dtype=np.uint8)


def emoji_source(font: str, blocks: list[str], background: tuple[int, int, int]) -> Source:
    unknown = [b for b in blocks if b not in BLOCKS]
    if unknown:
        raise SourceError(f"data.emoji.blocks: unknown block(s) {unknown}; known: {list(BLOCKS)}")
    if not blocks:
        raise SourceError("data.emoji.blocks: no blocks requested")
    face, cmap = open_font(font)
    wanted = [(name, cp) for name in dict.fromkeys(blocks) for cp in range(BLOCKS[name][0], BLOCKS[name][1] + 1)
              if cp in cmap and cp not in SKIN_TONES]  # fmt: skip
    if not wanted:
        raise SourceError(f"data.emoji: {font} maps no code point in the blocks {blocks}")
    kept: dict[str, int] = {}
    blank: list[str] = []

    def records():
        for block, cp in wanted:
            pixels = render(cp, face, background)
            if not pixels.size:
                blank.append(f"U+{cp:04X}")
                continue
            kept[block] = kept.get(block, 0) + 1
            yield Record(name=f"{block}/U+{cp:04X}", label=block, array=pixels, split_key=f"U+{cp:04X}")

    notes = {"emoji": {"font": str(Path(font).expanduser()), "background": list(background),
                       "requested": len(wanted), "per_block": kept, "blank": blank}}  # fmt: skip
    return Source(records(), total=len(wanted), declared_classes=list(dict.fromkeys(blocks)),
                  ordered_classes=True, notes=notes)  # fmt: skip
