"""Image pipelines: the backbone's own eval preprocessing and the training augmentation switch."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from anbench.data import images


def _picture(size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_eval_transform_is_open_clips():
    import open_clip

    ours = images.eval_transform(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    theirs = open_clip.image_transform(24, is_train=False, mean=(0.5, 0.5, 0.5),
                                       std=(0.25, 0.25, 0.25))
    picture = _picture()
    assert torch.equal(ours(picture), theirs(picture))
    assert ours(picture).shape == (3, 24, 24)
    assert ours(Image.new("L", (8, 8))).shape == (3, 24, 24)  # grey -> RGB


def test_augment_switch():
    picture = _picture()
    plain = images.train_transform(24, (0.5,) * 3, (0.5,) * 3, augment=False)
    evaluation = images.eval_transform(24, (0.5,) * 3, (0.5,) * 3)
    assert torch.equal(plain(picture), evaluation(picture))  # augment=False: no randomness
    augmented = images.train_transform(24, (0.5,) * 3, (0.5,) * 3, augment=True)
    torch.manual_seed(0)
    a = augmented(picture)
    torch.manual_seed(0)
    b = augmented(picture)
    c = augmented(picture)
    assert a.shape == (3, 24, 24)
    assert torch.equal(a, b)  # seeded through torch's generator
    assert not torch.equal(b, c)
    no_flip = images.train_transform(24, (0.5,) * 3, (0.5,) * 3, scale=(1.0, 1.0), flip=False)
    square = _picture((24, 24))
    assert torch.allclose(no_flip(square), evaluation(square), atol=1e-6)


def test_transforms_for_model_reads_preprocess_cfg():
    visual = torch.nn.Module()
    visual.image_size = (20, 20)
    visual.preprocess_cfg = {"size": 20, "mean": (0.1, 0.2, 0.3), "std": (1.0, 1.0, 1.0)}
    model = torch.nn.Module()
    model.visual = visual
    cfg = images.preprocess_cfg(model)
    assert cfg["size"] == 20 and cfg["mean"] == (0.1, 0.2, 0.3)
    assert cfg["interpolation"] == "bicubic"
    train, evaluation = images.transforms_for(model, augment=True)
    picture = _picture()
    assert train(picture).shape == evaluation(picture).shape == (3, 20, 20)
    batch = images.batch_images([picture, picture], evaluation)
    assert batch.shape == (2, 3, 20, 20)


def test_preprocess_cfg_defaults_to_openai_stats():
    from open_clip.constants import OPENAI_DATASET_MEAN

    visual = torch.nn.Module()
    visual.image_size = 32
    model = torch.nn.Module()
    model.visual = visual
    cfg = images.preprocess_cfg(model)
    assert cfg["size"] == 32 and cfg["mean"] == tuple(OPENAI_DATASET_MEAN)
