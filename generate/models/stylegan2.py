"""StyleGAN2 (Karras et al. 2020, config F generator) in plain torch ops.

Two checkpoint layouts load into one network (whose parameter names are rosinality's):

- rosinality/stylegan2-pytorch `.pt`: `{"g_ema": state dict, "latent_avg": w_avg, ...}`,
  read with `torch.load(weights_only=True)`;
- NVIDIA stylegan2-ada-pytorch `.pkl` snapshots: `G_ema` is rebuilt as data by the restricted
  unpickler of `genrep.weights` (nothing in the file is executed) and renamed to the same layout.

Both are the same computation: modulated 3x3 convolutions with demodulation, transposed-conv
upsampling followed by the [1, 3, 3, 1] blur, constant noise maps (`noises.noise_i` /
`noise_const`, so a z always gives the same image), skip-connected ToRGB layers. Modulation is
applied to the activations (x * s, shared-weight conv, * demod), which equals the per-sample
modulated kernel of the paper and needs no grouped convolution. The channel widths, depth and
mapping network size are read off the checkpoint.

Truncation is StyleGAN's: w = w_avg + psi (w - w_avg) (model option `truncation_psi`); z itself
is untruncated. `stylegan2-car` is the paper's LSUN Car setting: psi 0.9 and the 512 px output cut
to rows 64:448, which removes the letterbox (App. A).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from genrep.card import DatasetLicense
from genrep.errors import WeightsError
from genrep.generate.models._layers import as_float, load_strict
from genrep.generate.models.base import GENERATORS, Generator
from genrep.weights import (
    PersistentObject,
    WeightsSpec,
    load_restricted_pickle,
    load_state_dict_file,
    resolve_weights,
)

LRELU_GAIN = math.sqrt(2)
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)

#: the LSUN Car generator the paper used (rosinality format, converted from NVIDIA's config F)
CAR_WEIGHTS = WeightsSpec(
    "stylegan2_car.pt",
    ("http://wednesday.csail.mit.edu/placesgan/tracer/utils/stylegan2/weights/stylegan2_car.pt",),
)
CAR_ROWS = (64, 448)
#: where NVIDIA states the license of its StyleGAN2 networks
NVIDIA_LICENSE = "https://nvlabs.github.io/stylegan2/license.html"


def blur_kernel(gain: float = 1.0) -> torch.Tensor:
    """The separable [1, 3, 3, 1] low-pass filter, normalised to sum `gain`."""
    taps = torch.tensor(BLUR_TAPS)
    kernel = taps[:, None] * taps[None, :]
    return kernel / kernel.sum() * gain


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad, and convolve every channel with `kernel` (a true FIR)."""
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(batch, channels, height * up, width * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = kernel.flip([0, 1]).to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=channels)


