"""Thin entry point, like Flax's examples/lm1b/main.py: `python train.py --config configs/demo.py --workdir W`
is `ctxjax train ...` (see ctxjax/commands/train.py); the work happens in ctxjax.train.train_and_evaluate."""

import sys

from ctxjax.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
