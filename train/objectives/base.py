"""Training objectives, one registered class each: a head on the encoder's features and a loss.

An objective sees the features of a batch of B samples x V views (flattened sample-major) and its
targets: `views` (V), `label` (B class indices, -1 when unused) and, for the inverter, `latents`
(B x V x z_dim), all on the features' device. Contrastive objectives gather the projections of
every rank (with gradient), so negatives and positives come from the global batch, as with one
large GPU.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from genrep.registry import Registry
from genrep.train.data import DatasetInfo

OBJECTIVES: Registry[type[Objective]] = Registry("objective")

#: logit given to masked-out pairs: exp() of it is 0, and unlike -inf it keeps gradients finite
MASKED = -1e9


class ObjectiveError(ValueError):
    """An objective that cannot train on the given data; the message says why."""


class Objective(nn.Module):
    """A head and a loss. Class attributes say what the objective needs from the data."""

    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False
    needs_latents: ClassVar[bool] = False
    #: whether views get Tx unless --augment/--no-augment says otherwise
    default_augment: ClassVar[bool] = True
    #: views per sample unless --views says otherwise; None: the anchor and all its neighbors
    default_views: ClassVar[int | None] = None
    #: needs at least two different views per sample
    contrastive: ClassVar[bool] = False

    def __init__(
        self,
        feature_dim: int,
        info: DatasetInfo,
        projection_dim: int = 128,
        temperature: float = 0.1,
    ) -> None:
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
            raise ObjectiveError(
                f"objective {cls.name} needs class labels, and {info.name} has none: generate a "
                "class-conditional dataset (genrep-generate --classes ...), or pass --real DIR "
                "alone (real images mixed with generated ones share no label space)"
            )
        if cls.needs_latents and info.z_dim is None:
            raise ObjectiveError(
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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' `tensor` concatenated (gradients flow back to their rank), and our offset."""
    if not _distributed():
        return tensor, 0
    return _GatherWithGrad.apply(tensor), dist.get_rank() * tensor.shape[0]


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All ranks' `tensor` concatenated, without gradient (labels, ids)."""
    if not _distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class ContrastiveObjective(Objective):
    """Shared parts of the contrastive objectives: projection, global similarity matrix, masks."""

    contrastive = True

    def __init__(
        self,
        feature_dim: int,
        info: DatasetInfo,
        projection_dim: int = 128,
        temperature: float = 0.1,
    ) -> None:
        super().__init__(feature_dim, info, projection_dim, temperature)
        self.head = projection_head(feature_dim, projection_dim)
        self.temperature = temperature

    def group_ids(self, targets: dict[str, Any], samples: int) -> torch.Tensor:
        """Per row of the similarity matrix, the id shared by the rows that are its positives."""
        raise NotImplementedError

    def forward(
        self, features: torch.Tensor, targets: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        local = F.normalize(self.head(features).float(), dim=1)
        everything, offset = gather_with_grad(local)
        ids = self.group_ids(targets, features.shape[0] // targets["views"])
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
        loss = per_anchor[has_positive].sum() / count.clamp(min=1)
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


@OBJECTIVES.register("simclr", aliases=["infonce"])
class SimCLR(ContrastiveObjective):
    """InfoNCE of eq. 1: each (anchor, positive) pair against the anchor's in-batch negatives.

    With two views this is SimCLR's NT-Xent; with K neighbors every other view of the sample is
    a positive, each contrasted with the negatives only (other positives are not negatives).
    """

    name = "simclr"

    def group_ids(self, targets: dict[str, Any], samples: int) -> torch.Tensor:
        rank = dist.get_rank() if _distributed() else 0
        return torch.arange(samples) + rank * samples

    def pair_losses(
        self, logits: torch.Tensor, positive: torch.Tensor, not_self: torch.Tensor
    ) -> torch.Tensor:
        negative = not_self & ~positive
        # A finite fill keeps the gradient finite for an anchor without negatives (it then adds 0).
        negatives = torch.logsumexp(logits.masked_fill(~negative, MASKED), 1, keepdim=True)
        return torch.logaddexp(logits, negatives) - logits


@OBJECTIVES.register("supcon")
class SupCon(ContrastiveObjective):
    """Supervised contrastive loss (Khosla et al. 2020, L_out): positives share the class.

    The other views of the same sample (its anchor and latent neighbors, App. C.1) share its class
    and are positives too; the denominator runs over every other view in the global batch.
    """

    name = "supcon"
    needs_labels = True

    def group_ids(self, targets: dict[str, Any], samples: int) -> torch.Tensor:
        return targets["label"].long()

    def pair_losses(
        self, logits: torch.Tensor, positive: torch.Tensor, not_self: torch.Tensor
    ) -> torch.Tensor:
        denominator = torch.logsumexp(logits.masked_fill(~not_self, MASKED), 1, keepdim=True)
        return denominator - logits


@OBJECTIVES.register("inverter")
class Inverter(Objective):
    """Regress each image's own latent z with MSE (Sec. 3.4); plus class cross-entropy (App. C.2.3).

    No Tx by default: directions of z encode shifts and colors, so z is not invariant to them.
    """

    name = "inverter"
    needs_latents = True
    default_augment = False
    default_views = 1

    def __init__(
        self,
        feature_dim: int,
        info: DatasetInfo,
        projection_dim: int = 128,
        temperature: float = 0.1,
    ) -> None:
        super().__init__(feature_dim, info, projection_dim, temperature)
        self.head = nn.Linear(feature_dim, info.z_dim)
        self.class_head = nn.Linear(feature_dim, info.num_classes) if info.num_classes else None

    @classmethod
    def uses_labels(cls, info: DatasetInfo) -> bool:
        return info.num_classes > 0

    def forward(
        self, features: torch.Tensor, targets: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = targets["latents"].flatten(0, 1).float()
        latent_loss = F.mse_loss(self.head(features).float(), target)
        metrics = {"latent_mse": latent_loss.detach()}
        loss = latent_loss
        if self.class_head is not None:
            labels = targets["label"].long().repeat_interleave(targets["views"])
            logits = self.class_head(features).float()
            class_loss = F.cross_entropy(logits, labels)
            metrics.update(
                class_ce=class_loss.detach(), accuracy=(logits.argmax(1) == labels).float().mean()
            )
            loss = loss + class_loss
        return loss, metrics


@OBJECTIVES.register("classifier", aliases=["ce"])
class Classifier(Objective):
    """Softmax cross-entropy on the generator's classes, with Tx and without Tz (App. C.2.3)."""

    name = "classifier"
    needs_labels = True
    default_views = 1

    def __init__(
        self,
        feature_dim: int,
        info: DatasetInfo,
        projection_dim: int = 128,
        temperature: float = 0.1,
    ) -> None:
        super().__init__(feature_dim, info, projection_dim, temperature)
        self.head = nn.Linear(feature_dim, info.num_classes)

    def forward(
        self, features: torch.Tensor, targets: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = targets["label"].long().repeat_interleave(targets["views"])
        logits = self.head(features).float()
        loss = F.cross_entropy(logits, labels)
        return loss, {"accuracy": (logits.argmax(1) == labels).float().mean()}
