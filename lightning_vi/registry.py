"""One registry type for families and plugins, with lazy entry-point discovery.

Built-in objects register themselves with ``@FAMILIES.register("vae")`` / ``@PLUGINS.register("cutmix")``
when their module is imported; discovery imports every module under the built-in package, then loads
the entry-point group (``lightning_vi.families`` / ``lightning_vi.plugins``) so that third-party
packages appear by name as soon as they are installed.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import pkgutil
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator


class BrokenEntryPointWarning(UserWarning):
    """A third-party entry point failed to import or register; it is skipped, everything else works."""


class UnknownNameError(KeyError):
    """Raised for a name that no registry entry has; the message lists the known names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


def summary(obj: Any) -> str:
    """First line of an object's docstring (the one-line description shown by `lvi plugins`)."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """Name -> object mapping with entry-point discovery.

    Args:
        kind: what is registered ("plugin", "family"), used in messages.
        group: entry-point group that third-party packages use.
        package: built-in package whose modules are imported on discovery.
    """

    def __init__(self, kind: str, group: str, package: str) -> None:
        self.kind, self.group, self.package = kind, group, package
        self.plural = "families" if kind == "family" else f"{kind}s"
        self._items: dict[str, Any] = {}
        self._sources: dict[str, str] = {}
        self._broken: dict[str, tuple[str, str]] = {}  # name -> (distribution, error)
        self._discovered = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, obj: Any = None, *, source: str = "builtin") -> Any:
        """Register ``obj`` under ``name``; usable as a decorator: ``@REG.register("name")``."""
        if obj is None:
            return lambda o: self.register(name, o, source=source)
        if not isinstance(name, str) or not name.isidentifier() or name.lower() != name:
            raise ValueError(f"{self.kind} name must be a snake_case identifier, got {name!r}")
        old = self._items.get(name)
        if old is not None and old is not obj and _qualname(old) != _qualname(obj):
            raise ValueError(
                f"{self.kind} name {name!r} is already registered to {_qualname(old)}; "
                f"cannot register {_qualname(obj)} under the same name"
            )
        self._items[name] = obj
        self._sources[name] = source
        setattr(obj, "registered_name", name) if isinstance(obj, type) else None
        return obj

    # -- discovery ----------------------------------------------------------------------------
    def discover(self, force: bool = False) -> None:
        """Import built-in modules and load third-party entry points (once)."""
        if self._discovered and not force:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
            if info.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            importlib.import_module(info.name)
        for ep in entry_points(group=self.group):
            if ep.name in self._items:
                continue
            dist = ep.dist.name if ep.dist else "?"
            try:
                self.register(ep.name, ep.load(), source=f"entry point {ep.value} ({dist})")
            except Exception as err:  # a broken third-party package must not break every command
                self._skip_broken(ep.name, ep.value, dist, err)

    def _skip_broken(self, name: str, value: str, dist: str, err: Exception) -> None:
        error = f"{type(err).__name__}: {err}".splitlines()[0]
        self._broken[name] = (dist, error)
        warnings.warn(
            f"skipping {self.kind} {name!r} ({value}) from distribution {dist!r}: it failed to load with "
            f"{error}. Fix or uninstall {dist!r}; everything else works.",
            BrokenEntryPointWarning, stacklevel=3)

    def broken(self) -> dict[str, tuple[str, str]]:
        """Entry points that failed to import or register: ``name -> (distribution, error)``."""
        self.discover()
        return dict(self._broken)

    # -- lookup -------------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        """Return the object registered as ``name``; an unknown name lists the known ones."""
        if name not in self._items:
            self.discover()
        if name not in self._items and name in self._broken:
            dist, error = self._broken[name]
            raise UnknownNameError(f"{self.kind} {name!r} from distribution {dist!r} is installed but failed to "
                                   f"load: {error}. Fix or uninstall {dist!r}.")
        if name not in self._items:
            known = sorted(self._items)
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{hint} Known {self.plural}: {', '.join(known) or '(none)'}."
            )
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        self.discover()
        return name in self._items

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, Any]]:
        self.discover()
        for name in sorted(self._items):
            yield name, self._items[name]

    def source(self, name: str) -> str:
        return self._sources.get(name, "builtin")

    def name_of(self, obj: Any) -> str | None:
        """Registered name of ``obj`` (or of its class), if any."""
        cls = obj if isinstance(obj, type) else type(obj)
        for name, item in self._items.items():
            if item is cls:
                return name
        return None

    def listing(self) -> str:
        """One line per registered name: ``name  description  [class]``. An entry whose optional dependency
        is not installed stays listed with the install hint (using it raises :func:`require`'s message);
        broken entry points say why."""
        rows = []
        for n, o in self.items():
            missing = missing_requirements(o)
            note = f"  (needs {', '.join(missing)}: {install_hint(missing)})" if missing else ""
            rows.append((n, _qualname(o), summary(o) + note))
        broken = sorted(self._broken.items())
        w0 = max((len(n) for n in [*(r[0] for r in rows), *(b[0] for b in broken)]), default=0)
        lines = [f"{n:<{w0}}  {d}  [{q}]" for n, q, d in rows]
        lines += [f"{n:<{w0}}  BROKEN: failed to load from distribution {dist!r}: {error}" for n, (dist, error) in broken]
        return "\n".join(lines)


#: Optional import name -> the ``lightning-vi`` extra that installs it.
EXTRAS = {"torchsde": "sequence", "torchvision": "vision", "constriction": "compression"}


def missing_requirements(obj: Any) -> list[str]:
    """Import names in ``obj.requires`` (a family's or plugin's optional dependencies) that are not installed."""
    return [m for m in getattr(obj, "requires", ()) or () if importlib.util.find_spec(m) is None]


def install_hint(modules: list[str]) -> str:
    extras = sorted({EXTRAS[m] for m in modules if m in EXTRAS})
    return f"pip install 'lightning-vi[{','.join(extras)}]'" if extras else f"pip install {' '.join(modules)}"


def require(module: str, user: str, message: str | None = None) -> Any:
    """Import an optional dependency where it is used; a missing one raises an ImportError that names
    the user and the install command, e.g. ``fbm_sde needs torchsde: pip install 'lightning-vi[sequence]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # also when sys.modules[module] is None
        raise ImportError(message or f"{user} needs {module}: {install_hint([module])}") from err


def _qualname(obj: Any) -> str:
    if isinstance(obj, Callable) and hasattr(obj, "__qualname__"):
        return f"{obj.__module__}.{obj.__qualname__}"
    return repr(obj)


PLUGINS = Registry("plugin", "lightning_vi.plugins", "lightning_vi.plugins")
FAMILIES = Registry("family", "lightning_vi.families", "lightning_vi.families")
