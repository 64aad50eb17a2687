"""Contract tests over every registered name: a new generator, view, edit, objective, Tx recipe,
image encoder, probe protocol or probe dataset is tested by being registered (CONTRIBUTING.md)."""

from __future__ import annotations

import inspect
import io

import numpy as np
import pytest
import torch
from PIL import Image

from genrep.errors import UserError
from genrep.evaluate.datasets.base import DATASETS
from genrep.evaluate.protocols.base import PROTOCOLS
from genrep.generate.edits.base import EDITS
from genrep.generate.image_encoders import IMAGE_ENCODERS
from genrep.generate.models.base import GENERATORS, Generator
from genrep.generate.views.base import VIEWS, build_view
from genrep.registry import Registry, RegistryError
from genrep.train.data import DatasetInfo
from genrep.train.objectives.base import OBJECTIVES
from genrep.train.tx.base import TX_RECIPES, build_recipe

REGISTRIES: dict[str, Registry] = {
    "generator": GENERATORS,
    "view": VIEWS,
    "edit": EDITS,
    "image encoder": IMAGE_ENCODERS,
    "objective": OBJECTIVES,
    "tx": TX_RECIPES,
    "protocol": PROTOCOLS,
    "dataset": DATASETS,
}


def entries(*kinds: str) -> list:
    """(registry, name) for every canonical name of the registries `kinds` (all by default)."""
    kinds = kinds or tuple(REGISTRIES)
    return [
        pytest.param(REGISTRIES[kind], name, id=f"{kind}:{name}")
        for kind in kinds
        for name in REGISTRIES[kind].canonical_names()
    ]


def test_every_registry_has_entries():
    for kind, registry in REGISTRIES.items():
        assert registry.canonical_names(), f"the {kind} registry found no entries"


@pytest.mark.parametrize("registry, name", entries())
def test_entry_is_documented_and_named_as_typed(registry, name):
    entry = registry.get(name)
    assert callable(entry)
    assert registry.canonical(name) == name
    assert name == name.lower() and " " not in name, "names are typed on command lines"
    doc = entry.__doc__  # its own, not inherited from the interface
    assert doc and doc.strip(), f"{name}: help texts show the entry's docstring; give it one"
    # A class registered by name knows its name (the manifest and reports record it).
    if inspect.isclass(entry) and hasattr(entry, "name") and isinstance(entry.name, str):
        assert entry.name in ("", name) or registry.canonical(entry.name) == name


@pytest.mark.parametrize("registry, name", entries())
def test_aliases_resolve_to_their_entry(registry, name):
    for alias in registry.names():
        if registry.canonical(alias) == name:
            assert registry.get(alias) is registry.get(name)


@pytest.mark.parametrize("registry, name", entries())
def test_an_option_the_entry_does_not_take_is_refused_by_name(registry, name):
    if registry.takes_any_option(name):
        pytest.skip("takes any option (**kwargs)")
    context = {GENERATORS: 3, VIEWS: 1, OBJECTIVES: 2, IMAGE_ENCODERS: 3}.get(registry, 0)
    with pytest.raises(RegistryError, match="no_such_option"):
        registry.check_options(name, context, no_such_option=1)


def test_an_unknown_name_lists_the_registered_ones():
    for registry in REGISTRIES.values():
        with pytest.raises(RegistryError) as raised:
            registry.get("no-such-entry")
        assert "\n" not in str(raised.value)
        assert registry.canonical_names()[0] in str(raised.value)


@pytest.fixture(scope="module")
def embedded() -> Generator:
    """A small class-conditional embedded generator (views such as `independent` need classes)."""
    return GENERATORS.build("embedded", None, 3, torch.device("cpu"), resolution=32)


