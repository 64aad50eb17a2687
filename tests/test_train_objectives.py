"""Objectives and Tx recipes of genrep-train: losses against hand computations, DDP gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image

from genrep.errors import DataError
from genrep.registry import RegistryError
from genrep.train.data import DatasetInfo
from genrep.train.objectives import OBJECTIVES
from genrep.train.tx import TX_RECIPES, build_recipe


def info(classes=None, z_dim=8, name="toy") -> DatasetInfo:
    return DatasetInfo(name, 64, 32, 1, z_dim, classes, None, [])


def batch_of(samples: int, views: int, labels=None, z_dim=8) -> dict:
    """The targets of a batch, as the trainer hands them to an objective."""
    return {
        "views": views,
        "latents": torch.randn(samples, views, z_dim),
        "label": torch.as_tensor(labels if labels is not None else [-1] * samples),
    }


def projections(objective, features):
    return F.normalize(objective.head(features), dim=1)


def test_registries_list_every_objective_and_recipe():
    assert {"simclr", "supcon", "inverter", "classifier"} <= set(OBJECTIVES.names())
    assert {"genrep", "simclr"} <= set(TX_RECIPES.names())
    with pytest.raises(RegistryError, match="choose one of"):
        OBJECTIVES.get("byol")


def test_objectives_take_only_their_own_options():
    for name in ("simclr", "supcon"):
        assert set(OBJECTIVES.options(name, 2)) == {
            "projection_dim",
            "temperature",
            "base_temperature",
        }
    for name in ("inverter", "classifier"):
        assert OBJECTIVES.options(name, 2) == {}
    labelled = info(classes=[0, 1])
    with pytest.raises(RegistryError, match="'inverter' does not take 'temperature'"):
        OBJECTIVES.build("inverter", 16, labelled, temperature=0.2)
    with pytest.raises(RegistryError, match="does not take 'projection_dim'; it takes: no options"):
        OBJECTIVES.build("classifier", 16, labelled, projection_dim=8)
    # None means the objective's default.
    simclr = OBJECTIVES.build("simclr", 16, labelled, temperature=None, projection_dim=None)
    assert simclr.temperature == 0.1 and simclr.head[-1].out_features == 128
    assert simclr.base_temperature == 0.07  # SupConLoss's, which the released code left as is
    assert OBJECTIVES.build("supcon", 16, labelled, temperature=0.5).temperature == 0.5


@pytest.mark.parametrize("name", ["simclr", "supcon"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_contrastive_losses_stay_fp32_under_autocast(name, dtype):
    # fp16 similarities would overflow where pairs are masked; bf16 ones would lose precision.
    torch.manual_seed(5)
    objective = OBJECTIVES.build(name, 16, info(classes=[0, 1, 2]), projection_dim=8)
    features, targets = torch.randn(4 * 2, 16), batch_of(4, 2, [0, 1, 0, 2])
    expected, _ = objective(features, targets)
    with torch.autocast("cpu", dtype=dtype):
        loss, _ = objective(features, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # Only the projection head runs in the low precision.
    assert loss.item() == pytest.approx(expected.item(), rel=2e-2)


def test_contrastive_logits_are_fp32_under_autocast(monkeypatch):
    """The similarities themselves (not only the loss) are fp32 whatever the autocast dtype."""
    torch.manual_seed(6)
    objective = OBJECTIVES.build("supcon", 16, info(classes=[0, 1]), projection_dim=8)
    seen = []
    original = type(objective).pair_losses

    def spy(self, logits, positive, not_self):
        seen.append(logits.dtype)
        return original(self, logits, positive, not_self)

    monkeypatch.setattr(type(objective), "pair_losses", spy)
    features, targets = torch.randn(4 * 2, 16), batch_of(4, 2, [0, 1, 0, 1])
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            assert objective.head(features).dtype == dtype  # the head does run in low precision
            objective(features, targets)
    assert seen == [torch.float32, torch.float32]


def supcontrast_reference(z, groups, temperature, base_temperature):
    """The loss of SupContrast's SupConLoss written out from its definition (Khosla et al. 2020,
    L_out, with the released scale): for every row i, the mean over its positives p (other rows of
    its group) of -log softmax over all other rows, times temperature / base_temperature, averaged
    over rows. With one group per sample it is SimCLR's NT-Xent."""
    sims = z @ z.T / temperature
    rows = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        log_denominator = torch.logsumexp(sims[i, others], 0)
        positives = [p for p in others if groups[p] == groups[i]]
        mean_log_prob = torch.stack([sims[i, p] - log_denominator for p in positives]).mean()
        rows.append(-(temperature / base_temperature) * mean_log_prob)
    return torch.stack(rows).mean()


