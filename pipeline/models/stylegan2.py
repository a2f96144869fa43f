"""StyleGAN2 (Karras et al., 2020) generator and discriminator, written from the papers.

G: a mapping network (an MLP with a learning-rate multiplier) turns z, and the class
embedding of a conditional model, into w; a learned constant 4x4 input is refined block by
block by modulated, demodulated 3x3 convolutions, each followed by per-pixel noise with a
learned strength; every resolution adds its RGB through a skip connection. D: residual
blocks down to 4x4, minibatch standard deviation, a conv and two linear layers, the shared
head (projection or ACGAN). Every weight but the head's uses the equalised learning rate: with
it there too (the official conditional D's form), D learned the classes slower; measured on the
digits with classes drawn from the noise, FID 2.24 against 1.43 after 3,000 steps.

Written without custom CUDA ops, so the same code runs on CPU, CUDA and in ONNX:
- Up- and downsampling are bilinear: 2x bilinear upsampling is the [1, 3, 3, 1] FIR filter
  the papers use (up to the image border, where it repeats the edge instead of padding with
  zeros); D downsamples by 2x2 averaging before its second conv, where the paper filters and
  strides.
- A modulated convolution has two equal forms: the grouped convolution (one group per sample,
  the paper's formulation) and scaling the activations around one shared convolution. The
  second is used while training (as the official code does) and when exporting, since
  ONNX's Conv fixes its group count and the batch must stay dynamic; the grouped form
  serves inference in PyTorch. Tests hold both to the same output.
- Noise: training draws fresh noise from the generator the objective passes; without one
  (evaluation, sampling, export) every layer uses its stored constant noise, so the
  evaluated, sampled and exported models are one and the same function.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.dcgan import num_blocks
from pipeline.models.layers import DiscriminatorHead

SQRT2 = math.sqrt(2.0)
MBSTD_GROUP = 4  # the paper's group size (model.mbstd_group sets it)


def widths(width: int, image_size: int) -> dict[int, int]:
    """Channels at each resolution from 4 px up: `width` at the image size, doubled at each
    halving, at most 8x `width`: every resolution costs about the same (the official
    configurations' channel_base / resolution rule, capped as their channel_max caps it)."""
    return {4 * 2**i: min(width * image_size // (4 * 2**i), 8 * width) for i in range(num_blocks(image_size) + 1)}


def lrelu(x: torch.Tensor) -> torch.Tensor:
    """Leaky ReLU with the sqrt(2) gain that keeps activations at unit variance."""
    return F.leaky_relu(x, 0.2) * SQRT2


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """A linear layer with the equalised learning rate: weights stored as N(0, 1) / lr_mul and
    scaled at run time by lr_mul / sqrt(fan_in), so Adam moves every layer at the same pace."""

    def __init__(self, cin: int, cout: int, bias: bool = True, lr_mul: float = 1.0, bias_init: float = 0.0,
                 activate: bool = False):  # fmt: skip
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init))) if bias else None
        self.scale, self.lr_mul, self.activate = lr_mul / math.sqrt(cin), lr_mul, activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias * self.lr_mul
        x = F.linear(x, self.weight * self.scale, b)
        return lrelu(x) if self.activate else x


