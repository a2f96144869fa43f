"""`ganpipe`: run the pipeline or one stage, and sample from an exported model.

Imports are deferred to each command: `ganpipe generate` needs only onnxruntime, NumPy
and Pillow, never torch or Prefect.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline import layout
from pipeline.artifacts import atomic_path
from pipeline.config import ConfigError
from pipeline.errors import UserError

STAGES = ("prepare", "evaluator", "reference", "train", "evaluate", "export")
SEED_MAX = 2**63 - 1  # the service's bound too: a seed gives the same images from either
MAX_GRID_PIXELS = 2**29  # `generate`: the PNG's pixels (1.6 GB as RGB; 64 samples of 1024x1024 at --scale 2 fit)


def int_arg(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], refused at parse time with the bound named
    ("argument --nrow: must be at least 1, got -1"), instead of failing later with a traceback."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def fraction_arg(text: str) -> float:
    """An argparse type for a relative margin: 0 <= x < 1, as retrain.fid_margin in params.yaml."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1 (0.02 = 2%), got {text}")
    return value


def seconds_arg(text: str) -> float:
    """An argparse type for a wait in seconds: a finite number >= 0, refused at parse time otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0.0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, got {text}")
    return value


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


def _output_file(path: Path | str, flag: str) -> Path:
    """Refuse an existing folder as an output file up front, before any work (the atomic writer
    would refuse it too, but only after the images were made)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; {flag} takes the file to write")
    return path


def _write_error(path: Path, err: OSError) -> UserError:
    # the folder that could not be made, say; not the temporary file beside `path`
    where = f" ({err.filename})" if err.filename and Path(err.filename).parent != Path(path).parent else ""
    return UserError(f"{path}: cannot write: {err.strerror or err}{where}")


def _run_pipeline(dvc_args: list[str]) -> int:
    from flows.pipeline import experiment_name, export_details, pipeline_flow, summary_markdown
    from flows.server import describe, local_prefect_api
    from flows.stage import run_labelled

    with local_prefect_api() as url:
        print(describe(url), file=sys.stderr)
        state = run_labelled(pipeline_flow, {"dvc_args": dvc_args}, "pipeline", layout.PARAMS,
                             experiment_name(dvc_args), return_type="state")  # fmt: skip
    if not state.is_completed():
        print(f"ganpipe {'exp' if dvc_args[0] == 'exp' else 'repro'}: {state.message}", file=sys.stderr)
        return 1
    print(summary_markdown(state.result(), export_details()))
    return 0


def _command_line() -> str:
    return " ".join(["ganpipe", *sys.argv[1:]])


def _cmd_repro(args: argparse.Namespace) -> int:
    from pipeline.config import load_params
    from pipeline.workspace import workspace_lock

    with workspace_lock(_command_line()):  # an experiment running here would change params under DVC's feet
        load_params(layout.PARAMS)  # before DVC removes any stage's outputs
        _repair_dvc_locks()
        return _run_pipeline(["repro", *args.dvc_args])


def _repair_dvc_locks() -> None:
    from pipeline.workspace import repair_dvc_rwlock

    if said := repair_dvc_rwlock():
        print(f"ganpipe: {said}", file=sys.stderr)


def _cmd_push(args: argparse.Namespace) -> int:
    from dvc.exceptions import DvcException

    from flows.push import push_runs

    try:
        sent = push_runs(args.remote)
    except DvcException as err:  # no remote, an unreachable one, missing credentials: DVC's words, one line
        raise UserError(" ".join(str(err).split())) from None
    print(f"pushed the outputs and the run-cache, and {sent} file(s) of other runs the run-cache names")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """The benchmark suite lives beside the package (bench/), in the repository: run it there."""
    script = Path(__file__).resolve().parents[1] / "bench" / "run.py"
    if not script.is_file():
        raise UserError(f"the benchmark suite is not here ({script} is missing): run `ganpipe bench` from a clone "
                        "of the repository (pip install -e .)")  # fmt: skip
    return subprocess.run([sys.executable, str(script), *args.dvc_args]).returncode


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
    from pipeline.workspace import workspace_lock

    # held before params.yaml is read or put back, and until DVC is done: `dvc exp run -S` rewrites
    # params.yaml before DVC takes its own lock, so a second experiment would change the first one's
    with workspace_lock(_command_line()):
        _repair_dvc_locks()
        return _exp(args)


