"""The module template: the environment it renders in, and its compiled form, which
the package ships.

jinja2 compiles a template to Python source before it renders it: for
templates/module.py.j2 that costs about 60 ms in a fresh process (jinja2's lexer,
parser and code generator), a third of printing a module. The package therefore ships
jinja2's compiled form of the template, `backends/module_template.py` (the source
`Environment.compile` writes, as jinja2's own `ModuleLoader` imports it), whose bytecode
Python caches like any module's. Its first line holds the template's key: the SHA-256
of everything the compiled code comes from (the template's text, the environment's
settings that change the compiled code, jinja2's version). A file whose key differs
(the template was edited, jinja2 upgraded) or that cannot be read is ignored and the
template is compiled from its text, so the shipped file makes compiling faster but
never different.

After editing the template run `python -m einsumattn.backends.templates`;
tests/test_templates.py fails while the shipped file is stale.
"""

from __future__ import annotations

import functools
import hashlib
import pprint
from importlib import machinery
from pathlib import Path

import jinja2

from ..resources import folder
from .names import mangle, rank_spelling, string_literal

TEMPLATE = "module.py.j2"
TEMPLATES = folder("templates")
SHIPPED = Path(__file__).resolve().with_name("module_template.py")
_SHIPPED_MODULE = f"{__package__}.module_template"
_KEY_LINE = "# einsumattn template key: "

# The environment's settings that change the code jinja2 compiles a template to (its
# syntax, whitespace handling, escaping, extensions). Filters and tests are looked up
# by name when the template renders; their names are in the key so that a template
# naming a filter that no longer exists is compiled again, and fails as it should.
# template_environment() sets optimized=False: jinja2's optimizer folds constant
# expressions at compile time, filters included, which would put the filters'
# behaviour into the compiled code.
_COMPILE_SETTINGS = ("block_start_string", "block_end_string", "variable_start_string",
                     "variable_end_string", "comment_start_string", "comment_end_string",
                     "line_statement_prefix", "line_comment_prefix", "trim_blocks",
                     "lstrip_blocks", "newline_sequence", "keep_trailing_newline",
                     "autoescape", "optimized")


def template_text(name: str = TEMPLATE) -> str:
    # A path in the package, as for the shipped file: importlib's resources API would
    # import zipfile and its readers to find it (3 ms of a compile where site-packages
    # has not loaded them already).
    return (TEMPLATES / name).read_text("utf-8")


def _indented(text: str) -> str:
    """Every line but blank ones indented by four spaces. Lines end at '\\n' only (as in
    the spec language), so form feeds and U+2028 in a spec reach the docstring as is."""
    return "\n".join("    " + line if line else line for line in text.split("\n"))


class _OnceEachPrinter(pprint.PrettyPrinter):
    """pprint's printer, as jinja2's `pprint` filter uses it (its defaults), that finds
    the repr of each container once per call. pprint asks for the repr of a container
    at every level it descends through (to see whether the container fits on one line),
    which made printing SCHEDULE quadratic in its depth (about 10 ms of causal_softmax's
    compile). With no depth limit, a container's repr does not depend on where it is
    asked for, unless it is on a cycle: then it is flagged recursive and not kept. Each
    container kept is held until the call ends, so its id is not reused."""

    def __init__(self) -> None:
        super().__init__()
        self._known: dict[int, tuple] = {}

    def format(self, object, context, maxlevels, level):  # noqa: A002 - pprint's name
        if type(object) not in (dict, list, tuple):
            return super().format(object, context, maxlevels, level)
        known = self._known.get(id(object))
        if known is not None:
            return known[1]
        result = super().format(object, context, maxlevels, level)
        if not result[2]:
            self._known[id(object)] = (object, result)
        return result


def pretty(value) -> str:
    """pprint.pformat(value), exactly (tests/test_templates.py)."""
    return _OnceEachPrinter().pformat(value)


def template_environment() -> jinja2.Environment:
    """The environment the module template renders in. optimized=False: no constant is
    folded at compile time, so the compiled form holds no result of the filters below."""
    environment = jinja2.Environment(loader=jinja2.FunctionLoader(template_text),
                                     keep_trailing_newline=True, optimized=False,
                                     undefined=jinja2.StrictUndefined, autoescape=False)
    # Identifiers for spec names, and literals for any text: the template writes nothing
    # from the spec another way.
    environment.filters["ident"] = mangle
    environment.filters["size"] = rank_spelling
    environment.filters["literal"] = string_literal
    environment.filters["docstring"] = lambda text: string_literal(text, multiline=True)
    environment.filters["block"] = _indented
    environment.filters["pprint"] = pretty      # jinja2's own, without its quadratic cost
    return environment


@functools.lru_cache(maxsize=1)
def module_template() -> jinja2.Template:
    """The module template, loaded once per process (rendering does not change it)."""
    return load_template(template_environment())


def template_key(environment: jinja2.Environment, text: str) -> str:
    """The SHA-256 of everything the compiled template comes from."""
    settings = [repr(getattr(environment, name)) for name in _COMPILE_SETTINGS]
    parts = [text, *settings, repr(sorted(environment.extensions)),
             repr(sorted(environment.filters)), repr(sorted(environment.tests)),
             f"jinja2 {jinja2.__version__}"]
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


def compiled_source(environment: jinja2.Environment, name: str = TEMPLATE) -> str:
    """The text of the shipped file: the key line, then jinja2's compiled template."""
    text = template_text(name)
    code = environment.compile(text, name, f"templates/{name}", raw=True, defer_init=True)
    return (f"{_KEY_LINE}{template_key(environment, text)}\n"
            f"# jinja2's compiled form of templates/{name}, written by `python -m "
            f"einsumattn.backends.templates` (see backends/templates.py). Do not edit.\n"
            f"{code}\n")


def read_shipped(environment: jinja2.Environment, key: str) -> jinja2.Template | None:
    """The template from the shipped file if its key is `key`, else None. Its code runs
    in a namespace of its own (not the module's), which the template keeps."""
    try:
        with open(SHIPPED, encoding="utf-8") as file:
            if file.readline().rstrip("\n") != _KEY_LINE + key:
                return None
        code = machinery.SourceFileLoader(_SHIPPED_MODULE, str(SHIPPED)).get_code(
            _SHIPPED_MODULE)
        namespace = {"__name__": _SHIPPED_MODULE, "__file__": str(SHIPPED)}
        exec(code, namespace)  # noqa: S102 - the package's own file, key checked
    except Exception:  # noqa: BLE001 - a missing or unreadable file: compile instead
        return None
    return environment.template_class.from_module_dict(
        environment, namespace, environment.make_globals(None))


def load_template(environment: jinja2.Environment, name: str = TEMPLATE) -> jinja2.Template:
    """The template `name`: read from the shipped file when it is current, else
    compiled from its text by `environment` (whose loader must find it)."""
    if name == TEMPLATE:
        shipped = read_shipped(environment, template_key(environment, template_text(name)))
        if shipped is not None:
            return shipped
    return environment.get_template(name)


def write_shipped(environment: jinja2.Environment) -> Path:
    """Compile the template and save it as the package's shipped file."""
    SHIPPED.write_text(compiled_source(environment), encoding="utf-8")
    return SHIPPED


if __name__ == "__main__":
    print(f"wrote {write_shipped(template_environment())}")
