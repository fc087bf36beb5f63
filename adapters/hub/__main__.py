"""``python -m adapters.hub ...`` is ``tether hub ...``."""

import sys

from adapters.hub.command import main

sys.exit(main())
