"""The `glyphs` source: characters rendered from two fonts, a paired two-domain dataset.

Domain A is every character drawn in `font_a`, domain B the same character in `font_b`,
so font-to-font translation has ground truth for every test item. A character is kept
only if both fonts really have it: it must be in the font's character map (read with
fontTools), must not render as the font's .notdef box, and must leave ink. Dropped
characters are counted per reason in the data report, never silently.

Fonts are given as file paths (TTF/OTF; a TrueType collection as `file.ttc#index`) or as
the name of a font bundled with matplotlib (e.g. `DejaVuSerif.ttf`), which every install
of this project has.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.data.sources import Record, Source, SourceError

# Named character sets; anything else in `data.glyphs.chars` is taken literally.
CHARSETS: dict[str, list[int]] = {
    "ascii": list(range(0x21, 0x7F)),  # printable, no space
    "latin1": [c for c in range(0xA1, 0x100) if c != 0xAD],  # Latin-1 supplement, no soft hyphen
    "latin-ext-a": list(range(0x100, 0x180)),
    "greek": [c for c in range(0x391, 0x3CA) if c != 0x3A2],  # capitals and small letters
    "cyrillic": list(range(0x400, 0x460)),
}


def bundled_fonts_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def resolve_font(spec: str, key: str) -> tuple[Path, int]:
    """A font spec -> (file, collection index). `key` names the params key in errors."""
    file, _, index = spec.partition("#")
    if index and not (index.isascii() and index.isdigit()):  # '²'.isdigit() is true, but int() refuses it
        raise SourceError(f"{key}: {spec!r}: the part after '#' must be a collection index (e.g. font.ttc#0)")
    path = Path(file).expanduser()
    if not path.is_file():
        bundled = bundled_fonts_dir() / file
        if not bundled.is_file():
            names = sorted(p.name for p in bundled_fonts_dir().glob("*.ttf"))
            raise SourceError(
                f"{key}: font {file!r} is neither a file nor a font bundled with matplotlib "
                f"(bundled: {', '.join(names[:12])}, ...)"
            )
        path = bundled
    return path, int(index or 0)


def charset(chars: list[str]) -> list[int]:
    """Code points from set names and literal strings, in order, without repeats."""
    seen: dict[int, None] = {}
    for entry in chars:
        for cp in CHARSETS.get(entry, [ord(c) for c in entry if not c.isspace()]):
            seen.setdefault(cp, None)
    return list(seen)


@lru_cache(maxsize=8)
def _cmap(path: Path, index: int) -> frozenset[int]:
    from fontTools.ttLib import TTFont, TTLibError

    try:
        with TTFont(path, fontNumber=index, lazy=True) as font:
            return frozenset(font.getBestCmap() or {})
    except (TTLibError, OSError, AssertionError) as err:
        raise SourceError(f"{path}: cannot be read as a TrueType/OpenType font ({err})") from None


def render(cp: int, font: ImageFont.FreeTypeFont, size: int) -> np.ndarray:
    """One character, black on white, centred on its advance box and the font's line box."""
    img = Image.new("L", (size, size), 255)
    ImageDraw.Draw(img).text((size / 2, size / 2), chr(cp), font=font, fill=0, anchor="mm")
    return np.asarray(img, dtype=np.uint8)


class Font:
    def __init__(self, spec: str, key: str, size: int, scale: float):
        self.path, self.index = resolve_font(spec, key)
        try:
            self.font = ImageFont.truetype(str(self.path), max(1, round(size * scale)), index=self.index)
        except OSError as err:
            raise SourceError(f"{key}: {self.path} cannot be opened by FreeType ({err})") from None
        self.size = size
        self.cmap = _cmap(self.path, self.index)
        self.notdef = render(0x10FFFD, self.font, size)  # a private-use code point no font maps

    def problem(self, cp: int) -> tuple[str | None, np.ndarray | None]:
        if cp not in self.cmap:
            return "not in the font's character map", None
        pixels = render(cp, self.font, self.size)
        if pixels.min() == 255:
            return "renders empty (no ink)", None
        if np.array_equal(pixels, self.notdef):
            return "renders as the font's .notdef box", None
        return None, pixels


def glyph_source(font_a: str, font_b: str, chars: list[str], size: int, scale: float) -> Source:
    fonts = {"A": Font(font_a, "data.glyphs.font_a", size, scale), "B": Font(font_b, "data.glyphs.font_b", size, scale)}
    wanted = charset(chars)
    if not wanted:
        raise SourceError("data.glyphs.chars: no characters requested")
    records: list[Record] = []
    dropped: dict[str, list[str]] = {}
    for cp in wanted:
        key = f"U+{cp:04X}"
        pair = []
        for domain, font in fonts.items():
            why, pixels = font.problem(cp)
            if why:
                dropped.setdefault(f"font {domain}: {why}", []).append(f"{key} {chr(cp)!r}")
                break
            pair.append(Record(name=f"{domain}/{key}", label=domain, array=pixels, pair=key, split_key=key))
        if len(pair) == 2:
            records += pair
    if not records:
        raise SourceError(f"data.glyphs: none of the {len(wanted)} requested characters exist in both fonts")
    notes = {
        "glyphs": {
            "font_a": f"{fonts['A'].path}#{fonts['A'].index}",
            "font_b": f"{fonts['B'].path}#{fonts['B'].index}",
            "requested": len(wanted),
            "kept": len(records) // 2,
            "dropped_count": {reason: len(v) for reason, v in dropped.items()},
            "dropped": dropped,
        }
    }
    return Source(iter(records), total=len(records), domains=("A", "B"), paired=True, notes=notes)
