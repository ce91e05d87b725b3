"""The backbone plugin contract: the `Backbone` base class, registration checks, and how
`anbench run` / `anbench doctor` treat a backbone that is not ready (`builds_on_first_use`)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from anbench.backbones.base import Backbone, BackboneParams
from anbench.backbones.mini_params import MiniParams
from anbench.config import load_config
from anbench.doctor import run_doctor
from anbench.registry import BACKBONES, AnbenchError, load_plugin
from anbench.runner import check_inputs, make_plan

# Three backbones that are not ready: one builds itself on first use, one needs weights put in
# place by hand, one cannot be used here at all. And one that is ready.
PLUGIN = '''
from anbench.backbones.base import Backbone
from anbench.registry import AnbenchError, BACKBONES


class _NotReady(Backbone):
    def status(self, cache_dir):
        return False, "not built yet"

    def load(self, cache_dir, progress=True, device="cpu"):
        raise AssertionError("checks never load")


@BACKBONES.register("test-builds-later")
class BuildsLater(_NotReady):
    """Builds itself on first use."""

    builds_on_first_use = True


@BACKBONES.register("test-needs-weights")
class NeedsWeights(_NotReady):
    """Needs weights put in place by hand."""


@BACKBONES.register("test-unusable")
class Unusable(_NotReady):
    """Cannot be built here."""

    builds_on_first_use = True

    def status(self, cache_dir):
        raise AnbenchError("test-unusable needs a package that is not installed")


@BACKBONES.register("test-ready")
class Ready(_NotReady):
    """Ready."""

    def status(self, cache_dir):
        return True, "here"
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("plugin") / "lazy_backbones.py"
    path.write_text(PLUGIN)
    load_plugin(str(path))
    return str(path)


def _config(plugin: str, backbone: str, out: Path):
    return load_config(None, [f"run.backbone={backbone}", "run.datasets=[digits]",
                              "run.methods=[zeroshot]", "run.noise=[drop]", "run.shots=2",
                              f"run.out={out}"], extra_plugins=[plugin])


def test_every_registered_backbone_subclasses_the_base():
    for entry in BACKBONES.entries():
        assert issubclass(entry.obj, Backbone), entry.name
        assert isinstance(entry.obj.builds_on_first_use, bool), entry.name
        assert issubclass(entry.obj.Params, BackboneParams), entry.name
    assert BACKBONES.get("mini").builds_on_first_use is True
    assert BACKBONES.get("vit-b-16").builds_on_first_use is False


def test_a_plugin_backbone_must_subclass_the_base(tmp_path: Path):
    path = tmp_path / "plain_backbone.py"
    path.write_text(textwrap.dedent('''
        from anbench.registry import BACKBONES

        @BACKBONES.register("test-plain-class")
        class Plain:
            def status(self, cache_dir):
                return True, ""
    '''))
    with pytest.raises(AnbenchError, match="Backbone"):
        load_plugin(str(path))
    assert "test-plain-class" not in BACKBONES.names()


def test_the_base_is_abstract_and_normalises_params():
    with pytest.raises(TypeError, match="abstract"):
        Backbone()  # type: ignore[abstract]
    mini = BACKBONES.get("mini")
    assert mini().params == MiniParams()
    assert mini({"steps": 7}).params.steps == 7
    assert mini(MiniParams(steps=8)).params.steps == 8
    with pytest.raises(ValueError, match="stepz"):
        mini({"stepz": 7})


def test_run_checks_let_a_first_use_build_through(plugin: str, tmp_path: Path):
    config = _config(plugin, "test-builds-later", tmp_path / "runs")
    check_inputs(config, make_plan(config))  # not built, but `load` builds it: no error
    config = _config(plugin, "test-ready", tmp_path / "runs")
    check_inputs(config, make_plan(config))


def test_run_checks_stop_on_a_backbone_that_cannot_build_itself(plugin: str, tmp_path: Path):
    config = _config(plugin, "test-needs-weights", tmp_path / "runs")
    with pytest.raises(AnbenchError, match="backbone test-needs-weights: not built yet"):
        check_inputs(config, make_plan(config))
    config = _config(plugin, "test-unusable", tmp_path / "runs")
    with pytest.raises(AnbenchError, match="not installed"):
        check_inputs(config, make_plan(config))


def test_doctor_counts_a_first_use_build_as_present(plugin: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]):
    # Everything but the default backbone is the same machine, so the verdicts compare
    # directly: a backbone that builds on first use counts like a ready one.
    verdict = {name: run_doctor(_config(plugin, name, tmp_path / "runs"))
               for name in ("test-ready", "test-builds-later", "test-needs-weights",
                            "test-unusable")}
    out = capsys.readouterr().out
    assert verdict["test-builds-later"] == verdict["test-ready"]
    assert verdict["test-needs-weights"] is False and verdict["test-unusable"] is False
    assert "test-unusable: test-unusable needs a package" in out
