"""params.yaml -> typed, validated configuration. The one place that knows the keys.

Validation uses pydantic (already in the dependency tree through Prefect) so that a
typo or a bad value fails at start-up with the exact key path, instead of deep inside
a stage. Unknown keys are errors: a misspelt key silently ignored is a wasted run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline import catalog
from pipeline.layout import PARAMS
from pipeline.params_yaml import ConfigError, format_errors, read_yaml


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


LOGGING_ONLY = {"logging_only": True}  # a Field's json_schema_extra: how a run logs or runs, not what it learns


def logging_only(section: type[BaseModel]) -> frozenset[str]:
    """The keys of `section` marked LOGGING_ONLY: left out of the resume fingerprint, so changing one resumes."""
    return frozenset(k for k, f in section.model_fields.items()
                     if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("logging_only"))  # fmt: skip


class GlyphConfig(_Section):
    font_a: str = Field("DejaVuSans.ttf", description="domain A font: a TTF/OTF path (file.ttc#i) or a bundled name")
    font_b: str = Field("DejaVuSerif.ttf", description="domain B font, same forms as font_a")
    chars: list[str] = Field(
        ["ascii", "latin1", "latin-ext-a", "greek", "cyrillic"],
        min_length=1,
        description="set names (ascii, latin1, latin-ext-a, greek, cyrillic) or literal strings of characters",
    )
    scale: float = Field(0.75, gt=0.1, le=1.5, description="font size as a fraction of data.image_size")


# data.source emoji: the Unicode blocks offered as classes (pipeline/data/emoji.py draws them)
EMOJI_BLOCKS = (
    "Miscellaneous Symbols", "Dingbats", "Enclosed Alphanumeric Supplement", "Miscellaneous Symbols and Pictographs",
    "Emoticons", "Transport and Map Symbols", "Geometric Shapes Extended", "Supplemental Symbols and Pictographs",
    "Symbols and Pictographs Extended-A",
)


class EmojiConfig(_Section):
    font: str = Field("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf", description="a CBDT colour emoji "
                      "font; the default is Debian's fonts-noto-color-emoji")  # fmt: skip
    blocks: list[Literal[EMOJI_BLOCKS]] = Field(  # type: ignore[valid-type]
        ["Miscellaneous Symbols", "Miscellaneous Symbols and Pictographs", "Emoticons", "Transport and Map Symbols",
         "Supplemental Symbols and Pictographs", "Symbols and Pictographs Extended-A"],
        min_length=1, description="the Unicode blocks drawn, one class each (names and counts: docs/data.md; "
        "the default: the six with at least 80 emoji in the font)",
    )  # fmt: skip
    background: tuple[int, int, int] = Field((255, 255, 255), description="the RGB colour the emoji are composited "
                                             "on: white, as emoji are shown in text")  # fmt: skip

    @field_validator("background")
    @classmethod
    def _byte_values(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError(f"each of R, G, B must be 0..255, got {list(v)}")
        return v


# data.source torchvision: the torchvision.datasets classes read (each tested on files in its own format), with
# the official splits each has and the ones read when data.split is null. Torch-free: config never imports torchvision.
TORCHVISION_DATASETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "CIFAR10": (("train", "test"), ("train", "test")),
    "CIFAR100": (("train", "test"), ("train", "test")),
    "MNIST": (("train", "test"), ("train", "test")),
    "FashionMNIST": (("train", "test"), ("train", "test")),
    "SVHN": (("train", "test", "extra"), ("train", "test")),
    "STL10": (("train", "test", "unlabeled"), ("train", "test")),
    "CelebA": (("train", "valid", "test"), ("train", "valid", "test")),
    "Flowers102": (("train", "val", "test"), ("train", "val", "test")),
    "LSUN": (("train", "val"), ("train",)),
    "ImageFolder": ((), ()),
}


class StackedConfig(_Section):
    count: int = Field(20_000, ge=100, description="stacked images drawn, train and val together (val: "
                       "data.val_fraction of them, stacked from held-out digits only)")  # fmt: skip


class DataConfig(_Section):
    source: Literal["digits", "stacked", "folder", "idx", "glyphs", "emoji", "torchvision"] = Field("digits",
        description="digits (scikit-learn's 1,797 8x8 images) | stacked (three of those digits in the three "
        "channels of one image: 1,000 countable modes) | folder | idx (MNIST format) | glyphs (characters in two "
        "fonts: pairs A -> B) | emoji (colour emoji drawn from Debian's fonts-noto-color-emoji, a class per Unicode "
        "block) | torchvision (a torchvision.datasets class reading data.path; never downloads)")  # fmt: skip
    path: str | None = Field(None, description="folder: a directory, .zip, .tar or .tar.gz (e.g. data/raw/photos); "
                             "idx: a directory of *-images-idx3-ubyte[.gz] files; torchvision: the dataset's root "
                             "(its `root` argument)")  # fmt: skip
    dataset: Literal[tuple(TORCHVISION_DATASETS)] | None = Field(  # type: ignore[valid-type]
        None, description="torchvision: the torchvision.datasets class, read with download=False"
    )
    split: list[str] | None = Field(None, description="torchvision: the dataset's own splits to read; null = "
                                    "train and test (CelebA, Flowers102: all three; LSUN: train). When a train and "
                                    "a test/val split are read, test/val is the val split")  # fmt: skip
    layout: Literal["classes", "unpaired", "paired"] = Field(
        "classes", description="folder: class sub-folders | trainA/trainB[/testA/testB] | A/ B/ matched by name"
    )
    class_names: list[str] | None = Field(None, description="names for numeric labels (idx, torchvision), in order")
    glyphs: GlyphConfig = GlyphConfig()
    emoji: EmojiConfig = EmojiConfig()
    stacked: StackedConfig = StackedConfig()
    image_size: int = Field(32, ge=8, le=1024, description="power of two; images are centre-cropped and resized")
    channels: Literal[1, 3] = Field(1, description="1 = grey (colour images are made grey), 3 = RGB")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="val share, by content hash: new images move none")
    on_error: Literal["fail", "skip"] = Field("fail", description="fail: stop and list every bad file | skip: leave "
                                              "them out, list them in the report")  # fmt: skip
    max_pixels: int = Field(64_000_000, gt=0, description="decompression-bomb guard, pixels per image")
    min_size: int | None = Field(
        None, ge=0, description="smallest accepted image side in pixels; null = half of image_size; 0 = any"
    )
    workers: int = Field(0, ge=0, description="decoding processes; 0 = one per CPU core")

    @field_validator("image_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of two (8, 16, 32, 64, ...), got {v}")
        return v

    @model_validator(mode="after")
    def _path_for_source(self) -> DataConfig:
        if self.source == "folder" and not self.path:
            raise ValueError("source 'folder' needs data.path (a directory, .zip, .tar or .tar.gz)")
        if self.source == "idx" and not self.path:
            raise ValueError("source 'idx' needs data.path (a directory of *-images-idx3-ubyte[.gz] files)")
        if self.layout != "classes" and self.source != "folder":
            raise ValueError(f"data.layout {self.layout!r} applies to source 'folder' only")
        if self.source == "stacked" and self.channels != 3:
            raise ValueError("source 'stacked' puts a digit in each of 3 channels: set data.channels: 3")
        if self.source != "torchvision":
            for key in ("dataset", "split"):
                if getattr(self, key) is not None:
                    raise ValueError(f"data.{key} applies to source 'torchvision' only")
            return self
        if not self.dataset:
            raise ValueError(f"source 'torchvision' needs data.dataset: {catalog.either(list(TORCHVISION_DATASETS))}")
        if not self.path:
            raise ValueError(f"source 'torchvision' needs data.path: the root {self.dataset} reads (never downloads)")
        known = TORCHVISION_DATASETS[self.dataset][0]
        for split in self.split or []:
            if split not in known:
                has = f"its splits are {catalog.either(list(known))}" if known else "it has no splits: set null"
                raise ValueError(f"data.split {split!r} is not a split of {self.dataset} ({has})")
        if self.split is not None and known and not self.split:
            raise ValueError(f"data.split is empty: name {self.dataset}'s splits to read, or null for its default")
        return self

    @property
    def torchvision_splits(self) -> tuple[str, ...]:
        """The dataset's own splits read (source torchvision): data.split, or the dataset's default."""
        if self.split:
            return tuple(dict.fromkeys(self.split))
        return TORCHVISION_DATASETS[self.dataset][1] if self.dataset else ()

    @property
    def two_domain(self) -> bool:
        return self.source == "glyphs" or self.layout != "classes"

    @property
    def smallest_side(self) -> int:
        return self.image_size // 2 if self.min_size is None else self.min_size


class AugmentConfig(_Section):
    hflip: bool = Field(False, description="random horizontal flips of real images (not for digits or text)")
    jitter: int = Field(
        0, ge=0, le=64, description="translate: pix2pix's random jitter, both images of a pair resized to image_size "
        "+ jitter and cropped back at one random place (the reference: 30 at 256 px); 0 = off"
    )
    diffaugment: str = Field("", description="DiffAugment policies applied to everything D sees, comma-separated: "
                             "color, translation, cutout")  # fmt: skip
    ada: bool = Field(False, description="adapt the DiffAugment probability p to D's overfitting (ADA-style)")
    ada_target: float = Field(0.6, gt=0, lt=1, description="target r_t = E[sign(D(real))]; above it p rises")
    ada_interval: int = Field(4, ge=1, description="G steps between p adjustments")
    ada_kimg: float = Field(20.0, gt=0, description="thousands of images for p to move from 0 to 1")

    @field_validator("diffaugment")
    @classmethod
    def _known_policies(cls, v: str) -> str:
        known = {"color", "translation", "cutout"}
        parts = [p.strip() for p in v.split(",") if p.strip()]
        bad = [p for p in parts if p not in known]
        if bad:
            raise ValueError(f"unknown DiffAugment policy {bad}; known: {sorted(known)}")
        return ",".join(parts)


class ModelConfig(_Section):
    arch: Literal[tuple(catalog.ARCHITECTURES)] = "dcgan"  # the plug-in catalog's families
    conditional: bool = Field(False, description="a class-conditional G; the ONNX model then takes `labels`")
    conditioning: Literal["projection", "acgan"] = Field("projection", description="how D uses the class: "
                                                         "projection | acgan (auxiliary classifier)")  # fmt: skip
    classes_from_noise: bool = Field(
        False, description="unconditional dcgan/resnet/stylegan2/r3gan: train G and D on the classes (as conditional "
        "models do) with each sample's class drawn from its noise (the argmax of z's first K entries), so samples "
        "keep to one class while the exported model still takes z alone; conditional models ignore it"
    )
    latent_dim: int = Field(64, ge=1, le=4096, description="length of the noise vector z")
    g_channels: int = Field(
        64,
        ge=4,
        description="dcgan: G's last hidden width, doubling inwards; resnet: G's width; "
        "stylegan2: G's width at the image size, doubled at each halving (at most 8x); r3gan: the same, at most 4x",
    )
    d_channels: int = Field(
        64, ge=4, description="dcgan: D's first width, doubling inwards; resnet: D's width; stylegan2, r3gan: as "
        "g_channels"
    )
    mapping_layers: int = Field(8, ge=1, le=16, description="stylegan2: layers of the mapping network z -> w")
    mbstd_group: int = Field(
        4, ge=1, le=256, description="stylegan2: samples per minibatch-standard-deviation group in D (the largest "
        "divisor of the batch up to this); 4 as in the paper, the whole batch of 32 as the official CIFAR-10 setting"
    )
    backbone: Literal["resnet", "dcgan"] = Field("resnet", description="r3gan: the networks its objective trains: "
        "resnet (the paper's modernised ResNet) | dcgan (the dcgan family's G, and its D without normalisation: "
        "far cheaper per step on a CPU; docs/models.md, R3GAN)")  # fmt: skip
    stage_blocks: int = Field(1, ge=1, le=8, description="r3gan: residual blocks per resolution in G and D "
                              "(the paper's CIFAR-10 model: 2)")  # fmt: skip
    expansion: int = Field(2, ge=1, le=8, description="r3gan: a residual block's inverted bottleneck widens its "
                           "input this many times (the paper: 2)")  # fmt: skip
    group_channels: int = Field(16, ge=1, description="r3gan: channels per group of a block's grouped 3x3 conv (the "
                                "largest divisor of the widened width up to this; the paper: 16)")  # fmt: skip
    d_norm: Literal["batch", "none"] = Field("batch", description="D's norm; none for wgan-gp or spectral norm")
    spectral_norm: bool = Field(False, description="spectral normalisation of every D layer")
    n_blocks: int = Field(9, ge=1, description="cyclegan: residual blocks in G (the reference uses 6 or 9)")
    d_layers: int | None = Field(None, ge=1, description="translate: PatchGAN layers; null = scaled to image size")
    dropout: bool = Field(
        True, description="pix2pix: dropout in the U-Net decoder while training (off at export; the U-Net only)"
    )
    unet_levels: int | None = Field(
        None, ge=2, description="pix2pix: the U-Net's stride-2 levels; null = down to 1x1 (log2 of the image size). "
        "Fewer levels see less than the whole image: local style, which generalises from few examples"
    )
    translator: Literal["unet", "resnet"] | None = Field(
        None, description="task translate: the translator network, unet (pix2pix's U-Net) or resnet (CycleGAN's "
        "residual G: full-resolution stem, two stride-2 levels, n_blocks residual blocks); null = the reference's "
        "choice for the arch (pix2pix: unet, cyclegan: resnet). Both reference codebases let either model use either"
    )

    @property
    def translator_net(self) -> str:
        """The translator network a style-transfer arch builds: model.translator, or the arch's reference one."""
        return self.translator or catalog.arch(self.arch).translator or "resnet"

    @property
    def noise_classes(self) -> bool:
        """Whether classes_from_noise applies: an unconditional model of a family that takes it."""
        return self.classes_from_noise and not self.conditional and catalog.arch(self.arch).noise_classes


