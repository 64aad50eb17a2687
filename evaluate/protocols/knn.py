"""`knn`: temperature-weighted k-nearest-neighbour classification of frozen features (faiss)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from genrep.errors import UsageError
from genrep.evaluate.datasets import ProbeDataset
from genrep.evaluate.features import FrozenFeatures
from genrep.evaluate.protocols.base import PROTOCOLS, Protocol, l2_normalize, topk_accuracy


def knn_index(features: np.ndarray, use_gpu: bool = False, gpu_id: int = 0):
    """An exact inner-product faiss index over L2-normalized `features` (cosine similarity)."""
    import faiss

    index = faiss.IndexFlatIP(features.shape[1])
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu_id, index)
    index.add(features)
    return index


def weighted_votes(
    similarity: np.ndarray,
    neighbors: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    temperature: float,
) -> np.ndarray:
    """Class scores [Nq, C] from each query's neighbours (sorted most similar first): every neighbour
    votes for its class with weight exp(similarity / temperature), as in Wu et al. 2018."""
    similarity = torch.from_numpy(np.asarray(similarity, dtype=np.float32))
    # Shifting by each row's best similarity rescales its votes alike and keeps exp() finite.
    weights = torch.exp((similarity - similarity[:, :1]) / temperature)
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    votes = torch.zeros(len(similarity), num_classes, dtype=torch.float32)
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
    use_gpu: bool = False,
    gpu_id: int = 0,
    query_batch: int = 4096,
) -> np.ndarray:
    """Weighted kNN class scores [Nq, C] over the k most cosine-similar training points (exact search)."""
    k = min(k, len(train_features))
    index = knn_index(l2_normalize(train_features), use_gpu, gpu_id)
    queries = l2_normalize(query_features)
    scores = []
    for start in range(0, len(queries), query_batch):
        similarity, neighbors = index.search(queries[start : start + query_batch], k)
        scores.append(weighted_votes(similarity, neighbors, train_labels, num_classes, temperature))
    return np.concatenate(scores)


@PROTOCOLS.register("knn")
class KNNProtocol(Protocol):
    """Temperature-weighted k-nearest-neighbour classification with faiss, on the GPU when there is one."""

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
        import faiss

        dataset = inputs.dataset
        fit, evaluate = dataset.splits
        use_gpu = inputs.device.type == "cuda" and faiss.get_num_gpus() > 0
        scores = knn_scores(
            inputs.eval_features(fit),
            dataset.targets[fit],
            inputs.eval_features(evaluate),
            len(dataset.classes),
            k=self.k,
            temperature=self.temperature,
            use_gpu=use_gpu,
            gpu_id=inputs.device.index or 0,
        )
        return topk_accuracy(scores, dataset.targets[evaluate]), {"faiss_gpu": use_gpu}
