"""The unconditional BigBiGAN generator (Donahue & Simonyan 2019), 128 px, z in R^120.

Weights: the public PyTorch conversion of the TF-Hub module `bigbigan-resnet50` by Voynov et al.
("Big GANs Are Watching You", `BigBiGAN_x1.pth`): a state dict of the BigGAN-PyTorch generator
(Brock's `BigGAN.Generator`: G_ch 96, hierarchical z in 6 chunks of 20, shared embedding of 128
whose 1000 rows are all BigBiGAN's single embedding). It loads strictly; Brock's spectral norm is
evaluated once in eval mode (one power-iteration step from the stored u, weight / sigma) and
folded into the weights.

The architecture is read off the checkpoint's shapes (width, number of blocks, attention block),
so any checkpoint of this layout loads; the published one gives 128 px and z dim 120.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from genrep.card import DatasetLicense
from genrep.errors import WeightsError
from genrep.generate.models._layers import SelfAttention, load_strict
from genrep.generate.models.base import GENERATORS, Generator
from genrep.weights import WeightsSpec, load_state_dict_file, resolve_weights

WEIGHTS = WeightsSpec(
    "BigBiGAN_x1.pth",
    (
        "https://www.dropbox.com/s/9w2i45h455k3b4p/BigBiGAN_x1.pth?dl=1",
        "https://github.com/greeneggsandyaml/tmp/releases/download/0.0.1/BigBiGAN_x1.pth",
    ),
)

BN_EPS = 1e-4  # class-conditional batch norms (BN_eps of the conversion's config)
OUTPUT_BN_EPS = 1e-5  # the output batch norm keeps BigGAN-PyTorch's default
SN_EPS = 1e-4


class ConditionalBatchNorm(nn.Module):
    """Batch norm with stored statistics and a gain/bias linear in (embedding, z chunk)."""

    stored_mean: torch.Tensor
    stored_var: torch.Tensor

    def __init__(self, channels: int, condition_dim: int) -> None:
        super().__init__()
        self.gain = nn.Linear(condition_dim, channels, bias=False)
        self.bias = nn.Linear(condition_dim, channels, bias=False)
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        # (x - mean) / std * gain + bias as one x * scale + shift pass over the activations.
        inv_std = torch.rsqrt(self.stored_var + BN_EPS)
        scale = (1 + self.gain(condition).float()) * inv_std
        shift = self.bias(condition).float() - scale * self.stored_mean
        return torch.addcmul(
            shift.to(x.dtype)[:, :, None, None], x, scale.to(x.dtype)[:, :, None, None]
        )


class GBlock(nn.Module):
    """BigGAN's residual up-block: BN-ReLU-up-conv3, BN-ReLU-conv3, plus an up-conv1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int, condition_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_sc = nn.Conv2d(in_channels, out_channels, 1)
        self.bn1 = ConditionalBatchNorm(in_channels, condition_dim)
        self.bn2 = ConditionalBatchNorm(out_channels, condition_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, condition)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), condition)))
        # conv_sc is 1x1, so it commutes with nearest upsampling: run it at the lower resolution.
        return h + F.interpolate(self.conv_sc(x), scale_factor=2, mode="nearest")


class OutputBatchNorm(nn.Module):
    stored_mean: torch.Tensor
    stored_var: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.stored_mean, self.stored_var, self.gain, self.bias, False, 0.0, OUTPUT_BN_EPS
        )


