"""``python -m synth``: the same as the ``yialign-synth`` console script (synth/cli.py)."""

from synth.cli import main

main()
