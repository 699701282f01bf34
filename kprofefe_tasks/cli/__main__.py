"""``python -m kprofefe_tasks.cli``: the same CLI without the console script on ``$PATH``."""

import sys

from kprofefe_tasks.cli import main

sys.exit(main())
