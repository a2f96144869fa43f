"""ONNX Runtime inference for exported generators. No torch import: deployments need only
onnxruntime, numpy and Pillow.

Provider choice: onnxruntime-gpu lists CUDAExecutionProvider even on machines without a
GPU, and asking for it there prints native library load errors before silently falling
back to CPU. So CUDA is requested only when an NVIDIA device is really present, with ORT's
logger muted during the attempt, and the providers actually obtained are reported.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from pipeline.errors import UserError
from pipeline.image_input import MAX_PIXELS, ImageRejected
from pipeline.noise_classes import with_classes

if TYPE_CHECKING:
    from PIL import Image

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PSI = "truncation_psi"  # the optional input of generators with truncation (stylegan2)
# |psi| beyond this is refused: 1 is no truncation, 0 the average image, and past about 2 the images are already far
# off the training distribution; far larger values overflow w in float32 (psi 3e38 gives NaN images).
MAX_PSI = 100.0


class ModelError(UserError, ValueError):
    """The ONNX file is missing, unreadable, or not a ganpipe generator."""


def gpu_present() -> bool:
    """True when an NVIDIA GPU is visible to this process (device node or nvidia-smi)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def create_session(path: Path | str, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """An InferenceSession on CUDA when usable (device auto|cuda), else CPU, without CUDA noise."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ONNX model not found")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's CPU arena keeps its peak for good: eight concurrent 1024x1024 translations by a small translator
    # left a server at 1.1 GB resident. Without it, each run's tensors go back to malloc when it ends (and
    # `ganpipe serve` has glibc return large blocks to the system: 111 MB after the same burst).
    opts.enable_cpu_mem_arena = False
    if threads:
        opts.intra_op_num_threads = threads
    want_cuda = device in ("auto", "cuda") and CUDA in ort.get_available_providers() and gpu_present()
    if device == "cuda" and not want_cuda:
        raise ModelError("device 'cuda' requested but no usable NVIDIA GPU / CUDA provider is present")
    providers = [CUDA, CPU] if want_cuda else [CPU]
    ort.set_default_logger_severity(4 if want_cuda else 3)
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own (non-exported) exception types
        raise ModelError(f"{path}: cannot be loaded by ONNX Runtime: {err}") from None
    finally:
        ort.set_default_logger_severity(3)
    if device == "cuda" and CUDA not in session.get_providers():
        raise ModelError(f"{path}: CUDA provider could not be initialised; got {session.get_providers()}")
    return session


@dataclass(frozen=True)
class ModelInfo:
    task: str
    latent_dim: int
    num_classes: int
    class_names: list[str]
    image_size: int
    channels: int
    arch: str
    metadata: dict[str, str]
    inputs: list[str]  # what the graph takes, optional ones included (ONNX Runtime's get_inputs() leaves those out)
    noise_classes: int = 0  # classes from the noise: the class of a sample is the argmax of z's first K entries

    @property
    def classes(self) -> int:
        """How many classes a caller may ask for: the labels the graph takes, or the classes drawn from z."""
        return self.num_classes or self.noise_classes

    @property
    def truncation(self) -> bool:
        """True when the generator takes the optional `truncation_psi` input."""
        return PSI in self.inputs


def _input_names(session: ort.InferenceSession, meta: dict[str, str], path: Path | str) -> list[str]:
    """`ganpipe.inputs`, checked against the graph; files exported before it existed take z (and labels)."""
    if "ganpipe.inputs" not in meta:
        return [a.name for a in session.get_inputs()]
    try:
        names = json.loads(meta["ganpipe.inputs"])
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("'ganpipe.inputs'")
    takes = [a.name for a in [*session.get_inputs(), *session.get_overridable_initializers()]]
    required = [a.name for a in session.get_inputs()]
    if not set(required) <= set(names) <= set(takes):
        raise ModelError(f"{path}: ganpipe.inputs {names} does not match the graph's inputs {required} "
                         f"(optional: {sorted(set(takes) - set(required))})")  # fmt: skip
    return names


def optional_inputs(session: ort.InferenceSession, info: ModelInfo) -> list:
    """The inputs a run may leave out: initializers it may override (ONNX Runtime's get_inputs()
    leaves them out), as `ganpipe.inputs` lists them (the other initializers are weights)."""
    return [a for a in session.get_overridable_initializers() if a.name in info.inputs]


def model_info(session: ort.InferenceSession, path: Path | str = "model") -> ModelInfo:
    """Read the ganpipe.* metadata_props that the export stage writes."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    try:
        return ModelInfo(
            task=meta["ganpipe.task"],
            latent_dim=int(meta.get("ganpipe.latent_dim", 0)),
            num_classes=int(meta.get("ganpipe.num_classes", 0)),
            class_names=json.loads(meta.get("ganpipe.class_names", "[]")),
            image_size=int(meta["ganpipe.image_size"]),
            channels=int(meta["ganpipe.channels"]),
            arch=meta.get("ganpipe.arch", "?"),
            metadata=meta,
            inputs=_input_names(session, meta, path),
            noise_classes=int(meta.get("ganpipe.noise_classes", 0)),
        )
    except ModelError:
        raise
    except (KeyError, ValueError) as err:
        raise ModelError(f"{path}: not a ganpipe export (metadata {err} missing or malformed)") from None


def _dims(arg) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "N" for d in arg.shape) + "]"


