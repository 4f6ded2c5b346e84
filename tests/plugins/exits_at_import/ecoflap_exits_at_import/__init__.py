"""A plugin that calls ``sys.exit`` while it is imported."""

import sys

sys.exit("ecoflap_exits_at_import refuses to load")
