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