class TrainConfig(_Section):
    steps: int = Field(3000, ge=1, description="length of the run; a longer rerun continues a shorter one")
    data_fraction: float = Field(1.0, gt=0.0, le=1.0, description="train G and D on this stable fraction of the train "
                                 "split (by content hash); the evaluator and FID still use all of it")  # fmt: skip
    batch_size: int = Field(64, ge=2, description="images per step in total, over processes and micro-batches")
    lr_g: float = Field(2e-4, gt=0, description="G's Adam learning rate")
    lr_d: float = Field(2e-4, gt=0, description="D's Adam learning rate")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam's betas, for G and D")
    loss: Literal[tuple(catalog.LOSSES)] = "nonsaturating"  # the plug-in catalog's losses
    n_critic: int = Field(1, ge=1, description="D steps per G step")
    gp_weight: float = Field(10.0, ge=0, description="gradient-penalty weight (wgan-gp)")
    r1_gamma: float = Field(0.0, ge=0, description="R1 penalty weight; 0 = off")
    r1_every: int = Field(16, ge=1, description="lazy R1: apply every N D steps, scaled by N")
    acgan_weight: float = Field(1.0, ge=0, description="weight of the auxiliary class loss (conditioning: acgan)")
    lambda_cycle: float = Field(10.0, ge=0, description="cyclegan: weight of the cycle-consistency L1")
    lambda_identity: float = Field(
        0.5, ge=0, description="cyclegan: identity L1 weight, relative to lambda_cycle (as in the reference)"
    )
    lambda_l1: float = Field(100.0, ge=0, description="pix2pix: weight of the L1 to the target")
    pool_size: int = Field(50, ge=0, description="cyclegan: history of generated images shown to D; 0 = off")
    lr_decay_start: float = Field(
        1.0, gt=0, le=1, description="fraction of steps after which the lrs decay linearly to 0; 1 = constant"
    )
    style_mixing: float = Field(
        0.9,
        ge=0,
        le=1,
        description="stylegan2: probability that a batch feeds a second z's w to the layers from a random cutoff on",
    )
    pl_weight: float = Field(2.0, ge=0, description="stylegan2: path-length regularisation weight; 0 = off")
    pl_every: int = Field(
        4, ge=1, description="stylegan2: lazy path-length regularisation every N G steps, scaled by N"
    )
    pl_batch_shrink: int = Field(2, ge=1, description="stylegan2: path-length batch = micro-batch / this")
    pl_decay: float = Field(0.01, gt=0, le=1, description="stylegan2: rate of the running mean of path lengths")
    r3gan_gamma: float = Field(0.05, ge=0, description="r3gan: weight gamma of the zero-centred penalties at step 0, "
                               "D's loss adding gamma/2 x (R1 + R2) every step; 0 = off")  # fmt: skip
    r3gan_gamma_final: float = Field(0.005, ge=0, description="r3gan: gamma at the last step, reached from "
                                     "r3gan_gamma along a cosine over train.steps")  # fmt: skip
    r3gan_lr_final: float = Field(0.25, gt=0, le=1, description="r3gan: the learning rates at the last step, as "
                                  "a fraction of train.lr_g and train.lr_d (a cosine over train.steps; 1 = "
                                  "constant)")  # fmt: skip
    r3gan_beta2_final: float = Field(0.99, ge=0, lt=1, description="r3gan: Adam's beta2 at the last step, reached "
                                     "from train.betas[1] along a cosine over train.steps")  # fmt: skip
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="EMA of G (evaluated and exported), ramped up at first")
    ema_kimg: float | None = Field(
        None, gt=0, description="EMA half-life in thousands of images (StyleGAN's form); set, it replaces ema_decay"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", json_schema_extra=LOGGING_ONLY,
                                                   description="auto: CUDA when a GPU is usable, else CPU")  # fmt: skip
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = fp32 (TF32 tensor cores on CUDA); bf16/fp16 autocast are CUDA-only"
    )
    compile: bool = Field(False, json_schema_extra=LOGGING_ONLY,
                          description="torch.compile the trained networks (no channels-last then)")  # fmt: skip
    accumulate: int = Field(1, ge=1, description="micro-batches per step (gradient accumulation)")
    nproc_per_node: int = Field(1, ge=1, description="processes per machine; > 1 launches DDP via torchrun")
    nnodes: int = Field(
        1, ge=1, description="machines training together (torchrun); the batch splits over nnodes x nproc_per_node"
    )
    sync_batchnorm: bool = Field(False, description="SyncBatchNorm across processes (CUDA only)")
    collapse_threshold: float = Field(0.2, ge=0, json_schema_extra=LOGGING_ONLY,
                                      description="warn when sample diversity / real diversity < this")  # fmt: skip
    sample_every: int = Field(500, ge=1, json_schema_extra=LOGGING_ONLY, description="fixed-noise sample grids into "
                              "dvclive/plots/images every this many steps")  # fmt: skip
    fid_every: int = Field(0, ge=0, json_schema_extra=LOGGING_ONLY, description="task generate: FID of the EMA "
                           "generator every this many steps into DVCLive (eval/fid); 0 = off")  # fmt: skip
    log_every: int = Field(25, ge=1, json_schema_extra=LOGGING_ONLY, description="training scalars into "
                           "dvclive/plots/metrics every this many steps")  # fmt: skip
    checkpoint_every: int = Field(500, ge=1, json_schema_extra=LOGGING_ONLY, description="a checkpoint in "
                                  "models/checkpoints/ every this many steps (the last two kept; a rerun resumes "
                                  "from them)")  # fmt: skip

    def shards(self, world_size: int) -> int:
        """How many parts one step's batch splits into: one per process and micro-batch."""
        return world_size * self.accumulate

    def split_error(self, world_size: int) -> str | None:
        """Why the batch cannot be split over `world_size` processes (None: it can)."""
        if self.batch_size % self.shards(world_size) == 0:
            return None
        return (f"train.batch_size ({self.batch_size}) is the total batch: it must divide evenly into {world_size} "
                f"process(es) x train.accumulate {self.accumulate} = {self.shards(world_size)} parts")  # fmt: skip


