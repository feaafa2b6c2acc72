"""Registry: registration rules, unknown-name errors, listings and entry-point discovery."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from lightning_vi.registry import Registry, UnknownNameError


class Alpha:
    """First test object."""


class Beta:
    """Second test object."""


def _fresh() -> Registry:
    return Registry("plugin", "lightning_vi.test_group", "lightning_vi.metrics")


def test_register_lookup_and_listing():
    reg = _fresh()
    reg.register("alpha", Alpha)
    assert reg.get("alpha") is Alpha and reg.names() == ["alpha"]
    reg.register("alpha", Alpha)  # same object again is fine
    assert reg.listing().startswith("alpha  First test object.")


def test_duplicate_name_for_another_object_is_an_error():
    reg = _fresh()
    reg.register("alpha", Alpha)
    with pytest.raises(ValueError, match=r"'alpha' is already registered to .*Alpha"):
        reg.register("alpha", Beta)


def test_names_must_be_snake_case():
    with pytest.raises(ValueError, match=r"snake_case.*'CutMix'"):
        _fresh().register("CutMix", Alpha)


def test_unknown_name_lists_known_and_closest():
    reg = _fresh()
    reg.register("nested_dropout", Alpha)
    reg.register("cutmix", Beta)
    with pytest.raises(UnknownNameError) as err:
        reg.get("nested_dropot")
    msg = str(err.value)
    assert "Unknown plugin 'nested_dropot'" in msg and "Did you mean 'nested_dropout'" in msg
    assert "Known plugins: cutmix, nested_dropout" in msg


def test_entry_points_are_discovered(monkeypatch):
    ep = md.EntryPoint(name="third_party", value="tests_registry_target:Thing", group="lightning_vi.test_group")
    import sys
    import types

    mod = types.ModuleType("tests_registry_target")

    class Thing:
        """A third-party plugin."""

    mod.Thing = Thing
    monkeypatch.setitem(sys.modules, "tests_registry_target", mod)
    import lightning_vi.registry as registry

    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == "lightning_vi.test_group" else [])
    reg = _fresh()
    assert reg.get("third_party") is Thing
    assert "entry point tests_registry_target:Thing" in reg.source("third_party")
    assert "third_party  A third-party plugin." in reg.listing()


def test_broken_entry_point_is_skipped_and_listed(tmp_path, monkeypatch):
    """A third-party entry point that raises on import: one warning naming the distribution, the rest
    of the registry works, the listing and a lookup of its name say why it is missing."""
    import lightning_vi.registry as registry

    info = tmp_path / "bad_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[lightning_vi.test_group]\nbad = tests_registry_missing_mod:Thing\n")
    (dist,) = md.distributions(path=[str(tmp_path)])
    eps = list(dist.entry_points)
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == "lightning_vi.test_group" else [])
    reg = _fresh()
    reg.register("alpha", Alpha)
    with pytest.warns(registry.BrokenEntryPointWarning, match=r"'bad'.*distribution 'bad-dist'.*ModuleNotFoundError"):
        assert reg.names() == ["alpha"]
    assert reg.broken() == {"bad": ("bad-dist", "ModuleNotFoundError: No module named 'tests_registry_missing_mod'")}
    assert reg.get("alpha") is Alpha
    bad_line = reg.listing().splitlines()[-1]
    assert bad_line.startswith("bad ") and "BROKEN" in bad_line and "'bad-dist'" in bad_line
    with pytest.raises(UnknownNameError, match=r"'bad' from distribution 'bad-dist' is installed but failed to load"):
        reg.get("bad")
