"""`ganpipe`: run the pipeline or one stage, and sample from an exported model.

Imports are deferred to each command: `ganpipe generate` needs only onnxruntime, NumPy
and Pillow, never torch or Prefect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.errors import UserError

STAGES = ("prepare", "evaluator", "train", "evaluate", "export")


def _run_pipeline(dvc_args: list[str]) -> int:
    from flows.pipeline import pipeline_flow, summary_markdown
    from flows.server import local_prefect_api

    with local_prefect_api() as url:
        print(f"Prefect API: {url}", file=sys.stderr)
        state = pipeline_flow(dvc_args=dvc_args, return_state=True)
    if not state.is_completed():
        print(f"ganpipe {'exp' if dvc_args[0] == 'exp' else 'repro'}: {state.message}", file=sys.stderr)
        return 1
    print(summary_markdown(state.result()))
    return 0


def _cmd_repro(args: argparse.Namespace) -> int:
    return _run_pipeline(["repro", *args.dvc_args])


def overrides(overlay: dict, prefix: str = "") -> list[str]:
    """Flatten a params overlay into `dvc exp run -S key=value` arguments (values as JSON,
    which DVC's override grammar reads back as the same types)."""
    out = []
    for key, value in overlay.items():
        if isinstance(value, dict):
            out += overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"++{prefix}{key}={json.dumps(value, separators=(',', ':'))}")  # ++: set or add
    return out


def _cmd_exp(args: argparse.Namespace) -> int:
    import yaml

    from pipeline.config import load_params, parse_params

    try:
        overlay = yaml.safe_load(Path(args.config).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{args.config}: cannot be read as YAML: {err}") from None
    if not isinstance(overlay, dict):
        raise ConfigError(f"{args.config}: must be a mapping of params groups")
    base = load_params("params.yaml").model_dump(mode="json")
    parse_params(merge_overlay(base, overlay), args.config)  # validate the combination before running
    name = args.name or os.path.splitext(os.path.basename(args.config))[0]
    sets = [x for kv in overrides(overlay) for x in ("-S", kv)]
    return _run_pipeline(["exp", "run", "--name", name, *sets, *args.dvc_args])


def merge_overlay(base: dict, over: dict) -> dict:
    """`base` params with the keys of `over` laid on top, group by group."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _cmd_stage(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"flows.{args.command}")
    flow_fn = getattr(module, f"{args.command}_flow")
    from flows.stage import run_stage

    return run_stage(flow_fn, ["--params", args.params])


def _cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.grid import save_grid
    from pipeline.inference import OnnxGenerator

    model = OnnxGenerator(args.model, device=args.device)
    images = model.generate(args.n, seed=args.seed, labels=args.label)
    save_grid(images, args.out, nrow=args.nrow, scale=args.scale)
    print(f"wrote {args.n} samples to {args.out} ({', '.join(model.providers)})")
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    """One file or a whole folder (recursively); output names mirror input names. A file
    that cannot be read as an image is reported and skipped; the rest are translated."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    from pipeline.artifacts import atomic_path
    from pipeline.inference import OnnxTranslator

    model = OnnxTranslator(args.model, device=args.device)
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise UserError(f"{src}: input not found")
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            raise UserError(f"{dst}: exists and is not a folder (input {src} is a folder)")
        jobs = [(f, dst / f.relative_to(src)) for f in sorted(src.rglob("*")) if f.is_file()]
    else:
        jobs = [(src, dst / src.name if dst.is_dir() else dst)]
    failed = []
    for f, out in tqdm(jobs, desc="translate", unit="img", disable=len(jobs) < 2, dynamic_ncols=True):
        try:
            with Image.open(f) as img:
                img.load()
                result = model.translate_image(img)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            failed.append(f"{f}: {'not an image' if isinstance(err, UnidentifiedImageError) else err}")
            continue
        if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
            out = out.with_suffix(".png")  # e.g. .tif, .gif inputs: written as PNG
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            result.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))
    done = len(jobs) - len(failed)
    for line in failed:
        print(f"skipped {line}", file=sys.stderr)
    print(f"translated {done} of {len(jobs)} file(s) with {args.model} ({model.direction}, "
          f"{', '.join(model.providers)}) into {dst}")  # fmt: skip
    return 0 if done or not jobs else 1


