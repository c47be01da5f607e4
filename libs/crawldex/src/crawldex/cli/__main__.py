"""`python -m crawldex.cli`: the same as the `crawldex` command."""

import sys

from crawldex.cli.main import main

sys.exit(main())