class EvaluatorConfig(_Section):
    steps: int = Field(600, ge=1, description="training steps of the evaluator (FID's feature network)")
    batch_size: int = Field(128, ge=2, description="its training batch size")
    lr: float = Field(1e-3, gt=0, description="the peak learning rate of its one-cycle Adam schedule")
    features: int = Field(128, ge=2, description="width of the penultimate layer used as the feature space")


class EvaluateConfig(_Section):
    feature_extractor: Literal["evaluator", "inception"] = Field(
        "evaluator",
        description="FID/KID/PRDC features: evaluator (the CNN trained on this data) or inception (the standard "
        "FID network; needs the inception extra)",
    )
    num_samples: int = Field(0, ge=0, description="generated samples per FID/KID; 0 = size of the val split")
    kid_subset_size: int = Field(100, ge=2, description="images per KID subset (at most the sets' size)")
    kid_subsets: int = Field(100, ge=1, description="KID subsets averaged")
    batch_size: int = Field(256, ge=1, description="images per batch when extracting features and generating")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where the reference and evaluate stages generate and extract features: auto = the GPU when "
        "one is usable (FID etc. agree with the CPU's within 1e-3 relative), cpu forces the CPU",
    )
    evaluator: EvaluatorConfig = EvaluatorConfig()


