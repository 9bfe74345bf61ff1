"""AIFS-FS: the FUSE driver, the client SDK and the `aifs` command."""
