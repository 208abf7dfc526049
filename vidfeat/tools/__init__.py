"""Developer tools built on the library: the demo (`make demo`) and the generator of docs/cli.md
and docs/models.md. Nothing in the library imports them.
"""
