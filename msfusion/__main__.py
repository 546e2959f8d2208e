"""``python -m msfusion`` (and ``torchrun -m msfusion``) runs the command line."""

import sys

from msfusion.cli import main

sys.exit(main())
