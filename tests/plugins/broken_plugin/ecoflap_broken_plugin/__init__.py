"""A plugin that fails while loading."""

raise ImportError("ecoflap_broken_plugin needs a library that is not installed")