def check_graph(session: ort.InferenceSession, info: ModelInfo, path: Path | str = "model") -> None:
    """Refuse (ModelError, naming the file and the key) ganpipe.* metadata that does not fit the graph:
    the service and `generate` size their inputs from it, so a translator's task on a generator graph,
    or a latent_dim of 100,000,000 (400 MB of noise per image), was loaded and then failed every call."""
    inputs = {a.name: a for a in session.get_inputs()}
    outputs = {a.name: a for a in session.get_outputs()}
    graph = f"the graph takes {[f'{n} {_dims(a)}' for n, a in inputs.items()]} and gives " \
            f"{[f'{n} {_dims(a)}' for n, a in outputs.items()]}"  # fmt: skip

    def refuse(key: str, problem: str) -> ModelError:
        return ModelError(f"{path}: ganpipe.{key} {problem}; {graph}")

    takes, gives = {"generate": ("z", "images"), "translate": ("images", "translated")}.get(info.task, (None, None))
    if takes is None:
        raise refuse("task", f"{info.task!r} is not 'generate' or 'translate'")
    if takes not in inputs or gives not in outputs:
        raise refuse("task", f"{info.task!r} needs an input {takes!r} and an output {gives!r}")
    image = outputs[gives].shape
    if len(image) != 4 or (info.task == "translate" and len(inputs[takes].shape) != 4):
        raise refuse("task", f"{info.task!r} needs images of shape [N, C, H, W]")
    if info.channels < 1 or (isinstance(image[1], int) and image[1] != info.channels):
        raise refuse("channels", f"is {info.channels}, the images have {image[1]}")
    if info.task == "translate":
        for key, default in (("size_multiple", info.image_size), ("min_size", 1)):
            value = info.metadata.get(f"ganpipe.{key}", str(default))
            if not (value.isascii() and value.isdigit() and len(value) <= 6 and int(value) >= 1):
                raise refuse(key, f"is {value[:20]!r}, not a whole number from 1 to 999999")
        return
    if info.image_size < 1 or any(isinstance(d, int) and d != info.image_size for d in image[2:]):
        raise refuse("image_size", f"is {info.image_size}, but images is {_dims(outputs[gives])}")
    z = inputs["z"].shape
    if len(z) != 2 or not isinstance(z[1], int) or z[1] != info.latent_dim:
        raise refuse("latent_dim", f"is {info.latent_dim}, but z is {_dims(inputs['z'])}")
    labels = "labels" in inputs
    if info.num_classes < 0 or (info.num_classes > 0) != labels:
        raise refuse("num_classes", f"is {info.num_classes}, but the graph {'takes' if labels else 'has no'} labels")
    if info.noise_classes and (info.num_classes or not 0 < info.noise_classes <= info.latent_dim):
        raise refuse("noise_classes", f"is {info.noise_classes}: classes drawn from z need 1 to latent_dim "
                     f"({info.latent_dim}) of its entries and a graph without labels")  # fmt: skip
    names = info.class_names
    named = isinstance(names, list) and all(isinstance(n, str) for n in names)
    if not named or len(names) not in (0, info.classes):
        got = len(names) if isinstance(names, list) else type(names).__name__
        raise refuse("class_names", f"must list {info.classes} names (ganpipe.num_classes), got {got}")