class EqualConv2d(nn.Module):
    """A same-padded convolution with the equalised learning rate."""

    def __init__(self, cin: int, cout: int, kernel: int, bias: bool = True, activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.scale, self.activate = 1 / math.sqrt(cin * kernel * kernel), activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)
        return lrelu(x) if self.activate else x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     grouped: bool = False, eps: float = 1e-8) -> torch.Tensor:  # fmt: skip
    """Convolve x [N, I, H, W] with `weight` [O, I, k, k] modulated per sample by `styles` [N, I]:
    w'[n] = w * s[n] over input channels, then (demodulate) divided by its L2 norm over inputs
    and taps for each output channel, so every output has unit expected variance."""
    n, cin, h, w = x.shape
    k = weight.shape[-1]
    if grouped:
        wn = weight[None] * styles[:, None, :, None, None]  # [N, O, I, k, k]
        if demodulate:
            wn = wn * (wn.square().sum(dim=(2, 3, 4), keepdim=True) + eps).rsqrt()
        out = F.conv2d(x.reshape(1, n * cin, h, w), wn.reshape(-1, cin, k, k), padding=k // 2, groups=n)
        return out.reshape(n, -1, h, w)
    out = F.conv2d(x * styles[:, :, None, None], weight, padding=k // 2)
    if demodulate:  # sum_{i,taps} (w[o,i] s[i])^2 = (s^2) @ (sum_taps w^2)^T
        d = (styles.square() @ weight.square().sum(dim=(2, 3)).t() + eps).rsqrt()  # [N, O]
        out = out * d[:, :, None, None]
    return out


def _grouped(module: nn.Module) -> bool:
    """The grouped form at inference in PyTorch; the shared-weight form when training and
    when being exported (ONNX's Conv has a fixed group count; the batch is dynamic)."""
    return not module.training and not torch.compiler.is_exporting()


class StyledConv(nn.Module):
    """Modulated 3x3 conv (optionally after 2x upsampling), noise, bias, leaky ReLU."""

    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, up: bool):
        super().__init__()
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)  # styles start at 1: plain convolution
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))
        self.up, self.scale = up, 1 / math.sqrt(cin * 9)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_rng: torch.Generator | None) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        styles = self.affine(w) * self.scale
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, grouped=_grouped(self))
        if noise_rng is None:
            noise = self.noise_const
        else:
            shape = (x.shape[0], 1, *x.shape[2:])
            noise = torch.randn(shape, generator=noise_rng, device=noise_rng.device).to(x.device, x.dtype)
        x = x + noise * self.noise_strength
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 conv to the image channels, not demodulated (it sets the output's scale)."""

    def __init__(self, cin: int, channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.scale = 1 / math.sqrt(cin)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.scale
        return modulated_conv2d(x, self.weight, styles, demodulate=False, grouped=_grouped(self)) \
            + self.bias[None, :, None, None]  # fmt: skip


class MappingNetwork(nn.Module):
    """z (+ class embedding) -> w, each input normalised to unit second moment first; tracks
    the running mean of w (the centre truncation pulls towards) while training."""

    def __init__(self, latent_dim: int, num_classes: int, layers: int, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995):  # fmt: skip
        super().__init__()
        self.num_classes, self.w_avg_beta = num_classes, w_avg_beta
        self.embed = EqualLinear(num_classes, latent_dim) if num_classes else None
        dims = [latent_dim * (2 if num_classes else 1)] + [latent_dim] * layers
        self.layers = nn.Sequential(*(EqualLinear(a, b, lr_mul=lr_mul, activate=True) for a, b in pairwise(dims)))
        self.register_buffer("w_avg", torch.zeros(latent_dim))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        x = normalize_2nd_moment(z)
        if self.embed is not None:
            if labels is None:
                raise ValueError("conditional generator needs labels")
            onehot = F.one_hot(labels, self.num_classes).to(z.dtype)
            x = torch.cat([x, normalize_2nd_moment(self.embed(onehot))], dim=1)
        w = self.layers(x)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        return w


class Generator(nn.Module):
    """z [N, latent_dim] (+ labels [N]) -> images [N, C, H, W] (in [-1, 1] outside training).

    forward(z, labels, truncation_psi, mix, noise_rng): `truncation_psi` [1] or [N] pulls w
    towards its running mean (1 = none); `mix` = (z2, cutoff) feeds z2's w to the layers from
    `cutoff` on (style mixing); `noise_rng` draws fresh per-layer noise (training)."""

    truncation = True  # takes truncation_psi; the export stage gives its graph that input

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int = 64, num_classes: int = 0,
                 mapping_layers: int = 8):  # fmt: skip
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        ch = widths(width, image_size)
        res = sorted(ch)
        self.mapping = MappingNetwork(latent_dim, num_classes, mapping_layers)
        self.const = nn.Parameter(torch.randn(1, ch[4], 4, 4))
        convs = [StyledConv(ch[4], ch[4], latent_dim, 4, up=False)]
        rgbs = [ToRGB(ch[4], channels, latent_dim)]
        for lo, hi in pairwise(res):
            convs += [StyledConv(ch[lo], ch[hi], latent_dim, hi, up=True),
                      StyledConv(ch[hi], ch[hi], latent_dim, hi, up=False)]  # fmt: skip
            rgbs.append(ToRGB(ch[hi], channels, latent_dim))
        self.convs, self.rgbs = nn.ModuleList(convs), nn.ModuleList(rgbs)
        self.num_ws = len(convs) + 1  # one w per conv; each ToRGB shares the next conv's w

    def ws(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation_psi: torch.Tensor | None = None,
           mix: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:  # fmt: skip
        """[N, num_ws, latent_dim]: the w each layer gets."""
        if self.num_classes and labels is None:
            raise ValueError("conditional generator needs labels")
        w = self.mapping(z, labels)
        ws = w[:, None, :].expand(-1, self.num_ws, -1)
        if mix is not None:
            z2, cutoff = mix
            w2 = self.mapping(z2, labels)
            ws = torch.cat([ws[:, :cutoff], w2[:, None, :].expand(-1, self.num_ws - cutoff, -1)], dim=1)
        if truncation_psi is not None:  # one value, or one per sample
            avg = self.mapping.w_avg.to(ws.dtype)
            psi = torch.as_tensor(truncation_psi, dtype=ws.dtype, device=ws.device)
            ws = avg + psi[..., None, None] * (ws - avg)
        return ws

    def synthesis(self, ws: torch.Tensor, noise_rng: torch.Generator | None = None) -> torch.Tensor:
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.convs[0](x, ws[:, 0], noise_rng)
        img = self.rgbs[0](x, ws[:, 1])
        for i, rgb in enumerate(self.rgbs[1:]):
            x = self.convs[1 + 2 * i](x, ws[:, 1 + 2 * i], noise_rng)
            x = self.convs[2 + 2 * i](x, ws[:, 2 + 2 * i], noise_rng)
            img = F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False) + rgb(x, ws[:, 3 + 2 * i])
        return img

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation_psi: torch.Tensor | None = None,
                mix: tuple[torch.Tensor, int] | None = None,
                noise_rng: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
        img = self.synthesis(self.ws(z, labels, truncation_psi, mix), noise_rng)
        # Trained unbounded, as in the paper; outside training clamped to the images' range [-1, 1],
        # the same in evaluation, sampling and the exported graph.
        return img if self.training else img.clamp(-1.0, 1.0)


def _mbstd_group(n: int, group: int) -> int:
    """The largest group size <= `group` that divides the batch."""
    return next(g for g in range(min(group, n), 0, -1) if n % g == 0)


def minibatch_stddev(x: torch.Tensor, group: int = MBSTD_GROUP) -> torch.Tensor:
    """Append one channel: the standard deviation across each group of samples, averaged over
    channels and pixels, so D can see a batch that lacks variety."""
    n, c, h, w = x.shape
    g = _mbstd_group(n, group)
    y = x.reshape(g, n // g, c, h, w).float()
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # [n // g]
    y = y.to(x.dtype).repeat(g)[:, None, None, None].expand(n, 1, h, w)
    return torch.cat([x, y], dim=1)


class DBlock(nn.Module):
    """A 3x3 conv, 2x2 average pooling, a 3x3 conv at the lower resolution (the paper's strided
    "down" conv after its low-pass filter), plus a pooled 1x1 skip; the sum scaled by 1/sqrt(2)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = EqualConv2d(cin, cin, 3, activate=True)
        self.conv1 = EqualConv2d(cin, cout, 3, activate=True)
        self.skip = EqualConv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        return (self.conv1(F.avg_pool2d(self.conv0(x), 2)) + skip) / SQRT2


class Discriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int = 64, num_classes: int = 0,
                 conditioning: str = "projection", mbstd_group: int = MBSTD_GROUP):  # fmt: skip
        super().__init__()
        self.mbstd_group = mbstd_group
        ch = widths(width, image_size)
        res = sorted(ch, reverse=True)
        self.from_rgb = EqualConv2d(channels, ch[image_size], 1, activate=True)
        self.blocks = nn.Sequential(*(DBlock(ch[hi], ch[lo]) for hi, lo in pairwise(res)))
        self.conv = EqualConv2d(ch[4] + 1, ch[4], 3, activate=True)
        self.fc = EqualLinear(ch[4] * 16, ch[4], activate=True)
        self.head = DiscriminatorHead(ch[4], num_classes, conditioning, spectral=False)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.blocks(self.from_rgb(x))
        h = self.fc(self.conv(minibatch_stddev(h, self.mbstd_group)).flatten(1))
        return self.head(h, labels)
