"""`python -m ctxjax ...`: the `ctxjax` command, where the console script is not on PATH (e.g. Colab)."""

import sys

from ctxjax.cli import main

sys.exit(main())
