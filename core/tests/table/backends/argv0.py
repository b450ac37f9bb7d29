"""Run as a config file by a bare interpreter named after the table (see test_proc).

The interpreter's own argv[0] -- ``sys.orig_argv[0]`` -- is then what the
daemon put there: the table name.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rogue import serve

serve("argv")
