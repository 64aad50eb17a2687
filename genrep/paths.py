"""Where genrep keeps what it downloads, learns and caches for a user: `$GENREP_HOME` and below.

`GENREP_HOME` defaults to `$XDG_CACHE_HOME/genrep` (`~/.cache/genrep`). Its sub-folders hold
generator weights, auto-learned steering walks, probe feature caches and random-init baselines.
"""

from __future__ import annotations

import os
from pathlib import Path


def genrep_home() -> Path:
    """The per-user folder for downloaded weights and caches (`$GENREP_HOME` wins)."""
    if os.environ.get("GENREP_HOME"):
        return Path(os.environ["GENREP_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "genrep"


def weights_dir() -> Path:
    """Downloaded generator weights."""
    return genrep_home() / "weights"


def walks_dir() -> Path:
    """Steering walks learned automatically by `--view steer` without `--walks`."""
    return genrep_home() / "walks"


def features_dir() -> Path:
    """Frozen features cached by `genrep-probe`."""
    return genrep_home() / "features"


def baselines_dir() -> Path:
    """Metrics of randomly initialised encoders that `genrep-probe` compares every encoder with."""
    return genrep_home() / "baselines"
