"""BigGAN-deep and StyleGAN2 with random weights, for timing their CUDA paths without a download.

Both are genrep generator plugins (docs/generators.md), so the real `genrep-generate` runs them:

    genrep-generate --model benchmarks/random_models.py:random_biggan_deep --classes 10 ...
    genrep-generate --model benchmarks/random_models.py:random_stylegan2 ...

Random weights are made well-scaled, so that activations stay in the range trained weights keep
them in and fp16/bf16 are exercised as they would be: BigGAN-deep's batch-norm statistics are set
from one calibration batch (every layer's input normalized), StyleGAN2 draws its weights as its
equalized learning rate assumes (N(0, 1)). `width` shrinks the channels for quick CPU runs; the
layout (resolution, blocks, attention) stays the published one.
"""

from __future__ import annotations

from typing import Any

import torch

from genrep.generate.models import Generator
from genrep.generate.models._layers import read_json
from genrep.generate.models.biggan import BigGANDeep, ConditionalBatchNorm
from genrep.generate.models.stylegan2 import StyleGAN2

#: StyleGAN2 config F widths by resolution (rosinality's channel multiplier 2)
STYLEGAN2_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}


@torch.no_grad()
def _calibrate_batch_norms(model: BigGANDeep, batch: int, seed: int) -> None:
    """Set every batch norm's statistics (all truncation rows) to those of its input on a batch
    of random latents, layer after layer in one forward pass."""

    def set_statistics(module: ConditionalBatchNorm, args: tuple[Any, ...]) -> None:
        x = args[0].float()
        module.running_means.copy_(x.mean((0, 2, 3)).expand_as(module.running_means))
        module.running_vars.copy_(x.var((0, 2, 3)).expand_as(module.running_vars))
        module.select_statistics(model.bn_truncation)

    handles = [
        module.register_forward_pre_hook(set_statistics)
        for module in model.modules()
        if isinstance(module, ConditionalBatchNorm)
    ]
    try:
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(batch, model.z_dim, generator=generator).clamp(-2, 2)
        y = torch.randint(0, model.num_classes, (batch,), generator=generator)
        device = model.embeddings.weight.device
        model(z.to(device), y.to(device))
    finally:
        for handle in handles:
            handle.remove()


def random_biggan_deep(
    weights: str | None = None,
    classes: Any = None,
    device: str | torch.device = "cpu",
    resolution: int = 256,
    width: int = 128,
    seed: int = 0,
) -> Generator:
    """BigGAN-deep-`resolution` (128, 256 or 512) with random, calibrated weights."""
    config = {**read_json(f"biggan-deep-{resolution}-config.json"), "channel_width": int(width)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BigGANDeep(config)
        for module in model.modules():
            if hasattr(module, "gamma"):
                torch.nn.init.constant_(module.gamma, 0.5)  # attention on
    model = model.to(device).eval()
    _calibrate_batch_norms(model, batch=16, seed=seed)
    return model


@torch.no_grad()
def random_stylegan2(
    weights: str | None = None,
    classes: Any = None,
    device: str | torch.device = "cpu",
    resolution: int = 256,
    width: int = 512,
    seed: int = 0,
) -> Generator:
    """Unconditional StyleGAN2 config F at `resolution` with random weights (`width`: the widest
    layer's channels, 512 in config F)."""
    scale = int(width) / 512
    sides = [4 * 2**i for i in range(int(resolution).bit_length() - 2)]
    network = {
        "channels": [max(1, round(STYLEGAN2_CHANNELS[side] * scale)) for side in sides],
        "z_dim": 512,
        "style_dim": 512,
        "n_mlp": 8,
    }
    generator = torch.Generator().manual_seed(seed)
    model = StyleGAN2(network)
    for name, tensor in model.named_parameters():
        if name.endswith("modulation.bias"):
            tensor.fill_(1.0)  # StyleGAN2's bias_init of the style affines
        elif name.endswith("noise.weight"):
            tensor.fill_(0.1)
        elif name.endswith("bias"):
            tensor.zero_()
        else:  # equalized learning rate: weights are N(0, 1), scaled at run time
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    for noise in model.net.noises.buffers():
        noise.copy_(torch.randn(noise.shape, generator=generator))
    model.latent_avg.copy_(model.net.style(torch.randn(4096, 512, generator=generator)).mean(0))
    return model.to(device).eval()
