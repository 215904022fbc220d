"""``python -m reward inspect ...``: the same as the ``yialign-reward`` console script (reward/cli.py)."""

import sys

from reward.cli import main

sys.exit(main())
