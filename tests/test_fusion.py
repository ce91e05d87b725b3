"""Fused cell groups (anbench.cell_group): cells trained and evaluated together give the numbers
they give alone, are stored one folder per cell, resume and fail one by one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from anbench import api
from anbench.backbones.adapter import BackboneAdapter
from anbench.cell import resolve_cell
from anbench.cell_group import (
    SharedClassText,
    SharedImageConditions,
    fusion_on,
    is_fusable,
    plan_groups,
    shared_image_features,
)
from anbench.config import ConfigError, load_config
from anbench.data.loader import DEFAULT_BATCH
from anbench.draw_memo import shared_draws
from anbench.evaluation import encode_images
from anbench.launchers import CellsFailed
from anbench.methods._common import scaled_logits
from anbench.perturbation import apply, build_perturbation, make_context
from anbench.registry import METHODS
from anbench.store import CellKey
from anbench.training import train, train_group
from tests.suite_fixtures import PLUGIN
from tests.test_methods import build, data, make_task

MEMBERS = [("anprompt", "drop"), ("anprompt", "wsp"), ("anprompt-wo-nrvpp", "drop"),
           ("anprompt-wo-waloss", "shuffle"), ("anprompt-wo-noise", "wsp")]
ABLATIONS = "anprompt,anprompt-wo-nrvpp,anprompt-wo-waloss,anprompt-wo-noise"
TINY = {"backbone": "tiny-clip", "datasets": "tiny-shapes", "seeds": "1", "quiet": True,
        "device": "cpu",
        "plugins": [str(PLUGIN)], "noise_draws": 2, "launcher.retries": 0,
        # image conditions too: each corrupted condition is encoded once for a whole group
        "eval_noise": "drop,wsp,gaussian-noise,image-feature-mix", "image_eval_images": 9,
        "image_noise_draws": 2,
        **{f"methods.{name}.{key}": value for name in ABLATIONS.split(",")
           for key, value in (("epochs", 2), ("noise_samples", 2))},
        "methods.dapt.epochs": 1}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _members(adapter: BackboneAdapter, images: torch.Tensor, labels: torch.Tensor,
             **overrides) -> list:
    """Fresh, set-up methods for MEMBERS (the last one at a 3x learning rate: schedules are
    per member)."""
    methods = []
    for index, (name, noise) in enumerate(MEMBERS):
        torch.manual_seed(1)
        lr = 3e-3 if index == len(MEMBERS) - 1 else 1e-3
        method = build(name, adapter, epochs=2, noise_samples=2, lr=lr, **overrides)
        task = make_task()
        task.train_noise = build_perturbation(noise)
        task.train_noise_name = noise
        task.train_noise_severity = task.train_noise.severities[0]
        method.setup(task, images, labels)
        methods.append(method)
    return methods


@pytest.mark.parametrize("backbone", ["clip_backbone", "hf_backbone"])
@pytest.mark.parametrize("options", [{}, {"cache_prefix": False}, {"views": 2}])
def test_group_training_equals_training_alone(backbone: str, options: dict,
                                              request: pytest.FixtureRequest):
    adapter = BackboneAdapter(request.getfixturevalue(backbone))
    images, labels = data()
    views = options.get("views")
    fit = torch.stack([images, images.flip(-1)], dim=1) if views else images
    overrides = {k: v for k, v in options.items() if k != "views"}
    alone = _members(adapter, images, labels, **overrides)
    histories = [train(m, fit, labels, m.params, seed=1) for m in alone]
    together = _members(adapter, images, labels, **overrides)
    fused = train_group(together, fit, labels, [m.params for m in together], seed=1)
    for a, b, history, outcome in zip(alone, together, histories, fused, strict=True):
        assert not isinstance(outcome, Exception)
        state_a, state_b = a.prompt_state(), b.prompt_state()
        assert state_a.keys() == state_b.keys()
        for name in state_a:
            assert torch.allclose(state_a[name], state_b[name], atol=1e-5, rtol=0), name
        assert len(outcome) == len(history) == 2 * 3  # 2 epochs of 12 images in batches of 4
        for ra, rb in zip(history, outcome, strict=True):
            assert ra.keys() == rb.keys()
            for key in ra:
                if key != "seconds":
                    assert ra[key] == pytest.approx(rb[key], abs=1e-5), key
    # the members really differ (ablations, noises, learning rates), so equality means something
    assert not torch.allclose(together[0].anti_noise, together[1].anti_noise)
    assert not torch.allclose(together[3].anti_noise, together[4].anti_noise)


def test_a_member_with_a_non_finite_loss_fails_alone(clip_backbone):
    adapter = BackboneAdapter(clip_backbone)
    images, labels = data()
    alone = _members(adapter, images, labels)
    together = _members(adapter, images, labels)
    together[2].params = together[2].params.model_copy(update={"lr": 1e30})  # diverges
    fused = train_group(together, images, labels, [m.params for m in together], seed=1)
    assert isinstance(fused[2], FloatingPointError)
    assert "non-finite loss" in str(fused[2])
    for index in (0, 1, 3, 4):
        train(alone[index], images, labels, alone[index].params, seed=1)
        for name, value in alone[index].prompt_state().items():
            assert torch.allclose(value, together[index].prompt_state()[name], atol=1e-5)


def test_group_training_refuses_members_with_other_steps(clip_backbone):
    adapter = BackboneAdapter(clip_backbone)
    images, labels = data()
    methods = _members(adapter, images, labels)[:2]
    params = [methods[0].params, methods[1].params.model_copy(update={"batch_size": 2})]
    with pytest.raises(ValueError, match="epochs, batch size"):
        train_group(methods, images, labels, params, seed=1)


def test_shared_evaluation_pieces_equal_each_members_own(hf_backbone):
    adapter = BackboneAdapter(hf_backbone)
    images, labels = data()
    methods = _members(adapter, images, labels)
    test_images = torch.randn(37, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    shared = shared_image_features(methods, test_images, batch_size=16)
    for method, features in zip(methods, shared, strict=True):
        own = encode_images(method, test_images, batch_size=16)
        assert own.keys() == features.keys() and len(own["clean"]) == 37
        for key in own:
            assert torch.equal(own[key], features[key]), key
    assert "nrvpp" not in shared[2]  # anprompt-wo-nrvpp predicts from f^c only
    # logits keep tau * n(f) between calls: the same numbers as the formula each time
    tau, text = adapter.logit_scale, methods[0].class_features(make_task().sentences)
    for _ in range(2):
        expected = (0.7 * scaled_logits(shared[0]["clean"], text, tau)
                    + 0.3 * scaled_logits(shared[0]["nrvpp"], text, tau))
        assert torch.equal(methods[0].logits(shared[0], text, "base"), expected)
        assert torch.equal(methods[0].logits(shared[0], text, "new"),
                           scaled_logits(shared[0]["clean"], text, tau))
    sentences = ["a photo of a cat.", "a tabby cat on a mat.", "an image of a large dog."]
    own = [method.class_features(sentences) for method in methods]
    shared = SharedClassText(methods)
    for method, expected in zip(methods, own, strict=True):
        method.shared_text = shared
        assert torch.equal(method.class_features(sentences), expected)
        method.shared_text = None
        shared.finished(method)
    assert shared.passes == 1 and shared.reads == len(methods) - 1  # one pass served all
    assert shared.nbytes == 0
    # an image condition's corrupted images: built and encoded once for all members
    built = []

    def corrupted() -> torch.Tensor:
        built.append(1)
        return test_images.flip(-1)

    conditions = SharedImageConditions(methods)
    for method in methods:
        own = encode_images(method, test_images.flip(-1), batch_size=DEFAULT_BATCH)
        features = conditions.features(method, ("tiny", "base", 1, "flip"), corrupted,
                                       len(test_images))
        assert own.keys() == features.keys()
        assert all(torch.equal(own[key], features[key]) for key in own)
        conditions.finished(method)
    assert len(built) == 1 and conditions.passes == 1 and conditions.nbytes == 0


def test_shared_class_text_keeps_what_fits_and_drops_what_is_not_read(clip_backbone):
    adapter = BackboneAdapter(clip_backbone)
    images, labels = data()
    methods = _members(adapter, images, labels)[:3]
    one = len(make_task().sentences) * adapter.embed_dim * 4  # one member's copy of a list
    shared = SharedClassText(methods, max_bytes=2 * one)
    first, second = make_task().sentences, ["a photo of a dog.", "a bird."]
    shared.features(methods[0], first)  # computed for all three, two copies kept
    assert shared.passes == 1 and shared.nbytes == 2 * one
    shared.features(methods[0], second)  # no room: computed for the asking member only
    assert shared.passes == 2 and shared.nbytes == 2 * one
    shared.finished(methods[0])
    assert torch.equal(shared.features(methods[1], first), methods[1].class_features(first))
    assert shared.passes == 2 and shared.nbytes == one
    shared.finished(methods[1])
    shared.finished(methods[2])  # never asked: its copy is dropped
    assert shared.nbytes == 0 and not shared.pending


def test_draws_are_shared_inside_a_block_and_equal_outside():
    noise = build_perturbation("char-swap")
    sentences = ["a photo of a small cat.", "a photo of a large dog."]
    contexts = [make_context(s, n, i, class_names=["cat", "dog"])
                for i, (s, n) in enumerate(zip(sentences, ["cat", "dog"], strict=True))]
    ids = ["toy/cat", "toy/dog"]
    plain = [apply(noise, sentences, contexts, ids, 3, 0.5, draw) for draw in range(3)]
    assert plain[0] != plain[1]  # the draws differ
    calls = []
    perturb = noise.perturb

    def counted(*args):
        calls.append(args[0])
        return perturb(*args)

    noise.perturb = counted  # count real calls to the real perturbation
    with shared_draws():
        first = [apply(noise, sentences, contexts, ids, 3, 0.5, d) for d in range(3)]
        # another cell's own copies of the same perturbation and contexts read the memo
        other = build_perturbation("char-swap")
        again_contexts = [make_context(s, n, i, class_names=["cat", "dog"])
                          for i, (s, n) in enumerate(zip(sentences, ["cat", "dog"], strict=True))]
        again = [apply(other, sentences, again_contexts, ids, 3, 0.5, d) for d in range(3)]
        changed = apply(other, sentences, again_contexts, ids, 4, 0.5, 0)  # another seed
    assert first == plain and again == plain
    assert len(calls) == 6  # 3 draws x 2 sentences, once
    assert changed == apply(build_perturbation("char-swap"), sentences, contexts, ids, 4, 0.5)


# ---------------------------------------------------------------------- grouping

def _specs(config, keys):
    return [resolve_cell(config, key, ["drop"], "w0") for key in keys]


def test_groups_join_cells_of_one_dataset_seed_and_fusable_family():
    config = load_config(None, [], extra_plugins=[str(PLUGIN)])
    key = lambda method, noise, seed=1: CellKey("tiny-clip", "tiny-shapes", method, noise, 16,  # noqa: E731
                                                seed)
    keys = [key("anprompt", "drop"), key("dapt", "none"), key("anprompt", "drop", seed=2),
            key("anprompt-wo-noise", "wsp"), key("anprompt-wo-nrvpp", "drop", seed=2),
            key("anprompt", "wsp")]
    groups = [[spec.key for spec in group] for group in plan_groups(_specs(config, keys))]
    assert groups == [[keys[0], keys[3], keys[5]], [keys[1]], [keys[2], keys[4]]]
    # a different number of steps cannot share the shuffled order: its own group
    config = load_config(None, ["methods.anprompt-wo-noise.epochs=3"],
                         extra_plugins=[str(PLUGIN)])
    groups = [[spec.key for spec in group] for group in plan_groups(_specs(config, keys))]
    assert [keys[3]] in groups and [keys[0], keys[5]] in groups


def test_fusable_is_declared_not_inherited():
    anprompt = METHODS.get("anprompt")
    assert all(is_fusable(METHODS.get(name)) for name in ABLATIONS.split(","))
    assert not is_fusable(METHODS.get("dapt"))

    class Changed(anprompt):  # a plugin that changes the loss must opt in itself
        pass

    assert not is_fusable(Changed)


def test_fuse_cells_key_is_validated_and_auto_fuses_on_cpu_only():
    auto = load_config(None, [])
    assert auto.run.fuse_cells == "auto"
    assert fusion_on(auto, torch.device("cpu")) and not fusion_on(auto, torch.device("cuda"))
    forced = load_config(None, ["run.fuse_cells=true"])
    assert fusion_on(forced, torch.device("cuda"))
    off = load_config(None, ["run.fuse_cells=false"])
    assert off.run.fuse_cells is False and not fusion_on(off, torch.device("cpu"))
    for bad in ("maybe", "1", "''"):
        with pytest.raises(ConfigError, match=r"^config error at 'run.fuse_cells': must be "
                                              r"auto, true or false"):
            load_config(None, [f"run.fuse_cells={bad}"])


# ---------------------------------------------------------------------- end to end

def _run(out: Path, methods: str, noise: str, fuse: bool, **extra) -> Path:
    api.run(methods=methods, noise=noise, out=out, fuse_cells=fuse, **{**TINY, **extra})
    return out / "default"


def _rows(root: Path) -> pd.DataFrame:
    table = pd.read_csv(root / "results.csv")
    keys = [c for c in table.columns if c != "value"]
    return table.sort_values(keys).reset_index(drop=True)


def _assert_same_rows(a: Path, b: Path, methods: set[str] | None = None) -> None:
    left, right = _rows(a), _rows(b)
    if methods is not None:
        left = left[left.method.isin(methods)].reset_index(drop=True)
        right = right[right.method.isin(methods)].reset_index(drop=True)
    assert len(left) == len(right) > 0
    keys = [c for c in left.columns if c != "value"]
    pd.testing.assert_frame_equal(left[keys], right[keys])
    assert np.allclose(left.value, right.value, atol=1e-5, rtol=0, equal_nan=True)


def _prompts(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.parent.relative_to(root)): torch.load(p)
            for p in sorted(root.glob("cells/**/prompts.pt"))}


@pytest.fixture(scope="module")
def alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("alone"), f"{ABLATIONS},dapt", "drop,wsp", fuse=False)


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(tmp_path_factory.mktemp("fused"), f"{ABLATIONS},dapt", "drop,wsp", fuse=True)


def test_fused_run_equals_cells_run_alone(alone: Path, fused: Path):
    _assert_same_rows(alone, fused)
    assert set(_rows(fused).modality) == {"none", "text", "image"}
    prompts_alone, prompts_fused = _prompts(alone), _prompts(fused)
    assert prompts_alone.keys() == prompts_fused.keys() and len(prompts_fused) == 9
    for cell, state in prompts_alone.items():
        for name, value in state.items():
            assert torch.allclose(value, prompts_fused[cell][name], atol=1e-5, rtol=0)
    # one folder per cell; the eight ANPrompt cells say they trained together, dapt alone
    metas = {p.parent.relative_to(fused).parts[3]: json.loads(p.read_text())
             for p in fused.glob("cells/*/*/*/drop/*/meta.json")}
    assert metas["anprompt"]["fused"]["trained_together"] == 8
    assert "fused" not in json.loads(next(fused.glob("cells/**/dapt/**/meta.json")).read_text())
    assert all("fused" not in json.loads(p.read_text()) for p in alone.glob("cells/**/meta.json"))


def test_resume_trains_only_the_missing_members(tmp_path: Path, alone: Path):
    out = tmp_path / "resume"
    first = _run(out, ABLATIONS, "drop,wsp", fuse=True, train_noise="drop")
    markers = {p: p.stat().st_mtime_ns for p in first.glob("cells/**/COMPLETE")}
    assert len(markers) == 4
    _run(out, ABLATIONS, "drop,wsp", fuse=True)  # the same cells and four more
    assert {p: p.stat().st_mtime_ns for p in markers} == markers  # not redone
    wsp = [json.loads(p.read_text()) for p in first.glob("cells/*/*/*/wsp/*/meta.json")]
    assert len(wsp) == 4 and all(m["fused"]["trained_together"] == 4 for m in wsp)
    _assert_same_rows(alone, first, methods=set(ABLATIONS.split(",")))


def test_a_failing_member_keeps_the_others(tmp_path: Path, alone: Path):
    with pytest.raises(CellsFailed, match="2 of 8 cells failed"):  # its two noises diverge
        _run(tmp_path / "fail", ABLATIONS, "drop,wsp", fuse=True,
             **{"methods.anprompt-wo-waloss.lr": 1e30})
    root = tmp_path / "fail" / "default"
    failed = sorted(p.parent.relative_to(root).parts[3:5] for p in root.glob("cells/**/FAILED"))
    assert failed == [("anprompt-wo-waloss", "drop"), ("anprompt-wo-waloss", "wsp")]
    assert "non-finite loss" in (root / "cells/tiny-clip/tiny-shapes/anprompt-wo-waloss/drop/"
                                 "shots16-seed1/FAILED").read_text()
    assert len(list(root.glob("cells/**/COMPLETE"))) == 6
    _assert_same_rows(alone, root, methods={"anprompt", "anprompt-wo-nrvpp", "anprompt-wo-noise"})


def test_dry_run_shows_the_groups(tmp_path: Path, capsys: pytest.CaptureFixture):
    api.run(methods=f"{ABLATIONS},dapt", noise="drop,wsp", out=tmp_path, dry_run=True,
            **{**TINY, "seeds": "1,2"})
    printed = capsys.readouterr().out
    assert "2 fused groups (16 cells), 2 cells alone" in printed
    assert "tiny-shapes seed 1 shots 16: anprompt[drop], anprompt[wsp]" in printed
    api.run(methods=f"{ABLATIONS},dapt", noise="drop,wsp", out=tmp_path, dry_run=True,
            fuse_cells=False, **{**TINY, "seeds": "1,2"})
    assert "fused groups" not in capsys.readouterr().out


def test_a_bad_fuse_cells_value_is_one_error_before_writing(tmp_path: Path):
    from tests.test_hostile_input import coop_run, one_error
    from tests.test_runner import REPO, anbench

    proc = anbench(*coop_run(tmp_path / "out"), "--set", "run.fuse_cells=sometimes", cwd=REPO,
                   check=False)
    one_error(proc, "config error at 'run.fuse_cells': must be auto, true or false, got "
                    "'sometimes'")
    assert not (tmp_path / "out").exists()
