"""The `imagecorruptions` package (ImageNet-C's reference corruptions), made to run here and to
draw from our rng.

`imagecorruptions==1.1.2` is its only release and predates numpy 2 and scikit-image 0.26:

- `skimage.filters.gaussian(..., multichannel=True)` (glass blur) is now `channel_axis=-1`;
- `np.float_` (fog's plasma fractal) is gone from numpy 2;
- every random draw uses the global `np.random` (normal, poisson, uniform, randint) or
  `skimage.util.random_noise` with its own unseeded generator (impulse noise);
- it imports `pkg_resources` (setuptools < 81, pinned) and the deprecated
  `scipy.ndimage.interpolation`, each with a warning.

Rather than patching the package, each call swaps three globals of
`imagecorruptions.corruptions` (`np`, `gaussian`, `sk`) for thin proxies that fix the first two
and hand every draw to generators seeded from the caller's rng, and restores them afterwards,
under a lock. The package is imported on the first corruption only: nothing else in anbench
needs opencv or scikit-image.

Frost reads one of its six texture photos from disk at every call; the `cv2` proxy keeps them
in memory after the first read (the same arrays: frost only reads them). And one function is
replaced by an equal, faster one: glass blur's pixel shuffle is a Python loop
over every pixel with one `randint` call each (40 ms for one 32 px image, three quarters of the
time of all 15 corruptions); `_glass_blur` draws the same numbers in one call per pass (the
legacy RandomState gives the same stream) and returns the same bytes (tested against the
package).
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from anbench.registry import AnbenchError

#: The package's own minimum: it refuses smaller images.
MIN_SIDE = 32

_LOCK = threading.RLock()
_MODULE: Any = None


def load() -> Any:
    """The `imagecorruptions` module, imported once (its import-time warnings silenced)."""
    global _MODULE
    with _LOCK:
        if _MODULE is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="pkg_resources is deprecated",
                                        category=UserWarning)
                warnings.filterwarnings("ignore", message=".*scipy.ndimage.interpolation",
                                        category=DeprecationWarning)
                try:
                    import imagecorruptions
                except ImportError as exc:
                    raise AnbenchError(
                        f"image corruptions need the imagecorruptions package and its "
                        f"dependencies ({exc}); install them with `pip install -c "
                        "constraints.txt imagecorruptions setuptools`") from None
            _MODULE = imagecorruptions
    return _MODULE


def status() -> tuple[bool, str]:
    """(importable, detail) for `anbench doctor`."""
    try:
        load()
    except AnbenchError as exc:
        return False, str(exc)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return True, f"imagecorruptions {version('imagecorruptions')}"
    except PackageNotFoundError:
        return True, "imagecorruptions (version unknown)"


class _Numpy:
    """numpy as the corruptions see it: `float_` is float64, `random` is this call's own
    RandomState (normal, poisson, uniform, randint draw from it)."""

    float_ = np.float64

    def __init__(self, random: np.random.RandomState):
        self.random = random

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _gaussian(gaussian: Callable[..., Any]) -> Callable[..., Any]:
    """skimage's `gaussian`, translating the removed `multichannel=True` to `channel_axis=-1`."""

    def call(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> Any:
        if multichannel:
            kwargs.setdefault("channel_axis", -1)
        return gaussian(image, *args, **kwargs)

    return call


class _Util:
    """`skimage.util` whose `random_noise` draws from this call's generator."""

    def __init__(self, util: Any, rng: np.random.Generator):
        self._util, self._rng = util, rng

    def random_noise(self, image: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["rng"] = self._rng
        return self._util.random_noise(image, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._util, name)


class _Cv2:
    """opencv whose `imread` keeps what it read (frost's texture photos, read-only)."""

    _read: dict[tuple[str, int | None], np.ndarray] = {}

    def __init__(self, cv2: Any):
        self._cv2 = cv2

    def imread(self, filename: str, flags: int | None = None) -> np.ndarray:
        key = (str(filename), flags)
        if key not in self._read:
            image = self._cv2.imread(filename) if flags is None else self._cv2.imread(
                filename, flags)
            if image is None:  # as cv2 does: the caller sees None
                return image
            image.setflags(write=False)
            self._read[key] = image
        return self._read[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cv2, name)


class _Skimage:
    def __init__(self, sk: Any, rng: np.random.Generator):
        self._sk = sk
        self.util = _Util(sk.util, rng)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sk, name)


def names() -> list[str]:
    """The package's 15 ImageNet-C corruption names (no import needed: fixed by the release)."""
    return ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
            "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
            "elastic_transform", "pixelate", "jpeg_compression"]


# imagecorruptions 1.1.2 `glass_blur`'s (sigma, max_delta, iterations) per severity
_GLASS = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]


def _glass_blur(image: np.ndarray, severity: int, random: np.random.RandomState,
                gaussian: Callable[..., Any]) -> np.ndarray:
    """imagecorruptions' `glass_blur` with its per-pixel loop made cheap. Its swap
    `x[h, w], x[h', w'] = x[h', w'], x[h, w]` acts on numpy views, so it copies pixel (h', w')
    to (h, w) and leaves (h', w') as it was; that is what is done here, in the same order,
    with the same draws (one `randint(size=(n, 2))` per pass gives the n successive
    `randint(size=(2,))` of the original)."""
    sigma, delta, passes = _GLASS[severity - 1]
    x = np.uint8(gaussian(np.array(image) / 255., sigma=sigma, channel_axis=-1) * 255)
    height, width = x.shape[:2]
    rows, cols = range(height - delta, delta, -1), range(width - delta, delta, -1)
    pixels = x.reshape(height * width, -1).tolist()
    for _ in range(passes):
        draws = random.randint(-delta, delta, size=(len(rows) * len(cols), 2)).tolist()
        k = 0
        for h in rows:
            for w in cols:
                dx, dy = draws[k]
                k += 1
                pixels[h * width + w] = pixels[(h + dy) * width + (w + dx)]
    x = np.array(pixels, dtype=np.uint8).reshape(x.shape)
    return np.clip(gaussian(x / 255., sigma=sigma, channel_axis=-1), 0, 1) * 255


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator,
            reference: bool = False) -> np.ndarray:
    """`imagecorruptions.corrupt(image, severity, name)` with every draw taken from generators
    seeded by `rng` (two seeds, always drawn, in this order). `image`: uint8 `[H, W, 3]`, both
    sides at least `MIN_SIDE`; returns uint8 `[H, W, 3]`. `reference`: the package's own glass
    blur (for tests; the result is the same)."""
    module = load()
    legacy = np.random.RandomState(int(rng.integers(0, 2**32)))
    modern = np.random.default_rng(int(rng.integers(0, 2**63)))
    target = module.corruptions
    with _LOCK:
        saved = target.np, target.gaussian, target.sk, target.cv2
        target.np = _Numpy(legacy)
        target.gaussian = _gaussian(saved[1])
        target.sk = _Skimage(saved[2], modern)
        target.cv2 = _Cv2(saved[3])
        try:
            # zoom blur and snow print a line when a layer's shape is off by one
            with contextlib.redirect_stdout(io.StringIO()):
                if name == "glass_blur" and not reference:
                    out = np.uint8(_glass_blur(image, int(severity), legacy, saved[1]))
                else:
                    out = module.corrupt(np.ascontiguousarray(image), severity=int(severity),
                                         corruption_name=name)
        finally:
            target.np, target.gaussian, target.sk, target.cv2 = saved
    return np.asarray(out, dtype=np.uint8)
