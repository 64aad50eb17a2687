"""Text-to-image diffusion (Stable Diffusion 1.x / 2.x pipelines) as a genrep generator: the
StableRep / SynCLR setting, where the classes are prompts.

- z is the initial noise latent x_T, flattened: z_dim = latent channels x h x w (4 x 64 x 64 for
  512 px Stable Diffusion). Sampling is DDIM with eta 0, a fixed number of steps and classifier-free
  guidance, so an image is a deterministic function of (z, prompt). Views act on that noise:
  `gaussian` perturbs it (default sigma 0.2, see `DIFFUSION_SIGMA`), `independent` draws fresh noise
  for the same prompt (StableRep's multi-positives), `none` stores anchors only; `steer` is refused.
- Classes come from a prompt file (model option `prompts`, `read_prompts`). With several prompts per
  class, the k-th sample of a class uses its prompt k mod P, and every view of a sample shares it.
  `forward`'s y is `class + num_classes * prompt_index`, so a plain class id means its first prompt.
- The pipeline is read component by component (unet, vae, text_encoder, tokenizer, scheduler) with
  fixed classes and safetensors only: nothing in the folder is executed or unpickled. `--weights` is
  a local pipeline folder or a Hugging Face Hub id, read from the genrep cache or the Hugging Face
  cache, else fetched into the genrep cache.
- On the CPU every sample is denoised on its own (a batched UNet changes the low bits of a sample's
  result with the batch it is in); on CUDA the batch runs at once. `--precision fp16/bf16` runs the
  text encoder and UNet under autocast; the DDIM update and the VAE decoder stay float32.

Requires the optional extra: pip install 'genrep[diffusers]'.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from genrep.card import DatasetLicense
from genrep.errors import UsageError, WeightsError, one_line
from genrep.generate.models._layers import as_float
from genrep.generate.models.base import GENERATORS, Generator
from genrep.io import sha256_file
from genrep.paths import weights_dir
from genrep.weights import downloads_disabled

#: the pipeline `--weights` defaults to (StableRep and SynCLR sampled Stable Diffusion 1.5)
DEFAULT_PIPELINE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: the pipeline's folders genrep reads, each with the config file that must be there
COMPONENTS = {
    "unet": "config.json",
    "vae": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}
#: components whose weights are read (safetensors only)
WEIGHTED = ("unet", "vae", "text_encoder")
#: what a Hub download fetches: the components above, without pickles or other variants
HUB_INCLUDE = ("model_index.json", *(f"{name}/*" for name in COMPONENTS))
HUB_EXCLUDE = (
    "*.bin",
    "*.ckpt",
    "*.pt",
    "*.pth",
    "*.msgpack",
    "*.onnx*",
    "*.h5",
    "*.*.safetensors",
)
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
#: std of the gaussian view on the initial noise. z + sigma w keeps its N(0, I) shape only for small
#: sigma (its norm grows by sqrt(1 + sigma^2): +2% at 0.2, +12% at 0.5, which DDIM turns into
#: washed-out or over-saturated images); at 0.2 the two noises have cosine 0.98, so the views share
#: their layout and differ in details. The class-conditional default of GANs (1.0) would double the
#: noise variance; for more different positives use --view independent instead.
DIFFUSION_SIGMA = 0.2
#: text embeddings kept in memory (prompts are encoded one at a time and reused)
PROMPT_CACHE_SIZE = 256


@dataclass(frozen=True)
class Prompts:
    """The classes of a prompt file: their names and prompts, and the file's sha256."""

    class_names: list[str]
    prompts: list[list[str]]
    sha256: str


def read_prompts(path: str | os.PathLike) -> Prompts:
    """Read a prompt file: a text file with one prompt per line, each its own class (blank lines and
    `#` comments skipped), or a YAML file holding a mapping `class name: prompt or [prompts]` or a
    list of prompts (one class each, or a list of prompts per class)."""
    path = Path(path).expanduser()
    advice = "pass a text file with one prompt per line, or a YAML mapping class -> prompts"
    if not path.is_file():
        raise UsageError(f"prompts: there is no file {path}; {advice}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"prompts: {path} is not UTF-8 text; {advice}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"prompts: {path} is not valid YAML ({one_line(str(err))})") from None
        if isinstance(data, dict):
            names, entries = [str(key) for key in data], list(data.values())
        elif isinstance(data, list):
            entries = data
            names = [entry if isinstance(entry, str) else str(i) for i, entry in enumerate(data)]
        else:
            raise UsageError(f"prompts: {path} holds neither a mapping nor a list; {advice}")
        prompts = [[entry] if isinstance(entry, str) else entry for entry in entries]
    else:
        lines = [line.strip() for line in text.splitlines()]
        names = [line for line in lines if line and not line.startswith("#")]
        prompts = [[name] for name in names]
    for name, options in zip(names, prompts, strict=True):
        if (
            not isinstance(options, list)
            or not options
            or not all(isinstance(p, str) and p.strip() for p in options)
        ):
            raise UsageError(
                f"prompts: class {name!r} of {path} needs a prompt or a list of non-empty prompts"
            )
    if not names:
        raise UsageError(f"prompts: {path} holds no prompts; {advice}")
    return Prompts(names, [[p.strip() for p in options] for options in prompts], sha256_file(path))


