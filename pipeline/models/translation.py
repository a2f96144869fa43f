"""Style-transfer networks: CycleGAN's ResNet generator, pix2pix's U-Net, the PatchGAN
discriminator, and CycleGAN's image history pool.

Architectures follow the reference implementations (Zhu et al. 2017; Isola et al. 2017):
reflection padding and instance norm in the ResNet generator; a U-Net whose encoder
reaches 1x1 at the training size, batch-free norms and dropout in the first decoder
blocks; a PatchGAN whose depth is scaled to the image (the reference's 3 layers give a
70 px receptive field on 256 px images). Instance norm without affine parameters is used
throughout (it is what the reference CycleGAN uses; for pix2pix it replaces batch norm,
which at the reference's batch size of 1 behaves like instance norm while training but
not in eval mode, so the exported model would differ from the one that was trained).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


def _check_size(x: torch.Tensor, multiple: int, minimum: int, name: str) -> None:
    h, w = x.shape[-2:]
    if not isinstance(h, int) or torch.compiler.is_compiling():
        return  # symbolic sizes while exporting: the dynamic shapes carry the constraint
    if h % multiple or w % multiple:
        raise ValueError(f"{name}: input {h}x{w} is not a multiple of {multiple} in height and width")
    if min(h, w) < minimum:
        raise ValueError(f"{name}: input {h}x{w} is too small: height and width must be at least {minimum}")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's generator: 7x7 stem, `n_down` stride-2 convolutions, `n_blocks` residual
    blocks, mirrored transposed convolutions, 7x7 output conv and tanh. Fully
    convolutional: any H, W that are multiples of `size_multiple` (2 ** n_down) and at least
    `min_size` (twice that: instance norm needs more than one pixel at the bottleneck, and the
    reflection pads need more pixels than they pad)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 64, n_blocks: int = 9, n_down: int = 2):
        super().__init__()
        self.size_multiple = 2**n_down
        self.min_size = max(4, 2 * self.size_multiple)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7), _norm(width), nn.ReLU(True)]
        ch = width
        for _ in range(n_down):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), _norm(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.size_multiple, self.min_size, "ResnetGenerator")
        return self.net(x)


class _UnetBlock(nn.Module):
    """One U-Net level: down-convolve, run the inner levels, up-convolve, and (except at the
    outermost level) concatenate the level's input as the skip connection."""

    def __init__(self, outer: int, inner: int, sub: nn.Module | None, *, out: int | None = None,
                 outermost: bool = False, dropout: bool = False):  # fmt: skip
        super().__init__()
        out = out or outer
        down = nn.Conv2d(outer, inner, 4, stride=2, padding=1)
        up_in = inner if sub is None else inner * 2  # inner levels return [skip, output]
        up = nn.ConvTranspose2d(up_in, out, 4, stride=2, padding=1)
        if outermost:
            self.down, self.up = down, nn.Sequential(nn.ReLU(True), up, nn.Tanh())
        else:
            # the innermost level reaches 1x1, where instance norm would zero everything
            self.down = nn.Sequential(nn.LeakyReLU(0.2, True), down, *([_norm(inner)] if sub is not None else []))
            self.up = nn.Sequential(nn.ReLU(True), up, _norm(out), *([nn.Dropout(0.5)] if dropout else []))
        self.sub, self.outermost = sub, outermost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        y = self.up(self.sub(y) if self.sub is not None else y)
        return y if self.outermost else torch.cat([x, y], 1)


