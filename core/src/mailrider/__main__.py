"""``python -m mailrider`` runs mailriderd."""

import sys

from mailrider.cli.mailriderd import main

sys.exit(main())