def _cmd_registry(args: argparse.Namespace) -> int:
    from pipeline.registry import Registry

    reg = Registry(args.registry)
    if args.action == "list":
        rows = reg.table()
        if not rows:
            print(f"{args.registry}: no versions yet (ganpipe registry promote)")
        for r in rows:
            fid = "-" if r["fid"] is None else f"{r['fid']:.4f}"
            mark = "*" if r["champion"] else " "
            print(f"{mark} {r['version']}  {r['created']}  FID {fid}  {r['git_rev']}  {r['files']}")
    elif args.action == "show":
        print(json.dumps(reg.info(args.version), indent=2))
    elif args.action == "promote":
        version = reg.promote(args.workdir, reason="promoted by hand")
        print(f"promoted {version}; it is now the champion")
    else:
        print(f"rolled back: {reg.rollback()} is the champion again")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from flows.retrain import retrain_flow
    from flows.server import local_prefect_api

    with local_prefect_api() as url:
        print(f"Prefect API: {url}", file=sys.stderr)
        state = retrain_flow(repo=".", registry=args.registry, margin=args.margin, force=args.force,
                             overrides=args.set or [], return_state=True)  # fmt: skip
    if not state.is_completed():
        print(f"ganpipe retrain: {state.message}", file=sys.stderr)
        return 1
    print(json.dumps(state.result(), indent=2))
    return 0


