"""params.yaml -> typed, validated configuration. The one place that knows the keys.

Validation uses pydantic (already in the dependency tree through Prefect) so that a
typo or a bad value fails at start-up with the exact key path, instead of deep inside
a stage. Unknown keys are errors: a misspelt key silently ignored is a wasted run.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yaml.events import AliasEvent

from pipeline.errors import UserError
from pipeline.layout import PARAMS


class ConfigError(UserError, ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the file and key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GlyphConfig(_Section):
    font_a: str = Field("DejaVuSans.ttf", description="domain A font: a TTF/OTF path (file.ttc#i) or a bundled name")
    font_b: str = Field("DejaVuSerif.ttf", description="domain B font, same forms as font_a")
    chars: list[str] = Field(
        ["ascii", "latin1", "latin-ext-a", "greek", "cyrillic"],
        min_length=1,
        description="set names (ascii, latin1, latin-ext-a, greek, cyrillic) or literal strings of characters",
    )
    scale: float = Field(0.75, gt=0.1, le=1.5, description="font size as a fraction of data.image_size")


class DataConfig(_Section):
    source: Literal["digits", "folder", "idx", "glyphs"] = "digits"
    path: str | None = None
    layout: Literal["classes", "unpaired", "paired"] = Field(
        "classes", description="folder: class sub-folders | trainA/trainB[/testA/testB] | A/ B/ matched by name"
    )
    class_names: list[str] | None = Field(None, description="names for numeric labels (idx source), in order")
    glyphs: GlyphConfig = GlyphConfig()
    image_size: int = Field(32, ge=8, le=1024)
    channels: Literal[1, 3] = 1
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    on_error: Literal["fail", "skip"] = "fail"
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
        return self

    @property
    def two_domain(self) -> bool:
        return self.source == "glyphs" or self.layout != "classes"

    @property
    def smallest_side(self) -> int:
        return self.image_size // 2 if self.min_size is None else self.min_size


class AugmentConfig(_Section):
    hflip: bool = Field(False, description="random horizontal flips of real images (classic augmentation)")
    jitter: int = Field(
        0, ge=0, le=64, description="translate: pix2pix's random jitter, both images of a pair resized to image_size "
        "+ jitter and cropped back at one random place (the reference: 30 at 256 px); 0 = off"
    )
    diffaugment: str = Field("", description="comma-separated DiffAugment policies: color, translation, cutout")
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
    arch: Literal["dcgan", "resnet", "stylegan2", "cyclegan", "pix2pix"] = "dcgan"
    conditional: bool = False
    conditioning: Literal["projection", "acgan"] = "projection"
    classes_from_noise: bool = Field(
        False, description="unconditional dcgan/resnet/stylegan2: train G and D on the classes (as conditional "
        "models do) with each sample's class drawn from its noise (the argmax of z's first K entries), so samples "
        "keep to one class while the exported model still takes z alone; conditional models ignore it"
    )
    latent_dim: int = Field(64, ge=1, le=4096)
    g_channels: int = Field(
        64,
        ge=4,
        description="dcgan: G's last hidden width, doubling inwards; resnet: G's width; "
        "stylegan2: G's width at the image size, doubled at each halving (at most 8x)",
    )
    d_channels: int = Field(
        64, ge=4, description="dcgan: D's first width, doubling inwards; resnet: D's width; stylegan2: as g_channels"
    )
    mapping_layers: int = Field(8, ge=1, le=16, description="stylegan2: layers of the mapping network z -> w")
    mbstd_group: int = Field(
        4, ge=1, le=256, description="stylegan2: samples per minibatch-standard-deviation group in D (the largest "
        "divisor of the batch up to this); 4 as in the paper, the whole batch of 32 as the official CIFAR-10 setting"
    )
    d_norm: Literal["batch", "none"] = "batch"
    spectral_norm: bool = False
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
        return self.translator or ("unet" if self.arch == "pix2pix" else "resnet")

    @property
    def noise_classes(self) -> bool:
        """Whether classes_from_noise applies: unconditional dcgan, resnet or stylegan2."""
        return self.classes_from_noise and not self.conditional and self.arch in ("dcgan", "resnet", "stylegan2")


class TrainConfig(_Section):
    steps: int = Field(3000, ge=1)
    data_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="train on this stable fraction of the train split (data-efficiency studies)"
    )
    batch_size: int = Field(64, ge=2)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    loss: Literal["nonsaturating", "hinge", "lsgan", "wgan-gp"] = "nonsaturating"
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
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_kimg: float | None = Field(
        None, gt=0, description="EMA half-life in thousands of images (StyleGAN's form); set, it replaces ema_decay"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto = fp32 (TF32 tensor cores on CUDA); bf16/fp16 autocast are CUDA-only"
    )
    compile: bool = Field(False, description="torch.compile the trained networks (no channels-last then)")
    accumulate: int = Field(1, ge=1, description="micro-batches per step (gradient accumulation)")
    nproc_per_node: int = Field(1, ge=1, description="processes per machine; > 1 launches DDP via torchrun")
    nnodes: int = Field(
        1, ge=1, description="machines training together (torchrun); the batch splits over nnodes x nproc_per_node"
    )
    sync_batchnorm: bool = Field(False, description="SyncBatchNorm across processes (CUDA only)")
    collapse_threshold: float = Field(0.2, ge=0, description="warn when sample diversity / real diversity < this")
    sample_every: int = Field(500, ge=1)
    fid_every: int = Field(
        0, ge=0, description="task generate: FID of the EMA generator every this many steps into DVCLive (0 = off)"
    )
    log_every: int = Field(25, ge=1)
    checkpoint_every: int = Field(500, ge=1)

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
    steps: int = Field(600, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    features: int = Field(128, ge=2, description="width of the penultimate layer used as the feature space")


class EvaluateConfig(_Section):
    feature_extractor: Literal["evaluator", "inception"] = Field(
        "evaluator",
        description="FID/KID/PRDC features: evaluator (the CNN trained on this data) or inception (the standard "
        "FID network; needs the inception extra)",
    )
    num_samples: int = Field(0, ge=0, description="generated samples per FID/KID; 0 = size of the val split")
    kid_subset_size: int = Field(100, ge=2)
    kid_subsets: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=1)
    evaluator: EvaluatorConfig = EvaluatorConfig()


class ExportConfig(_Section):
    opset: int = Field(18, ge=18, description="opset < 18 cannot express the padded ops of the exporter")
    parity_tolerance: float = Field(1e-4, gt=0)


class RetrainConfig(_Section):
    fid_margin: float = Field(
        0.02, ge=0, lt=1, description="promote only when FID is at least this fraction below the champion's"
    )


class Params(_Section):
    seed: int = 0
    task: Literal["generate", "translate"] = "generate"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    retrain: RetrainConfig = RetrainConfig()

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        translators = ("cyclegan", "pix2pix")
        if self.task == "translate":
            if self.model.arch not in translators:
                raise ValueError(f"task translate needs model.arch cyclegan or pix2pix, got {self.model.arch!r}")
            if not self.data.two_domain:
                raise ValueError(
                    "task translate needs two domains: data.source glyphs, or data.layout unpaired | paired"
                )
            paired = self.data.source == "glyphs" or self.data.layout == "paired"
            if self.model.arch == "pix2pix" and not paired:
                raise ValueError("model.arch pix2pix learns from pairs: use data.layout paired or data.source glyphs")
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
            return self
        if self.model.arch in translators:
            raise ValueError(f"model.arch {self.model.arch!r} is a translation model: set task: translate")
        if self.data.two_domain:
            raise ValueError("two-domain data (glyphs, unpaired, paired) is for task: translate")
        if self.augment.jitter:
            raise ValueError("augment.jitter crops pairs for task: translate; generation uses augment.diffaugment")
        if self.model.translator is not None:
            raise ValueError("model.translator chooses a style-transfer network (task: translate): "
                             "set model.translator: null")
        if self.augment.ada and not self.augment.diffaugment:
            raise ValueError("augment.ada adapts the probability of the DiffAugment policies: set augment.diffaugment")
        batch_norm = self.model.d_norm == "batch" and self.model.arch != "stylegan2"  # its D has no batch norm
        if self.model.arch == "stylegan2":
            if self.model.spectral_norm:
                raise ValueError("model.spectral_norm does not apply to stylegan2 (its layers use the equalised "
                                 "learning rate): set model.spectral_norm: false")  # fmt: skip
            if self.train.loss == "wgan-gp":
                raise ValueError("train.loss wgan-gp penalises each sample's gradient; stylegan2's D mixes samples "
                                 "(minibatch standard deviation): use nonsaturating, hinge or lsgan")  # fmt: skip
        if self.train.loss == "wgan-gp" and batch_norm:
            raise ValueError(
                "train.loss wgan-gp penalises each sample's gradient; batch norm in D mixes samples: "
                "set model.d_norm: none"
            )
        error = self.train.split_error(self.train.nnodes * self.train.nproc_per_node)
        if error:
            raise ValueError(error)
        if self.train.batch_size // self.train.shards(self.train.nnodes * self.train.nproc_per_node) < 2 and batch_norm:
            raise ValueError("batch norm needs at least 2 images per micro-batch: raise train.batch_size")
        return self

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


_REPR = reprlib.Repr()  # the standard library's bounded repr: a few levels and items, long strings cut
_REPR.maxlevel, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 4, 40, 40, 40


def _short_repr(value: Any) -> str:
    """A value for a message, bounded whatever its size (an error must never format gigabytes)."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        return f"<{type(value).__name__}>"


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README 'Parameters')"
        got = e.get("input")
        got_txt = "" if e["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {_short_repr(got)})"
        lines.append(f"  {key}: {msg}{got_txt}")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: Path | str = PARAMS) -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(Path(source), err)) from None


