"""The parser's LALR tables are read from a file keyed by what they are built from
(frontend/tables.py): the shipped file is current, a changed grammar is never parsed
with old tables, and a file that cannot be read or written only costs time."""

from pathlib import Path

import pytest
from lark import Lark
from lark.exceptions import UnexpectedInput

from einsumattn.frontend import parser, tables

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = "dims P, M\ninput X[p, m]\nY[p] = sum[m] X[p, m] * X[p, m]\noutput Y\n"


def built(grammar: str) -> Lark:
    return Lark(grammar, postlex=parser._BracketNewlines(), **parser.lark_options())


def key(grammar: str) -> str:
    return tables.table_key(grammar, parser.lark_options(), parser._BracketNewlines())


def load(grammar: str, paths: list[Path], write_to: Path | None) -> Lark:
    return tables.load_parser(grammar, parser.lark_options(), parser._BracketNewlines(),
                              paths, write_to)


def test_the_shipped_table_is_current():
    shipped = tables.read_table(tables.SHIPPED_TABLE, key(parser.grammar_text()))
    assert shipped is not None, ("grammars/attn.lalr is stale (the grammar or lark "
                                 "changed): run `python -m einsumattn.frontend`")


@pytest.mark.parametrize("spec", sorted((ROOT / "examples").glob("*.attn")),
                         ids=lambda p: p.stem)
def test_the_shipped_table_parses_like_the_grammar(spec):
    shipped = tables.read_table(tables.SHIPPED_TABLE, key(parser.grammar_text()))
    text = spec.read_text() + "\n"
    assert shipped.parse(text) == built(parser.grammar_text()).parse(text)


def test_a_changed_grammar_is_rebuilt_not_read_from_old_tables(tmp_path):
    old = parser.grammar_text()
    new = old.replace('MUL_OP: "//" | "*" | "/" | "%"', 'MUL_OP: "//" | "*" | "/" | "%" | "@"')
    assert new != old
    table = tmp_path / "attn.lalr"
    assert tables.write_table(built(old), table, key(old))
    assert tables.read_table(table, key(old)) is not None
    assert tables.read_table(table, key(new)) is None
    sample = SAMPLE.replace("] * X", "] @ X")
    with pytest.raises(UnexpectedInput):
        load(old, [table], None).parse(sample)
    load(new, [table], table).parse(sample)
    # The rebuilt tables replaced the old ones, under the new key.
    assert tables.read_table(table, key(new)) is not None
    assert tables.read_table(table, key(old)) is None


def test_unreadable_and_unwritable_tables_cost_time_only(tmp_path):
    grammar = parser.grammar_text()
    corrupt = tmp_path / "corrupt.lalr"
    corrupt.write_bytes(key(grammar).encode() + b"\nnot a pickle")
    blocker = tmp_path / "a file"
    blocker.write_text("")
    unwritable = blocker / "attn.lalr"   # below a file: no folder can be made there
    assert not tables.write_table(built(grammar), unwritable, key(grammar))
    loaded = load(grammar, [corrupt, tmp_path / "missing.lalr", unwritable], unwritable)
    assert loaded.parse(SAMPLE + "\n") == built(grammar).parse(SAMPLE + "\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a file", "corrupt.lalr"]
