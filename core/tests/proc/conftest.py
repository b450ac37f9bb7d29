import os
import sys

# the test DNS server (core/tests/dns/dnsserver.py) is imported as a top-level module
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "dns"))