class EqualLinear(nn.Module):
    """Linear layer with the equalized learning rate scaling (stored weight = W / lr_mul)."""

    def __init__(
        self, in_dim: int, out_dim: int, lr_mul: float = 1.0, activate: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(out, 0.2) * LRELU_GAIN if self.activate else out


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class Blur(nn.Module):
    kernel: torch.Tensor

    def __init__(self, pad: tuple[int, int], gain: float) -> None:
        super().__init__()
        self.pad = pad
        self.register_buffer("kernel", blur_kernel(gain))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x FIR upsampling of the skip images."""

    kernel: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", blur_kernel(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=2, pad=(2, 1))


class ModulatedConv2d(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        # rosinality stores [1, out, in, k, k]; 4-d here so .to(channels_last) applies
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels)
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:  # transposed conv (2H+1) then blur back to 2H
            self.blur = Blur(pad=(1, 1), gain=4.0)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.modulation(w)  # B, in
        weight = self.weight * self.scale  # out, in, k, k
        x = x * style.to(x.dtype)[:, :, None, None]
        if self.upsample:
            x = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2))
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:  # 1 / |W * s| per sample and output channel, in float32 always
            with torch.autocast(x.device.type, enabled=False):
                demod = torch.rsqrt(
                    style.float().square() @ weight.float().square().sum([2, 3]).t() + 1e-8
                )
            x = x * demod.to(x.dtype)[:, :, None, None]
        return x


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + (self.weight * noise).to(x.dtype)


class BiasLeakyReLU(nn.Module):
    """lrelu(x + b) * sqrt(2), clamped to +-clamp when the network was trained with conv_clamp."""

    def __init__(self, channels: int, clamp: float | None) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(x + self.bias.to(x.dtype)[:, None, None], 0.2) * LRELU_GAIN
        return x.clamp(-self.clamp, self.clamp) if self.clamp is not None else x


class StyledConv(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        style_dim: int,
        upsample: bool,
        clamp: float | None,
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = BiasLeakyReLU(out_channels, clamp)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    def __init__(
        self, in_channels: int, style_dim: int, upsample: bool, clamp: float | None
    ) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.clamp = clamp

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        out = self.conv(x, w).float() + self.bias
        if self.clamp is not None:
            out = out.clamp(-self.clamp, self.clamp)
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.empty(1, channels, 4, 4))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyleGAN2Network(nn.Module):
    """Mapping (`style`) and synthesis networks; `channels[i]` is the width at 4 * 2**i px."""

    def __init__(
        self,
        channels: list[int],
        z_dim: int,
        style_dim: int,
        n_mlp: int,
        lr_mlp: float = 0.01,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.style = nn.Sequential(
            PixelNorm(),
            *[
                EqualLinear(z_dim if i == 0 else style_dim, style_dim, lr_mul=lr_mlp, activate=True)
                for i in range(n_mlp)
            ],
        )
        self.input = ConstantInput(channels[0])
        self.conv1 = StyledConv(channels[0], channels[0], style_dim, False, conv_clamp)
        self.to_rgb1 = ToRGB(channels[0], style_dim, False, conv_clamp)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for previous, width in itertools.pairwise(channels):
            self.convs.append(StyledConv(previous, width, style_dim, True, conv_clamp))
            self.convs.append(StyledConv(width, width, style_dim, False, conv_clamp))
            self.to_rgbs.append(ToRGB(width, style_dim, True, conv_clamp))
        self.noises = nn.Module()
        for index in range(2 * len(channels) - 1):
            side = 4 * 2 ** ((index + 1) // 2)
            self.noises.register_buffer(f"noise_{index}", torch.empty(1, 1, side, side))

    def synthesize(self, w: torch.Tensor) -> torch.Tensor:
        """Image (float32, about [-1, 1]) from one w per sample (no style mixing)."""
        noise = [getattr(self.noises, f"noise_{i}") for i in range(2 * len(self.to_rgbs) + 1)]
        x = self.conv1(self.input(w.shape[0]), w, noise[0])
        image = self.to_rgb1(x, w)
        for index, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * index](x, w, noise[2 * index + 1])
            x = self.convs[2 * index + 1](x, w, noise[2 * index + 2])
            image = to_rgb(x, w, image)
        return image


class StyleGAN2(Generator):
    """Unconditional StyleGAN2: G(z), z ~ N(0, I) in R^z_dim."""

    default_truncation = None  # z is untruncated; truncation acts in w (truncation_psi)

    def __init__(
        self,
        network: Mapping[str, Any],
        truncation_psi: float = 1.0,
        rows: tuple[int, int] | None = None,
        sigma: float | None = None,
    ) -> None:
        super().__init__()
        self.net = StyleGAN2Network(**network)
        self.register_buffer("latent_avg", torch.empty(network["style_dim"]))
        self.z_dim = network["z_dim"]
        self.resolution = 4 * 2 ** (len(network["channels"]) - 1)
        self.truncation_psi = truncation_psi
        self.rows = rows
        self._sigma = sigma

    @property
    def default_sigma(self) -> float:
        return self._sigma if self._sigma is not None else super().default_sigma

    @property
    def frame(self) -> tuple[int, int]:
        rows = self.rows[1] - self.rows[0] if self.rows else self.resolution
        return (rows, self.resolution)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "truncation_psi": self.truncation_psi, "rows": self.rows}

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        z = z.to(device=self.latent_avg.device, dtype=torch.float32)
        w = self.net.style(z)
        if self.truncation_psi != 1:
            w = torch.lerp(self.latent_avg.to(w.dtype), w, self.truncation_psi)
        image = self.net.synthesize(w).clamp(-1, 1)
        return image[:, :, self.rows[0] : self.rows[1]] if self.rows else image


# --- checkpoint layouts ---------------------------------------------------------------------


def _rosinality_architecture(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    try:
        n_mlp = len([k for k in state if re.match(r"style\.\d+\.weight$", k)])
        stages = len([k for k in state if re.match(r"to_rgbs\.\d+\.conv\.weight$", k)])
        channels = [state["input.input"].shape[1]]
        channels += [state[f"convs.{2 * i}.conv.weight"].shape[0] for i in range(stages)]
        first = state["style.1.weight"]
    except KeyError as err:
        raise WeightsError(
            f"{source} is not a StyleGAN2 generator ({err.args[0]} is missing)"
        ) from None
    return {
        "channels": channels,
        "z_dim": first.shape[1],
        "style_dim": first.shape[0],
        "n_mlp": n_mlp,
    }


def _module_tensors(obj: PersistentObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flat state dict (name -> tensor) of a persistent module, like nn.Module.state_dict()."""
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, tensor in (obj.state.get(group) or {}).items():
            if tensor is not None:
                out[prefix + name] = tensor
    for name, child in (obj.state.get("_modules") or {}).items():
        if isinstance(child, PersistentObject):
            out.update(_module_tensors(child, f"{prefix}{name}."))
    return out


def _child(obj: PersistentObject | None, name: str) -> PersistentObject | None:
    """A submodule of a pickled module, or None where it (or the module) is missing."""
    if obj is None:
        return None
    child = (obj.state.get("_modules") or {}).get(name)
    return child if isinstance(child, PersistentObject) else None


def convert_nvidia(
    g_ema: PersistentObject, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """stylegan2-ada-pytorch `G_ema` -> (rosinality-layout state dict, architecture arguments)."""
    state = g_ema.state
    mapping, synthesis = _child(g_ema, "mapping"), _child(g_ema, "synthesis")
    if g_ema.class_name != "Generator" or mapping is None or synthesis is None:
        raise WeightsError(f"{source}: G_ema is a {g_ema.class_name}, not a StyleGAN2 Generator")
    if state.get("c_dim", 0):
        raise WeightsError(
            f"{source} is class-conditional (c_dim={state['c_dim']}); "
            "only unconditional StyleGAN2 is supported"
        )
    tensors = _module_tensors(g_ema)
    consumed: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise WeightsError(f"{source}: G_ema has no {name}")
        consumed.add(name)
        return tensors[name]

    def check_filter(name: str) -> None:
        expected = blur_kernel()
        if name in tensors and not torch.allclose(take(name).float(), expected, atol=1e-6):
            raise WeightsError(f"{source}: {name} is not the [1, 3, 3, 1] filter of StyleGAN2")

    out: dict[str, torch.Tensor] = {}
    layers = sorted(
        int(m.group(1)) for k in tensors if (m := re.match(r"mapping\.fc(\d+)\.weight$", k))
    )
    gains = set()
    for i in layers:
        out[f"style.{i + 1}.weight"] = take(f"mapping.fc{i}.weight")
        out[f"style.{i + 1}.bias"] = take(f"mapping.fc{i}.bias")
        fc = _child(mapping, f"fc{i}")
        gains.add(float(fc.state.get("bias_gain", 0.01)) if fc else 0.01)
        if fc and fc.state.get("activation", "lrelu") != "lrelu":
            raise WeightsError(f"{source}: mapping layer fc{i} is not lrelu")
    if len(gains) != 1:
        raise WeightsError(f"{source}: mapping layers use different learning-rate multipliers")
    latent_avg = take("mapping.w_avg")

    resolutions = sorted(
        int(m.group(1)) for k in tensors if (m := re.match(r"synthesis\.b(\d+)\.conv1\.weight$", k))
    )
    clamps = set()

    def layer(block: str, name: str, target: str, noise_index: int) -> None:
        nv = f"synthesis.{block}.{name}."
        out[target + "conv.weight"] = take(nv + "weight")
        out[target + "conv.modulation.weight"] = take(nv + "affine.weight")
        out[target + "conv.modulation.bias"] = take(nv + "affine.bias")
        out[target + "noise.weight"] = take(nv + "noise_strength").reshape(1)
        out[target + "activate.bias"] = take(nv + "bias")
        out[f"noises.noise_{noise_index}"] = take(nv + "noise_const")[None, None]
        check_filter(nv + "resample_filter")
        node = _child(_child(synthesis, block), name)
        clamps.add(node.state.get("conv_clamp") if node else None)
        if node and node.state.get("activation", "lrelu") != "lrelu":
            raise WeightsError(f"{source}: {nv[:-1]} is not lrelu")

    def to_rgb(block: str, target: str) -> None:
        nv = f"synthesis.{block}.torgb."
        out[target + "conv.weight"] = take(nv + "weight")
        out[target + "conv.modulation.weight"] = take(nv + "affine.weight")
        out[target + "conv.modulation.bias"] = take(nv + "affine.bias")
        out[target + "bias"] = take(nv + "bias").reshape(1, -1, 1, 1)
        node = _child(_child(synthesis, block), "torgb")
        clamps.add(node.state.get("conv_clamp") if node else None)

    for index, resolution in enumerate(resolutions):
        block = f"b{resolution}"
        node = _child(synthesis, block)
        if node is not None and node.state.get("architecture", "skip") != "skip":
            raise WeightsError(
                f"{source}: synthesis block {block} is not of the 'skip' "
                "architecture of StyleGAN2 config F"
            )
        check_filter(f"synthesis.{block}.resample_filter")
        if index == 0:
            out["input.input"] = take(f"synthesis.{block}.const")[None]
            layer(block, "conv1", "conv1.", 0)
            to_rgb(block, "to_rgb1.")
            continue
        layer(block, "conv0", f"convs.{2 * index - 2}.", 2 * index - 1)
        layer(block, "conv1", f"convs.{2 * index - 1}.", 2 * index)
        out[f"convs.{2 * index - 2}.conv.blur.kernel"] = blur_kernel(4.0)
        to_rgb(block, f"to_rgbs.{index - 1}.")
        out[f"to_rgbs.{index - 1}.upsample.kernel"] = blur_kernel(4.0)

    left = sorted(set(tensors) - consumed)
    if left:
        raise WeightsError(f"{source}: G_ema tensors not understood: {', '.join(left[:4])}")
    if len(clamps) > 1:
        raise WeightsError(f"{source}: layers use different conv_clamp values")
    architecture = _rosinality_architecture(out, source)
    architecture["lr_mlp"] = gains.pop()
    architecture["conv_clamp"] = clamps.pop() if clamps else None
    out["latent_avg"] = latent_avg
    return out, architecture


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict with `latent_avg`, architecture) from a rosinality .pt or NVIDIA .pkl."""
    source = str(path)
    if path.suffix == ".pkl":
        data = load_restricted_pickle(path)
        if not isinstance(data, dict) or not isinstance(data.get("G_ema"), PersistentObject):
            raise WeightsError(f"{source} is not a stylegan2-ada-pytorch snapshot (no G_ema)")
        return convert_nvidia(data["G_ema"], source)
    data = load_state_dict_file(path)
    if not isinstance(data.get("g_ema"), Mapping):
        raise WeightsError(
            f"{source} is not a rosinality StyleGAN2 checkpoint (no g_ema); "
            "NVIDIA snapshots must end in .pkl"
        )
    state = {
        key: value[0]
        if key.endswith("conv.weight") and value.dim() == 5 and value.shape[0] == 1
        else value
        for key, value in data["g_ema"].items()
    }
    architecture = _rosinality_architecture(state, source)
    if "latent_avg" in data:
        state["latent_avg"] = torch.as_tensor(data["latent_avg"]).reshape(-1)
    return state, architecture


def build_stylegan2_from(
    path: Path,
    sha256: str,
    truncation_psi: float,
    rows: tuple[int, int] | None = None,
    sigma: float | None = None,
) -> StyleGAN2:
    source = str(path)
    state, architecture = read_checkpoint(path)
    latent_avg = state.pop("latent_avg", None)
    if latent_avg is None:
        if truncation_psi != 1:
            raise WeightsError(
                f"{source} has no latent_avg, which truncation_psi="
                f"{truncation_psi} needs; pass --model-option truncation_psi=1"
            )
        latent_avg = torch.zeros(architecture["style_dim"])
    if latent_avg.shape != (architecture["style_dim"],):
        raise WeightsError(
            f"{source}: latent_avg has shape {tuple(latent_avg.shape)}, "
            f"expected ({architecture['style_dim']},)"
        )
    with torch.device("meta"):  # the weights replace every tensor; see load_strict
        model = StyleGAN2(architecture, truncation_psi=truncation_psi, rows=rows, sigma=sigma)
    load_strict(model.net, state, source)
    model.latent_avg = latent_avg.to("cpu", torch.float32)
    if rows and not 0 <= rows[0] < rows[1] <= model.resolution:
        raise WeightsError(
            f"{source} makes {model.resolution} px images, which rows "
            f"{rows[0]}:{rows[1]} do not fit"
        )
    model.weights_sha256 = sha256
    return model


@GENERATORS.register("stylegan2")
def build_stylegan2(
    weights: str | None = None,
    classes: Any = None,
    device: str | torch.device = "cpu",
    truncation_psi: str | float = 1.0,
) -> StyleGAN2:
    """Any unconditional StyleGAN2 config-F checkpoint given by --weights (.pt or .pkl)."""
    psi = as_float("truncation_psi", truncation_psi)
    resolved = resolve_weights(None, weights, model="stylegan2")
    return build_stylegan2_from(resolved.path, resolved.sha256, psi).to(device)


@GENERATORS.register("stylegan2-car")
def build_stylegan2_car(
    weights: str | None = None,
    classes: Any = None,
    device: str | torch.device = "cpu",
    truncation_psi: str | float = 0.9,
) -> StyleGAN2:
    """The paper's LSUN Car generator: psi 0.9, letterbox rows removed, gaussian views std 0.25."""
    psi = as_float("truncation_psi", truncation_psi)
    resolved = resolve_weights(CAR_WEIGHTS, weights, model="stylegan2-car")
    model = build_stylegan2_from(resolved.path, resolved.sha256, psi, rows=CAR_ROWS, sigma=0.25)
    if weights is None:  # NVIDIA's LSUN Car network
        model.weights_license = DatasetLicense(link=NVIDIA_LICENSE)
    return model.to(device)
