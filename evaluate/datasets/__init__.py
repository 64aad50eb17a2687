"""Probe datasets. Each module of this package registers one on-disk layout by name; see `base.py`
for the interface, so adding a dataset means adding one file here."""

from genrep.evaluate.datasets.base import DATASETS, ProbeDataset, SplitImages

__all__ = ["DATASETS", "ProbeDataset", "SplitImages"]
