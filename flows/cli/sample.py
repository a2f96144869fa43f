"""`ganpipe generate` and `ganpipe interpolate`: pictures from an exported ONNX generator (onnxruntime,
NumPy and Pillow only; no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli.common import SEED_MAX, int_arg, output_file, write_error
from pipeline import layout
from pipeline.errors import UserError

MAX_GRID_PIXELS = 2**29  # `generate`: the PNG's pixels (1.6 GB as RGB; 64 samples of 1024x1024 at --scale 2 fit)


def psi_arg(text: str) -> float:
    """An argparse type for --psi: a finite number, refused at parse time otherwise (nan, inf, words)."""
    from pipeline.inference import MAX_PSI

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not abs(value) <= MAX_PSI:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number from -{MAX_PSI:g} to {MAX_PSI:g} (1: no "
                                         f"truncation, 0: the average image), got {text}")  # fmt: skip
    return value


def _grid_fits(n: int, nrow: int | None, scale: int, image_size: int, what: str) -> int:
    """Images per row of a grid of `n`, refused before anything is generated when the picture
    would be too large (not after gigabytes)."""
    import math

    nrow = nrow or max(1, math.ceil(math.sqrt(n)))  # as make_grid lays it out
    side = image_size + 2
    width, height = (nrow * side + 2) * scale, (math.ceil(n / nrow) * side + 2) * scale
    if width * height > MAX_GRID_PIXELS:
        raise UserError(f"{what}, --nrow {nrow}, --scale {scale}: the grid would be {width}x{height} = "
                        f"{width * height} pixels > {MAX_GRID_PIXELS}; lower them")  # fmt: skip
    return nrow


def _open_generator(args: argparse.Namespace):
    from pipeline.inference import OnnxGenerator

    model = OnnxGenerator(args.model, device=args.device)
    if args.psi is not None and not model.info.truncation:  # before anything is generated
        raise UserError(f"--psi: {args.model}: this model (arch {model.info.arch}) has no truncation input; "
                        "--psi applies to generators such as stylegan2")  # fmt: skip
    return model


def _cmd_generate(args: argparse.Namespace) -> int:
    from pipeline import sampling

    if args.outdir is not None and args.seeds is None:
        raise UserError("--outdir writes one image per seed: give --seeds too, e.g. --seeds 0-15")
    if args.seeds is not None and args.n is not None:
        raise UserError("-n and --seeds: give one (--seeds 0-15 draws the images of those 16 seeds)")
    seeds = sampling.parse_seeds(args.seeds, SEED_MAX) if args.seeds is not None else None
    if args.outdir is None:  # one picture: its name says its format, refused before any work
        out = output_file(args.out, "--out")
        sampling.format_of(out, sampling.STILL, "--out")
    elif Path(args.outdir).exists() and not Path(args.outdir).is_dir():
        raise UserError(f"--outdir: {args.outdir}: is a file; --outdir takes a folder")
    if seeds is not None and args.label and len(args.label) > 1:
        raise UserError("--label: with --seeds, one class for every seed (e.g. --class 3)")
    model = _open_generator(args)
    if seeds is None:
        n = args.n or 64
        nrow = _grid_fits(n, args.nrow, args.scale, model.info.image_size, f"-n {n}")
        images = model.generate(n, seed=args.seed, labels=args.label, truncation_psi=args.psi)
    else:
        n = len(seeds)
        if args.outdir is None:
            nrow = _grid_fits(n, args.nrow, args.scale, model.info.image_size, f"--seeds {args.seeds}")
        images = sampling.render(model, sampling.seed_latents(model, seeds), (args.label or [None])[0], args.psi)
    target = Path(args.outdir) if args.outdir is not None else out
    try:
        if args.outdir is not None:  # StyleGAN's names: seed0000.png, one image each
            sampling.save_each(images, [target / f"seed{seed:04d}.png" for seed in seeds], args.scale)
            where = f"{target}/seed*.png"
        else:
            sampling.save_picture(images, out, nrow, args.scale)
            where = str(out)
    except OSError as err:
        raise write_error(target, err) from None
    print(f"wrote {n} samples to {where} ({', '.join(model.providers)})")
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from pipeline import sampling

    seeds = sampling.parse_seeds(args.seeds, SEED_MAX)
    out = output_file(args.out, "--out")
    sampling.format_of(out, sampling.STILL, "--out")
    if args.animation is not None:
        sampling.format_of(output_file(args.animation, "--animation"), sampling.MOVING, "--animation")
    model = _open_generator(args)
    z = sampling.walk(model, seeds, args.steps)
    nrow = _grid_fits(len(z), args.nrow or min(len(z), args.steps + 1), args.scale, model.info.image_size,
                      f"--seeds {args.seeds}, --steps {args.steps}")  # fmt: skip
    if args.label and len(args.label) > 1:
        raise UserError("--label: one class for the whole walk (e.g. --class 3)")
    images = sampling.render(model, z, (args.label or [None])[0], args.psi)
    target = out
    try:
        sampling.save_picture(images, out, nrow, args.scale)
        if args.animation is not None:
            target = Path(args.animation)
            sampling.save_animation(images, target, args.scale, args.frame_ms)
    except OSError as err:
        raise write_error(target, err) from None
    also = f" and {args.animation}" if args.animation else ""
    print(f"wrote a walk of {len(z)} images through seeds {seeds} to {out}{also}")
    return 0


def _model_options(p: argparse.ArgumentParser, label_help: str) -> None:
    p.add_argument("--model", default=str(layout.ONNX_GENERATOR), help="ONNX file from the export stage")
    p.add_argument("--label", "--class", dest="label", action="append", help=label_help)
    p.add_argument("--scale", type=int_arg(1), default=2, help="integer upscaling of the pictures")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where ONNX Runtime runs")
    p.add_argument("--psi", "--trunc", dest="psi", type=psi_arg, default=None, metavar="FLOAT",
                   help="truncation (models that take it, e.g. stylegan2): 1 = none, lower = each sample pulled "
                        "towards the average image (more typical, less varied), 0 = that one image for every "
                        "seed; default: none")  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="sample a grid, or one image per seed, from an exported ONNX generator "
                                          "(no torch needed)")  # fmt: skip
    _model_options(gen, "class name or index (repeat to cycle; one with --seeds); conditional models")
    gen.add_argument("-n", type=int_arg(1), default=None, help="number of samples (default 64)")
    gen.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0, help="noise seed (same seed, same images)")
    gen.add_argument("--seeds", default=None, metavar="LIST",
                     help="one image per seed, e.g. 0-15 or 1,5,9 (seed S is the image of -n 1 --seed S)")  # fmt: skip
    gen.add_argument("--outdir", default=None, help="with --seeds: write seed0000.png ... here instead of one grid")
    gen.add_argument("--out", default="samples.png", help="picture to write: .png, .jpg or .webp")
    gen.add_argument("--nrow", type=int_arg(1), default=None, help="images per row (default: square)")
    gen.set_defaults(fn=_cmd_generate)

    walk = sub.add_parser("interpolate", help="a walk between seeds' noise (z, along the great circle) as a strip "
                                              "and an animation")  # fmt: skip
    _model_options(walk, "class name or index for every image (conditional models)")
    walk.add_argument("--seeds", required=True, metavar="LIST", help="the seeds to pass through, e.g. 0,7,3 or 0-3")
    walk.add_argument("--steps", type=int_arg(1, 256), default=8, help="images from one seed to the next")
    walk.add_argument("--out", default="walk.png", help="the strip: .png, .jpg or .webp")
    walk.add_argument("--animation", default=None, help="also a looping animation: .gif or .webp")
    walk.add_argument("--frame-ms", type=int_arg(10, 10_000), default=80, help="milliseconds per animation frame")
    walk.add_argument("--nrow", type=int_arg(1), default=None, help="images per row (default: one leg per row)")
    walk.set_defaults(fn=_cmd_interpolate)