# The YAML reader of params files and overlays: PyYAML's safe loader, made strict. PyYAML has no
# option for any of these, so its SafeLoader is subclassed at its documented extension points
# (compose_node, construct_mapping, the int constructor):
# - a key given twice in one mapping is refused, naming the key and both lines: a second `train:`
#   group silently replaced the first, every train setting back to its default;
# - aliases (`*name`) are refused: nine anchors of ten aliases each stand for 10^9 values in a few
#   kilobytes, and anything that walks them (a message showing the value) never ends;
# - nesting deeper than YAML_MAX_DEPTH is refused (the composer recurses: 50,000 brackets raised
#   RecursionError), and so is an integer longer than Python converts (ValueError).
# Each refusal is a YamlRefused (a yaml.MarkedYAMLError): one line with its place.
YAML_MAX_DEPTH = 64  # params are three levels deep; room for lists of lists in overlays


class YamlRefused(yaml.MarkedYAMLError):
    """Valid YAML that a params file may not hold; `problem` + `problem_mark` say what and where,
    `context` the way out."""

    def __init__(self, problem: str, mark: Any, hint: str | None = None):
        super().__init__(hint, None, problem, mark)


class _ParamsLoader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            raise YamlRefused(f"an alias (*{event.anchor})", event.start_mark,
                              "params files take no YAML aliases: write the value out")  # fmt: skip
        if self._depth >= YAML_MAX_DEPTH:
            raise YamlRefused(f"nesting deeper than {YAML_MAX_DEPTH} levels", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise YamlRefused(f"duplicate key {_short_repr(key)} (first at line {first}), again",
                                      key_node.start_mark, "give each key once: the second would replace the first")
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            raise YamlRefused(f"an integer of {len(node.value):,} characters", node.start_mark,
                              f"Python reads at most {sys.get_int_max_str_digits():,} digits") from None


_ParamsLoader.add_constructor("tag:yaml.org,2002:int", _ParamsLoader.construct_yaml_int)


def _load_yaml(text: str) -> Any:
    """The YAML document in `text`; yaml.YAMLError (with a mark) for anything refused above."""
    return yaml.load(text, Loader=_ParamsLoader)  # a SafeLoader subclass: safe


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message on one line: the problem and where it is."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if problem and mark is not None:
        context = getattr(err, "context", None)
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" + (f" ({context})" if context else "")
    return str(err).splitlines()[0]


def read_yaml(path: Path | str, what: str = "pass --params") -> Any:
    """The YAML document in `path`, or ConfigError naming the file when it is missing, unreadable,
    not UTF-8 text (a binary file, say) or not YAML."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the repository root or {what})") from None
    except OSError as err:  # a folder, no permission, ...
        raise ConfigError(f"{path}: cannot be read: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                          "is it a binary file?") from None  # fmt: skip
    try:
        return _load_yaml(text)
    except YamlRefused as err:  # a duplicate key, an alias, too deep, an integer too long
        raise ConfigError(f"{path}: {_yaml_problem(err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None


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
