"""`python -m flows.cli`: the `ganpipe` command."""

import sys

from flows.cli import main

sys.exit(main())
