"""``python -m quadexport`` (also ``torchrun -m quadexport train ...``)."""

import sys

from quadexport.cli import main

sys.exit(main())
