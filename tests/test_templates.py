"""The module template is read from its compiled form shipped in the package
(backends/templates.py): the shipped file is current, renders as the template does, is
never used for an edited template, and a compile does not run jinja2's compiler. The
template's `pprint` filter prints exactly what pprint.pformat does."""

from __future__ import annotations

import pprint

import jinja2
import pytest
from hypothesis import given, settings, strategies as st

from einsumattn.backends import module, templates
from einsumattn.loader import load

from conftest import EXAMPLES


@pytest.fixture
def fresh_template():
    """The per-process template loaded again for the test, and again after it."""
    templates.module_template.cache_clear()
    yield
    templates.module_template.cache_clear()


def _current_key(environment: jinja2.Environment) -> str:
    return templates.template_key(environment, templates.template_text())


def test_the_shipped_template_is_current():
    environment = templates.template_environment()
    assert templates.read_shipped(environment, _current_key(environment)) is not None, (
        "backends/module_template.py is stale (the template or jinja2 changed): run "
        "`python -m einsumattn.backends.templates`")
    # Exactly what the command writes: not edited by hand under a current key.
    assert templates.SHIPPED.read_text("utf-8") == templates.compiled_source(environment)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_shipped_template_renders_like_the_template(path, fresh_template, monkeypatch):
    cascade = load(path)
    shipped = module.generate(cascade, rewrite=True, module_name=cascade.name)
    templates.module_template.cache_clear()
    monkeypatch.setattr(templates, "read_shipped", lambda *args: None)
    compiled_here = module.generate(cascade, rewrite=True, module_name=cascade.name)
    assert shipped == compiled_here


def test_an_edited_template_is_compiled_not_read_from_the_shipped_file(monkeypatch):
    edited = templates.template_text().replace("{{", "{{ 'edited' ~ ", 1)
    environment = templates.template_environment()
    assert templates.read_shipped(environment, _current_key(environment)) is not None
    assert templates.read_shipped(environment,
                                  templates.template_key(environment, edited)) is None
    environment.loader = jinja2.DictLoader({templates.TEMPLATE: "{{ name }} edited"})
    monkeypatch.setattr(templates, "template_text", lambda name: "{{ name }} edited")
    assert templates.load_template(environment).render(name="x") == "x edited"


def test_a_changed_setting_or_jinja2_changes_the_key(monkeypatch):
    environment = templates.template_environment()
    key = _current_key(environment)
    environment.trim_blocks = True
    assert _current_key(environment) != key
    monkeypatch.setattr(jinja2, "__version__", "0.0")
    assert _current_key(templates.template_environment()) != key


def test_a_missing_shipped_file_costs_only_time(tmp_path, monkeypatch):
    environment = templates.template_environment()
    monkeypatch.setattr(templates, "SHIPPED", tmp_path / "absent.py")
    assert templates.read_shipped(environment, _current_key(environment)) is None
    assert templates.load_template(environment).name == templates.TEMPLATE


def test_generating_runs_no_template_compiler(fresh_template, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the module template was compiled, not read from "
                             "backends/module_template.py")

    monkeypatch.setattr(jinja2.Environment, "compile", refuse)
    cascade = load(EXAMPLES[0])
    assert module.generate(cascade, rewrite=True, module_name=cascade.name)


# ------------------------------------------------------------------ the pprint filter

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.text(max_size=120))
_NESTED = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.lists(inner, max_size=6).map(tuple),
                            st.dictionaries(st.text(max_size=12), inner, max_size=6)),
    max_leaves=60)


@settings(max_examples=300, deadline=None)
@given(_NESTED)
def test_pretty_is_pprint(value):
    assert templates.pretty(value) == pprint.pformat(value)


def test_pretty_is_pprint_on_shared_and_cyclic_containers():
    shared = {"loops": [{"tile": 64, "extent": "M" * 40}] * 3, "names": ("Q",) * 30}
    value = {"a": shared, "b": [shared, shared], "c": (shared,)}
    assert templates.pretty(value) == pprint.pformat(value)
    cycle = [1, {"x": "y" * 70}]
    cycle.append(cycle)
    outer = {"cycle": cycle, "again": cycle, "long": ["z" * 30] * 4}
    assert templates.pretty(outer) == pprint.pformat(outer)
    # x's repr inside a (where a is an ancestor) differs from x's repr at the top.
    a = {"pad": "p" * 50}
    x = [a]
    a["x"] = x
    for value in ([a, x], {"a": a, "x": x}, (x, a, x)):
        assert templates.pretty(value) == pprint.pformat(value)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_pretty_prints_the_schedule_as_pprint(path):
    data = module.Plan(load(path)).data()
    assert templates.pretty(data) == pprint.pformat(data)
