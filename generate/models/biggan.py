"""BigGAN-deep (Brock et al. 2019) with DeepMind's weights, in pytorch_pretrained_biggan's layout.

The published `pytorch_model.bin` is a state dict of that package's network. It loads here strictly:
spectral normalisation is folded into the weights once (eval mode: W / (u . W v) with the stored
u, v), the unused 125 of the 128 output channels of `conv_to_rgb` are dropped, and the batch-norm
statistics for the chosen truncation are selected once.

Batch-norm statistics. DeepMind stored per-layer statistics for 51 truncations t in [0, 1]
(step 0.02), each measured on z = t * N_t(0, 1, 2). The paper's anchors are z ~ N_t(0, 1, 2) (its
"truncation 2.0"), i.e. t = 1 in this convention, which is what its code passed to the network
(`model(z, y, 1.0)`): the model option `bn_truncation` defaults to 1.0. Between grid points the
statistics are mixed exactly as pytorch_pretrained_biggan mixes them (`bn_statistics_index`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from genrep.card import DatasetLicense
from genrep.errors import UsageError, WeightsError
from genrep.generate.models._layers import (
    SelfAttention,
    as_float,
    imagenet100_classes,
    load_strict,
    read_json,
)
from genrep.generate.models.base import GENERATORS, Generator
from genrep.weights import WeightsSpec, load_state_dict_file, resolve_weights

_URL = "https://s3.amazonaws.com/models.huggingface.co/biggan/{name}-pytorch_model.bin"

#: sha256 of the published files where known (biggan-deep-256: as listed by third-party installers;
#: the others are recorded in each dataset's manifest when first downloaded)
_SHA256 = {
    "biggan-deep-256": "5900ef4065047e3aa0d1b66197b7f2664dceb59b27080e414ad57e203c485bc5",
}


def weights_spec(name: str) -> WeightsSpec:
    return WeightsSpec(f"{name}-pytorch_model.bin", (_URL.format(name=name),), _SHA256.get(name))


def bn_statistics_index(truncation: float, n_stats: int) -> tuple[int, float]:
    """Row i of the statistics table for `truncation` and the weight w of row i + 1.

    Exactly as pytorch_pretrained_biggan (which the paper's code ran): `coef, i = modf(t / step)`
    and the statistics are `row[i] * coef + row[i + 1] * (1 - coef)`, so w = 1 - coef. That swaps
    the weights of a linear interpolation (t just above grid point i mostly uses row i + 1), and
    0.58 / 0.02 = 28.999... is row 28 (the statistics of 0.56); it is kept so that datasets match
    the released ones.
    """
    if not (math.isfinite(truncation) and 0 < truncation <= 1):
        raise UsageError(f"bn_truncation must lie in (0, 1], got {truncation}")
    coef, row = math.modf(truncation / (1.0 / (n_stats - 1)))
    if coef == 0.0:
        return int(row), 0.0
    return int(row), 1.0 - coef


class ConditionalBatchNorm(nn.Module):
    """Batch norm with stored statistics per truncation and a class/z-conditional gain and bias."""

    running_means: torch.Tensor
    running_vars: torch.Tensor
    inv_std: torch.Tensor
    shift: torch.Tensor

    def __init__(self, channels: int, condition_dim: int | None, n_stats: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        if condition_dim is None:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.scale = nn.Linear(condition_dim, channels, bias=False)
            self.offset = nn.Linear(condition_dim, channels, bias=False)
        # x * inv_std + shift normalises with the statistics selected by `select_statistics`.
        self.register_buffer("inv_std", torch.ones(channels), persistent=False)
        self.register_buffer("shift", torch.zeros(channels), persistent=False)

    @torch.no_grad()
    def select_statistics(self, truncation: float) -> None:
        row, weight = bn_statistics_index(truncation, self.running_means.shape[0])
        mean, var = self.running_means[row], self.running_vars[row]
        if weight:
            mean = torch.lerp(mean, self.running_means[row + 1], weight)
            var = torch.lerp(var, self.running_vars[row + 1], weight)
        inv_std = torch.rsqrt(var + self.eps)
        self.inv_std, self.shift = inv_std, -mean * inv_std

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        # Normalisation and the conditional affine map fold into one x * scale + shift pass; the
        # per-channel vectors follow x's dtype so autocast's fp16/bf16 maps stay so.
        if condition is None:
            scale, shift = self.weight * self.inv_std, self.bias + self.weight * self.shift
            return torch.addcmul(
                shift.to(x.dtype)[:, None, None], x, scale.to(x.dtype)[:, None, None]
            )
        gain = 1 + self.scale(condition).float()
        scale = gain * self.inv_std
        shift = torch.addcmul(self.offset(condition).float(), gain, self.shift)
        return torch.addcmul(
            shift.to(x.dtype)[:, :, None, None], x, scale.to(x.dtype)[:, :, None, None]
        )


class GenBlock(nn.Module):
    """BigGAN-deep's bottleneck residual block (1x1 down, two 3x3, 1x1 up; optional 2x upsample)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        condition_dim: int,
        upsample: bool,
        n_stats: int,
        eps: float,
    ) -> None:
        super().__init__()
        middle = in_channels // 4
        self.upsample = upsample
        self.drop_channels = in_channels != out_channels
        self.bn_0 = ConditionalBatchNorm(in_channels, condition_dim, n_stats, eps)
        self.conv_0 = nn.Conv2d(in_channels, middle, 1)
        self.bn_1 = ConditionalBatchNorm(middle, condition_dim, n_stats, eps)
        self.conv_1 = nn.Conv2d(middle, middle, 3, padding=1)
        self.bn_2 = ConditionalBatchNorm(middle, condition_dim, n_stats, eps)
        self.conv_2 = nn.Conv2d(middle, middle, 3, padding=1)
        self.bn_3 = ConditionalBatchNorm(middle, condition_dim, n_stats, eps)
        self.conv_3 = nn.Conv2d(middle, out_channels, 1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv_0(F.relu(self.bn_0(x, condition)))
        h = F.relu(self.bn_1(h, condition))
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv_1(h)
        h = self.conv_2(F.relu(self.bn_2(h, condition)))
        h = self.conv_3(F.relu(self.bn_3(h, condition)))
        if self.drop_channels:
            x = x[:, : x.shape[1] // 2]
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return h + x


class Trunk(nn.Module):
    """z|class embedding -> 4x4 features -> residual blocks with attention -> RGB."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        width, eps, n_stats = config["channel_width"], config["eps"], config["n_stats"]
        condition_dim = config["z_dim"] + config["class_embed_dim"]
        self.width = width
        self.gen_z = nn.Linear(condition_dim, 4 * 4 * 16 * width)
        layers: list[nn.Module] = []
        for index, (upsample, in_mult, out_mult) in enumerate(config["layers"]):
            if index == config["attention_layer_position"]:
                layers.append(SelfAttention(width * in_mult))
            layers.append(
                GenBlock(
                    width * in_mult, width * out_mult, condition_dim, bool(upsample), n_stats, eps
                )
            )
        self.layers = nn.ModuleList(layers)
        self.bn = ConditionalBatchNorm(width, None, n_stats, eps)
        self.conv_to_rgb = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        # gen_z's outputs are laid out H, W, C (the TF convention of the original weights).
        h = self.gen_z(condition).view(-1, 4, 4, 16 * self.width).permute(0, 3, 1, 2)
        for layer in self.layers:
            h = layer(h, condition) if isinstance(layer, GenBlock) else layer(h)
        return torch.tanh(self.conv_to_rgb(F.relu(self.bn(h))))


class BigGANDeep(Generator):
    """Class-conditional BigGAN-deep: G(z, y), z in R^128, y an ImageNet class id."""

    default_truncation = 2.0  # anchors z ~ N_t(0, 1, 2): paper, App. C.2
    class_subsets: ClassVar[dict[str, list[int]]] = {"imagenet100": imagenet100_classes()}

    def __init__(self, config: Mapping[str, Any], bn_truncation: float = 1.0) -> None:
        super().__init__()
        self.z_dim = config["z_dim"]
        self.num_classes = config["num_classes"]
        self.resolution = config["output_dim"]
        self.embeddings = nn.Linear(self.num_classes, config["class_embed_dim"], bias=False)
        self.generator = Trunk(config)
        bn_statistics_index(bn_truncation, config["n_stats"])
        self.bn_truncation = bn_truncation

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "bn_truncation": self.bn_truncation}

    def select_statistics(self) -> None:
        """Pick every batch norm's statistics for `self.bn_truncation` (after loading weights)."""
        for module in self.modules():
            if isinstance(module, ConditionalBatchNorm):
                module.select_statistics(self.bn_truncation)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("BigGAN-deep is class-conditional: pass class ids y")
        weight = self.embeddings.weight
        embedding = weight.t()[y.to(device=weight.device, dtype=torch.long)]
        z = z.to(device=weight.device, dtype=weight.dtype)
        return self.generator(torch.cat([z, embedding], dim=1))


def _fold_spectral_norm(state: dict[str, torch.Tensor], prefix: str, source: str) -> torch.Tensor:
    """The eval-mode weight of a torch.nn.utils.spectral_norm layer: W / (u . W v)."""
    try:
        weight, u, v = (state.pop(prefix + n) for n in ("weight_orig", "weight_u", "weight_v"))
    except KeyError as err:
        raise WeightsError(
            f"{source}: spectral norm of {prefix[:-1]} lacks {err.args[0]}"
        ) from None
    return weight / torch.dot(u, weight.flatten(1) @ v)


_ATTENTION_NAMES = {
    "snconv1x1_theta": "theta",
    "snconv1x1_phi": "phi",
    "snconv1x1_g": "g",
    "snconv1x1_o_conv": "o",
}


def convert_state_dict(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """pytorch_pretrained_biggan's state dict -> this module's (spectral norm folded, RGB cut)."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    for key in [k for k in state if k.endswith(".weight_orig")]:
        prefix = key[: -len("weight_orig")]
        out[prefix + "weight"] = _fold_spectral_norm(state, prefix, source)
    out.update(state)
    renamed = {}
    for key, value in out.items():
        parts = key.split(".")
        parts = [_ATTENTION_NAMES.get(part, part) for part in parts]
        if parts[-1] == "gamma":
            value = value.reshape(())
        renamed[".".join(parts)] = value
    for name in ("generator.conv_to_rgb.weight", "generator.conv_to_rgb.bias"):
        if name in renamed:
            renamed[name] = renamed[name][:3]
    return renamed


def load_biggan_deep(
    path: str | Path, config: Mapping[str, Any], bn_truncation: float = 1.0, sha256: str = ""
) -> BigGANDeep:
    """BigGAN-deep of `config` from a pytorch_pretrained_biggan state dict file."""
    source = str(path)
    with torch.device("meta"):  # the weights replace every tensor; see load_strict
        model = BigGANDeep(config, bn_truncation=bn_truncation)
    load_strict(model, convert_state_dict(load_state_dict_file(path), source), source)
    model.select_statistics()
    model.weights_sha256 = sha256
    return model


def _build(
    name: str, weights: str | None, device: str | torch.device, bn_truncation: str | float
) -> BigGANDeep:
    config = read_json(f"{name}-config.json")
    truncation = as_float("bn_truncation", bn_truncation)
    bn_statistics_index(truncation, config["n_stats"])  # fail before any download
    resolved = resolve_weights(weights_spec(name), weights, model=name)
    model = load_biggan_deep(resolved.path, config, truncation, resolved.sha256)
    if weights is None:  # DeepMind's TF-Hub module, converted by pytorch_pretrained_biggan
        model.weights_license = DatasetLicense(link=f"https://tfhub.dev/deepmind/{name}/1")
    return model.to(device)


def _register(name: str, aliases: tuple[str, ...] = ()) -> None:
    def build(
        weights: str | None = None,
        classes: Any = None,
        device: str | torch.device = "cpu",
        bn_truncation: str | float = 1.0,
    ) -> BigGANDeep:
        """BigGAN-deep; `bn_truncation` in (0, 1] selects batch-norm statistics (module doc)."""
        return _build(name, weights, device, bn_truncation)

    build.__name__ = build.__qualname__ = f"build_{name.replace('-', '_')}"
    GENERATORS.register(name, aliases=aliases)(build)


_register("biggan-deep-128")
_register("biggan-deep-256", aliases=("biggan",))
_register("biggan-deep-512")
