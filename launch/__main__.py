"""``python -m launch``: the same as the ``back-mice-sandbox`` command."""

import sys

from launch.cli import main

sys.exit(main())
