"""`ganpipe preview-augment`: training images as the discriminator sees them after DiffAugment."""

from __future__ import annotations

import argparse

from flows.cli.common import SEED_MAX, int_arg, output_file, write_error
from pipeline import layout
from pipeline.config import ConfigError


def _cmd_preview_augment(args: argparse.Namespace) -> int:
    from pipeline.config import AugmentConfig, load_params
    from pipeline.dataset import load_split, to_float
    from pipeline.grid import save_panels
    from pipeline.training.augment import preview

    params = load_params(args.params)
    out = output_file(args.out, "--out")
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
        raise write_error(out, err) from None
    print(f"wrote {out}: originals, then {len(panels) - 1} draws of DiffAugment({policy})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    prev = sub.add_parser("preview-augment", help="PNG of training images as D sees them after augmentation")
    prev.add_argument("--params", default=str(layout.PARAMS), help="params file (its augment.diffaugment policy)")
    prev.add_argument("--policy", default=None, help="override augment.diffaugment, e.g. color,translation,cutout")
    prev.add_argument("--prepared", default=str(layout.PREPARED), help="prepared dataset (the prepare stage's output)")
    prev.add_argument("-n", type=int_arg(1), default=32, help="number of training images")
    prev.add_argument("--nrow", type=int_arg(1), default=4, help="images per row")
    prev.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0, help="seed of the augmentation draws")
    prev.add_argument("--out", default="augment_preview.png", help="PNG path to write")
    prev.set_defaults(fn=_cmd_preview_augment)