@pytest.mark.parametrize("name", ["simclr", "supcon"])
def test_default_loss_equals_the_released_supcontrast_loss(name):
    """Defaults (temperature 0.1, base temperature 0.07) give the released code's loss on random
    inputs: SimCLR with two views, SupCon with labels."""
    torch.manual_seed(7)
    objective = OBJECTIVES.build(name, 16, info(classes=[0, 1, 2]), projection_dim=8)
    labels = [0, 1, 0, 2, 1]
    features = torch.randn(5 * 2, 16)  # 5 samples x 2 views, sample-major
    loss, _ = objective(features, batch_of(5, 2, labels))
    sample = torch.arange(5).repeat_interleave(2)
    groups = sample if name == "simclr" else torch.tensor(labels)[sample]
    expected = supcontrast_reference(projections(objective, features), groups, 0.1, 0.07)
    assert torch.allclose(loss, expected, atol=1e-5)
    plain = OBJECTIVES.build(
        name, 16, info(classes=[0, 1, 2]), projection_dim=8, base_temperature=0.1
    )
    plain.load_state_dict(objective.state_dict())
    unscaled, _ = plain(features, batch_of(5, 2, labels))
    assert loss.item() == pytest.approx(unscaled.item() / 0.7, rel=1e-6)  # x 0.1 / 0.07


def test_simclr_with_two_views_is_nt_xent():
    torch.manual_seed(0)
    objective = OBJECTIVES.build(
        "simclr", 16, info(), projection_dim=8, temperature=0.1, base_temperature=0.1
    )
    features = torch.randn(2 * 5, 16)  # 5 samples x 2 views, sample-major
    loss, _ = objective(features, batch_of(5, 2))
    z = projections(objective, features)
    logits = z @ z.T / 0.1
    logits.fill_diagonal_(-math.inf)
    partner = torch.arange(10) ^ 1  # rows 2i and 2i+1 are the two views of sample i
    expected = F.cross_entropy(logits, partner)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_simclr_multi_positive_follows_eq1_per_pair():
    torch.manual_seed(1)
    objective = OBJECTIVES.build(
        "simclr", 16, info(), projection_dim=8, temperature=0.5, base_temperature=0.5
    )
    features = torch.randn(4 * 3, 16)  # 4 samples x 3 views
    loss, _ = objective(features, batch_of(4, 3))
    z = projections(objective, features)
    sims = (z @ z.T / 0.5).exp()
    sample = torch.arange(12) // 3
    terms = []
    for a in range(12):
        negatives = sims[a][sample != sample[a]].sum()
        for p in range(12):
            if p != a and sample[p] == sample[a]:
                terms.append(-torch.log(sims[a, p] / (sims[a, p] + negatives)))
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)


def test_supcon_positives_share_the_class():
    torch.manual_seed(2)
    objective = OBJECTIVES.build(
        "supcon",
        16,
        info(classes=[0, 1, 2]),
        projection_dim=8,
        temperature=0.1,
        base_temperature=0.1,
    )
    labels = [0, 1, 0, 2]
    features = torch.randn(4 * 2, 16)
    loss, _ = objective(features, batch_of(4, 2, labels))
    z = projections(objective, features)
    logits = z @ z.T / 0.1
    row_label = torch.tensor(labels).repeat_interleave(2)
    per_anchor = []
    for a in range(8):
        others = [k for k in range(8) if k != a]
        log_denominator = torch.logsumexp(logits[a, others], 0)
        positives = [p for p in others if row_label[p] == row_label[a]]
        per_anchor.append(torch.stack([log_denominator - logits[a, p] for p in positives]).mean())
    assert torch.allclose(loss, torch.stack(per_anchor).mean(), atol=1e-5)


