"""`python -m alignment` is `yialign`: run a pipeline recipe."""

import sys

from alignment.pipeline import main

sys.exit(main())