def _exp(args: argparse.Namespace) -> int:
    from pipeline.config import load_params, parse_params, read_yaml

    overlay = read_yaml(args.config, "give the overlay's path, e.g. configs/wgan-gp.yaml") or {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{args.config}: must be a mapping of params groups")
    name = args.name or os.path.splitext(os.path.basename(args.config))[0]
    if not {"-f", "--force"} & set(args.dvc_args) and _experiment_exists(name):  # DVC's own refusal reads as a failure
        rerun = f"ganpipe exp {args.config}" + (f" --name {name}" if args.name else "")
        raise UserError(f"experiment {name!r} already exists on this commit (dvc exp show); run it again under another "
                        f"name (ganpipe exp {args.config} --name {name}-2) or replace it ({rerun} -f)")  # fmt: skip
    _committed_params()
    base = load_params(layout.PARAMS).model_dump(mode="json")
    parse_params(merge_overlay(base, overlay), args.config)  # validate the combination before running
    validate_set_params([*overrides(overlay), *set_params(args.dvc_args)])  # and with the user's own -S
    sets = [x for kv in overrides(overlay) for x in ("-S", kv)]
    return _run_pipeline(["exp", "run", "--name", name, *sets, *args.dvc_args])


def set_params(dvc_args: list[str]) -> list[str]:
    """The values of every `-S` / `--set-param` among `dvc exp run` arguments, in order."""
    found, rest = [], iter(dvc_args)
    for arg in rest:
        if arg in ("-S", "--set-param"):
            found.append(next(rest, ""))
        elif arg.startswith("--set-param="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-S"):
            found.append(arg[2:])
    return found


def validate_set_params(sets: list[str]) -> None:
    """Validate params.yaml as `dvc exp run -S <sets>` would leave it (each point of a sweep), with
    DVC's own override parser, before DVC removes any stage's outputs; ConfigError names the -S
    values and the key. Overrides of other params files than params.yaml are left to DVC."""
    import shutil
    import tempfile

    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides, get_hydra_sweeps
    from hydra.errors import HydraException

    from pipeline.config import parse_params, read_yaml

    ours = {p: o for p, o in to_path_overrides(sets).items() if Path(p) == layout.PARAMS}
    if not ours:
        return
    try:
        points = get_hydra_sweeps(ours)
    except (DvcException, HydraException) as err:
        raise ConfigError(f"-S {' '.join(sets)}: {str(err).splitlines()[0]}") from None
    with tempfile.TemporaryDirectory(prefix="ganpipe-params-") as tmp:
        copy = Path(tmp) / layout.PARAMS.name
        for point in points:
            (values,) = point.values()
            shutil.copyfile(layout.PARAMS, copy)
            try:
                apply_overrides(copy, values)
            except DvcException as err:
                cause = f" ({str(err.__cause__).splitlines()[0]})" if err.__cause__ else ""
                raise ConfigError(f"-S {' '.join(values)}: {err}{cause}") from None
            parse_params(read_yaml(copy), f"{layout.PARAMS} with -S {' '.join(values)}")


def _experiment_exists(name: str) -> bool:
    """Whether HEAD already has an experiment `name`, the check `dvc exp run --name` makes."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.experiments.refs import ExpRefInfo
    from scmrepo.exceptions import SCMError

    try:
        with Repo() as repo:
            return bool(repo.scm.get_ref(str(ExpRefInfo(repo.scm.get_rev(), name))))
    except (DvcException, SCMError):  # not a DVC repository, no commit yet: `dvc exp run` says so itself
        return False


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, check=False)


def _committed_params() -> None:
    """Lay overlays on the committed params.yaml. `dvc exp run` leaves the last experiment's params
    in the workspace, and the next `-S` would be laid on them: an experiment's params there are
    put back to the commit's (the experiment keeps them: `dvc exp apply`); an edit of the user's
    is refused, never overwritten."""
    committed, current = _git("show", f"HEAD:{layout.PARAMS.as_posix()}"), layout.PARAMS.read_bytes()
    if committed.returncode != 0 or committed.stdout == current:
        return  # no commit or no committed params (DVC says so itself), or nothing changed
    head = _git("rev-parse", "HEAD").stdout.decode().strip()
    refs = _git("for-each-ref", "--format=%(refname)", f"refs/exps/{head[:2]}/{head[2:]}/").stdout.decode().split()
    left_by = [r.rsplit("/", 1)[1] for r in refs
               if _git("show", f"{r}:{layout.PARAMS.as_posix()}").stdout == current]  # fmt: skip
    if not left_by:
        raise UserError(f"{layout.PARAMS}: has changes that are not committed; an overlay is laid on the committed "
                        f"params: commit them (or `git checkout {layout.PARAMS}`) and run again")  # fmt: skip
    with atomic_path(layout.PARAMS) as tmp:
        tmp.write_bytes(committed.stdout)
    print(f"{layout.PARAMS}: held experiment {left_by[0]!r}'s params; put back the committed ones "
          f"(`dvc exp apply {left_by[0]}` brings them back)", file=sys.stderr)


def merge_overlay(base: dict, over: dict) -> dict:
    """`base` params with the keys of `over` laid on top, group by group."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_overlay(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _stage_flows() -> dict:
    """Stage name -> its Prefect flow (what dvc.yaml's `python -m flows.<stage>` runs)."""
    from flows.evaluate import evaluate_flow
    from flows.evaluator import evaluator_flow
    from flows.export import export_flow
    from flows.prepare import prepare_flow
    from flows.reference import reference_flow
    from flows.train import train_flow

    return {"prepare": prepare_flow, "evaluator": evaluator_flow, "reference": reference_flow, "train": train_flow,
            "evaluate": evaluate_flow, "export": export_flow}  # fmt: skip


def _cmd_stage(args: argparse.Namespace) -> int:
    from flows.stage import run_stage

    if args.command == "train":  # the launch settings reach the stage as the DVC stage gets them
        from flows.train import check_launch
        from pipeline.training.worker import Rendezvous

        os.environ.update(Rendezvous(args.rdzv_endpoint, args.rdzv_id, args.max_restarts).env())
        return run_stage(_stage_flows()["train"], ["--params", args.params], check=check_launch)
    return run_stage(_stage_flows()[args.command], ["--params", args.params])


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
        out = _output_file(args.out, "--out")
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
        raise _write_error(target, err) from None
    print(f"wrote {n} samples to {where} ({', '.join(model.providers)})")
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from pipeline import sampling

    seeds = sampling.parse_seeds(args.seeds, SEED_MAX)
    out = _output_file(args.out, "--out")
    sampling.format_of(out, sampling.STILL, "--out")
    if args.animation is not None:
        sampling.format_of(_output_file(args.animation, "--animation"), sampling.MOVING, "--animation")
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
        raise _write_error(target, err) from None
    also = f" and {args.animation}" if args.animation else ""
    print(f"wrote a walk of {len(z)} images through seeds {seeds} to {out}{also}")
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    """One file or a whole folder (recursively); output names mirror input names. A file that
    cannot be translated (not an image, over --max-pixels, a decompression bomb) is reported and
    skipped, the rest are translated; the exit status is then 1, so that scripts notice."""
    import warnings

    from PIL import Image
    from tqdm import tqdm

    from pipeline.inference import MAX_PIXELS, ImageRejected, OnnxTranslator, open_image

    max_pixels = args.max_pixels or MAX_PIXELS  # the default is resolved here: parsing must not import onnxruntime
    model = OnnxTranslator(args.model, device=args.device)
    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise UserError(f"{src}: input not found")
    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            raise UserError(f"{dst}: exists and is not a folder (input {src} is a folder)")
        jobs = [(f, dst / f.relative_to(src)) for f in sorted(src.rglob("*")) if f.is_file()]
        folder = dst
    else:
        jobs = [(src, dst / src.name if dst.is_dir() else dst)]
        folder = jobs[0][1].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{folder}: cannot create the output folder: {err.strerror or err}") from None
    skipped, done = [], 0
    for f, out in tqdm(jobs, desc="translate", unit="img", disable=len(jobs) < 2, dynamic_ncols=True):
        if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
            out = out.with_suffix(".png")  # e.g. .tif, .gif inputs: written as PNG
        if out.is_dir():  # the atomic writer refuses it too, but as a write error that ends the run
            skipped.append(f"{f}: its output {out} is a folder")
            continue
        try:
            with warnings.catch_warnings():  # Pillow's multi-line warning; our own limit reports the size
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = open_image(f, max_pixels)  # refused from the header, before decoding
            with img:
                result = model.translate_image(img, max_pixels)
        except ImageRejected as err:
            skipped.append(f"{f}: {err}")
            continue
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out) as tmp:
                result.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"))
        except OSError as err:  # the output location is unusable: every later file would fail too
            raise UserError(f"{out}: cannot write: {err.strerror or err} ({done} file(s) written before it)") from None
        done += 1
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"translated {done} of {len(jobs)} file(s) with {args.model} ({model.direction}, "
          f"{', '.join(model.providers)}) into {dst}" + (f"; {len(skipped)} skipped" if skipped else ""))  # fmt: skip
    return 1 if skipped else 0


