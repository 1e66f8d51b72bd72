"""`python -m superfilter` runs the `superfilter` command."""

import sys

from superfilter.cli import main

sys.exit(main())
