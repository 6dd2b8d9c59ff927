"""``python -m stackmapd``: the ``stackmapd`` command without its console script."""

import sys

from stackmapd.cli import main

sys.exit(main())
