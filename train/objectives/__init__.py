"""Training objectives. Each module of this package registers one objective by name.

An objective is a head on the encoder's features and a loss; see `base.py`.
"""

from genrep.train.objectives.base import OBJECTIVES, ContrastiveObjective, Objective

__all__ = ["OBJECTIVES", "ContrastiveObjective", "Objective"]
