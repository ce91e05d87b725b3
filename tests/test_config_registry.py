"""Registries, plugin discovery and the layered, validated config."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pytest

from anbench.config import ConfigError, load_config, parse_set
from anbench.registry import (
    BACKBONES,
    DATASETS,
    METHODS,
    PERTURBATIONS,
    REGISTRIES,
    REPORTS,
    AnbenchError,
    Registry,
    UnknownNameError,
    load_plugin,
)


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        BACKBONES.get("nosuch")
    message = str(info.value)
    assert "unknown backbone 'nosuch'" in message
    assert "vit-b-16" in message and "open-clip" in message


def test_names_must_be_kebab_case():
    registry: Registry[object] = Registry("thing", "anbench.backbones.builtin", "anbench.none")
    with pytest.raises(ValueError, match="kebab-case"):
        registry.register("My_Thing")


def test_duplicate_registration_is_rejected():
    registry: Registry[object] = Registry("thing", "anbench.backbones.builtin", "anbench.none")

    class A:
        pass

    class B:
        pass

    registry.register("a")(A)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(B)


def test_entry_point_plugins_are_discovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    package = tmp_path / "thirdparty_backbone.py"
    package.write_text(textwrap.dedent('''
        from anbench.registry import Registry
        import tests.test_config_registry as host

        @host.EP_REGISTRY.register("third-party")
        class ThirdParty:
            """A backbone from another package."""
    '''))
    dist = tmp_path / "thirdparty-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[anbench.test-ep]\nthird-party = thirdparty_backbone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    global EP_REGISTRY
    EP_REGISTRY = Registry("backbone", "anbench.backbones.builtin", "anbench.test-ep")
    names = EP_REGISTRY.names()
    assert "third-party" in names
    entry = {e.name: e for e in EP_REGISTRY.entries()}["third-party"]
    assert entry.origin == "entry-point"
    assert entry.description == "A backbone from another package."
    sys.modules.pop("thirdparty_backbone", None)


EP_REGISTRY: Registry[object]


def test_plugin_file_registers(tmp_path: Path):
    plugin = tmp_path / "my_backbone.py"
    plugin.write_text(textwrap.dedent('''
        from anbench.registry import BACKBONES
        from anbench.backbones.builtin.openclip import OpenClipBackbone

        @BACKBONES.register("my-test-backbone")
        class Mine(OpenClipBackbone):
            """My backbone."""
    '''))
    load_plugin(str(plugin))
    assert "my-test-backbone" in BACKBONES.names()


@pytest.mark.parametrize(("registry", "base"), [
    (METHODS, "anbench.method.Method"),
    (PERTURBATIONS, "anbench.perturbation.Perturbation"),
    (DATASETS, "anbench.data.base.DatasetSource"),
    (REPORTS, "anbench.reporting.Report"),
    (BACKBONES, "anbench.backbones.base.Backbone"),
])
def test_a_plugin_of_the_wrong_base_fails_at_registration(registry: Registry, base: str):
    assert registry.base == base
    if registry.base_class() is None:
        pytest.skip(f"{base} does not exist yet")

    class NotAPlugin:
        pass

    with pytest.raises(AnbenchError) as info:
        registry.register("wrong-base-test")(NotAPlugin)
    message = str(info.value)
    assert "\n" not in message
    assert f"'wrong-base-test' (NotAPlugin) must subclass {base}" in message
    with pytest.raises(AnbenchError, match="must subclass"):
        registry.register("wrong-base-test")(lambda: None)  # not even a class
    assert "wrong-base-test" not in registry.names()


def test_shipped_bases_resolve_and_every_builtin_subclasses_its_base():
    for kind, registry in REGISTRIES.items():
        base = registry.base_class()
        if kind != "backbones":  # the backbone base may land later: then it is checked
            assert base is not None, f"{kind}: {registry.base} cannot be imported"
        for entry in registry.entries():
            assert base is None or issubclass(entry.obj, base), (kind, entry.name)


def test_a_base_that_cannot_be_imported_yet_is_checked_once_it_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[object] = Registry("thing", "anbench.backbones.builtin", "anbench.none",
                                          base="late_base_module.Thing")
    missing_attr: Registry[object] = Registry("thing", "anbench.backbones.builtin",
                                              "anbench.none", base="anbench.registry.NoSuch")

    class Anything:
        pass

    registry.register("early")(Anything)  # module absent: nothing to check against, no error
    missing_attr.register("early")(Anything)  # module present, class not (yet)
    (tmp_path / "late_base_module.py").write_text("class Thing:\n    pass\n")
    try:
        import late_base_module

        with pytest.raises(AnbenchError, match="must subclass late_base_module.Thing"):
            registry.register("late")(Anything)

        class Good(late_base_module.Thing):
            pass

        registry.register("good")(Good)
        assert registry.names() == ["early", "good"]
    finally:
        sys.modules.pop("late_base_module", None)


def test_a_plugin_file_of_the_wrong_base_is_a_one_line_error(tmp_path: Path):
    plugin = tmp_path / "bad_method.py"
    plugin.write_text(textwrap.dedent('''
        from anbench.registry import METHODS

        @METHODS.register("not-a-method")
        class NotAMethod:
            """Forgot to subclass anbench.method.Method."""
    '''))
    with pytest.raises(AnbenchError) as info:
        load_plugin(str(plugin))
    message = str(info.value)
    assert "\n" not in message
    assert "method 'not-a-method' (NotAMethod) must subclass anbench.method.Method" in message
    assert "not-a-method" not in METHODS.names()


def test_missing_plugin_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(Exception, match="plugin file not found"):
        load_plugin(str(tmp_path / "nope.py"))


def _yaml(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_layering_defaults_bench_config_set(tmp_path: Path):
    bench = _yaml(tmp_path, "bench.yaml", """
        run: {seeds: [1, 2], shots: 8, suite: base}
        backbones: {vit-b-16: {pretrained: /weights/a.pt}}
    """)
    extra = _yaml(tmp_path, "extra.yaml", """
        run: {shots: 4}
        backbones: {vit-b-16: {pretrained: /weights/b.pt}}
    """)
    config = load_config(extra, ["run.suite=mine", "backbones.vit-b-16.arch=ViT-B-32"],
                         bench_yaml=bench)
    assert config.run.seeds == [1, 2]  # bench.yaml
    assert config.run.shots == 4  # --config over bench.yaml
    assert config.run.suite == "mine"  # --set over both
    assert config.run.protocol == "base-to-new"  # built-in default
    params = config.plugin_params("backbones", "vit-b-16")
    assert params.pretrained == "/weights/b.pt" and params.arch == "ViT-B-32"


@pytest.mark.parametrize(("text", "where"), [
    ("run: {shotz: 3}", "run.shotz"),
    ("run: {shots: many}", "run.shots"),
    ("run: {seeds: [1, x]}", "run.seeds.1"),
    ("colour: red", "colour"),
    ("backbones: {vit-b-16: {pretrained: x.pt, nope: 2}}", "backbones.vit-b-16.nope"),
    ("backbones: {vit-b-16: {pretrained: 1}}", "backbones.vit-b-16.pretrained"),
    ("backbones: {nosuch: {}}", "backbones.nosuch"),
    ("per_backbone: {vit-b-16: {nothing: {}}}", "per_backbone.vit-b-16.nothing"),
])
def test_bad_keys_are_named_by_dotted_path(tmp_path: Path, text: str, where: str):
    bench = _yaml(tmp_path, "bench.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(bench_yaml=bench)
    assert f"'{where}'" in str(info.value)


def test_malformed_yaml_and_missing_file(tmp_path: Path):
    bench = _yaml(tmp_path, "bench.yaml", "run: {seeds: [1, 2}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bench_yaml=bench)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml", bench_yaml=_yaml(tmp_path, "ok.yaml", "{}"))


def test_parse_set_reads_yaml_values():
    assert parse_set("run.seeds=[1,2,3]") == {"run": {"seeds": [1, 2, 3]}}
    assert parse_set("a.b=0.5") == {"a": {"b": 0.5}}
    assert math.isinf(parse_set("a.alpha=inf")["a"]["alpha"])
    with pytest.raises(ConfigError):
        parse_set("novalue")


def test_repository_bench_yaml_is_valid():
    config = load_config(bench_yaml=Path(__file__).resolve().parents[1] / "bench.yaml")
    assert config.run.backbone == "mini"


def test_plugin_file_already_imported_as_a_module_is_not_registered_twice():
    import tests.plugins.tiny_suite as tiny_suite  # registers tiny-clip and tiny-shapes
    from anbench.registry import BACKBONES, load_plugin

    load_plugin(tiny_suite.__file__)  # the same file by path: no "registered twice"
    assert "tiny-clip" in BACKBONES
