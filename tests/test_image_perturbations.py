"""Image perturbations: the 15 ImageNet-C corruptions, the compatibility layer, the weak feature
mix, the registry and groups, and the `perturb-image` grid."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anbench import imagecorruptions_compat as compat
from anbench import noise_groups
from anbench.image_perturbation import (
    TrainingImageNoise,
    apply_corruption,
    apply_mix,
    build_image_perturbation,
)
from anbench.perturbation import build_perturbation
from anbench.perturbations.image_corruptions import CORRUPTIONS
from anbench.perturbations.image_feature_mix import partners
from anbench.registry import IMAGE_PERTURBATIONS, AnbenchError, UnknownNameError

REPO = Path(__file__).resolve().parents[1]
NAMES = [spec[0] for spec in CORRUPTIONS]
# Not monotone in the reference parameters (checked on the scenes below with 1 - SSIM):
# glass-blur's level 4 has a larger sigma but fewer shuffle passes than level 3; snow's level 2
# has thinner, denser flakes than 3; frost's levels 4-5 keep less of the image but draw other
# frost crops; fog's fractal saturates on small images; pixelate's 0.6 / 0.5 / 0.3 / 0.25 scale
# factors alias differently (32 * 0.5 = 16 px blocks tile 32 px evenly, 32 * 0.6 = 19 do not).
NOT_MONOTONE = {"glass-blur", "snow", "frost", "fog", "pixelate"}


def scene(size: int = 64, rgb: bool = True) -> np.ndarray:
    """A fixed image with smooth gradients, a rectangle and a disc."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([0.5 + 0.4 * np.sin(6 * x) * np.cos(4 * y), np.clip(0.2 + 0.6 * x, 0, 1),
                      np.clip(0.8 - 0.6 * y, 0, 1)], -1)
    image[size // 4:size // 2, size // 4:3 * size // 4] = [0.9, 0.1, 0.1]
    image[(x - 0.7) ** 2 + (y - 0.7) ** 2 < 0.02] = [0.1, 0.1, 0.9]
    image = (image * 255).astype(np.uint8)
    return image if rgb else image.mean(-1).astype(np.uint8)


def effect(p, image: np.ndarray, severity: int, seeds: int) -> float:
    """Mean 1 - SSIM between the image and its corruption over `seeds` rng seeds."""
    from skimage.metrics import structural_similarity

    channel = -1 if image.ndim == 3 else None
    return float(np.mean([1 - structural_similarity(
        image, apply_corruption(p, image, seed, severity, "scene"), channel_axis=channel,
        data_range=255) for seed in range(seeds)]))


# ------------------------------------------------------------------ registry and groups

def test_the_fifteen_corruptions_and_the_feature_mix_are_registered_by_category():
    assert IMAGE_PERTURBATIONS.names() == [*NAMES, "image-feature-mix"]
    table = noise_groups.groups()
    assert table["noise"] == ["gaussian-noise", "shot-noise", "impulse-noise"]
    assert table["blur"] == ["defocus-blur", "glass-blur", "motion-blur", "zoom-blur"]
    assert table["weather"] == ["snow", "frost", "fog", "brightness"]
    assert table["digital"] == ["contrast", "elastic-transform", "pixelate", "jpeg-compression"]
    assert table["feature"] == ["image-feature-mix"]
    assert table["image"] == [*NAMES, "image-feature-mix"]
    assert set(table["image"]) <= set(table["all"]) and set(table["text"]) <= set(table["all"])
    assert not set(table["image"]) & set(table["text"])
    for name in NAMES:
        p = build_perturbation(name)  # the text builder hands image names to their kind
        assert p.modality == "image" and p.severities == [1, 2, 3, 4, 5]
        assert math.isnan(p.alpha) and not p.can_train and p.acts_on_pixels
    mix = build_perturbation("image-feature-mix")
    assert mix.can_train and not mix.acts_on_pixels and mix.alpha == 0.001


def test_noise_option_expansion_accepts_image_names_and_groups():
    assert noise_groups.expand(["text", "image"], "--eval-noise") == noise_groups.groups()["all"]
    assert noise_groups.expand(["fog", "drop"], "--noise") == ["fog", "drop"]
    with pytest.raises(UnknownNameError) as info:
        noise_groups.expand(["gaussian-nois"], "--noise")
    message = str(info.value)
    assert "\n" not in message and "gaussian-noise" in message and "image (group)" in message


def test_training_noise_keeps_only_perturbations_that_can_train():
    assert noise_groups.expand_training(["image"], "--noise", explicit=False) == [
        "image-feature-mix"]
    assert noise_groups.expand_training(["fog", "drop"], "--noise", explicit=False) == ["drop"]
    assert noise_groups.expand_training(["image", "wsp"], "--train-noise", explicit=True) == [
        "image-feature-mix", "wsp"]
    with pytest.raises(AnbenchError) as info:
        noise_groups.expand_training(["gaussian-noise"], "--train-noise", explicit=True)
    assert "\n" not in str(info.value) and "cannot be a training noise" in str(info.value)
    with pytest.raises(AnbenchError, match="no member of blur"):
        noise_groups.expand_training(["blur"], "--train-noise", explicit=True)


def test_list_perturbations_shows_an_image_block_per_category():
    lines = noise_groups.listing()
    titles = [line for line in lines if line.endswith(":") and " / " in line]
    image_titles = [t for t in titles if t.startswith("image")]
    assert image_titles == ["image / noise:", "image / blur:", "image / weather:",
                            "image / digital:", "image / feature:"]
    assert titles.index(image_titles[0]) > max(titles.index(t) for t in titles
                                               if t.startswith("text"))


def test_parameters_are_validated_with_one_line_errors():
    assert build_image_perturbation("fog", {"severity": 3}).severities == [3]
    for bad in ({"severity": 6}, {"severity": 2.5}, {"severity": -1}, {"severity": []},
                {"alpha": 0.1}, {"severity": [2, 2]}):
        with pytest.raises(AnbenchError) as info:
            build_image_perturbation("fog", bad)
        assert "\n" not in str(info.value) and "'fog'" in str(info.value)
    assert build_image_perturbation("image-feature-mix", {"alpha": "inf"}).alpha == math.inf
    for bad in ({"alpha": 0}, {"alpha": -1}, {"severity": 1.5}):
        with pytest.raises(AnbenchError):
            build_image_perturbation("image-feature-mix", bad)


# ------------------------------------------------------------------ corruptions

@pytest.mark.parametrize("name", NAMES)
def test_each_corruption_grows_with_severity_and_is_the_identity_at_zero(name: str):
    p = build_image_perturbation(name)
    seeds = 10 if p.stochastic else 1  # the mean over seeds of a random corruption's effect
    for image in (scene(64), scene(28, rgb=False)):
        assert np.array_equal(apply_corruption(p, image, 1, 0, "scene"), image)
        values = [effect(p, image, s, seeds) for s in range(1, 6)]
        assert values[0] > 0.005, values  # level 1 already changes the image
        assert values[4] > values[0], values
        if name in NOT_MONOTONE:
            assert np.mean(values[3:]) > np.mean(values[:2]), values
        else:
            # non-decreasing, up to 0.01 of 1 - SSIM: motion blur's 20 px streaks at level 5
            # fill a 28 px image much as level 4's do, whatever the random angle
            assert all(b >= a - 0.01 for a, b in zip(values, values[1:], strict=False)), values


@pytest.mark.parametrize("name", NAMES)
def test_corruptions_keep_shape_grey_and_small_images(name: str):
    p = build_image_perturbation(name)
    grey = scene(28, rgb=False)
    for image in (grey, grey[..., None], scene(40)[:20, :], scene(12), scene(8, rgb=False)):
        out = apply_corruption(p, image, 3, 3, "small")
        assert out.shape == image.shape and out.dtype == np.uint8
    rgb_grey = np.repeat(grey[..., None], 3, axis=2)  # grey content in an RGB array stays RGB
    assert apply_corruption(p, rgb_grey, 3, 3, "x").shape == rgb_grey.shape


def test_determinism_per_seed_and_declared_randomness():
    image = scene(32)
    for name in NAMES:
        p = build_image_perturbation(name)
        a = apply_corruption(p, image, 1, 3, "img/1")
        assert np.array_equal(a, apply_corruption(p, image, 1, 3, "img/1")), name
        others = [apply_corruption(p, image, seed, 3, "img/1") for seed in (2, 3, 4)]
        others += [apply_corruption(p, image, 1, 3, "img/2"),
                   apply_corruption(p, image, 1, 3, "img/1", draw=1)]
        differs = any(not np.array_equal(a, other) for other in others)
        assert differs == p.stochastic, name  # `stochastic` says whether the rng matters


def test_order_does_not_change_any_corruption():
    images = [scene(32), scene(28, rgb=False)]
    forward = {(name, i): apply_corruption(build_image_perturbation(name), im, 5, 2, f"i{i}")
               for name in NAMES for i, im in enumerate(images)}
    for name in reversed(NAMES):
        for i, im in reversed(list(enumerate(images))):
            out = apply_corruption(build_image_perturbation(name), im, 5, 2, f"i{i}")
            assert np.array_equal(out, forward[(name, i)]), name


def _digest_script() -> str:
    return (
        "import hashlib, numpy as np\n"
        "from tests.test_image_perturbations import NAMES, scene\n"
        "from anbench.image_perturbation import apply_corruption, build_image_perturbation\n"
        "h = hashlib.sha256()\n"
        "for name in NAMES:\n"
        "    for s in (1, 5):\n"
        "        h.update(apply_corruption(build_image_perturbation(name), scene(32), 7, s,\n"
        "                                  'p/1').tobytes())\n"
        "print(h.hexdigest())\n")


def test_the_same_corruptions_in_another_process():
    digest = hashlib.sha256()
    for name in NAMES:
        for s in (1, 5):
            digest.update(apply_corruption(build_image_perturbation(name), scene(32), 7, s,
                                           "p/1").tobytes())
    proc = subprocess.run([sys.executable, "-c", _digest_script()], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True)
    assert proc.stdout.strip() == digest.hexdigest()


def test_the_compatibility_layer_leaves_global_state_alone():
    module = compat.load()
    target = module.corruptions
    before = (target.np, target.gaussian, target.sk)
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    for name in ("glass_blur", "fog", "impulse_noise", "gaussian_noise"):
        compat.corrupt(scene(32), name, 2, np.random.default_rng(0))
    assert (target.np, target.gaussian, target.sk) == before  # the proxies are removed again
    assert target.np is np
    assert np.array_equal(np.random.get_state()[1], state)  # the global stream is not drawn


def test_the_compatibility_proxies_translate_what_changed():
    from skimage.filters import gaussian

    image = np.random.default_rng(0).random((16, 16, 3))
    wrapped = compat._gaussian(gaussian)
    assert np.allclose(wrapped(image, sigma=1, multichannel=True),
                       gaussian(image, sigma=1, channel_axis=-1))
    proxy = compat._Numpy(np.random.RandomState(5))
    assert proxy.float_ is np.float64 and proxy.zeros is np.zeros
    assert proxy.random.randint(100) == np.random.RandomState(5).randint(100)
    util = compat._Util(__import__("skimage").util, np.random.default_rng(1))
    a = util.random_noise(image, mode="s&p", amount=0.2)
    b = __import__("skimage").util.random_noise(image, mode="s&p", amount=0.2,
                                                rng=np.random.default_rng(1))
    assert np.array_equal(a, b)


def test_the_fast_glass_blur_gives_the_packages_bytes():
    rng = np.random.default_rng(0)
    for image in (scene(32), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)):
        for severity in range(1, 6):
            for seed in (0, 1):
                fast = compat.corrupt(image, "glass_blur", severity,
                                      np.random.default_rng(seed))
                package = compat.corrupt(image, "glass_blur", severity,
                                         np.random.default_rng(seed), reference=True)
                assert np.array_equal(fast, package), (image.shape, severity, seed)


