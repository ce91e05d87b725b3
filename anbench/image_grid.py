"""`anbench perturb-image`: one image under every image corruption (rows) and severity (columns:
0 = the clean image, then the perturbation's configured severities, 1..5 by default), as a PNG.

The image is corrupted as evaluation would with the same seed: its rng is keyed by the image id
(`<dataset>/<test index>` for a dataset's test image, `file:<name>` for `--image`). Images larger
than `size` on the shorter side are first resized to it and centre-cropped to a square (as
ImageNet-C's 224 px crops), so a large photo does not take minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from anbench.image_perturbation import ImagePerturbation, apply_corruption
from anbench.registry import AnbenchError

DEFAULT_SIZE = 224


def read_image(path: Path | str) -> Image.Image:
    """An image file as RGB; a missing, empty, unreadable or non-image file is one line."""
    path = Path(path)
    if not path.exists():
        raise AnbenchError(f"--image: {path} does not exist")
    if not path.is_file():
        raise AnbenchError(f"--image: {path} is not a file")
    try:
        if path.stat().st_size == 0:
            raise AnbenchError(f"--image: {path} is empty")
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except AnbenchError:
        raise
    except UnidentifiedImageError:
        raise AnbenchError(f"--image: {path} is not an image file PIL can read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise AnbenchError(f"--image: cannot read {path}: {exc}") from None


def fit(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` (bicubic) and centre-crop a square, when larger."""
    w, h = image.size
    if min(w, h) <= size:
        return image
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def as_array(image: Image.Image) -> np.ndarray:
    """uint8 `[H, W]` when every channel is equal (grey), else `[H, W, 3]`."""
    array = np.asarray(image.convert("RGB"))
    if (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all():
        return np.ascontiguousarray(array[..., 0])
    return np.ascontiguousarray(array)


def grid(image: np.ndarray, perturbations: Sequence[ImagePerturbation], seed: int,
         image_id: str) -> list[tuple[str, list[tuple[float, np.ndarray]]]]:
    """(name, [(severity, image), ...]) per perturbation: severity 0 first, then its own."""
    rows = []
    for p in perturbations:
        cells = [(0.0, image)]
        cells += [(float(s), apply_corruption(p, image, seed, s, image_id))
                  for s in p.severities if s != 0]
        rows.append((p.name, cells))
    return rows


def write_grid(rows: list[tuple[str, list[tuple[float, np.ndarray]]]], out: Path,
               title: str = "") -> Path:
    """The grid as a labelled PNG at `out` (written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from anbench.files import atomic_path

    columns = max(len(cells) for _, cells in rows)
    fig = Figure(figsize=(1.3 * columns + 1.4, 1.3 * len(rows) + 0.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (name, cells) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.set_axis_off()
                continue
            severity, image = cells[c]
            grey = image.ndim == 2 or image.shape[-1] == 1
            ax.imshow(image.reshape(image.shape[:2]) if grey else image,
                      cmap="gray" if grey else None, vmin=0, vmax=255,
                      interpolation="nearest")
            first = rows[0][1]
            if r == 0 or c >= len(first) or first[c][0] != severity:  # the column's label
                ax.set_title("clean" if severity == 0 else f"severity {severity:g}",
                             fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.16, right=0.99, top=0.93 if title else 0.96, bottom=0.01,
                        wspace=0.05, hspace=0.25)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def pixel_perturbations(names: list[str], explicit: bool, params: dict[str, Any]
                        ) -> list[ImagePerturbation]:
    """The image perturbations among `names` that act on pixels (built with `params[name]`);
    one that acts on features only is an error when it was named on its own (`explicit`)."""
    from anbench.image_perturbation import build_image_perturbation
    from anbench.registry import IMAGE_PERTURBATIONS

    built = [build_image_perturbation(n, params.get(n)) for n in names
             if n in IMAGE_PERTURBATIONS]
    features_only = [p.name for p in built if not p.acts_on_pixels]
    if explicit and features_only:
        raise AnbenchError(f"--names: {', '.join(features_only)} acts on image features, not "
                           "pixels: there is nothing to draw")
    return [p for p in built if p.acts_on_pixels]
