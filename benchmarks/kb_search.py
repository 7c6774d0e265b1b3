"""Knowledge-base search benchmark: latency p50/p99 of one search (query encoding with the
int8 all-MiniLM-L6-v2 encoder, vector search, hybrid BM25 and snippet included) for 1k, 10k
and 100k passages, exact vs approximate (HNSW), and the approximate index's recall@10
against exact search.

    python benchmarks/kb_search.py [--quick] [--sizes 1000,10000,100000]

Passages are synthetic (the scale test needs no real documents): word-salad texts for BM25
and clustered unit vectors (200 topics with 24-dimensional local spread) standing in for
sentence embeddings; queries are real questions encoded by the real encoder. Recall is
measured with in-distribution query vectors (perturbed passage vectors). Writes
benchmarks/results/kb_search.json: `sizes.<n>.{p50_ms,p99_ms}` is the mode the server uses at
that size (approximate from 20,000 vectors), plus both modes per size and
`approx_recall_at_10` (the largest size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.nlu_latency import summary  # noqa: E402
from services.knowledge.encoder import SentenceEncoder  # noqa: E402
from services.knowledge.index import IndexData, Item  # noqa: E402
from services.knowledge.search import Searcher, SearchOptions  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "kb_search.json"
DIM = 384
APPROX_MIN = SearchOptions().approx_min_vectors
QUERIES = [
    "how much does it cost to send money abroad?", "i lost my card", "what are your opening hours",
    "how do I change my PIN", "is there a fee for cash withdrawals in another country",
    "how long does an international transfer take", "can I open a joint account",
    "what interest does the savings account pay", "how do I report a phishing email",
    "my card was declined in a shop, why?", "can I increase my overdraft limit",
    "where do I find my IBAN", "how do I close my account", "XG-400 firmware update",
    "how do I set up a standing order", "what documents do I need for a mortgage",
]


def synthetic_index(n: int, seed: int = 0) -> IndexData:
    """`n` passages with clustered vectors, 2 sentences each, and word-salad texts."""
    rng = np.random.default_rng(seed)
    topics, spread, local = 200, 0.35, 24
    centres = rng.standard_normal((topics, DIM)).astype(np.float32)
    bases = (rng.standard_normal((topics, DIM, local)) / np.sqrt(DIM)).astype(np.float32)
    labels = rng.integers(0, topics, n)
    vectors = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 10_000):
        end = min(n, start + 10_000)
        z = rng.standard_normal((end - start, local)).astype(np.float32)
        vectors[start:end] = (centres[labels[start:end]] / np.sqrt(DIM) * 3 + spread
                              * np.einsum("ndk,nk->nd", bases[labels[start:end]], z))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sentence_vectors = np.repeat(vectors, 2, axis=0)
    sentence_vectors += 0.05 * rng.standard_normal(sentence_vectors.shape).astype(np.float32)
    sentence_vectors /= np.linalg.norm(sentence_vectors, axis=1, keepdims=True)
    vocabulary = [f"w{i}" for i in range(5000)] + [f"XG-{i}" for i in range(500)]
    items = []
    for i in range(n):
        words = rng.choice(vocabulary, 40)
        first, second = " ".join(words[:20]) + ".", " ".join(words[20:]) + "."
        text = f"{first} {second}"
        items.append(Item("passage", f"doc{i // 10}.md#{i % 10}", f"doc{i // 10}.md",
                          f"Doc {i // 10}", (f"Doc {i // 10}",), i % 10, text, None, (), (),
                          ((0, len(first)), (len(first) + 1, len(text))), 2 * i))
    metadata = {"bot": "bench", "version": f"synthetic-{n}",
                "settings": {"bm25_weight": 0.3, "snippet_sentences": 2}}
    return IndexData(metadata, items, np.arange(n), np.full(n, -1), vectors, sentence_vectors)


def time_searches(searcher: Searcher, encoder: SentenceEncoder, queries: Sequence[str],
                  approximate: bool) -> dict[str, float]:
    def one(query: str) -> None:
        searcher.search_vector(encoder.encode_one(query), query, 5, approximate=approximate)

    for query in queries[:10]:
        one(query)
    latencies = []
    for query in queries:
        started = time.perf_counter()
        one(query)
        latencies.append(time.perf_counter() - started)
    return summary(latencies)


def recall_at_10(searcher: Searcher, n_queries: int, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    vectors = searcher.data.vectors
    picks = vectors[rng.integers(0, len(vectors), n_queries)]
    queries = picks + 0.6 * rng.standard_normal(picks.shape).astype(np.float32) / np.sqrt(DIM)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found = []
    for query in queries:
        exact, _ = searcher.ranked_rows(query, "", 10, approximate=False)
        approx, _ = searcher.ranked_rows(query, "", 10, approximate=True)
        found.append(len(set(exact.tolist()) & set(approx.tolist())) / 10)
    return round(float(np.mean(found)), 4)


def bench_size(n: int, encoder: SentenceEncoder, queries: Sequence[str],
               n_recall: int) -> dict[str, Any]:
    started = time.perf_counter()
    data = synthetic_index(n)
    made = time.perf_counter()
    searcher = Searcher(data, encoder, SearchOptions(approx_min_vectors=1))
    built = time.perf_counter()
    exact = time_searches(searcher, encoder, queries, approximate=False)
    approx = time_searches(searcher, encoder, queries, approximate=True)
    served = approx if n >= APPROX_MIN else exact
    result = {"p50_ms": served["p50_ms"], "p99_ms": served["p99_ms"],
              "mode": "approx" if n >= APPROX_MIN else "exact", "exact": exact,
              "approx": approx, "approx_recall_at_10": recall_at_10(searcher, n_recall),
              "index_seconds": round(built - made, 2),
              "generate_seconds": round(made - started, 2)}
    print(f"{n:>7} passages: exact p50 {exact['p50_ms']:.2f} ms p99 {exact['p99_ms']:.2f} ms | "
          f"approx p50 {approx['p50_ms']:.2f} ms p99 {approx['p99_ms']:.2f} ms | "
          f"recall@10 {result['approx_recall_at_10']:.3f} | BM25+HNSW built in "
          f"{result['index_seconds']:.1f} s", flush=True)
    return result


def load_encoder() -> SentenceEncoder:
    from botfactory.kb.build import DEFAULT_CACHE
    from botfactory.kb.encoder import exported_encoder

    exported = exported_encoder(ROOT / DEFAULT_CACHE, progress=True)
    return exported.load(threads=1)  # the NLU server default (BOTFACTORY_NLU_INTRA_OP_THREADS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k passages, fewer queries")
    parser.add_argument("--sizes", default=None, help="comma list of passage counts")
    parser.add_argument("--queries", type=int, default=300, help="timed searches per mode")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    default_sizes = "1000,10000" if args.quick else "1000,10000,100000"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    n_queries, n_recall = (100, 100) if args.quick else (args.queries, 300)
    encoder = load_encoder()
    queries = [QUERIES[i % len(QUERIES)] for i in range(n_queries)]
    results = {str(n): bench_size(n, encoder, queries, n_recall) for n in sizes}
    largest = results[str(max(sizes))]
    result = {
        "benchmark": "kb_search", "quick": args.quick, "k": 5, "dim": DIM,
        "encoder": "all-MiniLM-L6-v2 int8 (onnxruntime, 1 intra-op thread), included in latency",
        "hybrid_bm25_weight": 0.3, "approx_min_vectors": APPROX_MIN,
        "approx_index": "faiss IndexHNSWFlat M=16 efConstruction=40 efSearch=256, "
                        f"{SearchOptions().min_candidates} candidates re-scored exactly",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()[0]},
        "sizes": results,
        "approx_recall_at_10": largest["approx_recall_at_10"],
        "approx_recall_measured_at": max(sizes),
        "targets": {"p50_ms_at_10k": 5.0, "approx_recall_at_10_at_100k": 0.95},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
