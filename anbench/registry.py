"""Name registries for perturbations, methods, datasets, backbones and reports.

Built-ins are found by scanning their package (every module in it is imported the first time a
registry is queried), third-party plugins through entry points, and user files or modules through
`load_plugin`. Nobody has to import a module for its side effect before asking for a name.

Each registry names the base class its plugins must subclass (a method is an
`anbench.method.Method`, ...); registering anything else fails at once with a one-line error.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class AnbenchError(Exception):
    """An error the CLI reports as one line and a non-zero exit status."""


class UnknownNameError(AnbenchError, KeyError):
    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} '{name}'; known: {', '.join(known) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    origin: str  # "builtin", "entry-point" or "plugin"
    # Optional facts given at registration, e.g. a method's place and colour in reports.
    meta: Mapping[str, Any] = field(default_factory=dict)


def _first_doc_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class Registry(Generic[T]):
    """A kebab-case name -> object table with lazy discovery of built-ins and entry points."""

    def __init__(self, kind: str, builtin_package: str, entry_point_group: str,
                 base: str | None = None):
        self.kind = kind
        self.builtin_package = builtin_package
        self.entry_point_group = entry_point_group
        # Dotted path of the class every plugin must subclass, resolved at registration time
        # (not here: the registries are created before, and imported by, the base classes).
        self.base = base
        self._entries: dict[str, Entry[T]] = {}
        self._discovered = False
        self._origin = "plugin"

    def base_class(self) -> type | None:
        """The class plugins must subclass; None when none is declared or it cannot be imported
        yet (then registration checks nothing rather than failing)."""
        if self.base is None:
            return None
        module_name, _, attr = self.base.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            return None
        return found if isinstance(found, type) else None

    def _check_base(self, name: str, obj: Any) -> None:
        base = self.base_class()
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            what = getattr(obj, "__name__", type(obj).__name__)
            raise AnbenchError(f"{self.kind} '{name}' ({what}) must subclass {self.base}")

    def register(self, name: str, *, description: str | None = None,
                 meta: Mapping[str, Any] | None = None) -> Callable[[T], T]:
        if not _KEBAB.match(name):
            raise ValueError(f"{self.kind} name '{name}' must be kebab-case (e.g. 'my-noise')")

        def decorator(obj: T) -> T:
            self._check_base(name, obj)
            existing = self._entries.get(name)
            if existing is not None and existing.obj is not obj:
                same_source = getattr(existing.obj, "__qualname__", None) == getattr(
                    obj, "__qualname__", None
                ) and getattr(existing.obj, "__module__", None) == getattr(obj, "__module__", None)
                if not same_source:  # re-importing one module is not a clash
                    raise ValueError(f"{self.kind} '{name}' is registered twice")
            desc = description if description is not None else _first_doc_line(obj)
            # A built-in module imported directly (before discovery) is still a built-in.
            module = getattr(obj, "__module__", "") or ""
            builtin = module.startswith(self.builtin_package + ".")
            self._entries[name] = Entry(name, obj, desc, "builtin" if builtin else self._origin,
                                        dict(meta or {}))
            with contextlib.suppress(AttributeError, TypeError):  # e.g. builtins, slots
                obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return decorator

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        self._origin = "builtin"
        try:
            package = importlib.import_module(self.builtin_package)
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self.builtin_package}.{info.name}")
            self._origin = "entry-point"
            for ep in importlib.metadata.entry_points(group=self.entry_point_group):
                try:
                    ep.load()
                except Exception as exc:  # a broken third-party plugin must not hide the rest
                    print(f"warning: {self.kind} plugin '{ep.name}' failed to load: {exc}",
                          file=sys.stderr)
        finally:
            self._origin = "plugin"

    def get(self, name: str) -> T:
        self.discover()
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        self.discover()
        return list(self._entries)

    def entries(self) -> list[Entry[T]]:
        self.discover()
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._entries


PERTURBATIONS: Registry[Any] = Registry("perturbation", "anbench.perturbations",
                                        "anbench.perturbations",
                                        base="anbench.perturbation.Perturbation")
# The second perturbation kind: image corruptions and image-feature noise. Its built-ins live in
# the same package as the text ones; `anbench.noise_groups` joins both kinds into one namespace.
IMAGE_PERTURBATIONS: Registry[Any] = Registry(
    "image perturbation", "anbench.perturbations", "anbench.image_perturbations",
    base="anbench.image_perturbation.ImagePerturbation")
METHODS: Registry[Any] = Registry("method", "anbench.methods", "anbench.methods",
                                  base="anbench.method.Method")
DATASETS: Registry[Any] = Registry("dataset", "anbench.data.builtin", "anbench.datasets",
                                   base="anbench.data.base.DatasetSource")
BACKBONES: Registry[Any] = Registry("backbone", "anbench.backbones.builtin", "anbench.backbones",
                                    base="anbench.backbones.base.Backbone")
REPORTS: Registry[Any] = Registry("report", "anbench.reports", "anbench.reports",
                                  base="anbench.reporting.Report")

REGISTRIES: dict[str, Registry[Any]] = {
    "methods": METHODS,
    "perturbations": PERTURBATIONS,
    "image_perturbations": IMAGE_PERTURBATIONS,
    "datasets": DATASETS,
    "backbones": BACKBONES,
    "reports": REPORTS,
}

_loaded_plugins: set[str] = set()


def _module_file(module: object) -> Path | None:
    filename = getattr(module, "__file__", None)
    if not filename:
        return None
    try:
        return Path(filename).resolve()
    except (OSError, ValueError):
        return None


def load_plugin(spec: str) -> None:
    """Import a user plugin: a path to a .py file or a dotted module name.

    Its decorators register into the registries above, exactly like built-ins.
    """
    if spec in _loaded_plugins:
        return
    for registry in REGISTRIES.values():  # built-ins first, so a clash is reported clearly
        registry.discover()
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise AnbenchError(f"plugin file not found: {spec}")
        resolved = path.resolve()
        if any(_module_file(m) == resolved for m in list(sys.modules.values())):
            # Already imported (e.g. as a package module): its registrations are in place.
            _loaded_plugins.add(spec)
            return
        module_name = f"anbench_plugin_{abs(hash(str(resolved)))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise AnbenchError(f"cannot import plugin file: {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise AnbenchError(f"plugin {spec} failed to import: {exc}") from exc
    else:
        try:
            importlib.import_module(spec)
        except ImportError as exc:
            raise AnbenchError(f"plugin module '{spec}' cannot be imported: {exc}") from exc
    _loaded_plugins.add(spec)
