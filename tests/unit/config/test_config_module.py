"""The module base class and the registry of module names."""

from __future__ import annotations

import pytest

from gmta.config import module as registry
from gmta.config.module import Module
from gmta.config.parser import Node


def test_lookup_prefers_the_namespace(mods):
    assert registry.lookup("ut_target", "target") is mods.target
    assert registry.lookup("target.ut_target") is mods.target
    assert registry.lookup("ut_target") is None              # no bare name registered
    assert registry.lookup("ut_legacy", "target") is mods.target   # legacy name, bare
    assert registry.lookup("ut.endpoint", "target") is mods.endpoint
    assert registry.lookup("nothing", "target") is None
    assert registry.lookup("ut_table", None) is None


def test_namespace_name_wins_over_the_bare_name():
    class Bare(Module):
        name = "ut_both"

    class Namespaced(Module):
        name = "target.ut_both"

    registry.register(Bare)
    registry.register(Namespaced)
    assert registry.lookup("ut_both", "target") is Namespaced
    assert registry.lookup("ut_both", "table") is Bare
    assert registry.lookup("ut_both") is Bare


def test_register_and_unregister_with_legacy_names():
    class Mod(Module):
        name = "target.ut_new"
        legacy_names = ("ut_old", "ut_older")

    assert registry.register(Mod) is Mod                     # usable as a decorator
    assert {"target.ut_new", "ut_old", "ut_older"} <= set(registry.registered_names())
    assert registry.registered_modules().count(Mod) == 1    # each class once
    registry.register(Mod)                                   # registering again is harmless
    registry.unregister(Mod)
    assert registry.lookup("ut_old") is None and registry.lookup("target.ut_new") is None


def test_registered_lists_are_sorted(mods):
    names = registry.registered_names()
    assert names == sorted(names)
    classes = [c.name for c in registry.registered_modules()]
    assert classes == sorted(classes)


def test_a_name_cannot_be_registered_twice():
    class First(Module):
        name = "ut.clash"

    class Second(Module):
        name = "ut.other"
        legacy_names = ("ut.clash",)

    registry.register(First)
    with pytest.raises(RuntimeError, match="module name ut.clash registered twice"):
        registry.register(Second)
    registry.unregister(Second)                              # does not remove First's name
    assert registry.lookup("ut.clash") is First


def test_module_defaults():
    class Mod(Module):
        name = "ut.mod"

    node = Node("x", ["a"])
    named = Mod("inst", ["a", "b"], node)
    assert (named.instance_name, named.is_inline, named.inline_args, named.node) == (
        "inst", False, ["a", "b"], node)
    assert repr(named) == "<Mod inst>"
    inline = Mod(None, [], node)
    assert (inline.instance_name, inline.is_inline) == ("ut.mod", True)
    # The base hooks do nothing and accept their arguments.
    assert inline.configure(None, None) is None
    assert inline.start() is None and inline.stop() is None


def test_not_in_gmta_advice_covers_maddys_other_modules():
    for name in ("imap", "storage.imapsql", "table.sql_table", "auth.ldap", "tls.loader.acme"):
        assert registry.NOT_IN_GMTA[name]
