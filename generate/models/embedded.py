"""The embedded generator: a procedural, style-based network that needs no download.

In the spirit of the random StyleGAN generators of Baradad et al. 2021 ("Learning to See by Looking at
Noise"): every parameter is a deterministic function of a seed, so the whole tool runs offline. The
structure mirrors what the paper's views rely on in a trained GAN:

- input Fourier features (as in StyleGAN3's input layer) with a 1/f amplitude spectrum, whose
  translation, rotation and scale are a fixed linear function of z: part of z moves content;
- a z-modulated per-pixel network (styles scale its input channels) turns them into oriented,
  blob- and edge-like structures; class-conditional mode gives every class its own frequencies,
  phases and weights;
- a fixed linear function of z adds a color offset: part of z sets colors;
- with the `fields` option, smooth warp and shading fields attached to the content, whose phases
  turn a full cycle per unit of z: a neighbor keeps texture and colors, bent and lit anew (a
  nuisance Tx cannot make). Off by default: it leaves the default network byte-identical.

Nearby z give nearby images, and the steering walks of App. B (shift, zoom, rotation, color) exist
in its latent space. It computes in float64 so that a sample's pixels do not depend on the batch it
was generated in (byte-identical shards for any --batch-size).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from genrep.card import DatasetLicense
from genrep.errors import UsageError
from genrep.generate.models.base import GENERATORS, Generator, model_option_label, parameters_sha256
from genrep.options import check_number

# How strongly the geometry/color parts of z act (per unit of z along each fixed direction).
SHIFT_PER_UNIT = 0.25  # in units of the half-width of the image
ROTATION_PER_UNIT = 0.35  # radians
LOG_SCALE_PER_UNIT = 0.25
COLOR_PER_UNIT = 0.3
# The `fields` option (strength 1): warp and shading fields, each a sum of low-frequency sines.
FIELD_PHASE_PER_UNIT = 2 * math.pi  # radians of each component's phase per unit of z
WARP_AMPLITUDE = 0.05  # displacement of each warp component, in half-widths
SHADE_AMPLITUDE = 0.2  # log-brightness of each shading component
WARP_COMPONENTS, SHADE_COMPONENTS = 6, 4  # warp: half along x, half along y
FIELD_FREQUENCY = (0.3, 0.8)  # cycles per half-width: smooth across the image
FIELD_DIMS = WARP_COMPONENTS + SHADE_COMPONENTS
MAX_FIELDS = 1.25  # beyond, the steepest warp passes 1 and folds the image
FIELDS_MIN_Z_DIM = 7 + FIELD_DIMS + 8
#: ranges of the model options (memory grows with z_dim^2, classes and resolution^2)
MAX_Z_DIM = 4096
MAX_CLASSES = 10_000
RESOLUTIONS = (8, 1024)


class EmbeddedGenerator(Generator):
    """A fixed random style-based network; `num_classes > 0` makes it class-conditional."""

    default_truncation = 2.0
    #: its weights are genrep's own (a function of a seed), under genrep's license
    weights_license = DatasetLicense("mit", None, None)

    def __init__(
        self,
        z_dim: int = 128,
        num_classes: int = 0,
        resolution: int = 128,
        features: int = 32,
        hidden: int = 32,
        seed: int = 0,
        fields: float = 0.0,
    ) -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.resolution = z_dim, num_classes, resolution
        self.seed, self.fields = seed, fields
        rng = np.random.default_rng([seed, z_dim, num_classes, features, hidden])
        tables = max(num_classes, 1)

        # Orthonormal directions of z: 4 for geometry, 3 for color, the rest drive the styles (with
        # `fields`, the first FIELD_DIMS of the rest set the fields' phases instead).
        basis, _ = np.linalg.qr(rng.standard_normal((z_dim, z_dim)))
        self._buffer("geometry_dirs", basis[:, :4].T)  # tx, ty, rotation, log-scale
        self._buffer("color_dirs", basis[:, 4:7].T)
        field_dims = FIELD_DIMS if fields else 0

        def style_map(columns: int) -> np.ndarray:
            # The same draws with or without fields; with them, the field directions drive no style.
            draw = rng.standard_normal((z_dim - 7, columns))
            draw[:field_dims] = 0
            return basis[:, 7:] @ draw / math.sqrt(z_dim - 7 - field_dims)

        # Style maps: z -> per-channel gains and phase offsets of the input features.
        self._buffer("style_gain", style_map(features))
        self._buffer("style_phase", style_map(features))
        self._buffer("style_hidden", style_map(hidden))
        # Per-class filter bank: frequencies log-uniform in [0.5, 10] cycles per image half-width with
        # random orientation, amplitudes ~ 1/f (natural-image spectrum), random phases.
        magnitude = np.exp(rng.uniform(np.log(0.5), np.log(10.0), (tables, features)))
        angle = rng.uniform(0, np.pi, (tables, features))
        self._buffer(
            "frequency", np.stack([magnitude * np.cos(angle), magnitude * np.sin(angle)], -1)
        )
        self._buffer("amplitude", 1.5 / np.sqrt(magnitude))
        self._buffer("phase", rng.uniform(0, 2 * np.pi, (tables, features)))
        # Per-class per-pixel network: features -> hidden -> hidden -> RGB.
        self._buffer(
            "w1", rng.standard_normal((tables, features, hidden)) * math.sqrt(2 / features)
        )
        self._buffer("b1", rng.standard_normal((tables, 1, hidden)) * 0.3)
        self._buffer("w2", rng.standard_normal((tables, hidden, hidden)) * math.sqrt(2 / hidden))
        self._buffer("b2", rng.standard_normal((tables, 1, hidden)) * 0.3)
        # Output colors are mostly luminance with some chroma, as in natural images.
        luminance = rng.standard_normal((tables, hidden, 1)) * np.ones(3)
        chroma = rng.standard_normal((tables, hidden, 3)) * 0.5
        self._buffer("w3", (luminance + chroma) * math.sqrt(1 / hidden))
        self._buffer("b3", rng.standard_normal((tables, 1, 3)) * 0.2)
        if fields:
            self._buffer("field_dirs", basis[:, 7 : 7 + FIELD_DIMS].T * FIELD_PHASE_PER_UNIT)
            cycles = rng.uniform(*FIELD_FREQUENCY, (FIELD_DIMS, 1))
            turn = rng.uniform(0, 2 * np.pi, (FIELD_DIMS, 1))
            self._buffer(
                "field_frequency", np.concatenate([cycles * np.cos(turn), cycles * np.sin(turn)], 1)
            )
            amplitude = np.repeat(
                [WARP_AMPLITUDE, SHADE_AMPLITUDE], [WARP_COMPONENTS, SHADE_COMPONENTS]
            )
            self._buffer("field_amplitude", fields * amplitude)
        for name in ("w1", "b1", "b2", "w2", "b3", "w3", "field_frequency", "field_amplitude"):
            if hasattr(self, name):
                self.register_buffer(f"{name}_32", getattr(self, name).float(), persistent=False)
        line = torch.linspace(
            -1 + 1 / resolution, 1 - 1 / resolution, resolution, dtype=torch.float64
        )
        self.register_buffer("line", line, persistent=False)
        if fields:
            grid = torch.stack(torch.meshgrid(line, line, indexing="xy"), -1)
            self.register_buffer("grid_32", grid.float(), persistent=False)  # H, W, (x, y)
        self.weights_sha256 = parameters_sha256(self)

    def _buffer(self, name: str, value: np.ndarray) -> None:
        self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value, np.float64)))

    def geometry(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Translation, rotation and scale of the content that z encodes (for tests and steering)."""
        g = z.to(torch.float64) @ self.geometry_dirs.T
        return {
            "shift_x": g[:, 0] * SHIFT_PER_UNIT,
            "shift_y": g[:, 1] * SHIFT_PER_UNIT,
            "rotation": g[:, 2] * ROTATION_PER_UNIT,
            "log_scale": g[:, 3] * LOG_SCALE_PER_UNIT,
        }

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        act = torch.nn.functional.leaky_relu
        z = z.to(device=self.line.device, dtype=torch.float64)
        batch, size = z.shape[0], self.resolution
        if self.conditional:
            if y is None:
                raise ValueError(
                    "this embedded generator is class-conditional: pass class labels y"
                )
            table = y.to(device=z.device, dtype=torch.long)
        else:
            table = torch.zeros(batch, dtype=torch.long, device=z.device)

        geo = self.geometry(z)
        cos, sin = torch.cos(geo["rotation"]), torch.sin(geo["rotation"])
        inv_scale = torch.exp(-geo["log_scale"])
        # Content coordinates q = R(-theta) (p - t) / s, folded into each feature's frequency and
        # phase: f.q = f'.p - f'.t with f' = R(theta) f / s, so the features stay separable in x, y.
        f = self.frequency[table]  # B, F, 2
        fx = (cos[:, None] * f[..., 0] - sin[:, None] * f[..., 1]) * inv_scale[:, None]
        fy = (sin[:, None] * f[..., 0] + cos[:, None] * f[..., 1]) * inv_scale[:, None]
        phase = (
            self.phase[table]
            + z @ self.style_phase
            - 2 * math.pi * (fx * geo["shift_x"][:, None] + fy * geo["shift_y"][:, None])
        )
        ax = 2 * math.pi * fx[..., None] * self.line  # B, F, W
        ay = 2 * math.pi * fy[..., None] * self.line + phase[..., None]  # B, F, H
        amp = self.amplitude[table] * (1 + 0.5 * torch.tanh(z @ self.style_gain))
        # sin(ax + ay) = cos(ay) sin(ax) + sin(ay) cos(ax): the first layer is a product of an
        # (H x 2F) and a (2F x W*hidden) matrix per image, no per-pixel sine and no feature map.
        rows = torch.cat([torch.cos(ay), torch.sin(ay)], 1).transpose(1, 2)  # B, H, 2F
        cols = (
            torch.cat([torch.sin(ax), torch.cos(ax)], 1) * amp.repeat(1, 2)[..., None]
        )  # B, 2F, W
        gain = 1 + 0.5 * torch.tanh(z @ self.style_hidden)  # B, hidden
        color = (z @ self.color_dirs.T) * COLOR_PER_UNIT  # B, 3
        rows, cols, gain, color = (t.to(torch.float32) for t in (rows, cols, gain, color))
        if self.fields:
            field_phase = (z @ self.field_dirs.T).to(torch.float32)  # B, warp + shading components
            # The fields belong to the content: they move, turn and scale with it (p = s R q + t).
            shift = torch.stack([geo["shift_x"], geo["shift_y"]], -1).to(torch.float32)
            turn = torch.stack([cos, -sin, sin, cos], -1).view(-1, 2, 2).to(torch.float32)
            scale = torch.exp(geo["log_scale"]).to(torch.float32)
        images = []
        # One image at a time: every image's arithmetic has the same shapes whatever batch it came
        # in, so its pixels are identical for any --batch-size; the working set stays in cache.
        for i in range(batch):
            t = int(table[i])
            w1 = self.w1_32[t].repeat(2, 1)  # 2F, hidden
            h = (rows[i] @ (cols[i][..., None] * w1[:, None, :]).flatten(1)).view(size * size, -1)
            h = act(h + self.b1_32[t], 0.2) * gain[i]
            h = act(torch.addmm(self.b2_32[t], h, self.w2_32[t]), 0.2)
            rgb = torch.addmm(self.b3_32[t], h, self.w3_32[t])  # HW, 3
            image = (torch.tanh(rgb) * 0.9 + color[i]).clamp(-1, 1).T.reshape(3, size, size)
            if self.fields:
                # float32 under a bf16 autocast too: content coordinates need sub-pixel precision
                with torch.autocast(image.device.type, enabled=False):
                    content = ((self.grid_32 - shift[i]) @ turn[i]) / scale[i]  # q of every pixel
                    image = self._bend_and_light(
                        image.float(), content, field_phase[i], scale[i] * turn[i]
                    )
            images.append(image)
        return torch.stack(images)

    def _bend_and_light(
        self,
        image: torch.Tensor,
        content: torch.Tensor,
        field_phase: torch.Tensor,
        to_image: torch.Tensor,
    ) -> torch.Tensor:
        """Bend the image by a smooth displacement field and light it by a smooth shading field,
        both functions of the content coordinates: what a neighbor changes, as pose and light do for
        a GAN's objects, and a crop or a color jitter cannot."""
        waves = torch.sin(2 * math.pi * (content @ self.field_frequency_32.T) + field_phase)
        waves = waves * self.field_amplitude_32  # H, W, components
        bend = torch.stack(
            [
                waves[..., : WARP_COMPONENTS // 2].sum(-1),
                waves[..., WARP_COMPONENTS // 2 : WARP_COMPONENTS].sum(-1),
            ],
            -1,
        )
        bent = torch.nn.functional.grid_sample(
            image[None],
            (self.grid_32 + bend @ to_image.T)[None],
            mode="bilinear",
            padding_mode="reflection",
            align_corners=False,
        )[0]
        shade = waves[..., WARP_COMPONENTS:].sum(-1)
        return ((bent + 1) * torch.exp(shade) - 1).clamp(-1, 1)


@GENERATORS.register("embedded")
def build_embedded(
    weights: str | None = None,
    classes: object = None,
    device: str = "cpu",
    z_dim: int = 128,
    resolution: int = 128,
    seed: int = 0,
    fields: float = 0.0,
) -> EmbeddedGenerator:
    """Build the embedded generator; an integer `classes` K makes it class-conditional with K classes,
    `fields` S > 0 adds warp and shading fields of strength S that neighbors vary."""
    if weights is not None:
        raise UsageError("the embedded generator has no weights file; drop --weights")
    for name, value, low, high in (
        ("z_dim", z_dim, 16, MAX_Z_DIM),
        ("resolution", resolution, *RESOLUTIONS),
        ("seed", seed, 0, 2**32 - 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsageError(f"{model_option_label(name)} must be a whole number, got {value!r}")
        check_number(model_option_label(name), value, at_least=low, at_most=high)
    if not isinstance(fields, int | float) or isinstance(fields, bool):
        raise UsageError(f"{model_option_label('fields')} must be a number, got {fields!r}")
    check_number(model_option_label("fields"), fields, at_least=0, at_most=MAX_FIELDS)
    if fields and z_dim < FIELDS_MIN_Z_DIM:
        raise UsageError(
            f"{model_option_label('fields')} needs {model_option_label('z_dim')} >= "
            f"{FIELDS_MIN_Z_DIM} (7 fixed directions, {FIELD_DIMS} field directions, the rest styles)"
        )
    num_classes = 0
    if classes is not None:
        try:
            num_classes = int(str(classes))
        except (TypeError, ValueError):
            raise UsageError(
                f"--classes for the embedded generator is a number of classes K, got {classes!r}"
            ) from None
        check_number("--classes", num_classes, at_least=1, at_most=MAX_CLASSES)
    return EmbeddedGenerator(
        z_dim=z_dim, num_classes=num_classes, resolution=resolution, seed=seed, fields=float(fields)
    ).to(device)