class UnetGenerator(nn.Module):
    """pix2pix's U-Net: `levels` stride-2 levels (default log2(image_size): down to 1x1 at the
    training size), each decoder level concatenated with its encoder twin. Widths double from
    `width` up to `max_width`. With `dropout`, the three decoder levels just outside the
    innermost one use dropout 0.5 while training (pix2pix's noise source, where the reference
    code puts it at 256 px); counted by level, not by width, so narrow models keep it. Off in
    eval mode and so in the export.
    Any H, W that are multiples of `size_multiple` (= 2 ** levels) work: with fewer levels than
    log2(image_size) the bottleneck keeps a spatial grid and each output pixel sees only a
    window of the input, not the whole image."""

    def __init__(self, in_channels: int, out_channels: int, image_size: int, width: int = 64, max_width: int = 512,
                 dropout: bool = True, levels: int | None = None):  # fmt: skip
        super().__init__()
        full = int(math.log2(image_size))
        if 2**full != image_size or full < 2:
            raise ValueError(f"UnetGenerator: image_size must be a power of two >= 4, got {image_size}")
        depth = full if levels is None else levels
        if not 2 <= depth <= full:
            raise ValueError(f"UnetGenerator: levels must be between 2 and log2(image_size) = {full}, got {depth}")
        self.size_multiple = self.min_size = 2**depth
        widths = [min(width * 2**i, max_width) for i in range(depth)]  # each level's inner width, outermost first
        dropout_levels = range(max(1, depth - 4), depth - 1) if dropout else range(0)
        block: nn.Module | None = None
        for level in range(depth - 1, 0, -1):  # the innermost level first, then outwards
            outer, inner = widths[level - 1], widths[level]
            block = _UnetBlock(outer, inner, block, dropout=level in dropout_levels)
        self.net = _UnetBlock(in_channels, widths[0], block, out=out_channels, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.size_multiple, self.min_size, "UnetGenerator")
        return self.net(x)


def receptive_field(n_layers: int) -> int:
    """Receptive field in pixels of a PatchGAN with `n_layers` stride-2 layers (k4): the
    n_layers stride-2 convs, one stride-1 conv and the stride-1 output conv."""
    rf = 1
    for stride in reversed([2] * n_layers + [1, 1]):
        rf = (rf - 1) * stride + 4
    return rf


def default_patch_layers(image_size: int) -> int:
    """Scaled to the image: the depth whose receptive field is closest to half the image,
    at most the reference's 3 layers (70 px, its choice for 256 px): 1 at 32 px (16 px
    patches), 2 at 64 px (34 px), 3 from 128 px up."""
    return min(range(1, 4), key=lambda n: abs(receptive_field(n) - image_size / 2))


class PatchDiscriminator(nn.Module):
    """PatchGAN: a grid of real/fake logits, each judging one receptive-field patch. For
    pix2pix the caller concatenates input and output along channels (in_channels = cA + cB)."""

    def __init__(self, in_channels: int, image_size: int, width: int = 64, n_layers: int | None = None):
        super().__init__()
        n_layers = n_layers or default_patch_layers(image_size)
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        ch = width
        for i in range(1, n_layers):
            nxt = width * min(2**i, 8)
            layers += [nn.Conv2d(ch, nxt, 4, stride=2, padding=1), _norm(nxt), nn.LeakyReLU(0.2, True)]
            ch = nxt
        nxt = width * min(2**n_layers, 8)
        layers += [nn.Conv2d(ch, nxt, 4, stride=1, padding=1), _norm(nxt), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(nxt, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_translation(module: nn.Module) -> None:
    """The reference's initialisation: N(0, 0.02) conv weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ImagePool:
    """CycleGAN's history of generated images, so D also sees older fakes.

    Until `size` images are stored, every incoming image is stored and returned. Then each
    incoming image, with probability 1/2, is returned as is; otherwise a random stored image
    is returned in its place and the new one stored instead. Randomness comes from the
    given torch.Generator; `state_dict` holds the stored images and the generator's state, so
    a resumed run draws exactly what an uninterrupted one would. Returned images are detached
    and on the incoming batch's device and dtype (a pool restored from a CPU checkpoint serves
    a CUDA run). `size` 0 passes images through.
    """

    def __init__(self, size: int = 50, generator: torch.Generator | None = None):
        self.size = size
        self.generator = generator or torch.Generator().manual_seed(0)
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif float(torch.rand((), generator=self.generator)) < 0.5:
                out.append(img)
            else:
                k = int(torch.randint(len(self.images), (), generator=self.generator))
                out.append(self.images[k].to(img.device, img.dtype, copy=True))
                self.images[k] = img.clone()
        return torch.cat(out)

    def state_dict(self) -> dict:
        stack = torch.cat([img.cpu() for img in self.images]) if self.images else torch.empty(0)
        return {"size": self.size, "images": stack, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.size = state["size"]
        self.images = [img.unsqueeze(0) for img in state["images"]] if state["images"].numel() else []
        if "generator" in state:  # absent from checkpoints written before it was included
            self.generator.set_state(state["generator"])
