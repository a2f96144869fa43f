"""The style-transfer training loop: CycleGAN (unpaired) and pix2pix (paired).

Same engine as image generation: device and precision resolved the same way, EMA copies
of the generators, fingerprinted checkpoints holding every weight, optimiser, schedule,
image pool and random state (so a resumed run continues exactly), DVCLive curves and
sample grids, a progress bar. What differs is the objective:

  CycleGAN (Zhu et al., 2017)  G_AB, G_BA; D_A, D_B PatchGANs. G minimises the adversarial
      loss on both directions + lambda_cycle * (|G_BA(G_AB(a)) - a| + |G_AB(G_BA(b)) - b|)
      + lambda_identity * lambda_cycle * (|G_BA(a) - a| + |G_AB(b) - b|). D sees fakes
      from a history pool. A and B are drawn independently (unpaired), even from pairs.
  pix2pix (Isola et al., 2017)  G_AB U-Net; D conditioned on the input (channels of A and
      B concatenated). G minimises the adversarial loss + lambda_l1 * |G(a) - b|.
The adversarial terms are `train.loss` on patch logits (lsgan, as CycleGAN's reference:
D's loss is (D(x) - 1)^2 / 2 + D(G(.))^2 / 2, already halved as the reference does; pix2pix's
reference uses the non-saturating loss). Learning rates decay linearly to 0 from
`train.lr_decay_start` (a fraction of the steps).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.artifacts import read_json, save_torch
from pipeline.config import ModelConfig, Params
from pipeline.data.dataset import BatchSampler, PreparedSplit, load_split, stable_subset, to_float
from pipeline.errors import MissingInput
from pipeline.grid import save_panels
from pipeline.losses import LOSSES, cycle_loss, identity_loss
from pipeline.models.translation import ImagePool, PatchDiscriminator, ResnetGenerator, UnetGenerator, init_translation
from pipeline.runtime import autocast, resolve_device, resolve_precision, seed_everything, set_threads
from pipeline.training.checkpoint import load_latest, save_checkpoint
from pipeline.training.ema import make_ema, update_ema
from pipeline.training.live import has_logs, open_live
from pipeline.training.loop import TrainingDiverged, TrainPaths, TrainResult, fingerprint, grad_norm

log = logging.getLogger(__name__)
NUM_FIXED = 8  # val inputs shown in every sample grid


def directions(arch: str) -> list[str]:
    return ["AB", "BA"] if arch == "cyclegan" else ["AB"]


def build_translator(cfg: ModelConfig, image_size: int, channels: int) -> torch.nn.Module:
    """One generator of `cfg.arch` (A and B have the same number of channels here)."""
    if cfg.arch == "cyclegan":
        g = ResnetGenerator(channels, channels, width=cfg.g_channels, n_blocks=cfg.n_blocks)
    elif cfg.arch == "pix2pix":
        g = UnetGenerator(channels, channels, image_size, width=cfg.g_channels, dropout=cfg.dropout)
    else:
        raise ValueError(f"model.arch {cfg.arch!r} is not a translation model")
    init_translation(g)
    return g


def build_patch_discriminator(cfg: ModelConfig, image_size: int, in_channels: int) -> torch.nn.Module:
    d = PatchDiscriminator(in_channels, image_size, width=cfg.d_channels, n_layers=cfg.d_layers)
    init_translation(d)
    return d


def translator_spec(params: Params, image_size: int, channels: int, size_multiple: int, min_size: int) -> dict:
    return {
        "task": "translate",
        "model": params.model.model_dump(mode="json"),
        "image_size": image_size,
        "channels": channels,
        "directions": directions(params.model.arch),
        "size_multiple": size_multiple,
        "min_size": min_size,
        "num_classes": 0,
        "class_names": [],
    }


def load_translators(path: Path | str, device: str | torch.device = "cpu") -> tuple[dict[str, torch.nn.Module], dict]:
    """Rebuild the EMA generators saved by `train_translation` (eval mode), by direction."""
    if not Path(path).is_file():
        raise MissingInput(f"{path}: trained generator missing; run the train stage first")
    blob = torch.load(path, map_location=device, weights_only=True)
    spec = blob["spec"]
    if spec.get("task") != "translate":
        raise MissingInput(f"{path}: holds an image generator, not a translator; rerun the train stage")
    gens = {}
    for direction in spec["directions"]:
        g = build_translator(ModelConfig(**spec["model"]), spec["image_size"], spec["channels"])
        g.load_state_dict(blob["state_dicts"][direction])
        gens[direction] = g.to(device).eval()
    return gens, spec


def _domains(prepared: Path, fraction: float, paired: bool) -> tuple[PreparedSplit, PreparedSplit]:
    """Both training domains, subset by `train.data_fraction`; pairs stay together."""
    a, b = load_split(prepared, "train", "A"), load_split(prepared, "train", "B")
    if fraction >= 1:
        return a, b
    if not paired:
        return stable_subset(prepared, "train", a, fraction, "A"), stable_subset(prepared, "train", b, fraction, "B")
    keep = _pair_mask(prepared, fraction)
    return (PreparedSplit(a.images[keep], a.labels[keep], a.classes),
            PreparedSplit(b.images[keep], b.labels[keep], b.classes))  # fmt: skip


def _pair_mask(prepared: Path, fraction: float) -> np.ndarray:
    files = [f for f in read_json(prepared / "manifest.json")["files"] if f["split"] == "train" and f["label"] == "A"]
    keep = np.array([int(f["sha256"][8:16], 16) / 16**8 < fraction for f in files])
    if not keep.any():
        raise MissingInput(f"train.data_fraction={fraction} leaves no training pairs; raise it")
    return keep


def _lr_lambda(steps: int, decay_start: float):
    start = int(steps * decay_start)

    def factor(step: int) -> float:  # the reference's linear decay, in steps instead of epochs
        return 1.0 if step < start else max(0.0, 1.0 - (step - start) / max(1, steps - start))

    return factor


def train_translation(params: Params, paths: TrainPaths | None = None, progress: bool = True) -> TrainResult:
    """Train a CycleGAN or pix2pix model for `params.train.steps` steps, resuming from a
    matching checkpoint; write the EMA generators to `paths.generator`."""
    paths = paths or TrainPaths()
    cfg, mcfg = params.train, params.model
    set_threads()
    seed_everything(params.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if not (paths.prepared / "train_A.npy").is_file():
        raise MissingInput(f"{paths.prepared}: no two-domain data (train_A.npy); rerun prepare with task: translate")
    manifest_paired = _paired(paths.prepared)
    cyclegan = mcfg.arch == "cyclegan"
    data_a, data_b = _domains(paths.prepared, cfg.data_fraction, manifest_paired)
    _, channels, image_size, _ = data_a.images.shape
    val_a = to_float(load_split(paths.prepared, "val", "A").images[:NUM_FIXED])
    val_b = to_float(load_split(paths.prepared, "val", "B").images[:NUM_FIXED])

    G = {d: build_translator(mcfg, image_size, channels).to(device) for d in directions(mcfg.arch)}
    size_multiple = G["AB"].size_multiple
    if cyclegan:  # D_B judges B images (G_AB's outputs), D_A judges A images
        D = {d: build_patch_discriminator(mcfg, image_size, channels).to(device) for d in ("A", "B")}
    else:  # pix2pix: D judges (input, output) pairs
        D = {"B": build_patch_discriminator(mcfg, image_size, 2 * channels).to(device)}
    G_ema = {d: make_ema(g) for d, g in G.items()}
    g_params = [p for g in G.values() for p in g.parameters()]
    d_params = [p for d in D.values() for p in d.parameters()]
    opt_g = torch.optim.Adam(g_params, lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(d_params, lr=cfg.lr_d, betas=cfg.betas)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, _lr_lambda(cfg.steps, cfg.lr_decay_start))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, _lr_lambda(cfg.steps, cfg.lr_decay_start))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == torch.float16)
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss]
    pool_gen = torch.Generator().manual_seed(params.seed + 3)
    pools = {d: ImagePool(cfg.pool_size if cyclegan else 0, generator=pool_gen) for d in D}

    batches_a = BatchSampler(data_a, cfg.batch_size, seed=params.seed + 1, device=device)
    batches_b = BatchSampler(data_b, cfg.batch_size, seed=params.seed + 2, device=device)
    fp = fingerprint(params, paths.prepared)

    start = 0
    state = load_latest(paths.checkpoints, fp, max_step=cfg.steps)
    if state is not None and state["step"] == cfg.steps and not has_logs(paths.live_dir):
        log.warning("training logs in %s are missing; retraining from scratch to rebuild them", paths.live_dir)
        state = None
    if state is not None:
        for d in G:
            G[d].load_state_dict(state["G"][d])
            G_ema[d].load_state_dict(state["G_ema"][d])
        for d in D:
            D[d].load_state_dict(state["D"][d])
            pools[d].load_state_dict(state["pools"][d])
        for obj, key in ((opt_g, "opt_g"), (opt_d, "opt_d"), (sched_g, "sched_g"), (sched_d, "sched_d")):
            obj.load_state_dict(state[key])
        scaler.load_state_dict(state["scaler"])
        batches_a.generator.set_state(state["rng"]["a"])
        batches_b.generator.set_state(state["rng"]["b"])
        pool_gen.set_state(state["rng"]["pool"])
        torch.set_rng_state(state["rng"]["torch"])
        start = state["step"]
        log.info("resuming from checkpoint at step %d", start)

    def checkpoint(step: int) -> None:
        save_checkpoint(paths.checkpoints, step, {
            "fingerprint": fp, "step": step,
            "G": {d: g.state_dict() for d, g in G.items()}, "G_ema": {d: g.state_dict() for d, g in G_ema.items()},
            "D": {d: m.state_dict() for d, m in D.items()}, "pools": {d: p.state_dict() for d, p in pools.items()},
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "sched_g": sched_g.state_dict(), "sched_d": sched_d.state_dict(), "scaler": scaler.state_dict(),
            "rng": {"a": batches_a.generator.get_state(), "b": batches_b.generator.get_state(),
                    "pool": pool_gen.get_state(), "torch": torch.get_rng_state()},
        })  # fmt: skip

    def d_loss(disc: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            real_logits, fake_logits = disc(real), disc(fake)
        return d_loss_fn(real_logits.float(), fake_logits.float())

    def g_adv(disc: torch.nn.Module, fake: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            logits = disc(fake)
        return g_loss_fn(logits.float())

    live = open_live(paths.live_dir, start)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    for m in [*G.values(), *D.values()]:
        m.train()
    for step in range(start, cfg.steps):
        done = step + 1
        idx_a = batches_a.draw()
        # pix2pix trains on pairs (the same rows); CycleGAN draws B independently
        real_a, _ = batches_a.take(idx_a)
        real_b, _ = batches_b.take(idx_a if not cyclegan else batches_b.draw())
        terms: dict[str, torch.Tensor] = {}

        # G step (D frozen)
        for disc in D.values():
            disc.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        with autocast(device, precision):
            fake_b = G["AB"](real_a)
            if cyclegan:
                fake_a = G["BA"](real_b)
                rec_a, rec_b = G["BA"](fake_b), G["AB"](fake_a)
        if cyclegan:
            terms["adv"] = g_adv(D["B"], fake_b) + g_adv(D["A"], fake_a)
            terms["cycle"] = cycle_loss(real_a, rec_a.float()) + cycle_loss(real_b, rec_b.float())
            loss_g = terms["adv"] + cfg.lambda_cycle * terms["cycle"]
            if cfg.lambda_identity > 0:
                with autocast(device, precision):
                    same_a, same_b = G["BA"](real_a), G["AB"](real_b)
                terms["identity"] = identity_loss(real_a, same_a.float()) + identity_loss(real_b, same_b.float())
                loss_g = loss_g + cfg.lambda_identity * cfg.lambda_cycle * terms["identity"]
        else:
            terms["adv"] = g_adv(D["B"], torch.cat([real_a, fake_b], 1))
            terms["l1"] = (fake_b.float() - real_b).abs().mean()
            loss_g = terms["adv"] + cfg.lambda_l1 * terms["l1"]
        scaler.scale(loss_g).backward()
        grad_g = grad_norm(G["AB"]) if done % cfg.log_every == 0 else 0.0
        scaler.step(opt_g)
        scaler.update()
        for disc in D.values():
            disc.requires_grad_(True)

        # D step on detached fakes (CycleGAN: drawn through the history pools)
        opt_d.zero_grad(set_to_none=True)
        if cyclegan:
            loss_d = d_loss(D["B"], real_b, pools["B"].query(fake_b.detach().float()))
            loss_d = loss_d + d_loss(D["A"], real_a, pools["A"].query(fake_a.detach().float()))
        else:
            loss_d = d_loss(D["B"], torch.cat([real_a, real_b], 1), torch.cat([real_a, fake_b.detach().float()], 1))
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        scaler.update()
        sched_g.step()
        sched_d.step()
        for d in G:
            update_ema(G_ema[d], G[d], step, cfg.ema_decay)
        bar.update(1)

        log_now = done % cfg.log_every == 0 or done == cfg.steps
        checkpoint_now = done % cfg.checkpoint_every == 0 or done == cfg.steps
        if log_now or checkpoint_now:
            lg, ld = float(loss_g.detach()), float(loss_d.detach())
            if not (np.isfinite(lg) and np.isfinite(ld)):
                live.end()
                raise TrainingDiverged(
                    f"loss became non-finite at step {done} (loss_D={ld}, loss_G={lg}); "
                    f"the last good checkpoint in {paths.checkpoints} is kept. Lower train.lr_* and rerun."
                )
        if log_now:
            live.step = done
            live.log_metric("train/loss_G", lg)
            live.log_metric("train/loss_D", ld)
            for name, value in terms.items():
                live.log_metric(f"train/{name}", float(value.detach()))
            live.log_metric("train/grad_norm_G", grad_g)
            live.log_metric("train/lr_G", opt_g.param_groups[0]["lr"])
            live.log_metric("train/lr_D", opt_d.param_groups[0]["lr"])
            bar.set_postfix(loss_D=f"{ld:.3f}", loss_G=f"{lg:.3f}")
        if done % cfg.sample_every == 0 or done == cfg.steps:
            live.step = done
            live.log_image(f"samples/{done:07d}.png", _panel_image(G_ema["AB"], val_a, val_b, device))
        if checkpoint_now:
            checkpoint(done)
    bar.close()
    live.end()

    spec = translator_spec(params, image_size, channels, size_multiple, G["AB"].min_size)
    blob = {"spec": spec, "state_dicts": {d: g.cpu().state_dict() for d, g in G_ema.items()}, "steps": cfg.steps}
    save_torch(paths.generator, blob)
    save_panels(_panels(G_ema["AB"].cpu(), val_a, val_b, torch.device("cpu")), paths.samples, nrow=1, scale=3)
    return TrainResult(steps=cfg.steps, resumed_from=start, generator=paths.generator, seconds=time.perf_counter() - t0)


def _paired(prepared: Path) -> bool:
    return bool(read_json(prepared / "manifest.json").get("paired"))


@torch.no_grad()
def translate_batch(g: torch.nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    was = g.training
    g.eval()
    out = g(x.to(device)).float().cpu()
    g.train(was)
    return out


def _panels(g, val_a, val_b, device) -> list[np.ndarray]:
    """input | output | target rows, as [N, C, H, W] arrays for save_panels."""
    out = translate_batch(g, val_a, device)
    return [val_a.numpy(), out.numpy(), val_b.numpy()]


def _panel_image(g, val_a, val_b, device) -> np.ndarray:
    from pipeline.grid import make_grid

    a, out, b = _panels(g, val_a, val_b, device)
    rows = np.concatenate([a, out, b])  # three rows of NUM_FIXED
    grid = make_grid(rows, nrow=len(a))
    return grid[..., 0] if grid.shape[-1] == 1 else grid