def _cmd_registry(args: argparse.Namespace) -> int:
    from pipeline.registry import Registry

    if args.version and args.action != "show":
        raise UserError(f"{args.action} takes no version (got {args.version!r}); only show does")
    reg = Registry(args.registry)
    try:
        if args.action == "list":
            return _list_registry(reg, args.registry)
        if args.action == "show":
            print(json.dumps(reg.info(args.version), indent=2))
        elif args.action == "promote":
            version = reg.promote(args.workdir, reason="promoted by hand")
            print(f"promoted {version}; it is now the champion")
        else:
            print(f"rolled back: {reg.rollback()} is the champion again")
    except OSError as err:  # a registry on a full or read-only disk, a file where a folder belongs, ...
        raise UserError(f"{err.filename or args.registry}: {err.strerror or err}") from None
    return 0


def _list_registry(reg, name: str) -> int:
    """Every version, one a line; an unreadable one is listed as such (exit 1) rather than hiding the rest."""
    from pipeline.data.report import one_line  # names as written, a newline in one shown as \n
    from pipeline.registry import RegistryError

    problems = []
    try:
        reg.champion()
    except RegistryError as err:
        problems.append(str(err))
    rows = reg.table()
    if not rows:
        print(f"{name}: no versions yet (ganpipe registry promote)")
    for r in rows:
        mark = "*" if r["champion"] else " "
        if "error" in r:
            print(f"{mark} {r['version']}  unreadable")
            problems.append(r["error"])
            continue
        fid = "-" if r["fid"] is None else f"{r['fid']:.4f}"
        print(one_line(f"{mark} {r['version']}  {r['created']}  FID {fid}  {r['git_rev']}  {r['files']}"))
    for problem in problems:
        print(f"ganpipe registry: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


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
    from flows.server import configured_server

    url = configured_server()  # the environment or the active profile; one that does not answer is refused
    if not url:
        raise UserError(
            "schedules need a running Prefect server: start `prefect server start` and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api (or `prefect config set PREFECT_API_URL=...`)"
        )
    os.environ["PREFECT_API_URL"] = url
    print(f"serving deployment ganpipe-retrain/{args.name} (cron {args.cron!r}); Ctrl-C or SIGTERM stops it, "
          "cancelling a run in progress and pausing the schedule until the next `ganpipe schedule`",
          file=sys.stderr)  # fmt: skip
    serve_retraining(args.cron, ".", args.registry, args.margin, args.name)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.serve.app import ServeConfig, serve

    given = {"max_pixels": args.max_pixels, "max_concurrency": args.max_concurrency, "max_queue": args.max_queue,
             "model_name": args.model_name, "reload_check_s": args.reload_check_s}  # fmt: skip
    # a flag left out (None) keeps ServeConfig's default: one place to change it
    cfg = ServeConfig(model=Path(args.model) if args.model else None, registry=Path(args.registry),
                      direction=args.direction, max_n=args.max_n, max_upload_bytes=args.max_upload_bytes,
                      device=args.device, **{k: v for k, v in given.items() if v is not None})  # fmt: skip
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


def _cmd_preview_augment(args: argparse.Namespace) -> int:
    from pipeline.config import AugmentConfig, load_params
    from pipeline.data.augment import preview
    from pipeline.data.dataset import load_split, to_float
    from pipeline.grid import save_panels

    params = load_params(args.params)
    out = _output_file(args.out, "--out")
    policy = args.policy if args.policy is not None else params.augment.diffaugment
    if not policy:
        raise ConfigError(f"{args.params}: augment.diffaugment is empty; pass --policy color,translation,cutout")
    try:
        policy = AugmentConfig(diffaugment=policy).diffaugment  # validated policy names
    except ValueError as err:  # pydantic's ValidationError
        raise ConfigError(f"--policy {policy!r}: {err.errors()[0]['msg']}") from None
    images = to_float(load_split(args.prepared, "train").images[: args.n])
    panels = preview(images, policy, seed=args.seed)
    try:
        save_panels([p.numpy() for p in panels], out, nrow=args.nrow, scale=3)
    except OSError as err:
        raise _write_error(out, err) from None
    print(f"wrote {out}: originals, then {len(panels) - 1} draws of DiffAugment({policy})")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ganpipe")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _with_defaults(*args, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(*args, formatter_class=_DefaultsShown, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganpipe", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # every subcommand's help shows its defaults
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=_with_defaults)  # fmt: skip

    repro = sub.add_parser("repro", help="run `dvc repro` against a local Prefect server (started if needed)",
                           epilog="Other arguments go to dvc repro, e.g. `ganpipe repro --force train`.")  # fmt: skip
    repro.set_defaults(fn=_cmd_repro, passes_through=True)

    exp = sub.add_parser("exp", help="run a shipped params overlay (configs/*.yaml) as a DVC experiment",
                         epilog="Other arguments go to dvc exp run: -S key=value (checked like the overlay, each "
                                "sweep point too), -f, --queue, --temp, ... e.g. `ganpipe exp "
                                "configs/stylegan2-digits.yaml -S train.steps=500 -f`.")  # fmt: skip
    exp.add_argument("config", help="YAML with only the params that differ from params.yaml")
    exp.add_argument("--name", help="experiment name (default: the file's stem)")
    exp.set_defaults(fn=_cmd_exp, passes_through=True)

    push = sub.add_parser("push", help="dvc push --run-cache, plus the files of every run the run-cache names, so "
                          "another clone restores those runs (dvc repro --pull) instead of rerunning them")  # fmt: skip
    push.add_argument("-r", "--remote", help="DVC remote (default: the default remote)")
    push.set_defaults(fn=_cmd_push)

    bench = sub.add_parser("bench", help="the benchmark suite: reports/bench.json and docs/benchmarks.md",
                           epilog="Arguments go to bench/run.py: --quick, --device, --out, benchmark names; "
                                  "`python bench/run.py --help` lists them.")  # fmt: skip
    bench.set_defaults(fn=_cmd_bench, passes_through=True)

    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage's flow (what dvc.yaml calls)")
        p.add_argument("--params", default=str(layout.PARAMS), help="the params file to validate and run with")
        p.set_defaults(fn=_cmd_stage)
        if stage == "train":  # this machine's share of a run over several (docs/scaling.md)
            from pipeline.training.worker import ENDPOINT_ENV, ID_ENV, RESTARTS_ENV

            p.add_argument("--rdzv-endpoint", default=os.environ.get(ENDPOINT_ENV), metavar="HOST:PORT",
                           help=f"where the train.nnodes machines meet (torchrun's c10d rendezvous; {ENDPOINT_ENV})")
            p.add_argument("--rdzv-id", default=os.environ.get(ID_ENV) or "ganpipe",
                           help=f"one name for the run, the same on every machine ({ID_ENV})")
            p.add_argument("--max-restarts", type=int_arg(0), default=os.environ.get(RESTARTS_ENV) or "0",
                           help=f"restart every process from the last checkpoint after one fails ({RESTARTS_ENV})")

    prev = sub.add_parser("preview-augment", help="PNG of training images as D sees them after augmentation")
    prev.add_argument("--params", default=str(layout.PARAMS), help="params file (its augment.diffaugment policy)")
    prev.add_argument("--policy", default=None, help="override augment.diffaugment, e.g. color,translation,cutout")
    prev.add_argument("--prepared", default=str(layout.PREPARED), help="prepared dataset (the prepare stage's output)")
    prev.add_argument("-n", type=int_arg(1), default=32, help="number of training images")
    prev.add_argument("--nrow", type=int_arg(1), default=4, help="images per row")
    prev.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0, help="seed of the augmentation draws")
    prev.add_argument("--out", default="augment_preview.png", help="PNG path to write")
    prev.set_defaults(fn=_cmd_preview_augment)

    def model_options(p: argparse.ArgumentParser, label_help: str) -> None:
        p.add_argument("--model", default=str(layout.ONNX_GENERATOR), help="ONNX file from the export stage")
        p.add_argument("--label", "--class", dest="label", action="append", help=label_help)
        p.add_argument("--scale", type=int_arg(1), default=2, help="integer upscaling of the pictures")
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where ONNX Runtime runs")
        p.add_argument("--psi", "--trunc", dest="psi", type=psi_arg, default=None, metavar="FLOAT",
                       help="truncation (models that take it, e.g. stylegan2): 1 = none, lower = each sample pulled "
                            "towards the average image (more typical, less varied), 0 = that one image for every "
                            "seed; default: none")  # fmt: skip

    gen = sub.add_parser("generate", help="sample a grid, or one image per seed, from an exported ONNX generator "
                                          "(no torch needed)")  # fmt: skip
    model_options(gen, "class name or index (repeat to cycle; one with --seeds); conditional models")
    gen.add_argument("-n", type=int_arg(1), default=None, help="number of samples (default 64)")
    gen.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0, help="noise seed (same seed, same images)")
    gen.add_argument("--seeds", default=None, metavar="LIST",
                     help="one image per seed, e.g. 0-15 or 1,5,9 (seed S is the image of -n 1 --seed S)")
    gen.add_argument("--outdir", default=None, help="with --seeds: write seed0000.png ... here instead of one grid")
    gen.add_argument("--out", default="samples.png", help="picture to write: .png, .jpg or .webp")
    gen.add_argument("--nrow", type=int_arg(1), default=None, help="images per row (default: square)")
    gen.set_defaults(fn=_cmd_generate)

    walk = sub.add_parser("interpolate", help="a walk between seeds' noise (z, along the great circle) as a strip "
                                              "and an animation")  # fmt: skip
    model_options(walk, "class name or index for every image (conditional models)")
    walk.add_argument("--seeds", required=True, metavar="LIST", help="the seeds to pass through, e.g. 0,7,3 or 0-3")
    walk.add_argument("--steps", type=int_arg(1, 256), default=8, help="images from one seed to the next")
    walk.add_argument("--out", default="walk.png", help="the strip: .png, .jpg or .webp")
    walk.add_argument("--animation", default=None, help="also a looping animation: .gif or .webp")
    walk.add_argument("--frame-ms", type=int_arg(10, 10_000), default=80, help="milliseconds per animation frame")
    walk.add_argument("--nrow", type=int_arg(1), default=None, help="images per row (default: one leg per row)")
    walk.set_defaults(fn=_cmd_interpolate)

    tr = sub.add_parser("translate", help="translate an image or a folder of images with an exported translator",
                        epilog="Files that cannot be translated (not an image, over --max-pixels) are skipped and "
                               "listed, the others translated. Exit status: 0 all translated, 1 some skipped, "
                               "2 nothing done (bad arguments, model or output).")  # fmt: skip
    tr.add_argument("input", help="an image file or a folder (searched recursively)")
    tr.add_argument("output", help="output file, or folder (names mirror the input's; PNG unless the suffix says)")
    tr.add_argument("--model", default=str(layout.ONNX_TRANSLATORS["AB"]), help="ONNX translator from the export stage")
    tr.add_argument("--max-pixels", type=int_arg(1), default=None,
                    help="largest image in pixels, read from its header before decoding (bomb guard; default: "
                         "as the service, 1024x1024)")  # fmt: skip
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where ONNX Runtime runs")
    tr.set_defaults(fn=_cmd_translate)

    reg = sub.add_parser("registry", help="list, show, promote or roll back model versions in registry/")
    reg.add_argument("action", choices=("list", "show", "promote", "rollback"),
                     help="list exits 1 if a version or the champion pointer is unreadable")  # fmt: skip
    reg.add_argument("version", nargs="?", help="show: a version (default: the champion)")
    reg.add_argument("--registry", default="registry", help="registry folder")
    reg.add_argument("--workdir", default=".", help="promote: the pipeline checkout whose outputs to promote")
    reg.set_defaults(fn=_cmd_registry)

    rt = sub.add_parser("retrain", help="run the retraining flow once: retrain if inputs changed, promote if better")
    rt.add_argument("--registry", default="registry", help="registry folder")
    rt.add_argument("--margin", type=fraction_arg, default=None,
                    help="relative FID improvement needed, 0 <= m < 1 (default: retrain.fid_margin)")  # fmt: skip
    rt.add_argument("--force", action="store_true", help="retrain even if no input changed")
    rt.add_argument("-S", "--set", action="append", help="params override for the experiment, e.g. train.steps=6000")
    rt.set_defaults(fn=_cmd_retrain)

    sc = sub.add_parser("schedule", help="serve the retraining deployment on a cron schedule (needs a Prefect server)")
    sc.add_argument("--cron", default="0 3 * * *", help="cron expression (default: every day at 03:00)")
    sc.add_argument("--name", default="nightly", help="deployment name")
    sc.add_argument("--registry", default="registry", help="registry folder")
    sc.add_argument("--margin", type=fraction_arg, default=None, help="as retrain --margin")
    sc.set_defaults(fn=_cmd_schedule)

    sv = sub.add_parser("serve", help="HTTP service over ONNX Runtime: the registry's champion, or --model")
    sv.add_argument(
        "--model", help="an ONNX file to serve (default: the registry's champion, reloaded when it changes)"
    )
    sv.add_argument("--registry", default="registry", help="registry folder whose champion is served")
    sv.add_argument("--direction", default="AB", choices=("AB", "BA"), help="translator of a CycleGAN champion")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--port", type=int_arg(0, 65535), default=8000, help="TCP port (0: any free one, logged)")
    sv.add_argument("--max-n", type=int_arg(1), default=64, help="most images per /v1/generate request")
    sv.add_argument("--max-upload-bytes", type=int_arg(1), default=8 * 1024 * 1024, help="largest request body")
    sv.add_argument("--max-pixels", type=int_arg(1), default=None,
                    help="largest upload in pixels (bomb guard; default 1024x1024)")  # fmt: skip
    sv.add_argument("--max-concurrency", type=int_arg(1), default=None,
                    help="inferences at once; each may hold a --max-pixels image in memory (default 2)")  # fmt: skip
    sv.add_argument("--max-queue", type=int_arg(0), default=None,
                    help="requests waiting for one of those; beyond, 503 + Retry-After (default 16)")  # fmt: skip
    sv.add_argument("--reload-check-s", type=seconds_arg, default=None,
                    help="seconds between looks at the registry's champion pointer (default 0: every request); "
                         "replicas on one registry switch to a new champion within it")  # fmt: skip
    sv.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where ONNX Runtime runs")
    sv.add_argument("--model-name", default=None,
                    help="the model's name under /v2/models/ (Open Inference Protocol; default ganpipe)")  # fmt: skip
    sv.set_defaults(fn=_cmd_serve)

    tt = sub.add_parser("export-triton", help="write a Triton Inference Server model repository for exported models",
                        epilog="One model folder per ONNX file: <out>/<name>/config.pbtxt and "
                               "<out>/<name>/<version>/model.onnx; a translator's is <name>_<direction>.")  # fmt: skip
    tt.add_argument("--out", required=True, help="the model repository folder (other models in it are kept)")
    tt.add_argument("--model", action="append",
                    help="exported ONNX file (repeatable; default: every file of the export stage)")  # fmt: skip
    tt.add_argument("--version", help="a registry version instead (v0003, or champion); its number is Triton's")
    tt.add_argument("--registry", default="registry", help="registry folder, with --version")
    tt.add_argument("--name", default="generator", help="Triton model name")
    tt.add_argument("--max-batch-size", type=int_arg(1), default=None,
                    help="largest batch Triton forms (default: 64 for a generator, 8 for a translator)")  # fmt: skip
    tt.add_argument("--queue-delay-us", type=int_arg(0), default=100, help="dynamic batching's longest wait, in µs")
    tt.add_argument("--gpu", action="store_true", help="run the instances on GPUs (KIND_GPU) instead of CPU")
    tt.add_argument("--force", action="store_true", help="replace a model folder that already exists")
    tt.set_defaults(fn=_cmd_export_triton)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_through", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.dvc_args = extra  # repro / exp: everything we do not know goes to dvc
    try:
        return args.fn(args)
    except UserError as err:
        print(f"ganpipe {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
