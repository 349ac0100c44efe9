"""Defaults that the command line shows in its help: kept in a module that imports
nothing, so `einsumattn --help` does not load the compiler (docs/compile-speed.md)."""

# The key tile the online rewrite splits the streamed rank by (the fused kernel's key
# block: a power of two >= 16 there; any positive integer for the oracle).
DEFAULT_TILE = 64
