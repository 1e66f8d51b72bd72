"""Facility location on embeddings (lazy greedy via apricot): dense similarity, or a sparse k-NN one for big pools."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from superfilter.errors import ConfigError

log = logging.getLogger(__name__)

SIMILARITIES = ("euclidean", "cosine")


@dataclass(frozen=True)
class FacilityResult:
    order: list[int]  # row indices into the embedding matrix, in greedy order
    mode: str  # dense | sparse
    n_neighbors: int  # 0 in dense mode
    objective: float  # facility-location value of the chosen set under the similarity used


def similarity_from_distance(distance: np.ndarray, dim: int, metric: str) -> np.ndarray:
    """The similarity the authors' submodlib kernel uses, in place where possible.

    euclidean: exp(-‖a−b‖ / dim) (submodlib's create_kernel, gamma = 1/dim); cosine: 1 − ‖a−b‖²/2, which is the
    cosine similarity for the L2-normalised embeddings we use, shifted by +1 so that it is non-negative (apricot
    rejects mixed-sign matrices; a constant shift does not change which set facility location prefers).
    """
    if metric == "euclidean":
        np.multiply(distance, -1.0 / dim, out=distance)
        return np.exp(distance, out=distance)
    if metric == "cosine":
        np.square(distance, out=distance)
        np.multiply(distance, -0.5, out=distance)
        np.add(distance, 2.0, out=distance)
        return np.maximum(distance, 0.0, out=distance)  # rounding can leave -1e-16 for opposite vectors
    raise ConfigError(f"facility location similarity must be one of {SIMILARITIES}, got {metric!r}")


def dense_similarity(x: np.ndarray, metric: str) -> np.ndarray:
    """n × n float64 similarity (apricot computes in float64, so building it in float32 would only add a copy)."""
    # deferred: scikit-learn/apricot load only for the selectors that use them
    from sklearn.metrics import pairwise_distances

    distance = pairwise_distances(x.astype(np.float64, copy=False), metric="euclidean")
    return similarity_from_distance(distance, x.shape[1], metric)


def knn_similarity(x: np.ndarray, n_neighbors: int, metric: str) -> sp.csr_matrix:
    """Symmetric sparse similarity that keeps each point's n_neighbors nearest (itself included), like submodlib's
    sparse mode. Indices are int32: apricot's numba kernels are compiled for int32 and reject scikit-learn's int64."""
    # deferred: scikit-learn/apricot load only for the selectors that use them
    from sklearn.neighbors import NearestNeighbors

    n = x.shape[0]
    k = min(n_neighbors, n)
    distance, index = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    values = similarity_from_distance(distance.astype(np.float64), x.shape[1], metric)
    graph = sp.csr_matrix((values.ravel(), index.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    # Symmetric so that the gain of a candidate (apricot reads its row) counts every point it would cover.
    graph = graph.maximum(graph.T).tocsr()
    graph.sort_indices()
    graph.indices = graph.indices.astype(np.int32)
    graph.indptr = graph.indptr.astype(np.int32)
    return graph


def facility_objective(similarity: np.ndarray | sp.csr_matrix, chosen: list[int]) -> float:
    """Σ_j max_{s ∈ chosen} sim(j, s)."""
    if not chosen:
        return 0.0
    block = similarity[chosen]
    best = block.max(axis=0)
    best = best.toarray() if sp.issparse(best) else best
    return float(np.asarray(best).sum())


def facility_location(
    x: np.ndarray, k: int, metric: str = "euclidean", dense_max: int = 12_000, n_neighbors: int = 300,
) -> FacilityResult:
    """Greedily pick k rows of `x` maximising facility location (lazy greedy, as the authors' submodlib run).
    k = n is a ranking, not the identity: a token budget takes the prefix of the greedy order that fits.

    Above `dense_max` rows the n × n matrix (8n² bytes) is replaced by a k-NN graph (about 2·n·n_neighbors
    entries); experiments/bench_facility_location measured both. Ties are broken by row order, so callers pass
    rows in a deterministic order.
    """
    # deferred: scikit-learn/apricot load only for the selectors that use them
    from apricot import FacilityLocationSelection

    n = x.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"facility location: cannot choose {k} of {n} rows")
    if n == 1:
        return FacilityResult([0], "none", 0, float("nan"))
    sparse = n > dense_max
    similarity = knn_similarity(x, n_neighbors, metric) if sparse else dense_similarity(x, metric)
    log.info("facility location: %d of %d rows, %s similarity (%s)", k, n, "sparse" if sparse else "dense", metric)
    selector = FacilityLocationSelection(k, metric="precomputed", optimizer="lazy").fit(similarity)
    order = [int(i) for i in selector.ranking]
    return FacilityResult(order, "sparse" if sparse else "dense", n_neighbors if sparse else 0,
                          facility_objective(similarity, order))
