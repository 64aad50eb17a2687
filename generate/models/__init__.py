"""Generator registry. Each module of this package registers its generators by name.

A registered entry is a builder `build(weights=None, classes=None, device="cpu", **options)` that
returns a `Generator`; see `base.py` for the interface every generator implements.
"""

from genrep.generate.models.base import GENERATORS, Generator, build_generator

__all__ = ["GENERATORS", "Generator", "build_generator"]
