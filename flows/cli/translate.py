"""`ganpipe translate`: an image or a folder of images through an exported ONNX translator (no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.cli.common import Deferred, int_arg, resolve, square
from pipeline import layout


def _max_pixels() -> int:
    from pipeline.image_input import MAX_PIXELS  # Pillow-free and ONNX-Runtime-free: parsing imports neither

    return MAX_PIXELS


def _cmd_translate(args: argparse.Namespace) -> int:
    """One file or a whole folder (recursively); output names mirror input names. A file that
    cannot be translated (not an image, over --max-pixels, a decompression bomb) is reported and
    skipped, the rest are translated; the exit status is then 1, so that scripts notice."""
    from pipeline.inference import OnnxTranslator
    from pipeline.translate_files import translate_files

    model = OnnxTranslator(args.model, device=args.device)
    dst = Path(args.output)
    max_pixels = resolve(args.max_pixels)
    result = translate_files(model, Path(args.input), dst, max_pixels)
    for line in result.skipped:
        print(f"skipped {line}", file=sys.stderr)
    skipped = f"; {len(result.skipped)} skipped" if result.skipped else ""
    print(f"translated {result.done} of {result.total} file(s) with {args.model} ({model.direction}, "
          f"{', '.join(model.providers)}) into {dst}{skipped}")  # fmt: skip
    return 1 if result.skipped else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("translate", help="translate an image or a folder of images with an exported translator",
                        epilog="Files that cannot be translated (not an image, over --max-pixels) are skipped and "
                               "listed, the others translated. Exit status: 0 all translated, 1 some skipped, "
                               "2 nothing done (bad arguments, model or output).")  # fmt: skip
    tr.add_argument("input", help="an image file or a folder (searched recursively)")
    tr.add_argument("output", help="output file, or folder (names mirror the input's; PNG unless the suffix says)")
    tr.add_argument("--model", default=str(layout.ONNX_TRANSLATORS["AB"]), help="ONNX translator from the export stage")
    tr.add_argument("--max-pixels", type=int_arg(1), default=Deferred(_max_pixels, square),
                    help="largest image in pixels, read from its header before decoding (bomb guard; default: "
                         "as the service, %(default)s)")  # fmt: skip
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where ONNX Runtime runs")
    tr.set_defaults(fn=_cmd_translate)
