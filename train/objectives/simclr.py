"""SimCLR: InfoNCE over the views of each sample."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from genrep.train.objectives.base import MASKED, OBJECTIVES, ContrastiveObjective, distributed


@OBJECTIVES.register("simclr", aliases=["infonce"])
class SimCLR(ContrastiveObjective):
    """InfoNCE of eq. 1: each (anchor, positive) pair against the anchor's in-batch negatives.

    With two views this is SimCLR's NT-Xent; with K neighbors every other view of the sample is
    a positive, each contrasted with the negatives only (other positives are not negatives).
    """

    #: the positives of a sample are its other views
    min_views = 2

    def group_ids(self, targets: dict[str, Any], samples: int) -> torch.Tensor:
        rank = dist.get_rank() if distributed() else 0
        return torch.arange(samples) + rank * samples

    def pair_losses(
        self, logits: torch.Tensor, positive: torch.Tensor, not_self: torch.Tensor
    ) -> torch.Tensor:
        negative = not_self & ~positive
        # A finite fill keeps the gradient finite for an anchor without negatives (it then adds 0).
        negatives = torch.logsumexp(logits.masked_fill(~negative, MASKED), 1, keepdim=True)
        return torch.logaddexp(logits, negatives) - logits
