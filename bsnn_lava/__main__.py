"""``python -m bsnn_lava``: the ``bsnn`` command line (the form ``torchrun -m bsnn_lava simulate ...`` needs)."""
import sys

from .cli import main

sys.exit(main())
