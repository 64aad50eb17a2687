"""Decoding images that someone else made: only raster formats, and never more pixels than asked.

Shards, real image folders and probe datasets are untrusted input. `PIL.Image.open` guesses a format
from the bytes among every plugin it has, and some plugins hand the file to another program (EPS
to Ghostscript); a few bytes of header can also ask for gigabytes of pixels. So every image genrep
reads goes through `decode_image`: a fixed list of decoders, and the size read from the header is
checked (against the size the caller expects, and against `MAX_IMAGE_PIXELS`) before any pixel is
decoded, whatever `PIL.Image.MAX_IMAGE_PIXELS` has been set to.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from typing import BinaryIO

from PIL import Image

from genrep.errors import DataError
from genrep.io import open_regular

#: most pixels of an image genrep decodes (8192 x 8192; shards/README.md, "Limits")
MAX_IMAGE_PIXELS = 1 << 26
#: PIL decoders of image files in folders (torchvision's ImageFolder extensions)
FILE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "PPM", "TIFF", "GIF")


def decode_image(
    source: bytes | BinaryIO,
    formats: tuple[str, ...],
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """An RGB image from `source`, decoded by one of the PIL `formats`; `size` = (width, height)
    it must have. Raises `DataError` before decoding pixels when the header says otherwise."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            # PIL's own guard warns from the header alone; the checks below say it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream, formats=formats)
        with image:
            width, height = image.size
            if size is not None and (width, height) != tuple(size):
                raise DataError(f"image is {width}x{height} px, expected {size[0]}x{size[1]}")
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"image is {width}x{height} px, over the {MAX_IMAGE_PIXELS} pixels genrep decodes"
                )
            image.load()
            return image.convert("RGB")
    except DataError:
        raise
    except Image.DecompressionBombError as err:  # PIL refused it from the header
        raise DataError(
            f"image over the {MAX_IMAGE_PIXELS} pixels genrep decodes ({err})"
        ) from None
    except Image.UnidentifiedImageError:  # its message is only the stream's repr
        raise DataError("undecodable image: unknown format or damaged header") from None
    except Exception as err:  # corrupt bytes surface as many exception types
        raise DataError(f"undecodable image ({type(err).__name__}: {err})") from None


def _walk_once(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(top, followlinks=True)` entering each directory once, in sorted order: a folder
    of linked class folders is still read, but links that loop (`x -> .`) would otherwise be
    walked until paths grow too long, doubling at every level with two of them."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(top, followlinks=True):
        status = os.stat(root)
        if (status.st_dev, status.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((status.st_dev, status.st_ino))
        dirs.sort()
        yield root, dirs, files


def image_files(
    directory: str | os.PathLike,
    class_to_idx: dict[str, int],
    extensions: tuple[str, ...],
    allow_empty: bool = False,
) -> list[tuple[str, int]]:
    """(path, class index) of the images of an ImageFolder-layout folder, as torchvision's
    `make_dataset` lists them, but entering each linked directory once (`_walk_once`)."""
    samples, empty = [], []
    for name in sorted(class_to_idx):
        target = os.path.join(directory, name)
        found = [
            (os.path.join(root, file), class_to_idx[name])
            for root, _, files in (sorted(_walk_once(target)) if os.path.isdir(target) else [])
            for file in sorted(files)
            if file.lower().endswith(extensions)
        ]
        samples += found
        empty += [] if found else [name]
    if empty and not allow_empty:
        raise FileNotFoundError(
            f"Found no valid file for the classes {', '.join(empty)}. "
            f"Supported extensions are: {', '.join(extensions)}"
        )
    return samples


def read_image_file(
    path: str | os.PathLike, formats: tuple[str, ...] = FILE_FORMATS
) -> Image.Image:
    """An image file as RGB (a regular file only: a FIFO or device never blocks or streams)."""
    with open_regular(path) as handle:
        return decode_image(handle, formats)
