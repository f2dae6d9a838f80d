"""``python cli.py ...`` (and ``accelerate launch cli.py ...``) runs the ``moehooks`` command, whose code lives in
``moehooks/cli.py``; ``import cli`` is that module."""

import sys

from moehooks import cli

if __name__ == "__main__":
    cli.main()
else:
    sys.modules[__name__] = cli
