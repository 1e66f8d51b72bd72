"""Time and peak memory of facility location, dense vs sparse k-NN similarity, as the pool grows; prints a table.

Each (size, mode) runs in a fresh subprocess so its peak RSS is its own; k = n/10 (Superfiltering.D keeps 2% of
the data out of a 20% pool). Rows are real all-MiniLM-L6-v2 embeddings of data/alpaca_5000.json (embedded once,
cached under artifacts/), tiled with small noise beyond 5,000 rows. For sizes with a dense run, `gain kept` is
how much of the dense choice's improvement over a random subset the sparse choice keeps, both valued under the
dense similarity, and `overlap` is the share of chosen rows the two agree on.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE = PROJECT_ROOT / "artifacts" / "bench_facility_location" / "minilm_alpaca5k.npy"
DATA = PROJECT_ROOT / "data" / "alpaca_5000.json"
NOISE = 0.02


def real_embeddings() -> np.ndarray:
    if not CACHE.exists():
        from superfilter.data import DataConfig, load_examples
        from superfilter.embeddings import embed_texts, example_text

        examples, _ = load_examples(DataConfig(path=str(DATA), format="alpaca"))
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        np.save(CACHE, embed_texts([example_text(ex) for ex in examples], "minilm"))
    return np.load(CACHE)


def points(n: int, seed: int = 0) -> np.ndarray:
    real = real_embeddings()
    if n <= len(real):
        return real[:n]
    rng = np.random.default_rng(seed)
    tiles = [real] + [real + rng.normal(0, NOISE, real.shape).astype(np.float32)
                      for _ in range(n // len(real))]
    x = np.concatenate(tiles)[:n]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def one_run(n: int, mode: str, n_neighbors: int) -> dict:
    from superfilter.facility import facility_location

    x = points(n)
    k = max(1, n // 10)
    facility_location(x[:50], 5)  # compile apricot's numba kernels outside the timing
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = facility_location(x, k, dense_max=n if mode == "dense" else 0, n_neighbors=n_neighbors)
    seconds = time.perf_counter() - started
    peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib) / 1024
    return {"n": n, "k": k, "mode": mode, "seconds": seconds, "peak_mib": peak_mib, "order": result.order}


def quality(n: int, dense_order: list[int], sparse_order: list[int], seed: int = 0) -> tuple[float, float]:
    from superfilter.facility import dense_similarity, facility_objective

    similarity = dense_similarity(points(n), "euclidean")
    at_random = np.random.default_rng(seed).permutation(n)[:len(dense_order)].tolist()
    floor = facility_objective(similarity, at_random)
    best = facility_objective(similarity, dense_order)
    kept = (facility_objective(similarity, sparse_order) - floor) / (best - floor)
    return kept, len(set(dense_order) & set(sparse_order)) / len(dense_order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dense-sizes", type=int, nargs="+", default=[1000, 2500, 5000, 10000])
    parser.add_argument("--sparse-sizes", type=int, nargs="+", default=[1000, 2500, 5000, 10000, 20000])
    parser.add_argument("--n-neighbors", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality-max", type=int, default=5000, help="largest n compared with dense (8n² bytes)")
    parser.add_argument("--one", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(int(args.one[0]), args.one[1], args.n_neighbors)))
        return
    real_embeddings()  # embed once before the timed subprocesses
    runs = [(n, "dense") for n in args.dense_sizes] + [(n, "sparse") for n in args.sparse_sizes]
    results: dict[tuple[int, str], list[dict]] = {}
    for _ in range(args.repeats):  # alternate sizes and modes so a busy host hits them evenly
        for n, mode in runs:
            out = subprocess.run([sys.executable, __file__, "--one", str(n), mode, "--n-neighbors",
                                  str(args.n_neighbors)], check=True, capture_output=True, text=True).stdout
            results.setdefault((n, mode), []).append(json.loads(out.strip().splitlines()[-1]))
    print(f"n_neighbors={args.n_neighbors}, medians of {args.repeats} runs")
    print("| n | k | mode | seconds | peak MiB | gain kept vs dense | overlap with dense |")
    print("|---|---|---|---|---|---|---|")
    for (n, mode), rs in sorted(results.items()):
        kept = agree = ""
        if mode == "sparse" and (n, "dense") in results and n <= args.quality_max:
            k_ratio, o = quality(n, results[(n, "dense")][0]["order"], rs[0]["order"])
            kept, agree = f"{k_ratio:.3f}", f"{o:.2f}"
        print(f"| {n} | {rs[0]['k']} | {mode} | {statistics.median(r['seconds'] for r in rs):.2f} | "
              f"{statistics.median(r['peak_mib'] for r in rs):.0f} | {kept} | {agree} |")


if __name__ == "__main__":
    main()
