"""`python -m einsumattn.frontend`: rebuild the parser tables shipped beside the grammar
(grammars/attn.lalr) after editing grammars/attn.lark (frontend/tables.py)."""

from .parser import write_shipped_table

print(f"wrote {write_shipped_table()}")