class OnnxGenerator:
    """Sample images from an exported generator: z ~ N(0, I) from a seeded NumPy RNG."""

    def __init__(
        self, path: Path | str, device: str = "auto", threads: int = 0, session: ort.InferenceSession | None = None
    ):
        self.path = Path(path)
        self.session = session or create_session(path, device, threads)
        self.info = model_info(self.session, path)
        if self.info.task != "generate":
            raise ModelError(f"{path}: is a {self.info.task!r} model, not an image generator")
        check_graph(self.session, self.info, path)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def resolve_labels(self, n: int, labels: list[str | int] | None) -> np.ndarray | None:
        """Class indices for n samples: given names/indices cycled, or every class in turn. A string
        label is a class name or an index written in ASCII digits ("2"); an int label is an index."""
        if not self.info.classes:
            if labels:
                raise ModelError(f"{self.path}: unconditional model; it takes no labels")
            return None
        if not labels:  # a model with classes from the noise draws them itself
            return np.arange(n, dtype=np.int64) % self.info.num_classes if self.info.num_classes else None
        names, count = self.info.class_names, self.info.classes

        def written_as_index(s: str) -> bool:  # "3", "-1"; not "²" or "①" (str.isdigit() is true of both)
            digits = s.removeprefix("-")
            return digits.isascii() and digits.isdigit() and (s == "0" or not digits.startswith("0"))

        idx = []
        for lab in labels:
            if isinstance(lab, str) and lab in names:
                idx.append(names.index(lab))
                continue
            shown = repr(lab) if len(str(lab)) <= 40 else f"{str(lab)[:20]}... ({len(str(lab))} characters)"
            is_int = isinstance(lab, int) and not isinstance(lab, bool)
            if not (is_int or (isinstance(lab, str) and written_as_index(lab))):
                raise ModelError(f"unknown label {shown}; this model's classes are {names} (or indices 0-{count - 1})")
            # len() first: int() of a string of more than 4300 digits raises ValueError
            i = int(lab) if is_int or len(lab) <= len(str(count)) else count
            if not 0 <= i < count:
                raise ModelError(f"label {shown} is out of range; this model's classes are indices 0-{count - 1} "
                                 f"({names})")  # fmt: skip
            idx.append(i)
        return np.resize(np.array(idx, dtype=np.int64), n)

    def resolve_psi(self, psi: float | None) -> np.ndarray | None:
        """The `truncation_psi` input for one value for the whole batch, or None to leave it out (psi 1, no
        truncation). Refused: any psi for a model without that input, and values not finite or beyond MAX_PSI."""
        if psi is None:
            return None
        if not self.info.truncation:
            raise ModelError(f"{self.path}: this model (arch {self.info.arch}) has no truncation input; "
                             "truncation_psi applies to generators such as stylegan2")  # fmt: skip
        try:
            value = float(psi) if isinstance(psi, int | float | np.number) and not isinstance(psi, bool) else None
        except OverflowError:  # an int of more than 308 digits
            value = math.inf
        if value is None or not math.isfinite(value) or abs(value) > MAX_PSI:
            shown = repr(psi) if len(repr(psi)) <= 40 else f"{repr(psi)[:20]}..."
            raise ModelError(f"truncation_psi must be a finite number from -{MAX_PSI:g} to {MAX_PSI:g} "
                             f"(1: no truncation, 0: the average image), got {shown}")  # fmt: skip
        return np.array([value], dtype=np.float32)

    def generate(self, n: int, seed: int = 0, labels: list[str | int] | None = None, batch_size: int = 256,
                 truncation_psi: float | None = None):  # fmt: skip
        """[n, C, H, W] float32 images in [-1, 1]. `truncation_psi` (models that take it): 1 or None is no
        truncation, below 1 pulls every sample towards the average image, 0 gives that image for any z."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        psi = self.resolve_psi(truncation_psi)
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.info.latent_dim), dtype=np.float32)
        y = self.resolve_labels(n, labels)
        out = []
        for i in range(0, n, batch_size):
            feed = self.feed(z[i : i + batch_size], None if y is None else y[i : i + batch_size])
            if psi is not None:
                feed[PSI] = psi
            out.append(self.session.run(["images"], feed)[0])
        return np.concatenate(out)

    def feed(self, z: np.ndarray, classes: np.ndarray | None) -> dict[str, np.ndarray]:
        """The graph's inputs for latents `z` of the class indices `classes` (None: no class asked for):
        a `labels` input, or, for a model that draws classes from the noise, latents of those classes."""
        if classes is None:
            return {"z": z}
        if self.info.noise_classes:
            return {"z": with_classes(z, classes, self.info.noise_classes)}
        return {"z": z, "labels": classes}


class OnnxTranslator:
    """Translate images with an exported translator (input `images`, output `translated`,
    both float32 [N, C, H, W] in [-1, 1]). H and W must be multiples of the model's
    `ganpipe.size_multiple`; other sizes are resized to the nearest valid size and back."""

    def __init__(
        self, path: Path | str, device: str = "auto", threads: int = 0, session: ort.InferenceSession | None = None
    ):
        self.path = Path(path)
        self.session = session or create_session(path, device, threads)
        self.info = model_info(self.session, path)
        if self.info.task != "translate":
            raise ModelError(f"{path}: is a {self.info.task!r} model, not a translator")
        check_graph(self.session, self.info, path)
        self.size_multiple = int(self.info.metadata.get("ganpipe.size_multiple", self.info.image_size))
        self.min_size = int(self.info.metadata.get("ganpipe.min_size", self.size_multiple))
        self.direction = self.info.metadata.get("ganpipe.direction", "AB")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def valid_size(self, width: int, height: int) -> tuple[int, int]:
        """The nearest (width, height) the model accepts: multiples of size_multiple, at least min_size."""
        m, low = self.size_multiple, self.min_size
        return max(low, round(width / m) * m), max(low, round(height / m) * m)

    def translate(self, images: np.ndarray) -> np.ndarray:
        """[N, C, H, W] float32 in [-1, 1] -> the same shape; H, W multiples of size_multiple."""
        if images.ndim != 4 or images.shape[1] != self.info.channels:
            raise ModelError(f"expected images [N, {self.info.channels}, H, W], got shape {list(images.shape)}")
        if images.shape[2] % self.size_multiple or images.shape[3] % self.size_multiple:
            raise ModelError(f"height and width must be multiples of {self.size_multiple}, got {images.shape[2:]}")
        if min(images.shape[2:]) < self.min_size:
            raise ModelError(f"height and width must be at least {self.min_size}, got {images.shape[2:]}")
        return self.session.run(["translated"], {"images": images.astype(np.float32, copy=False)})[0]

    def translate_image(self, image: Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
        """A PIL image in, the translated PIL image out, at the input's size. `max_pixels` bounds
        the size the model is fed (after resizing to a valid size), which bounds its memory."""
        from PIL import Image

        size = self.valid_size(*image.size)
        if size[0] * size[1] > max_pixels:
            raise ImageRejected(f"{image.size[0]}x{image.size[1]} is fed to the model as {size[0]}x{size[1]} = "
                                f"{size[0] * size[1]} pixels > {max_pixels}", too_large=True)  # fmt: skip
        mode = "L" if self.info.channels == 1 else "RGB"
        src = image.convert(mode)
        resized = src.resize(size, Image.BICUBIC) if size != src.size else src
        arr = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
        arr = arr[None, None] if arr.ndim == 2 else arr.transpose(2, 0, 1)[None]
        out = self.translate(np.ascontiguousarray(arr))[0]
        pixels = np.clip(np.rint((out + 1.0) * 127.5), 0, 255).astype(np.uint8)
        result = Image.fromarray(pixels[0] if self.info.channels == 1 else pixels.transpose(1, 2, 0), mode)
        return result.resize(src.size, Image.BICUBIC) if size != src.size else result


def open_model(path: Path | str, device: str = "auto", threads: int = 0) -> OnnxGenerator | OnnxTranslator:
    """An OnnxGenerator or OnnxTranslator, whichever the file's `ganpipe.task` says (one session)."""
    session = create_session(path, device, threads)
    task = model_info(session, path).task
    if task == "generate":
        return OnnxGenerator(path, session=session)
    if task == "translate":
        return OnnxTranslator(path, session=session)
    raise ModelError(f"{path}: unknown ganpipe.task {task!r} (expected 'generate' or 'translate')")
