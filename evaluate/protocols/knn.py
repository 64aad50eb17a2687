"""`knn`: temperature-weighted k-nearest-neighbour classification of frozen features.

The search is exact (cosine similarity = inner product of L2-normalized features) and runs on one
of two engines with the same results: faiss (`IndexFlatIP`, on the GPU when there is one), where
its wheels exist (Linux x86_64), and otherwise a matrix product + top-k in torch on the probe's
device, so that genrep installs and probes everywhere.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from genrep.errors import UsageError
from genrep.evaluate.datasets import ProbeDataset
from genrep.evaluate.features import FrozenFeatures
from genrep.evaluate.protocols.base import PROTOCOLS, Protocol, l2_normalize, topk_accuracy

#: a search: (normalized train features, normalized queries, k, device) -> (similarity, index)
Search = Callable[[np.ndarray, np.ndarray, int, torch.device], tuple[np.ndarray, np.ndarray]]


def faiss_gpu_available() -> bool:
    import faiss

    return faiss.get_num_gpus() > 0


def faiss_search(
    train: np.ndarray, queries: np.ndarray, k: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search with a faiss flat index (a GPU index on a CUDA device)."""
    import faiss

    index: faiss.Index = faiss.IndexFlatIP(train.shape[1])
    if device.type == "cuda" and faiss_gpu_available():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, index)
    index.add(train)
    return index.search(queries, k)


def torch_search(
    train: np.ndarray, queries: np.ndarray, k: int, device: torch.device, query_batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search as faiss's flat index does it: one matrix product of a batch of
    queries with all training features, then top-k, on `device`."""
    train_t = torch.from_numpy(train).to(device)
    similarity, index = [], []
    with torch.inference_mode():
        for start in range(0, len(queries), query_batch):
            batch = torch.from_numpy(queries[start : start + query_batch]).to(device)
            top = torch.topk(batch @ train_t.T, k, dim=1)
            similarity.append(top.values.cpu())
            index.append(top.indices.cpu())
    return torch.cat(similarity).numpy(), torch.cat(index).numpy()


#: kNN engines by name; both exact, both L2-normalized inner products
ENGINES: dict[str, Search] = {"faiss": faiss_search, "torch": torch_search}


def default_engine() -> str:
    """faiss where it is installed (setup.cfg installs it on Linux x86_64), else torch."""
    return "faiss" if importlib.util.find_spec("faiss") is not None else "torch"


def weighted_votes(
    similarity: np.ndarray,
    neighbors: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    temperature: float,
) -> np.ndarray:
    """Class scores [Nq, C] from each query's neighbours (sorted most similar first): every neighbour
    votes for its class with weight exp(similarity / temperature), as in Wu et al. 2018."""
    scores = torch.from_numpy(np.asarray(similarity, dtype=np.float32))
    # Shifting by each row's best similarity rescales its votes alike and keeps exp() finite.
    weights = torch.exp((scores - scores[:, :1]) / temperature)
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    votes = torch.zeros(len(scores), num_classes, dtype=torch.float32)
    votes.scatter_add_(1, labels[torch.from_numpy(np.asarray(neighbors, dtype=np.int64))], weights)
    return votes.numpy()


def knn_scores(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray,
    num_classes: int,
    *,
    k: int = 200,
    temperature: float = 0.07,
    engine: str | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Weighted kNN class scores [Nq, C] over the k most cosine-similar training points (exact
    search with `engine`, default `default_engine()`, on `device`)."""
    k = min(k, len(train_features))
    search = ENGINES[engine or default_engine()]
    similarity, neighbors = search(
        l2_normalize(train_features), l2_normalize(query_features), k, torch.device(device)
    )
    return weighted_votes(similarity, neighbors, train_labels, num_classes, temperature)


@PROTOCOLS.register("knn")
class KNNProtocol(Protocol):
    """Temperature-weighted k-nearest-neighbour classification (exact search: faiss, or torch
    where faiss is not installed), on the GPU when there is one."""

    primary_metric = "top1"

    def __init__(self, k: int = 200, temperature: float = 0.07) -> None:
        if k < 1 or temperature <= 0:
            raise UsageError("--k must be at least 1 and --temperature positive")
        self.k, self.temperature = k, temperature

    def settings(self, dataset: ProbeDataset) -> dict[str, Any]:
        return {
            "k": self.k,
            "temperature": self.temperature,
            "metric": "cosine",
            "weighting": "exp(sim/T)",
        }

    def run(self, inputs: FrozenFeatures) -> tuple[dict[str, float], dict[str, Any]]:
        dataset = inputs.dataset
        fit, evaluate = dataset.splits
        engine = default_engine()
        scores = knn_scores(
            inputs.eval_features(fit),
            dataset.targets[fit],
            inputs.eval_features(evaluate),
            len(dataset.classes),
            k=self.k,
            temperature=self.temperature,
            engine=engine,
            device=inputs.device,
        )
        searched_on = inputs.device.type
        if engine == "faiss" and not faiss_gpu_available():
            searched_on = "cpu"
        return topk_accuracy(scores, dataset.targets[evaluate]), {
            "engine": engine,
            "search_device": searched_on,
        }