@pytest.mark.parametrize("registry, name", entries("generator"))
def test_generator_builds_without_weights_or_says_what_to_pass(registry, name):
    try:
        generator = registry.build(name, None, None, torch.device("cpu"))
    except UserError as err:
        assert "\n" not in str(err) and str(err)
        return
    z = torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(2, dtype=torch.long) if generator.conditional else None
    with torch.no_grad():
        images = generator(z, y)
        assert torch.equal(images, generator(z, y)), "a generator is a fixed function"
    assert images.shape == (2, 3, *generator.frame)
    assert images.min() >= -1 and images.max() <= 1


@pytest.mark.parametrize("registry, name", entries("view"))
def test_view_draws_k_neighbor_latents_from_the_sample_stream(registry, name, embedded):
    try:
        view = build_view(name, embedded)
    except RegistryError as err:  # `steer` needs the walks trained for the generator
        assert "--walks" in str(err) and "\n" not in str(err)
        return
    z = np.random.default_rng(0).standard_normal(embedded.z_dim).astype(np.float32)
    if not view.has_neighbors:
        return
    latents, params = view.neighbors(z, 1, np.random.default_rng(1), 3)
    assert latents.shape == (3, z.shape[0]) and latents.dtype == np.float32
    assert len(params) == 3 and all(isinstance(p, dict) for p in params)
    again, _ = view.neighbors(z, 1, np.random.default_rng(1), 3)
    np.testing.assert_array_equal(latents, again)


@pytest.mark.parametrize("registry, name", entries("edit"))
def test_edit_at_its_identity_step_changes_nothing(registry, name):
    edit = registry.build(name)
    assert edit.walks
    alpha = torch.full((2, len(edit.walks)), float(edit.identity), dtype=torch.float64)
    matrix = edit.matrix(alpha, 16, 16)
    if matrix is not None:
        matrix = matrix / matrix[:, 2:, 2:]  # a homography is defined up to scale
        torch.testing.assert_close(matrix, torch.eye(3, dtype=matrix.dtype).expand(2, 3, 3))
    offset = edit.offset(alpha)
    if offset is not None:
        assert torch.count_nonzero(offset) == 0


@pytest.mark.parametrize("registry, name", entries("image encoder"))
def test_image_encoder_writes_decodable_images_of_the_input(registry, name):
    pixels = torch.randint(0, 256, (2, 3, 16, 24), dtype=torch.uint8)
    encoder = registry.build(name, "jpg", 95, torch.device("cpu"))
    encoded = encoder.encode(pixels, None)
    assert isinstance(encoded, list) and len(encoded) == 2
    with Image.open(io.BytesIO(encoded[0])) as image:
        assert image.size == (24, 16)


@pytest.mark.parametrize("registry, name", entries("objective"))
def test_objective_gives_a_finite_loss_with_gradient(registry, name):
    info = DatasetInfo("toy", 64, 32, 1, 8, [0, 1, 2], None, [])
    objective = registry.build(name, 16, info)
    views = max(objective.min_views, 2)
    features = torch.randn(4 * views, 16, requires_grad=True)
    targets = {
        "views": views,
        "label": torch.tensor([0, 1, 2, 0]),
        "latents": torch.randn(4, views, 8),
    }
    loss = objective(features, targets)
    loss = loss[0] if isinstance(loss, tuple) else loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


@pytest.mark.parametrize("registry, name", entries("tx"))
def test_tx_recipe_makes_uint8_views_of_the_input_size(registry, name):
    recipe = build_recipe(name)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8))
    for augment in (True, False):
        view = recipe.view_transform(augment, 24, 32)(image)
        assert view.dtype == torch.uint8 and view.shape == (3, 24, 24)


@pytest.mark.parametrize("registry, name", entries("protocol"))
def test_protocol_names_its_metric(registry, name):
    protocol = registry.build(name)
    assert protocol.primary_metric


@pytest.mark.parametrize("registry, name", entries("dataset"))
def test_dataset_needs_a_root_or_holds_both_splits(registry, name):
    entry = registry.get(name)
    if entry.needs_root:
        with pytest.raises(UserError, match="--root"):
            registry.build(name)
        return
    dataset = registry.build(name)
    for split in dataset.splits:
        assert len(dataset.items[split]) == len(dataset.targets[split]) > 0
