"""Defaults that the command line shows in its help: kept in a module that imports
nothing, so `einsumattn --help` does not load the compiler (docs/compile-speed.md)."""

# The key tile the online rewrite splits the streamed rank by (the fused kernel's key
# block: a power of two >= 16 there; any positive integer for the oracle).
DEFAULT_TILE = 64


def cache_dir():
    """$EINSUMATTN_CACHE_DIR, else $XDG_CACHE_HOME/einsumattn, else ~/.cache/einsumattn: where
    compiled modules (codegen/compile.py) and a rebuilt parser table (frontend/parser.py)
    are kept."""
    import os
    from pathlib import Path
    if os.environ.get("EINSUMATTN_CACHE_DIR"):
        return Path(os.environ["EINSUMATTN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "einsumattn"
