"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, *Benchmarking neural network robustness
to common corruptions and perturbations*, ICLR 2019), five severities each, computed by the
`imagecorruptions` package (through `anbench.imagecorruptions_compat`: numpy 2, our rng).

Images smaller than the package's 32 px minimum (mini's 28 px) are upscaled (bicubic) so the
shorter side is 32, corrupted, and scaled back (bicubic). Grey images (`[H, W]`, `[H, W, 1]`)
are corrupted as RGB with the grey value in every channel and converted back with ITU-R 601-2
luma (PIL's "L"), so they stay grey.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from anbench import imagecorruptions_compat as backend
from anbench.image_perturbation import ImagePerturbation, ImagePerturbationParams
from anbench.registry import IMAGE_PERTURBATIONS


class CorruptionParams(ImagePerturbationParams):
    """ImageNet-C severity levels: whole numbers 1..5 (0: the clean image)."""

    max_severity = 5.0
    integer_severity = True


class ImageCorruption(ImagePerturbation):
    """One ImageNet-C corruption of `imagecorruptions` (`corruption`: its function name)."""

    Params = CorruptionParams
    corruption: str = ""

    def corrupt(self, image: np.ndarray, rng: np.random.Generator, severity: float
                ) -> np.ndarray:
        return corrupt_any(image, self.corruption, int(severity), rng)


def corrupt_any(image: np.ndarray, corruption: str, severity: int, rng: np.random.Generator
                ) -> np.ndarray:
    """`backend.corrupt` for any size and grey or RGB uint8 images; same shape out."""
    shape = image.shape
    h, w = shape[:2]
    grey = image.ndim == 2 or shape[2] == 1
    rgb = np.repeat(image.reshape(h, w, 1), 3, axis=2) if grey else image
    small = min(h, w) < backend.MIN_SIDE
    if small:  # the package refuses sides under 32 px
        scale = backend.MIN_SIDE / min(h, w)
        size = (max(backend.MIN_SIDE, math.ceil(w * scale - 1e-9)),
                max(backend.MIN_SIDE, math.ceil(h * scale - 1e-9)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))
    out = backend.corrupt(rgb, corruption, severity, rng)
    if small:
        out = np.asarray(Image.fromarray(out).resize((w, h), Image.Resampling.BICUBIC))
    if grey:
        out = np.asarray(Image.fromarray(out).convert("L"))
    return np.ascontiguousarray(out, dtype=np.uint8).reshape(shape)


# (name, imagecorruptions function, category, draws randomness, description)
CORRUPTIONS: tuple[tuple[str, str, str, bool, str], ...] = (
    ("gaussian-noise", "gaussian_noise", "noise", True, "additive Gaussian pixel noise"),
    ("shot-noise", "shot_noise", "noise", True, "Poisson (photon) noise"),
    ("impulse-noise", "impulse_noise", "noise", True, "salt-and-pepper noise"),
    ("defocus-blur", "defocus_blur", "blur", False, "disk-kernel (out of focus) blur"),
    ("glass-blur", "glass_blur", "blur", True,
     "blur through frosted glass: Gaussian blur with local pixel shuffles"),
    ("motion-blur", "motion_blur", "blur", True, "linear motion blur at a random angle"),
    ("zoom-blur", "zoom_blur", "blur", False, "blur of the image zoomed towards its centre"),
    ("snow", "snow", "weather", True, "falling snow layer over a brightened image"),
    ("frost", "frost", "weather", True,
     "a frost photo (one of five, randomly cropped) over the image"),
    ("fog", "fog", "weather", True, "plasma-fractal fog"),
    ("brightness", "brightness", "weather", False, "raised brightness (HSV value)"),
    ("contrast", "contrast", "digital", False, "lowered contrast"),
    ("elastic-transform", "elastic_transform", "digital", True,
     "local elastic pixel displacement"),
    ("pixelate", "pixelate", "digital", False, "box downsampling then nearest upsampling"),
    ("jpeg-compression", "jpeg_compression", "digital", False, "JPEG at a low quality"),
)


def _register(name: str, function: str, category: str, stochastic: bool,
              description: str) -> type[ImageCorruption]:
    qualname = "".join(part.capitalize() for part in name.split("-"))
    cls = type(qualname, (ImageCorruption,), {
        "corruption": function, "category": category, "stochastic": stochastic,
        "__doc__": f"ImageNet-C {description} (imagecorruptions `{function}`), severity 1..5.",
        "__module__": __name__, "__qualname__": qualname})
    return IMAGE_PERTURBATIONS.register(
        name, description=f"{description} (ImageNet-C, severity 1..5)")(cls)


for _spec in CORRUPTIONS:
    _cls = _register(*_spec)
    globals()[_cls.__qualname__] = _cls  # importable by name, e.g. GaussianNoise
