"""kNN search engines of genrep-probe's `knn` protocol against the limit of exact kNN, in one run.

Exact k-nearest-neighbour search of Nq queries among N training features of dimension D costs at
least one Nq x D x N matrix product, so the baseline is the time of that bare product (float32,
the same shapes, on the same device). Each engine computes the protocol's class scores from the same
L2-normalized features and is reported as seconds and as its ratio to the bare product (1.0: the
limit; the top-k selection and the votes come on top of it):

- faiss: `IndexFlatIP` (a GPU index on a CUDA device), the engine where its wheels exist;
- torch: matrix product + top-k in torch, the engine elsewhere (macOS, aarch64);
- scikit-learn: brute-force cosine `NearestNeighbors`, a common choice (CPU only).

It also checks that every engine predicts the same classes as faiss.

    python benchmarks/knn.py                        # 50k x 2048 training features, 10k queries
    python benchmarks/knn.py --device cuda --train 1281167 --queries 50000
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

import click
import numpy as np
import torch

from genrep.evaluate.protocols.base import l2_normalize
from genrep.evaluate.protocols.knn import knn_scores, weighted_votes


def clustered_features(
    rows: int, centers: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Features shaped like a trained encoder's: class clusters wide enough to overlap a little."""
    labels = rng.integers(0, len(centers), rows)
    return centers[labels] + rng.normal(scale=8.0, size=centers[labels].shape).astype(
        np.float32
    ), labels


def sklearn_knn_scores(
    train: np.ndarray,
    labels: np.ndarray,
    queries: np.ndarray,
    classes: int,
    k: int,
    temperature: float,
) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(train)
    distance, neighbors = search.kneighbors(queries)
    return weighted_votes(1.0 - distance, neighbors, labels, classes, temperature)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_product_seconds(
    train: np.ndarray, queries: np.ndarray, device: torch.device, batch: int = 1024
) -> float:
    """Time of queries @ train.T on `device` (inputs already there; the limit of exact kNN).

    Done in query batches of the torch engine's size, so the product never holds more memory than
    the engines do; a warm-up batch runs first."""
    train_t = torch.from_numpy(train).to(device)
    queries_t = torch.from_numpy(queries).to(device)
    with torch.inference_mode():
        queries_t[:batch] @ train_t.T
        sync(device)
        started = time.perf_counter()
        for start in range(0, len(queries_t), batch):
            queries_t[start : start + batch] @ train_t.T
        sync(device)
    return time.perf_counter() - started


def timed(run: Callable[[], np.ndarray], device: torch.device) -> tuple[float, np.ndarray]:
    sync(device)
    started = time.perf_counter()
    result = run()
    sync(device)
    return time.perf_counter() - started, result


@click.command()
@click.option("--train", "train_rows", default=50_000, show_default=True, help="Training features.")
@click.option("--queries", default=10_000, show_default=True, help="Query features.")
@click.option("--dim", default=2048, show_default=True, help="Feature dimension (ResNet-50: 2048).")
@click.option("--classes", default=100, show_default=True)
@click.option("--k", default=200, show_default=True)
@click.option("--temperature", default=0.07, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--sklearn/--no-sklearn", default=True, help="Time scikit-learn too (CPU, slow).")
@click.option("--seed", default=0, show_default=True)
def main(
    train_rows: int,
    queries: int,
    dim: int,
    classes: int,
    k: int,
    temperature: float,
    device: str,
    sklearn: bool,
    seed: int,
) -> None:
    target = torch.device(device)
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)).astype(np.float32)
    train, labels = clustered_features(train_rows, centers, rng)
    query, query_labels = clustered_features(queries, centers, rng)
    click.echo(
        f"{train_rows} x {dim} training features, {queries} queries, k={k}, {classes} classes, "
        f"device {target}, torch threads {torch.get_num_threads()}"
    )
    limit = bare_product_seconds(l2_normalize(train), l2_normalize(query), target)
    engines: dict[str, Callable[[], np.ndarray]] = {}
    common = {"k": k, "temperature": temperature, "device": target}
    if importlib.util.find_spec("faiss") is not None:
        engines["faiss"] = lambda: knn_scores(
            train, labels, query, classes, engine="faiss", **common
        )
    engines["torch"] = lambda: knn_scores(train, labels, query, classes, engine="torch", **common)
    if sklearn:
        engines["scikit-learn"] = lambda: sklearn_knn_scores(
            l2_normalize(train), labels, l2_normalize(query), classes, k, temperature
        )
    click.echo(f"{'engine':<14}{'device':>8}{'seconds':>10}{'/ matmul':>10}{'agree':>9}{'top1':>8}")
    click.echo(f"{'bare matmul':<14}{target.type:>8}{limit:>10.3f}{1.0:>10.2f}")
    reference, failed = None, False
    for name, run in engines.items():
        seconds, scores = timed(run, target)
        top1 = scores.argmax(1)
        reference = top1 if reference is None else reference
        agreement = float((top1 == reference).mean())
        where = "cpu" if name == "scikit-learn" else target.type
        click.echo(
            f"{name:<14}{where:>8}{seconds:>10.3f}{seconds / limit:>10.2f}"
            f"{100 * agreement:>8.2f}%{100 * (top1 == query_labels).mean():>7.2f}%"
        )
        # Float rounding may reorder near-equal neighbours at the k-th place; predictions agree.
        failed |= agreement < 0.999
    if failed:
        raise SystemExit("the engines disagree on more than 0.1% of predictions")


if __name__ == "__main__":
    main()
