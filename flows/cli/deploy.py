"""`ganpipe serve` and `ganpipe export-triton`: deploying exported models, as this package's HTTP
service or as a Triton Inference Server model repository."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.cli.common import Deferred, given, int_arg, seconds_arg, square
from pipeline import layout
from pipeline.errors import UserError


def _service(name: str, shown: Callable[[Any], str] = str) -> Deferred:
    """ServeConfig's default for setting `name`, looked up only when --help shows it."""

    def lookup() -> Any:
        from pipeline.serve.app import ServeConfig

        return getattr(ServeConfig, name)

    return Deferred(lookup, shown)


def _setting(p: argparse.ArgumentParser, flag: str, shown: Callable[[Any], str] = str, **kwargs) -> None:
    """A flag for ServeConfig's setting of the same name (--max-n: max_n), whose default is ServeConfig's."""
    p.add_argument(flag, default=_service(flag.removeprefix("--").replace("-", "_"), shown), **kwargs)


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.serve.app import ServeConfig, serve

    settings = dict(registry=args.registry, direction=args.direction, max_n=args.max_n,
                    max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                    max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                    reload_check_s=args.reload_check_s, device=args.device, model_name=args.model_name)  # fmt: skip
    # a flag left out keeps ServeConfig's default: one place to change it
    cfg = ServeConfig(model=Path(args.model) if args.model else None,
                      **{k: v for k, v in settings.items() if given(v)})  # fmt: skip
    serve(cfg, host=args.host, port=args.port)
    return 0


def _cmd_export_triton(args: argparse.Namespace) -> int:
    from pipeline.triton import MODEL_NAME, write_repository

    if not MODEL_NAME.match(args.name):
        raise UserError(f"--name {args.name!r}: letters, digits, '_', '.' and '-' only, not starting with a symbol")
    version, extra = 1, {}
    if args.version:
        from pipeline.registry import Registry

        if args.model:
            raise UserError("--model and --version are alternatives: an exported file, or a registry version")
        reg = Registry(args.registry)
        info = reg.info(None if args.version == "champion" else args.version)
        models = [reg.root / info["version"] / f for f in info["files"]]
        version, extra = int(info["version"][1:]), {"ganpipe.registry_version": info["version"]}
    else:
        defaults = [layout.ONNX_GENERATOR, *layout.ONNX_TRANSLATORS.values()]
        models = [Path(m) for m in args.model] if args.model else [p for p in defaults if p.is_file()]
        if not models:
            raise UserError(f"{layout.EXPORTS}: no exported model; run the export stage or pass --model")
    written = write_repository(models, args.out, name=args.name, version=version, force=args.force,
                               max_batch_size=args.max_batch_size, gpu=args.gpu, queue_delay_us=args.queue_delay_us,
                               parameters=extra)  # fmt: skip
    for folder in written:
        print(f"wrote {folder} (version {version})")
    print(f"serve with: tritonserver --model-repository={args.out}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    _add_serve(sub)
    tt = sub.add_parser("export-triton", help="write a Triton Inference Server model repository for exported models",
                        epilog="One model folder per ONNX file: <out>/<name>/config.pbtxt and "
                               "<out>/<name>/<version>/model.onnx; a translator's is <name>_<direction>.")  # fmt: skip
    tt.add_argument("--out", required=True, help="the model repository folder (other models in it are kept)")
    tt.add_argument("--model", action="append",
                    help="exported ONNX file (repeatable; default: every file of the export stage)")  # fmt: skip
    tt.add_argument("--version", help="a registry version instead (v0003, or champion); its number is Triton's")
    tt.add_argument("--registry", default=str(layout.REGISTRY), help="registry folder, with --version")
    tt.add_argument("--name", default="generator", help="Triton model name")
    tt.add_argument("--max-batch-size", type=int_arg(1), default=None,
                    help="largest batch Triton forms (default: 64 for a generator, 8 for a translator)")  # fmt: skip
    tt.add_argument("--queue-delay-us", type=int_arg(0), default=100, help="dynamic batching's longest wait, in µs")
    tt.add_argument("--gpu", action="store_true", help="run the instances on GPUs (KIND_GPU) instead of CPU")
    tt.add_argument("--force", action="store_true", help="replace a model folder that already exists")
    tt.set_defaults(fn=_cmd_export_triton)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    sv = sub.add_parser("serve", help="HTTP service over ONNX Runtime: the registry's champion, or --model")
    sv.add_argument(
        "--model", help="an ONNX file to serve (default: the registry's champion, reloaded when it changes)"
    )
    _setting(sv, "--registry", type=Path, help="registry folder whose champion is served")
    _setting(sv, "--direction", choices=("AB", "BA"), help="translator of a CycleGAN champion")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--port", type=int_arg(0, 65535), default=8000, help="TCP port (0: any free one, logged)")
    _setting(sv, "--max-n", type=int_arg(1), help="most images per /v1/generate request")
    _setting(sv, "--max-upload-bytes", type=int_arg(1), help="largest request body")
    _setting(sv, "--max-pixels", square, type=int_arg(1),
             help="largest upload in pixels (bomb guard; default %(default)s)")  # fmt: skip
    _setting(sv, "--max-concurrency", type=int_arg(1),
             help="inferences at once; each may hold a --max-pixels image in memory (default %(default)s)")  # fmt: skip
    _setting(sv, "--max-queue", type=int_arg(0),
             help="requests waiting for one of those; beyond, 503 + Retry-After (default %(default)s)")  # fmt: skip
    _setting(sv, "--reload-check-s", "{:g}".format, type=seconds_arg,
             help="seconds between looks at the registry's champion pointer (default %(default)s: every request); "
                  "replicas on one registry switch to a new champion within it")  # fmt: skip
    _setting(sv, "--device", choices=("auto", "cpu", "cuda"), help="where ONNX Runtime runs")
    _setting(sv, "--model-name",
             help="the model's name under /v2/models/ (Open Inference Protocol; default %(default)s)")  # fmt: skip
    sv.set_defaults(fn=_cmd_serve)
