"""The kNN probe's two exact search engines agree: faiss (Linux x86_64 wheels) and the torch
matrix product + top-k that replaces it where faiss is not installed."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from genrep.evaluate.protocols import knn
from genrep.evaluate.protocols.base import l2_normalize

pytest.importorskip("faiss")
CPU = torch.device("cpu")


@pytest.mark.parametrize("rows, queries, dim, k", [(500, 64, 32, 10), (300, 7, 128, 300)])
def test_engines_find_the_same_neighbours(rows, queries, dim, k):
    rng = np.random.default_rng(rows)
    train = l2_normalize(rng.normal(size=(rows, dim)).astype(np.float32))
    query = l2_normalize(rng.normal(size=(queries, dim)).astype(np.float32))
    sim_faiss, idx_faiss = knn.faiss_search(train, query, k, CPU)
    sim_torch, idx_torch = knn.torch_search(train, query, k, CPU, 5)
    np.testing.assert_allclose(sim_torch, sim_faiss, atol=1e-5)
    differ = idx_faiss != idx_torch
    # Where the order differs, the two neighbours are tied (equal similarity up to rounding).
    exact = np.einsum("qd,qkd->qk", query, train[idx_torch])
    np.testing.assert_allclose(exact, sim_torch, atol=1e-5)
    assert differ.mean() < 0.01
    assert np.all(np.abs(sim_faiss - sim_torch)[differ] < 1e-5)


def test_engines_give_the_same_scores():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 3
    labels = rng.integers(0, 5, 400)
    train = (centers[labels] + rng.normal(size=(400, 16))).astype(np.float32)
    query_labels = rng.integers(0, 5, 50)
    query = (centers[query_labels] + rng.normal(size=(50, 16))).astype(np.float32)
    scores = {
        engine: knn.knn_scores(train, labels, query, 5, k=20, engine=engine)
        for engine in knn.ENGINES
    }
    np.testing.assert_allclose(scores["torch"], scores["faiss"], rtol=1e-4, atol=1e-6)
    assert (scores["torch"].argmax(1) == query_labels).mean() > 0.9


def test_torch_is_the_engine_without_faiss(monkeypatch):
    real_find_spec = knn.importlib.util.find_spec
    monkeypatch.setattr(
        knn.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "faiss" else real_find_spec(name, *args),
    )
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    assert knn.default_engine() == "torch"
    rng = np.random.default_rng(1)
    train = rng.normal(size=(40, 8)).astype(np.float32)
    scores = knn.knn_scores(train, rng.integers(0, 3, 40), train, 3, k=5)
    assert scores.shape == (40, 3) and np.isfinite(scores).all()
