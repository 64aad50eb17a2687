"""How generated pixels become image bytes (`genrep-generate --encoder`).

The encoder decides the bytes of a dataset, so it is part of the dataset's identity: a dataset is
byte-reproducible with the encoder (and, for `torchvision`, the device type) it was made with.

- `pil`: Pillow in a pool of CPU processes (`--workers`), overlapping the generator's forward
  passes; JPEG at quality >= 90 keeps full chroma (4:4:4). Every format.
- `torchvision`: `torchvision.io.encode_jpeg` where the images already are: nvJPEG on a CUDA GPU
  (no pixels cross to the host, no CPU pool needed when the GPU outruns the CPU cores), libjpeg on
  the CPU (the same code path, which is how it is tested without a GPU). JPEG only, 4:2:0 chroma.
"""

from __future__ import annotations

import concurrent.futures as futures
import warnings
from typing import Any, ClassVar

import torch

from genrep.errors import UsageError
from genrep.registry import Registry
from genrep.shards import encode_images

IMAGE_ENCODERS: Registry[type[ImageEncoder]] = Registry("image encoder")
DEFAULT_ENCODER = "pil"

Encoded = futures.Future | list[bytes]


class ImageEncoder:
    """Encodes batches of N x 3 x H x W uint8 pixels (on the generator's device) into bytes."""

    name: ClassVar[str] = ""
    #: whether it encodes in the CPU worker pool (--workers); otherwise in the generating process
    uses_pool: ClassVar[bool] = False

    def __init__(self, image_format: str, quality: int, device: torch.device) -> None:
        self.image_format, self.quality, self.device = image_format, quality, device

    def identity(self) -> str:
        """What decides the bytes, for the manifest's `image.encoder`."""
        return self.name

    def encode(self, pixels: torch.Tensor, pool: futures.Executor | None) -> Encoded:
        raise NotImplementedError


@IMAGE_ENCODERS.register("pil")
class PillowEncoder(ImageEncoder):
    """Pillow (libjpeg-turbo, libpng, libwebp) in the encoder processes."""

    uses_pool = True

    def encode(self, pixels: torch.Tensor, pool: futures.Executor | None) -> Encoded:
        images = pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        if pool is None:
            return encode_images(images, self.image_format, self.quality)
        return pool.submit(encode_images, images, self.image_format, self.quality)


@IMAGE_ENCODERS.register("torchvision")
class TorchvisionEncoder(ImageEncoder):
    """`torchvision.io.encode_jpeg` on the pixels' device (nvJPEG on CUDA, libjpeg on CPU)."""

    def __init__(self, image_format: str, quality: int, device: torch.device) -> None:
        if image_format != "jpg":
            raise UsageError(
                f"--encoder torchvision writes JPEG only, not {image_format}; pass --format jpg "
                "or --encoder pil"
            )
        super().__init__(image_format, quality, device)

    def identity(self) -> str:
        # nvJPEG and libjpeg give different bytes for the same pixels.
        return f"{self.name}-{self.device.type}"

    def encode(self, pixels: torch.Tensor, pool: futures.Executor | None) -> Encoded:
        from torchvision.io import encode_jpeg

        with warnings.catch_warnings():
            # torchvision 0.29 points image encoding to TorchCodec; the call is still supported.
            warnings.simplefilter("ignore", DeprecationWarning)
            encoded = encode_jpeg(list(pixels.contiguous()), quality=self.quality)
        return [bytes(data.cpu().numpy()) for data in encoded]


def build_encoder(name: str, image_format: str, quality: int, device: Any) -> ImageEncoder:
    """The image encoder `name` for a format, quality and the generator's device."""
    return IMAGE_ENCODERS.build(name, image_format, quality, torch.device(device))