class BigBiGAN(Generator):
    """G(z): z in R^(chunk x (blocks + 1)); the first chunk feeds the 4x4 linear layer, the others
    condition one block each (concatenated after the constant embedding)."""

    default_truncation = 2.0  # anchors z ~ N_t(0, 1, 2) (paper, Sec. 4.1)

    def __init__(
        self,
        channels: list[int],
        chunk: int,
        embedding_dim: int,
        attention_block: int | None,
        num_embeddings: int = 1000,
    ) -> None:
        super().__init__()
        blocks = len(channels) - 1
        self.chunk = chunk
        self.z_dim = chunk * (blocks + 1)
        self.resolution = 4 * 2**blocks
        self.shared = nn.Embedding(num_embeddings, embedding_dim)
        self.linear = nn.Linear(chunk, channels[0] * 4 * 4)
        self.blocks = nn.ModuleList()
        for index in range(blocks):
            stage = [GBlock(channels[index], channels[index + 1], embedding_dim + chunk)]
            if index == attention_block:
                stage.append(SelfAttention(channels[index + 1]))
            self.blocks.append(nn.ModuleList(stage))
        self.output_layer = nn.Sequential(
            OutputBatchNorm(channels[-1]), nn.ReLU(), nn.Conv2d(channels[-1], 3, 3, padding=1)
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.linear.weight
        z = z.to(device=weight.device, dtype=weight.dtype)
        chunks = torch.split(z, self.chunk, dim=1)
        embedding = self.shared.weight[0].expand(z.shape[0], -1)  # unconditional: one embedding
        h = self.linear(chunks[0]).view(z.shape[0], -1, 4, 4)
        stages = cast("list[nn.ModuleList]", self.blocks)
        for stage, chunk in zip(stages, chunks[1:], strict=True):
            condition = torch.cat([embedding, chunk], dim=1)
            h = stage[0](h, condition)
            for attention in stage[1:]:
                h = attention(h)
        return torch.tanh(self.output_layer(h))


def fold_spectral_norm(weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Brock's spectral norm in eval mode: one power-iteration step from u (not stored back)."""
    matrix = weight.flatten(1)
    v = F.normalize(u @ matrix, eps=SN_EPS)
    u = F.normalize(v @ matrix.t(), eps=SN_EPS)
    sigma = ((v @ matrix.t()) @ u.t()).squeeze()
    return weight / sigma


def _spectral_prefixes(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Layers that are spectrally normalised in BigGAN-PyTorch's generator (all but two)."""
    return [
        key[: -len("weight")]
        for key in state
        if key.endswith(".weight") and not key.startswith(("shared.", "output_layer.0."))
    ]


def convert_state_dict(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """BigGAN-PyTorch generator state dict -> this module's (spectral norm folded, sv0 dropped)."""
    state = dict(state)
    for prefix in _spectral_prefixes(state):
        if prefix + "u0" not in state:
            raise WeightsError(f"{source}: {prefix}u0 is missing (spectral norm of {prefix[:-1]})")
        state[prefix + "weight"] = fold_spectral_norm(
            state[prefix + "weight"], state.pop(prefix + "u0")
        )
        state.pop(prefix + "sv0", None)  # logged singular value; the conversion may omit it
    return state


def infer_architecture(state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Constructor arguments of `BigBiGAN` that fit the checkpoint's shapes."""
    try:
        blocks = sorted(
            {
                int(m.group(1))
                for k in state
                if (m := re.match(r"blocks\.(\d+)\.0\.conv1\.weight$", k))
            }
        )
        channels = [state["blocks.0.0.conv1.weight"].shape[1]]
        channels += [state[f"blocks.{i}.0.conv1.weight"].shape[0] for i in blocks]
        embedding = state["shared.weight"]
        condition_dim = state["blocks.0.0.bn1.gain.weight"].shape[1]
    except KeyError as err:
        raise WeightsError(
            f"{source} is not a BigGAN-PyTorch generator state dict ({err.args[0]} is missing)"
        ) from None
    if blocks != list(range(len(blocks))):
        raise WeightsError(f"{source}: generator blocks {blocks} are not numbered 0..n-1")
    attention = [i for i in blocks if f"blocks.{i}.1.gamma" in state]
    if not torch.equal(embedding, embedding[:1].expand_as(embedding)):
        raise WeightsError(
            f"{source} is class-conditional (its shared embeddings differ); "
            "bigbigan expects the unconditional BigBiGAN conversion"
        )
    return {
        "channels": channels,
        "chunk": condition_dim - embedding.shape[1],
        "embedding_dim": embedding.shape[1],
        "attention_block": attention[0] if attention else None,
        "num_embeddings": embedding.shape[0],
    }


@GENERATORS.register("bigbigan")
def build_bigbigan(
    weights: str | None = None, classes: Any = None, device: str | torch.device = "cpu"
) -> BigBiGAN:
    """BigBiGAN's generator from `weights` or the published conversion (cache, then download)."""
    resolved = resolve_weights(WEIGHTS, weights, model="bigbigan")
    source = str(resolved.path)
    state = load_state_dict_file(resolved.path)
    with torch.device("meta"):  # the weights replace every tensor; see load_strict
        model = BigBiGAN(**infer_architecture(state, source))
    load_strict(model, convert_state_dict(state, source), source)
    model.weights_sha256 = resolved.sha256
    if weights is None:  # DeepMind's TF-Hub module, converted by Voynov et al.
        model.weights_license = DatasetLicense(
            link="https://tfhub.dev/deepmind/bigbigan-resnet50/1"
        )
    return model.to(device)