def test_supcon_anchor_without_positive_gives_no_nan():
    torch.manual_seed(3)
    objective = OBJECTIVES.build("supcon", 16, info(classes=[0, 1, 2]), projection_dim=8)
    features = torch.randn(3, 16, requires_grad=True)
    # One view per sample and three different classes: no anchor has a positive.
    loss, _ = objective(features, batch_of(3, 1, [0, 1, 2]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(features.grad).all()
    # Mixed: two anchors share a class, the third has none; the loss only counts the first two.
    features = torch.randn(3, 16, requires_grad=True)
    loss, _ = objective(features, batch_of(3, 1, [0, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert torch.isfinite(features.grad).all()


def test_inverter_regresses_z_and_class_when_conditional():
    torch.manual_seed(4)
    unconditional = OBJECTIVES.build("inverter", 16, info(z_dim=8))
    assert unconditional.class_head is None
    batch = batch_of(4, 1, z_dim=8)
    features = torch.randn(4, 16)
    loss, metrics = unconditional(features, batch)
    expected = F.mse_loss(unconditional.head(features), batch["latents"].flatten(0, 1))
    assert torch.allclose(loss, expected) and "latent_mse" in metrics

    conditional = OBJECTIVES.build("inverter", 16, info(classes=[5, 7], z_dim=8))
    batch = batch_of(4, 1, [0, 1, 1, 0], z_dim=8)
    loss, metrics = conditional(features, batch)
    expected = F.mse_loss(
        conditional.head(features), batch["latents"].flatten(0, 1)
    ) + F.cross_entropy(conditional.class_head(features), batch["label"])
    assert torch.allclose(loss, expected) and "class_ce" in metrics


def test_objectives_refuse_data_without_their_targets():
    with pytest.raises(DataError, match="needs class labels"):
        OBJECTIVES.build("supcon", 16, info(classes=None))
    with pytest.raises(DataError, match="needs class labels"):
        OBJECTIVES.build("classifier", 16, info(classes=None))
    with pytest.raises(DataError, match="real images have no latents"):
        OBJECTIVES.build("inverter", 16, info(z_dim=None))


def test_recipes():
    genrep, simclr = build_recipe("genrep"), build_recipe("simclr")
    assert genrep.default_input_size(128) == 112  # 0.875 crop of the released code
    assert simclr.default_input_size(128) == 128
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    for recipe in (genrep, simclr):
        assert recipe.augment(32)(image).shape == (3, 32, 32)
    plain = genrep.plain(28, 32)
    assert torch.equal(plain(image), plain(image))  # no randomness without Tx
    torch.manual_seed(0)
    colorful = Image.frombytes(
        "RGB", (40, 40), torch.randint(0, 255, (40 * 40 * 3,), dtype=torch.uint8).numpy().tobytes()
    )
    views = {tuple(simclr.augment(32)(colorful).flatten()[:50].tolist()) for _ in range(4)}
    assert len(views) > 1  # Tx is random


GATHER_OBJECTIVES = ("simclr", "supcon")


def _rank_gradients(rank: int, world: int, init_file: str, out: str) -> None:
    """One rank of the gather test: its share of each objective's gradient, saved to `out.RANK`."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        result = {}
        for name in GATHER_OBJECTIVES:
            objective, features, labels = _setup(name)
            mine = slice(rank * 8, (rank + 1) * 8)  # 4 samples x 2 views per rank
            local = features[mine].clone().requires_grad_(True)
            loss, _ = objective(local, batch_of(4, 2, labels[rank * 4 : (rank + 1) * 4]))
            loss.backward()
            for param in objective.parameters():
                torch.distributed.all_reduce(param.grad)
                param.grad /= world  # what DDP does
            result[name] = {
                "features": local.grad / world,
                "head": [p.grad.clone() for p in objective.parameters()],
            }
        torch.save(result, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def _setup(name: str):
    torch.manual_seed(0)
    objective = OBJECTIVES.build(name, 16, info(classes=[0, 1, 2]), projection_dim=8)
    return objective, torch.randn(8 * 2, 16), torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])


def test_cross_rank_gather_gives_the_single_process_gradient(tmp_path):
    """Two gloo ranks with half the batch each get the gradient of the whole batch."""
    mp.spawn(_rank_gradients, args=(2, str(tmp_path / "pg"), str(tmp_path / "grad")), nprocs=2)
    for name in GATHER_OBJECTIVES:
        objective, features, labels = _setup(name)
        features.requires_grad_(True)
        loss, _ = objective(features, batch_of(8, 2, labels))
        loss.backward()
        for rank in range(2):
            got = torch.load(tmp_path / f"grad.{rank}", weights_only=True)[name]
            assert torch.allclose(
                got["features"], features.grad[rank * 8 : (rank + 1) * 8], atol=1e-6
            )
            for mine, full in zip(got["head"], objective.parameters(), strict=True):
                assert torch.allclose(mine, full.grad, atol=1e-6)
