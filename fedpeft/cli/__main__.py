"""`python -m fedpeft.cli`, as the `fedpeft` script."""

import sys

from . import main

sys.exit(main())
