"""`python -m vlmkd` is the `vlmkd` command."""

import sys

from vlmkd.cli import main

sys.exit(main())
