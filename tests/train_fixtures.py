"""The `datasets` fixture of the genrep-train tests (load with pytest_plugins = ["train_fixtures"]).

Datasets are made once per test session (32 px, a few dozen anchors) and shared read-only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from train_helpers import DATASETS, generate

_made: dict[str, Path] = {}


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`datasets(name)` -> folder of one of DATASETS, generated on first use."""

    def get(name: str) -> Path:
        if name not in _made:
            _made[name] = generate(tmp_path_factory.mktemp("train-data") / name, *DATASETS[name])
        return _made[name]

    return get
