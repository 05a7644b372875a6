"""`python -m loadtest.generator`."""

import sys

from loadtest.generator.cli import main

sys.exit(main())
