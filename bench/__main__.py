"""``python -m bench``: the same as ``leap-rl bench``."""

import sys

from bench import main

sys.exit(main())