def test_frost_textures_are_read_once_and_left_unchanged():
    compat._Cv2._read.clear()
    first = compat.corrupt(scene(32), "frost", 3, np.random.default_rng(2))
    textures = dict(compat._Cv2._read)
    assert textures and all(not t.flags.writeable for t in textures.values())
    snapshot = {k: t.copy() for k, t in textures.items()}
    again = compat.corrupt(scene(32), "frost", 3, np.random.default_rng(2))
    assert np.array_equal(first, again)
    assert all(np.array_equal(compat._Cv2._read[k], t) for k, t in snapshot.items())


def test_contract_violations_are_reported():
    p = build_image_perturbation("fog")
    with pytest.raises(ValueError, match="uint8"):
        apply_corruption(p, scene(32).astype(np.float32), 1, 1, "x")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        apply_corruption(p, np.zeros((32, 32, 4), np.uint8), 1, 1, "x")


# ------------------------------------------------------------------ the weak feature mix

def test_partners_are_a_permutation_without_fixed_points():
    for n in (2, 3, 10):
        p = partners(n, np.random.default_rng(n))
        assert sorted(p.tolist()) == list(range(n)) and (p != np.arange(n)).all()


def test_feature_mix_formula_by_hand():
    p = build_image_perturbation("image-feature-mix", {"alpha": 0.5})
    f = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    out = apply_mix(p, {"clean": f, "other": 2 * f}, seed=4, severity=1.0, set_id="s")
    from anbench.perturbation import derive_rng

    partner = partners(4, derive_rng(4, "image-feature-mix", 1.0, "s"))
    unit = f.numpy() / np.linalg.norm(f.numpy(), axis=1, keepdims=True)
    expected = unit + 0.5 * unit[partner]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(out["clean"].numpy(), expected, atol=1e-6)
    assert np.allclose(out["other"].numpy(), expected, atol=1e-6)  # same partners per key
    assert apply_mix(p, f, 4, 0.0, "s") is f  # severity 0: the identity
    again = apply_mix(p, f, 4, 1.0, "s")
    assert torch.equal(again, out["clean"])  # a tensor in, a tensor out; deterministic
    # other seeds, other partners (4 images have only 6 cycles: some seeds share one)
    assert any(not torch.equal(apply_mix(p, f, seed, 1.0, "s"), again) for seed in range(5, 9))