def _as_int(name: str, value: Any, minimum: int) -> int:
    number = as_float(name, value)
    if not number.is_integer() or number < minimum:
        raise UsageError(f"model option {name}={value!r} must be an integer >= {minimum}")
    return int(number)


# ----------------------------------------------------------------------------- the pipeline folder


def resolve_pipeline(weights: str | None) -> Path:
    """The local pipeline folder for `--weights`: a folder as given, or a Hub id (default
    `DEFAULT_PIPELINE`) found in `$GENREP_HOME/weights/diffusers/` or complete in the Hugging Face
    cache, else fetched once into the former."""
    spec = weights or DEFAULT_PIPELINE
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise WeightsError(
                f"--weights {path} is a file; the diffusers model takes a pipeline folder "
                f"({', '.join(f'{name}/' for name in COMPONENTS)})"
            )
        return path
    if not HUB_ID.fullmatch(spec):
        raise WeightsError(f"--weights {spec}: no such folder, nor a Hub id like org/name")
    cached = weights_dir() / "diffusers" / spec.replace("/", "--")
    if cached.is_dir() and not _missing_files(cached):
        return cached
    hub_cache = _hub_cache_copy(spec)
    if hub_cache is not None:
        return hub_cache
    fetch = (
        f"fetch it with `hf download {spec} --local-dir {cached} --include "
        f"{' '.join(repr(p) for p in HUB_INCLUDE)} --exclude "
        f"{' '.join(repr(p) for p in HUB_EXCLUDE)}` or pass --weights PIPELINE_FOLDER"
    )
    if downloads_disabled() or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise WeightsError(
            f"diffusers pipeline {spec} is not in the cache {cached} (nor complete in the "
            f"Hugging Face cache) and downloads are off (GENREP_OFFLINE or HF_HUB_OFFLINE): {fetch}"
        )
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(
            spec,
            local_dir=cached,
            allow_patterns=list(HUB_INCLUDE),
            ignore_patterns=list(HUB_EXCLUDE),
        )
    except Exception as err:  # no network, unknown repo, gated model: many exception types
        raise WeightsError(
            f"cannot fetch diffusers pipeline {spec} ({type(err).__name__}: "
            f"{one_line(str(err))[:200]}): {fetch}"
        ) from None
    missing = _missing_files(cached)
    if missing:
        raise WeightsError(f"the Hub copy of {spec} lacks {', '.join(missing)}: {fetch}")
    return cached


