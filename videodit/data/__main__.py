"""`python -m videodit.data ...` = `videodit-data ...`."""

import sys

from videodit.data.cli import main

sys.exit(main())