class ExportConfig(_Section):
    opset: int = Field(18, ge=18, description="opset < 18 cannot express the padded ops of the exporter")
    parity_tolerance: float = Field(1e-4, gt=0, description="max |ONNX Runtime - PyTorch| accepted at export")


class RetrainConfig(_Section):
    """The scheduled retraining flow (flows/retrain.py); no pipeline stage reads it."""

    fid_margin: float = Field(
        0.02, ge=0, lt=1, description="promote only when FID is at least this fraction below the champion's"
    )


class Params(_Section):
    seed: int = 0
    task: Literal["generate", "translate"] = Field("generate", description="generate: images from noise (and a "
                                                   "class) | translate: domain A -> B (style transfer)")  # fmt: skip
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    retrain: RetrainConfig = RetrainConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        family = catalog.arch(self.model.arch)
        if self.task == "translate":
            self._check_translation(family)
        else:
            self._check_generation(family)
        return self

    def _check_translation(self, family: catalog.Arch) -> None:
        if family.task != "translate":
            raise ValueError(f"task translate needs model.arch {catalog.either(catalog.names('translate'))}, "
                             f"got {self.model.arch!r}")  # fmt: skip
        if not self.data.two_domain:
            raise ValueError("task translate needs two domains: data.source glyphs, or data.layout unpaired | paired")
        paired = self.data.source == "glyphs" or self.data.layout == "paired"
        if family.pairs and not paired:
            raise ValueError(f"model.arch {self.model.arch} learns from pairs: use data.layout paired or "
                             "data.source glyphs")  # fmt: skip
        if catalog.LOSSES[self.train.loss].needs_real_for_g:
            raise ValueError(f"train.loss {self.train.loss} is for task generate: its G loss reads D's logits of "
                             "real images, which style transfer's G step does not compute")  # fmt: skip
        if self.train.nproc_per_node > 1 or self.train.nnodes > 1:
            raise ValueError("task translate trains in one process: set train.nproc_per_node: 1 and "
                             "train.nnodes: 1")  # fmt: skip
        full = self.data.image_size.bit_length() - 1  # log2 of a power of two
        if self.model.unet_levels is not None and self.model.translator_net != "unet":
            raise ValueError("model.unet_levels shapes the U-Net translator, and model.translator is "
                             f"{self.model.translator_net!r} here: set model.unet_levels: null (model.n_blocks "
                             "sets the ResNet's depth) or model.translator: unet")  # fmt: skip
        if self.model.unet_levels is not None and self.model.unet_levels > full:
            raise ValueError(f"model.unet_levels: at most log2(data.image_size) = {full} stride-2 levels fit "
                             f"{self.data.image_size}-px images, got {self.model.unet_levels}")  # fmt: skip

    def _check_generation(self, family: catalog.Arch) -> None:
        model, loss = self.model, self.train.loss
        if family.task != "generate":
            raise ValueError(f"model.arch {model.arch!r} is a translation model: set task: translate")
        if self.data.two_domain:
            raise ValueError("two-domain data (glyphs, unpaired, paired) is for task: translate")
        if self.augment.jitter:
            raise ValueError("augment.jitter crops pairs for task: translate; generation uses augment.diffaugment")
        if model.translator is not None:
            raise ValueError("model.translator chooses a style-transfer network (task: translate): "
                             "set model.translator: null")  # fmt: skip
        if self.augment.ada and not self.augment.diffaugment:
            raise ValueError("augment.ada adapts the probability of the DiffAugment policies: set augment.diffaugment")
        if model.classes_from_noise and not model.conditional and not family.noise_classes:
            raise ValueError(f"model.classes_from_noise does not apply to {model.arch}: set "
                             "model.classes_from_noise: false (or model.conditional: true)")  # fmt: skip
        if family.loss and loss != family.loss:
            raise ValueError(f"train.loss: model.arch {model.arch} trains with the {family.loss} loss, got {loss!r}: "
                             f"set train.loss: {family.loss}")  # fmt: skip
        if self.train.r1_gamma and "r1_gamma" in family.refuses:
            raise ValueError(f"train.r1_gamma: {model.arch} {family.refuses['r1_gamma']}: set train.r1_gamma: 0")
        if model.spectral_norm and "spectral_norm" in family.refuses:
            raise ValueError(f"model.spectral_norm does not apply to {model.arch} ({family.refuses['spectral_norm']}): "
                             "set model.spectral_norm: false")  # fmt: skip
        per_sample = catalog.LOSSES[loss].per_sample_penalty
        if per_sample and "per_sample_penalty" in family.refuses:
            others = [n for n, info in catalog.LOSSES.items() if not info.per_sample_penalty]
            raise ValueError(f"train.loss {loss} penalises each sample's gradient; {model.arch}'s D mixes samples "
                             f"({family.refuses['per_sample_penalty']}): use {catalog.either(others)}")  # fmt: skip
        batch_norm = model.d_norm == "batch" and family.batch_norm_d
        if per_sample and batch_norm:
            raise ValueError(f"train.loss {loss} penalises each sample's gradient; batch norm in D mixes samples: "
                             "set model.d_norm: none")  # fmt: skip
        world = self.train.nnodes * self.train.nproc_per_node
        error = self.train.split_error(world)
        if error:
            raise ValueError(error)
        if self.train.batch_size // self.train.shards(world) < 2 and batch_norm:
            raise ValueError("batch norm needs at least 2 images per micro-batch: raise train.batch_size")

    @property
    def feature_domain(self) -> str | None:
        """The prepared domain FID's feature network learns: style transfer is judged in the
        features of its target domain B; image generation has one domain."""
        return "B" if self.task == "translate" else None

    def section_hash(self, *sections: str) -> str:
        """A stable short hash of the named top-level sections (for fingerprints and metadata)."""
        payload = {s: _plain(getattr(self, s)) for s in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _plain(v: Any) -> Any:
    return v.model_dump(mode="json") if isinstance(v, BaseModel) else v


def parse_params(raw: dict[str, Any], source: Path | str = PARAMS) -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_errors(Path(source), err)) from None


def load_params(path: Path | str = PARAMS) -> Params:
    """Read and validate params.yaml. An empty file is refused rather than read as "every
    default": it is far more often a truncated or wrongly generated file than a choice, and
    training on defaults by accident wastes a run. `{}` asks for every default explicitly."""
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: is empty (no parameters); write the groups that differ from the defaults, "
                          "or {} to train with every default")  # fmt: skip
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of groups, got {type(raw).__name__}")
    return parse_params(raw, path)
