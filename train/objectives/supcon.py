"""SupCon: the supervised contrastive loss, positives shared by class."""

from __future__ import annotations

from typing import Any

import torch

from genrep.train.objectives.base import MASKED, OBJECTIVES, ContrastiveObjective


@OBJECTIVES.register("supcon")
class SupCon(ContrastiveObjective):
    """Supervised contrastive loss (Khosla et al. 2020, L_out): positives share the class.

    The other views of the same sample (its anchor and latent neighbors, App. C.1) share its class
    and are positives too; the denominator runs over every other view in the global batch.
    """

    needs_labels = True

    def group_ids(self, targets: dict[str, Any], samples: int) -> torch.Tensor:
        return targets["label"].long()

    def pair_losses(
        self, logits: torch.Tensor, positive: torch.Tensor, not_self: torch.Tensor
    ) -> torch.Tensor:
        denominator = torch.logsumexp(logits.masked_fill(~not_self, MASKED), 1, keepdim=True)
        return denominator - logits
