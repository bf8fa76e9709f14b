"""``python -m nipc.cli``: the ``nipc`` command."""

import sys

from nipc.cli import main

sys.exit(main())
