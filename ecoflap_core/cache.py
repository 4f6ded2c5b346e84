"""Where ecoflap keeps what it derives once (expanded model weights, parsed corpora)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The ecoflap cache folder: $ECOFLAP_CACHE, else ~/.cache/ecoflap."""
    return Path(os.environ.get("ECOFLAP_CACHE") or Path.home() / ".cache" / "ecoflap")
