"""`python -m aifsfs.bench ...` = `aifs bench ...` (works before/without the `aifs` entry point)."""

import sys

from .cli import main

sys.exit(main())
