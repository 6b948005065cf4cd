"""``python -m flagstream``: the ``flagstream`` command."""

import sys

from flagstream.cli import main

sys.exit(main())