def _cmd_schedule(args: argparse.Namespace) -> int:
    from flows.retrain import serve_retraining

    if not os.environ.get("PREFECT_API_URL"):
        raise UserError(
            "schedules need a running Prefect server: start `prefect server start` and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    print(f"serving deployment ganpipe-retrain/{args.name} (cron {args.cron!r}); Ctrl-C stops it", file=sys.stderr)
    serve_retraining(args.cron, ".", args.registry, args.margin, args.name)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.serve.app import ServeConfig, serve

    cfg = ServeConfig(model=Path(args.model) if args.model else None, registry=Path(args.registry),
                      direction=args.direction, max_n=args.max_n, max_upload_bytes=args.max_upload_bytes,
                      max_pixels=args.max_pixels, device=args.device)  # fmt: skip
    serve(cfg, host=args.host, port=args.port)
    return 0


def _cmd_preview_augment(args: argparse.Namespace) -> int:
    from pipeline.config import AugmentConfig, load_params
    from pipeline.data.augment import preview
    from pipeline.data.dataset import load_split, to_float
    from pipeline.grid import save_panels

    params = load_params(args.params)
    policy = args.policy if args.policy is not None else params.augment.diffaugment
    if not policy:
        raise ConfigError(f"{args.params}: augment.diffaugment is empty; pass --policy color,translation,cutout")
    try:
        policy = AugmentConfig(diffaugment=policy).diffaugment  # validated policy names
    except ValueError as err:  # pydantic's ValidationError
        raise ConfigError(f"--policy {policy!r}: {err.errors()[0]['msg']}") from None
    images = to_float(load_split(args.prepared, "train").images[: args.n])
    panels = preview(images, policy, seed=args.seed)
    save_panels([p.numpy() for p in panels], args.out, nrow=args.nrow, scale=3)
    print(f"wrote {args.out}: originals, then {len(panels) - 1} draws of DiffAugment({policy})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    repro = sub.add_parser("repro", help="run `dvc repro` against a local Prefect server (started if needed)",
                           epilog="Other arguments go to dvc repro, e.g. `ganpipe repro --force train`.")  # fmt: skip
    repro.set_defaults(fn=_cmd_repro, passes_through=True)

    exp = sub.add_parser("exp", help="run a shipped params overlay (configs/*.yaml) as a DVC experiment")
    exp.add_argument("config", help="YAML with only the params that differ from params.yaml")
    exp.add_argument("--name", help="experiment name (default: the file's stem)")
    exp.set_defaults(fn=_cmd_exp, passes_through=True)

    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage's flow (what dvc.yaml calls)")
        p.add_argument("--params", default="params.yaml")
        p.set_defaults(fn=_cmd_stage)

    prev = sub.add_parser("preview-augment", help="PNG of training images as D sees them after augmentation")
    prev.add_argument("--params", default="params.yaml")
    prev.add_argument("--policy", default=None, help="override augment.diffaugment, e.g. color,translation,cutout")
    prev.add_argument("--prepared", default="data/prepared", help="prepared dataset (the prepare stage's output)")
    prev.add_argument("-n", type=int, default=32, help="number of training images")
    prev.add_argument("--nrow", type=int, default=4)
    prev.add_argument("--seed", type=int, default=0)
    prev.add_argument("--out", default="augment_preview.png")
    prev.set_defaults(fn=_cmd_preview_augment)

    gen = sub.add_parser("generate", help="sample a PNG grid from an exported ONNX generator (no torch needed)")
    gen.add_argument("--model", default="exports/generator.onnx", help="ONNX file from the export stage")
    gen.add_argument("-n", type=int, default=64, help="number of samples")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same images)")
    gen.add_argument("--label", action="append", help="class name or index (repeat to cycle); conditional models")
    gen.add_argument("--out", default="samples.png", help="PNG path to write")
    gen.add_argument("--nrow", type=int, default=None, help="images per row (default: square)")
    gen.add_argument("--scale", type=int, default=2, help="integer upscaling of the PNG")
    gen.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    gen.set_defaults(fn=_cmd_generate)

    tr = sub.add_parser("translate", help="translate an image or a folder of images with an exported translator")
    tr.add_argument("input", help="an image file or a folder (searched recursively)")
    tr.add_argument("output", help="output file, or folder (names mirror the input's; PNG unless the suffix says)")
    tr.add_argument("--model", default="exports/generator_AB.onnx", help="ONNX translator from the export stage")
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    tr.set_defaults(fn=_cmd_translate)

    reg = sub.add_parser("registry", help="list, show, promote or roll back model versions in registry/")
    reg.add_argument("action", choices=("list", "show", "promote", "rollback"))
    reg.add_argument("version", nargs="?", help="show: a version (default: the champion)")
    reg.add_argument("--registry", default="registry", help="registry folder")
    reg.add_argument("--workdir", default=".", help="promote: the pipeline checkout whose outputs to promote")
    reg.set_defaults(fn=_cmd_registry)

    rt = sub.add_parser("retrain", help="run the retraining flow once: retrain if inputs changed, promote if better")
    rt.add_argument("--registry", default="registry")
    rt.add_argument("--margin", type=float, default=None, help="relative FID improvement needed (retrain.fid_margin)")
    rt.add_argument("--force", action="store_true", help="retrain even if no input changed")
    rt.add_argument("-S", "--set", action="append", help="params override for the experiment, e.g. train.steps=6000")
    rt.set_defaults(fn=_cmd_retrain)

    sc = sub.add_parser("schedule", help="serve the retraining deployment on a cron schedule (needs a Prefect server)")
    sc.add_argument("--cron", default="0 3 * * *", help="cron expression (default: every day at 03:00)")
    sc.add_argument("--name", default="nightly", help="deployment name")
    sc.add_argument("--registry", default="registry")
    sc.add_argument("--margin", type=float, default=None)
    sc.set_defaults(fn=_cmd_schedule)

    sv = sub.add_parser("serve", help="HTTP service over ONNX Runtime: the registry's champion, or --model")
    sv.add_argument(
        "--model", help="an ONNX file to serve (default: the registry's champion, reloaded when it changes)"
    )
    sv.add_argument("--registry", default="registry")
    sv.add_argument("--direction", default="AB", choices=("AB", "BA"), help="translator of a CycleGAN champion")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-n", type=int, default=64, help="most images per /v1/generate request")
    sv.add_argument("--max-upload-bytes", type=int, default=8 * 1024 * 1024)
    sv.add_argument("--max-pixels", type=int, default=1024 * 1024, help="largest upload in pixels (bomb guard)")
    sv.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    sv.set_defaults(fn=_cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_through", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.dvc_args = extra  # repro / exp: everything we do not know goes to dvc
    if getattr(args, "n", 1) is not None and args.command == "generate" and args.n < 1:
        print("ganpipe generate: error: -n must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.fn(args)
    except UserError as err:
        print(f"ganpipe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