def _hub_cache_copy(repo_id: str) -> Path | None:
    """The pipeline `repo_id` in the Hugging Face cache, where diffusers keeps what it downloads,
    when it is complete there (read without any network call)."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not in that cache (or no huggingface_hub): genrep fetches it itself
        return None
    return None if _missing_files(folder) else folder


def _weight_files(folder: Path) -> list[Path]:
    """A component's safetensors weights (one file, or the shards of one), without variants such
    as `*.fp16.safetensors`, which genrep does not read."""
    return sorted(p for p in folder.glob("*.safetensors") if "." not in p.stem)


def _missing_files(root: Path) -> list[str]:
    missing = [
        f"{name}/{config}"
        for name, config in COMPONENTS.items()
        if not (root / name / config).is_file()
    ]
    missing += [f"{name}/*.safetensors" for name in WEIGHTED if not _weight_files(root / name)]
    return missing


def pipeline_sha256(root: Path) -> str:
    """sha256 over the files genrep reads from a pipeline folder (configs, tokenizer files and
    safetensors weights of the five components), with their relative paths."""
    digest = hashlib.sha256()
    for name in COMPONENTS:
        folder = root / name
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".txt")]
        for path in sorted({*files, *_weight_files(folder)}):
            digest.update(f"{name}/{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence diffusers' and transformers' info logs, progress bars and deprecation notices
    while loading: a user of genrep cannot act on them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = []
    for library in (diffusers_logging, transformers_logging):
        saved.append((library, library.get_verbosity(), library.is_progress_bar_enabled()))
        library.set_verbosity_error()
        library.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the libraries' deprecation notices
            yield
    finally:
        for library, verbosity, progress in saved:
            library.set_verbosity(verbosity)
            if progress:
                library.enable_progress_bar()


def load_components(root: Path) -> dict[str, Any]:
    """unet, vae, text_encoder, tokenizer and scheduler config of a Stable Diffusion 1.x/2.x
    pipeline folder, read with fixed classes from safetensors files only, never from the Hub."""
    missing = _missing_files(root)
    if missing:
        pickled = [name for name in WEIGHTED if any((root / name).glob("*.bin"))]
        why = (
            f" ({', '.join(pickled)} hold only pickled .bin weights, which genrep never loads)"
            if pickled
            else ""
        )
        raise WeightsError(
            f"{root} is not a diffusers pipeline genrep can read: it lacks {', '.join(missing)}"
            f"{why}; pass a Stable Diffusion 1.x/2.x folder saved with safetensors"
        )
    index = root / "model_index.json"
    if index.is_file() and "text_encoder_2" in json.loads(index.read_text()):
        raise WeightsError(
            f"{root} has two text encoders (SDXL-style); genrep's diffusers model reads "
            "Stable Diffusion 1.x/2.x pipelines (one CLIP text encoder)"
        )
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    local: dict[str, Any] = {"local_files_only": True}
    try:
        with _quiet_libraries():
            unet = UNet2DConditionModel.from_pretrained(
                root, subfolder="unet", use_safetensors=True, **local
            )
            vae = AutoencoderKL.from_pretrained(
                root, subfolder="vae", use_safetensors=True, **local
            )
            text_encoder = CLIPTextModel.from_pretrained(
                root, subfolder="text_encoder", use_safetensors=True, **local
            )
            tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **local)
            scheduler_config = DDIMScheduler.load_config(root, subfolder="scheduler", **local)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise WeightsError(
            f"{root} is not a readable diffusers pipeline ({type(err).__name__}: "
            f"{one_line(str(err))[:200]}); pass a Stable Diffusion 1.x/2.x folder"
        ) from None
    if unet.config.get("addition_embed_type"):
        raise WeightsError(
            f"{root}: its UNet takes extra conditions ({unet.config.addition_embed_type}); "
            "genrep's diffusers model reads Stable Diffusion 1.x/2.x pipelines"
        )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": DDIMScheduler.from_config(scheduler_config),
    }


# ------------------------------------------------------------------------------------ the model


class DiffusionGenerator(Generator):
    """G(z, y): DDIM (eta 0) from the initial noise z with prompt y, decoded by the VAE."""

    not_steerable = (
        "steering walks are learned by backpropagating through the generator, which a "
        "many-step diffusion sampler makes impractical"
    )

    def __init__(
        self,
        components: dict[str, Any],
        prompts: Prompts,
        steps: int,
        guidance_scale: float,
        negative_prompt: str = "",
        resolution: int | None = None,
    ) -> None:
        super().__init__()
        self.unet, self.vae = components["unet"], components["vae"]
        self.text_encoder, self.tokenizer = components["text_encoder"], components["tokenizer"]
        self.scheduler = components["scheduler"]
        self.scheduler.set_timesteps(steps)
        self.prompts, self.steps = prompts, steps
        self.guidance_scale, self.negative_prompt = guidance_scale, negative_prompt
        scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.unet.config.sample_size * scale
        # the UNet halves the latent side at each down block but the last
        multiple = scale * 2 ** (len(self.unet.config.down_block_types) - 1)
        if self.resolution % multiple:
            raise UsageError(
                f"model option resolution={self.resolution} must be a multiple of {multiple}"
            )
        side = self.resolution // scale
        self.latent_shape = (self.unet.config.in_channels, side, side)
        self.z_dim = math.prod(self.latent_shape)
        self.num_classes = len(prompts.class_names)
        self._embeddings: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def default_sigma(self) -> float:
        return DIFFUSION_SIGMA

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "sampler": {
                "scheduler": "ddim",
                "eta": 0.0,
                "steps": self.steps,
                "guidance_scale": self.guidance_scale,
                "negative_prompt": self.negative_prompt,
            },
            "prompts_sha256": self.prompts.sha256,
            "prompts_per_class": [len(options) for options in self.prompts.prompts],
            "class_names": self.prompts.class_names,
        }

    def condition(self, label: int | None, occurrence: int) -> tuple[int | None, dict[str, Any]]:
        """The k-th sample of a class uses its prompt k mod P (prompts in file order)."""
        if label is None:
            raise ValueError("the diffusers model is class-conditional: every sample has a class")
        index = occurrence % len(self.prompts.prompts[label])
        prompt = self.prompts.prompts[label][index]
        return label + self.num_classes * index, {"prompt": prompt, "prompt_index": index}

    def _embedding(self, prompt: str) -> torch.Tensor:
        """The text encoder's output for one prompt (1 x tokens x width, float32), cached."""
        device = self.unet.device
        if prompt in self._embeddings:
            self._embeddings.move_to_end(prompt)
            return self._embeddings[prompt].to(device)
        tokens = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        with torch.autocast(device.type, enabled=False):
            embedding = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        self._embeddings[prompt] = embedding.float()
        if len(self._embeddings) > PROMPT_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return self._embeddings[prompt]

    def prompt_of(self, y: int) -> str:
        label, index = y % self.num_classes, y // self.num_classes
        return self.prompts.prompts[label][index]

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("the diffusers model is class-conditional: pass prompt ids y")
        if z.device.type == "cpu":
            # One sample at a time: a batched UNet on the CPU changes the low bits of a sample's
            # result with the batch it is in, and a sample's pixels must not depend on its batch.
            return torch.cat([self._sample(z[i : i + 1], y[i : i + 1]) for i in range(len(z))])
        return self._sample(z, y)

    def _sample(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        latents = z.to(self.unet.device, torch.float32).reshape(-1, *self.latent_shape)
        batch = len(latents)
        context = torch.cat([self._embedding(self.prompt_of(int(label))) for label in y])
        guided = self.guidance_scale != 1
        if guided:
            negative = self._embedding(self.negative_prompt).expand(batch, -1, -1)
            context = torch.cat([negative, context])
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            noise = self.unet(model_input, t, encoder_hidden_states=context).sample.float()
            if guided:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + self.guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(noise, t, latents, eta=0.0).prev_sample
        with torch.autocast(latents.device.type, enabled=False):
            images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return images.float().clamp(-1, 1)


@GENERATORS.register("diffusers")
def build_diffusers(
    weights: str | None = None,
    classes: Any = None,
    device: str | torch.device = "cpu",
    prompts: str | None = None,
    steps: int = 50,
    guidance_scale: float = 2.0,
    negative_prompt: str = "",
    resolution: int | None = None,
) -> DiffusionGenerator:
    """A Stable Diffusion 1.x/2.x pipeline folder or Hub id (--weights) whose classes are the
    prompts of the file `prompts`; DDIM with `steps` steps (eta 0) and classifier-free guidance
    `guidance_scale` (StableRep's 2 by default; 1 turns guidance off)."""
    if prompts is None:
        raise UsageError(
            "model 'diffusers' needs its classes as prompts: pass --model-option prompts=FILE "
            "(one prompt per line, or a YAML mapping class -> prompts)"
        )
    steps = _as_int("steps", steps, 1)
    guidance = as_float("guidance_scale", guidance_scale)
    if not (math.isfinite(guidance) and guidance >= 1):
        raise UsageError(f"model option guidance_scale={guidance_scale!r} must be >= 1")
    if resolution is not None:
        resolution = _as_int("resolution", resolution, 8)
    prompt_set = read_prompts(prompts)
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise UsageError(
            "model 'diffusers' needs the diffusers and transformers packages: "
            "pip install 'genrep[diffusers]'"
        ) from None
    root = resolve_pipeline(weights)
    generator = DiffusionGenerator(
        load_components(root),
        prompt_set,
        steps=steps,
        guidance_scale=guidance,
        negative_prompt=str(negative_prompt),
        resolution=resolution,
    )
    generator.weights_sha256 = pipeline_sha256(root)
    hub_id = weights or DEFAULT_PIPELINE
    if not Path(hub_id).expanduser().exists() and HUB_ID.fullmatch(hub_id):
        # a Hub model states its license on its page
        generator.weights_license = DatasetLicense(link=f"https://huggingface.co/{hub_id}")
    return generator.to(device)
