"""The `aifs` command: the composition root, the one package that imports both `aifs_server`
and `aifsfs` (formatting a data dir, starting the embedded server, then mounting)."""
