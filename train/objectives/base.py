"""The interface of a training objective, the cross-rank gathers, and the contrastive loss.

An objective sees the features of a batch of B samples x V views (flattened sample-major) and its
targets: `views` (V), `label` (B class indices, -1 when unused) and, for the inverter, `latents`
(B x V x z_dim), all on the features' device. Contrastive objectives gather the projections of
every rank (with gradient), so negatives and positives come from the global batch, as with one
large GPU.

Objectives are built with `OBJECTIVES.build(name, feature_dim, info, **options)`: the options an
objective takes are the keyword parameters of its `__init__` after those two (the flags of the
same names), and any other option is refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from genrep.errors import DataError
from genrep.registry import Registry
from genrep.train.data import DatasetInfo

OBJECTIVES: Registry[type[Objective]] = Registry("objective", packages=["genrep.train.objectives"])

#: logit given to masked-out pairs: exp() of it is 0, and unlike -inf it keeps gradients finite
MASKED = -1e9
#: defaults of the contrastive options (SimCLR's and the paper's)
PROJECTION_DIM = 128
TEMPERATURE = 0.1
#: the released code's loss (SupContrast's SupConLoss, for SimCLR and SupCon alike) is scaled by
#: temperature / base_temperature with base_temperature 0.07: x1.43 at temperature 0.1
BASE_TEMPERATURE = 0.07


class Objective(nn.Module):
    """A head and a loss. Class attributes say what the objective needs; the trainer reads them."""

    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False
    needs_latents: ClassVar[bool] = False
    #: whether views get Tx unless --augment/--no-augment says otherwise
    default_augment: ClassVar[bool] = True
    #: views per sample unless --views says otherwise; None: the anchor and all its neighbors
    default_views: ClassVar[int | None] = None
    #: fewest views per sample the loss can use
    min_views: ClassVar[int] = 1
    #: compares views with each other: they must differ, and the batch must hold negatives
    contrastive: ClassVar[bool] = False

    def __init__(self, feature_dim: int, info: DatasetInfo) -> None:
        super().__init__()
        self.check(info)

    @classmethod
    def uses_labels(cls, info: DatasetInfo) -> bool:
        """Whether batches must carry class labels for this objective on `info`."""
        return cls.needs_labels

    @classmethod
    def check(cls, info: DatasetInfo) -> None:
        """Refuse data that lacks what the objective needs."""
        if cls.needs_labels and not info.num_classes:
            raise DataError(
                f"objective {cls.name} needs class labels, and {info.name} has none: generate a "
                "class-conditional dataset (genrep-generate --classes ...), or pass --real DIR "
                "alone (real images mixed with generated ones share no label space)"
            )
        if cls.needs_latents and info.z_dim is None:
            raise DataError(
                f"objective {cls.name} regresses the generator latent z of each image, and "
                f"{info.name} has none (real images have no latents): train it on shard folders "
                "of one generator only"
            )

    def forward(
        self, features: torch.Tensor, targets: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, metrics) of the features [B*V, D] of a batch; metrics are detached tensors."""
        raise NotImplementedError


def projection_head(feature_dim: int, projection_dim: int) -> nn.Module:
    """The 2-layer MLP of SimCLR/SupCon (hidden width = feature width)."""
    return nn.Sequential(
        nn.Linear(feature_dim, feature_dim),
        nn.ReLU(inplace=True),
        nn.Linear(feature_dim, projection_dim),
    )


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank's gradient of a slice back to its owner.

    Backward sums the full gradient over ranks (all_reduce, which every backend has) and keeps
    this rank's slice; DDP's gradient averaging then yields the gradient of the mean loss.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def distributed() -> bool:
    """Whether this process is one of several ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' `tensor` concatenated (gradients flow back to their rank), and our offset."""
    if not distributed():
        return tensor, 0
    return _GatherWithGrad.apply(tensor), dist.get_rank() * tensor.shape[0]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' `tensor` concatenated, without gradient (labels, ids)."""
    if not distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class ContrastiveObjective(Objective):
    """Shared parts of the contrastive objectives: projection, global similarity matrix, masks.

    The loss is scaled by temperature / base_temperature, as the released code's loss is (it
    scales the gradients, so it acts on the learning rate); base_temperature = temperature
    gives the plain loss of eq. 1.
    """

    contrastive = True

    def __init__(
        self,
        feature_dim: int,
        info: DatasetInfo,
        projection_dim: int = PROJECTION_DIM,
        temperature: float = TEMPERATURE,
        base_temperature: float = BASE_TEMPERATURE,
    ) -> None:
        super().__init__(feature_dim, info)
        self.head = projection_head(feature_dim, projection_dim)
        self.temperature = temperature
        self.base_temperature = base_temperature

    def group_ids(self, targets: dict[str, Any], samples: int) -> torch.Tensor:
        """Per row of the similarity matrix, the id shared by the rows that are its positives."""
        raise NotImplementedError

    def forward(
        self, features: torch.Tensor, targets: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        projected = self.head(features)
        # Similarities and loss in fp32, whatever the autocast: in fp16 the masked logits would
        # overflow, and bf16 keeps only about 3 significant digits of a similarity.
        with torch.autocast(features.device.type, enabled=False):
            return self.contrast(projected.float(), targets)

    def contrast(
        self, projected: torch.Tensor, targets: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, metrics) of this rank's projections [B*V, P] against the global batch."""
        local = F.normalize(projected, dim=1)
        everything, offset = gather_with_grad(local)
        ids = self.group_ids(targets, local.shape[0] // targets["views"])
        ids = ids.to(local.device).repeat_interleave(targets["views"])
        all_ids = gather(ids)
        logits = local @ everything.T / self.temperature  # [n_local, n_global]
        rows = torch.arange(local.shape[0], device=local.device)
        not_self = torch.ones_like(logits, dtype=torch.bool)
        not_self[rows, rows + offset] = False
        positive = (ids[:, None] == all_ids[None, :]) & not_self
        loss_per_pair = self.pair_losses(logits, positive, not_self)
        has_positive = positive.any(1)
        # An anchor without positives (possible for supcon with one view) adds no term, never NaN.
        pair_weight = positive / positive.sum(1, keepdim=True).clamp(min=1)
        per_anchor = (loss_per_pair * pair_weight).sum(1)
        count = has_positive.sum()
        scale = self.temperature / self.base_temperature
        loss = per_anchor[has_positive].sum() / count.clamp(min=1) * scale
        with torch.no_grad():
            masked = logits.masked_fill(~not_self, float("-inf"))
            top = masked.argmax(1)
            accuracy = positive[rows, top].float().mean()
        return loss, {"positive_top1": accuracy}

    def pair_losses(
        self, logits: torch.Tensor, positive: torch.Tensor, not_self: torch.Tensor
    ) -> torch.Tensor:
        """-log p of every (anchor, candidate) pair; only positive pairs are used."""
        raise NotImplementedError
