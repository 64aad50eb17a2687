"""A tiny, randomly initialized Stable Diffusion pipeline folder, built offline in a temp folder.

The UNet, VAE and CLIP text encoder are built from small configs in code and saved with
`save_pretrained` (safetensors); the tokenizer is a byte-level CLIP BPE vocabulary without merges
(every character is a token). Images are 32 px (a 16 x 16 x 4 latent).
"""

from __future__ import annotations

import json
from pathlib import Path


def _byte_characters() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes (GPT-2's mapping)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping, extra = {b: chr(b) for b in printable}, 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return [mapping[byte] for byte in range(256)]


def write_tokenizer(folder: Path) -> None:
    characters = _byte_characters()
    vocab = {token: i for i, token in enumerate([*characters, *(c + "</w>" for c in characters)])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 16})
    )


def make_tiny_pipeline(root: Path) -> Path:
    """Write a tiny Stable-Diffusion-layout pipeline to `root` and return it."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        ).save_pretrained(root / "unet")
        AutoencoderKL(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
        ).save_pretrained(root / "vae")
        CLIPTextModel(
            CLIPTextConfig(
                hidden_size=32,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=520,
                max_position_embeddings=16,
                bos_token_id=512,
                eos_token_id=513,
                pad_token_id=513,
            )
        ).save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    # Stable Diffusion 1.5 ships a PNDM config; genrep samples with DDIM from the same schedule.
    PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    ).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"],
                "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "PNDMScheduler"],
            }
        )
    )
    return root
