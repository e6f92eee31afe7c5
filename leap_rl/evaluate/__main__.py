"""``python -m leap_rl.evaluate``: the same as ``leap-rl evaluate``."""

import sys

from leap_rl.evaluate import main

sys.exit(main())