def test_feature_mix_severity_is_the_share_of_images_mixed():
    p = build_image_perturbation("image-feature-mix")
    f = F.normalize(torch.randn(400, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    changed = (apply_mix(p, f, 1, 0.25, "s") != f).any(dim=1).float().mean().item()
    assert 0.15 < changed < 0.35
    shift = 1 - F.cosine_similarity(f, apply_mix(p, f, 1, 1.0, "s"), dim=-1)
    assert float(shift.max()) <= 0.001 ** 2 / 2 + 1e-7  # the weak bound of the docstring


def test_training_noise_draws_one_seeded_permutation_per_step():
    p = build_image_perturbation("image-feature-mix", {"alpha": 1.0})
    f = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    a, b = TrainingImageNoise(p, 3, 1.0), TrainingImageNoise(p, 3, 1.0)
    first = [a(f) for _ in range(3)]
    assert all(torch.equal(x, b(f)) for x in first)  # same seed: same sequence
    assert not torch.equal(first[0], first[1])  # each step its own permutation
    assert torch.equal(first[0], apply_mix(p, f, 3, 1.0, "step0"))


# ------------------------------------------------------------------ perturb-image

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anbench.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_perturb_image_writes_a_grid_and_rejects_bad_images(tmp_path: Path):
    from anbench.api import perturb_image

    picture = tmp_path / "in.png"
    Image.fromarray(scene(48)).save(picture)
    out = tmp_path / "grid.png"
    proc = _cli("perturb-image", "--image", str(picture), "--names", "noise,fog",
                "--out", str(out), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as grid:
        assert grid.size == (920, 570)  # 1.3 in per cell at 100 dpi: 4 rows, 6 columns
    proc = _cli("perturb-image", "--image", str(tmp_path / "missing.png"), cwd=REPO)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --image: {tmp_path / 'missing.png'} does not exist"]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "binary.png").write_bytes(bytes(range(256)) * 4)
    cases = {tmp_path / "empty.png": "is empty", tmp_path / "binary.png": "not an image",
             tmp_path: "is not a file"}
    for path, message in cases.items():
        with pytest.raises(AnbenchError, match=message) as info:
            perturb_image(out, image=path)
        assert "\n" not in str(info.value)
    for names, message in (("drop", "perturbs text"),
                           ("image-feature-mix", "acts on image features"),
                           ("nonsense", "unknown perturbation")):
        with pytest.raises(AnbenchError, match=message):
            perturb_image(out, image=picture, names=names)
    with pytest.raises(AnbenchError, match="--size"):
        perturb_image(out, image=picture, size=0)


def test_perturb_image_shows_a_datasets_first_test_image(tmp_path: Path):
    out = tmp_path / "tiny.png"
    proc = _cli("perturb-image", "--plugin", str(REPO / "tests/plugins/tiny_suite.py"),
                "--dataset", "tiny-shapes", "--names", "blur", "--seed", "3", "--out", str(out),
                cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and out.stat().st_size > 1000


def test_text_perturb_leaves_image_perturbations_out():
    from anbench.api import perturb

    rows = perturb("a photo of a cat.", "drop,image")  # a group: its image members left out
    assert set(rows["noise"]) == {"drop"}
    with pytest.raises(AnbenchError, match="perturbs images"):
        perturb("a photo of a cat.", "fog,drop")  # named on its own: an error
    with pytest.raises(AnbenchError, match="image perturbations only"):
        perturb("a photo of a cat.", "blur")


def test_descriptions_are_json_and_name_the_modality():
    p = build_image_perturbation("snow", {"severity": [1, 3]})
    desc = p.describe(2, 3)
    assert json.loads(json.dumps(desc)) == desc
    assert desc == {"name": "snow", "modality": "image", "version": "1",
                    "params": {"severity": [1.0, 3.0]}, "seed": 2, "severity": 3.0}
