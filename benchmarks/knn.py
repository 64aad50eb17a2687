"""faiss kNN (genrep-probe's `knn` protocol) against scikit-learn brute force, measured in one run.

Both search the same L2-normalized features for the k most cosine-similar training points and
score classes with the same temperature-weighted vote; the script prints both wall times, their
ratio, and checks that the two give the same predictions.

    python benchmarks/knn.py                     # 50k x 2048 training features, 10k queries
    python benchmarks/knn.py --train 5000 --queries 1000 --gpu
"""

from __future__ import annotations

import time

import click
import numpy as np

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


@click.command()
@click.option("--train", "train_rows", default=50_000, show_default=True, help="Training features.")
@click.option("--queries", default=10_000, show_default=True, help="Query features.")
@click.option("--dim", default=2048, show_default=True, help="Feature dimension (ResNet-50: 2048).")
@click.option("--classes", default=100, show_default=True)
@click.option("--k", default=200, show_default=True)
@click.option("--temperature", default=0.07, show_default=True)
@click.option(
    "--gpu", is_flag=True, help="Search with a faiss GPU index (needs a GPU build of faiss)."
)
@click.option("--seed", default=0, show_default=True)
def main(
    train_rows: int,
    queries: int,
    dim: int,
    classes: int,
    k: int,
    temperature: float,
    gpu: bool,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)).astype(np.float32)
    train, labels = clustered_features(train_rows, centers, rng)
    query, query_labels = clustered_features(queries, centers, rng)
    click.echo(
        f"{train_rows} x {dim} training features, {queries} queries, k={k}, {classes} classes"
    )

    start = time.perf_counter()
    faiss_scores = knn_scores(
        train, labels, query, classes, k=k, temperature=temperature, use_gpu=gpu
    )
    faiss_seconds = time.perf_counter() - start

    start = time.perf_counter()
    sklearn_scores = sklearn_knn_scores(
        l2_normalize(train), labels, l2_normalize(query), classes, k, temperature
    )
    sklearn_seconds = time.perf_counter() - start

    faiss_top1, sklearn_top1 = faiss_scores.argmax(1), sklearn_scores.argmax(1)
    agreement = float((faiss_top1 == sklearn_top1).mean())
    click.echo(f"faiss ({'GPU' if gpu else 'CPU'}):       {faiss_seconds:8.2f} s")
    click.echo(f"scikit-learn brute:  {sklearn_seconds:8.2f} s")
    click.echo(f"speed-up:            {sklearn_seconds / faiss_seconds:8.2f}x")
    click.echo(
        f"top-1 agreement:     {100 * agreement:8.3f} %  "
        f"(accuracy {100 * (faiss_top1 == query_labels).mean():.2f} %)"
    )
    # Float rounding may reorder near-equal neighbours at the k-th place; predictions must still agree.
    if agreement < 0.999:
        raise SystemExit(
            f"faiss and scikit-learn disagree on {100 * (1 - agreement):.2f}% of predictions"
        )


if __name__ == "__main__":
    main()
