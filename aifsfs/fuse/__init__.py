"""The AIFS FUSE mount (pyfuse3 + trio): ops, caches, write buffers, mount/up/down commands."""
