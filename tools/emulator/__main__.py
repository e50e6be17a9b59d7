"""``python -m tools.emulator``: see ``tools.emulator.cli``."""

import sys

from tools.emulator.cli import main

sys.exit(main())
