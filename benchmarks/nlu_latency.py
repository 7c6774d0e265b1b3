"""NLU latency benchmark: torch eager fp32 vs onnxruntime fp32 vs onnxruntime int8 (batch 1;
the served fused int8 graph and, alternating with it, the unfused one), and the gRPC service
under concurrent clients, on the same utterances, in one run.

    python benchmarks/nlu_latency.py [--quick] [--model DIR] [--data BIO_DIR|BOT_DIR|CSV]
    python benchmarks/nlu_latency.py --zh-model DIR [--zh-data CONLL] [--data BIO_DIR] [--model DIR]

Defaults: the SNIPS test split from ../shared/data/snips/test when present (model
.botfactory/models/snips), else the demo bot's examples (model .botfactory/models/banking,
trained first if missing). Prints p50/p99 per mode and the ratios; writes
benchmarks/results/nlu_latency.json.

`--zh-model` (issue 23) measures only Chinese against English, batch 1 through the serving
engine (the served graph, `--threads` intra-op threads), in alternating rounds: the Chinese
model (e.g. trained on CAIS) on Chinese texts (`--zh-data`, default CAIS test) and on English
texts (`--data`, default SNIPS test), and, when `--model` is given, that English model on the
English texts. Writes benchmarks/results/nlu_latency_zh.json with each p50/p99, the texts'
mean token counts and `zh_vs_en_p50` (Chinese p50 / English p50 on the same model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.paths import shown  # noqa: E402

SNIPS_TEST = ROOT.parent / "shared" / "data" / "snips" / "test"
RESULTS = ROOT / "benchmarks" / "results" / "nlu_latency.json"
ZH_RESULTS = ROOT / "benchmarks" / "results" / "nlu_latency_zh.json"
CAIS_TEST = ROOT.parent / "shared" / "data" / "cais" / "test" / "ch.test"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in latencies_s]
    return {"p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3), "n": len(ms)}


def load_texts(data: Path, limit: int) -> list[str]:
    from services.botdef import import_bio, import_csv, load_bot

    if (data / "bot.yml").is_file():
        examples = load_bot(data).examples()
    elif data.is_file():
        examples = import_csv(data)
    else:
        examples = import_bio(data)
    return [e.text for e in examples][:limit]


def time_each(fn: Callable[[str], object], texts: Sequence[str], warmup: int = 10) -> list[float]:
    for text in texts[:warmup]:
        fn(text)
    latencies = []
    for text in texts:
        started = time.perf_counter()
        fn(text)
        latencies.append(time.perf_counter() - started)
    return latencies


def bench_torch(model_dir: Path, texts: Sequence[str], threads: int) -> dict[str, float]:
    import torch

    from botfactory.training import load_torch_model
    from services.common.textenc import load_tokenizer

    torch.set_num_threads(threads)
    meta = json.loads((model_dir / "metadata.json").read_text())
    tokenizer = load_tokenizer(model_dir / "tokenizer.json", int(meta["max_length"]))
    model = load_torch_model(model_dir).eval()

    def run(text: str) -> object:
        encoding = tokenizer.encode(text)
        with torch.inference_mode():
            ids = torch.tensor([encoding.ids])
            mask = torch.tensor([encoding.attention_mask])
            intent_logits, _ = model(ids, mask)
            return torch.softmax(intent_logits, dim=-1)

    return summary(time_each(run, texts))


def bench_ort(model_dir: Path, texts: Sequence[str], quantized: bool,
              threads: int) -> dict[str, float]:
    from services.nlu.engine import NluModel

    model = NluModel.load(model_dir, quantized=quantized, intra_op_threads=threads)
    return summary(time_each(lambda t: model.predict([t]), texts))


def unfused_copy(model_dir: Path, target: Path) -> Path:
    """`model_dir` with its int8 graph quantised from the plain export, unfused (what
    training served before docs/model-format.md "The served int8 graph")."""
    from botfactory.training.export import quantize_int8

    standin_copy(model_dir, target, bot=None)
    quantize_int8(model_dir / "model.onnx", target / "model.int8.onnx")
    return target


def _predictor(model: Any) -> Callable[[str], object]:
    return lambda text: model.predict([text])


def bench_fused_vs_unfused(model_dir: Path, texts: Sequence[str], threads: int,
                           rounds: int = 6) -> dict[str, dict[str, float]]:
    """The served int8 graph against the unfused one, batch 1, in alternating rounds (the
    host's speed drifts; alternating keeps the comparison fair)."""
    import tempfile

    from services.nlu.engine import NluModel

    with tempfile.TemporaryDirectory() as scratch:
        unfused = unfused_copy(model_dir, Path(scratch) / "unfused")
        models = {"ort_int8": NluModel.load(model_dir, intra_op_threads=threads),
                  "ort_int8_unfused": NluModel.load(unfused, intra_op_threads=threads,
                                                    verify_version=False)}
    latencies: dict[str, list[float]] = {name: [] for name in models}
    chunk = max(1, len(texts) // rounds)
    for start in range(0, len(texts), chunk):
        for name, model in models.items():
            latencies[name] += time_each(_predictor(model), texts[start:start + chunk],
                                         warmup=3)
    return {name: summary(values) for name, values in latencies.items()}


def standin_copy(model_dir: Path, target: Path, bot: str | None = "second-model") -> Path:
    """A second model of the same size (the served files of `model_dir` under another bot id,
    `bot`; None keeps it): stands in for the platform sentiment model when measuring
    memory."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.is_file():
            shutil.copy(path, target / path.name)
    if bot is not None:
        meta = json.loads((target / "metadata.json").read_text())
        meta["bot"] = bot
        (target / "metadata.json").write_text(json.dumps(meta))
    return target


def bench_service(model_dir: Path, texts: Sequence[str], concurrency: int,
                  duration: float, second: Path | None) -> dict[str, float]:
    models = f"{model_dir},{second}" if second else str(model_dir)
    env = {**os.environ, "BOTFACTORY_NLU_MODELS": models, "BOTFACTORY_NLU_GRPC_PORT": "0",
           "BOTFACTORY_NLU_METRICS_PORT": "0", "BOTFACTORY_NLU_LOG_LEVEL": "INFO",
           "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "services.nlu"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = _wait_started(process)
        ready_s = time.perf_counter() - started
        rss_mb = _rss_mb(process.pid)
        bot = json.loads((model_dir / "metadata.json").read_text())["bot"]
        result = asyncio.run(_drive(port, bot, texts, concurrency, duration))
        result.update(ready_s=round(ready_s, 2), rss_mb=rss_mb,
                      rss_after_load_mb=_rss_mb(process.pid),
                      models_loaded=len(models.split(",")))
        return result
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_started(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == "nlu_started":
                return int(event["grpc_port"])
    raise RuntimeError(f"nlu service exited with {process.wait()}")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def _drive(port: int, bot: str, texts: Sequence[str], concurrency: int,
                 duration: float) -> dict[str, Any]:
    import grpc

    from services.common.pb.botfactory.v1 import nlu_pb2, nlu_pb2_grpc

    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = nlu_pb2_grpc.NluServiceStub(channel)
        for text in texts[:20]:
            await stub.Parse(nlu_pb2.ParseRequest(bot_id=bot, text=text))
        deadline = time.perf_counter() + duration

        async def client(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    await stub.Parse(nlu_pb2.ParseRequest(bot_id=bot, text=texts[i % len(texts)]))
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - began
    result: dict[str, Any] = summary(latencies)
    result.update(throughput_per_s=round(len(latencies) / elapsed, 1), errors=errors,
                  concurrency=concurrency, duration_s=round(elapsed, 2))
    return result


def conll_texts(path: Path, limit: int) -> list[str]:
    """The texts of a token-per-line file with its `.intent` file beside it (CAIS)."""
    from services.botdef import import_conll

    return [e.text for e in import_conll(path, path.with_name(path.name + ".intent"))][:limit]


def bench_languages(zh_model: Path, zh_texts: Sequence[str], en_texts: Sequence[str],
                    en_model: Path | None, threads: int, rounds: int = 6) -> dict[str, Any]:
    """Batch-1 served latency of the Chinese model on Chinese and English texts (and of an
    English model on the English texts), in alternating rounds."""
    from services.nlu.engine import NluModel

    zh = NluModel.load(zh_model, intra_op_threads=threads)
    runs: dict[str, tuple[Any, Sequence[str]]] = {"zh_model_zh_texts": (zh, zh_texts),
                                                  "zh_model_en_texts": (zh, en_texts)}
    if en_model is not None:
        runs["en_model_en_texts"] = (NluModel.load(en_model, intra_op_threads=threads),
                                     en_texts)
    latencies: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(rounds):
        for name, (model, texts) in runs.items():
            chunk = max(1, len(texts) // rounds)
            part = texts[round_ * chunk:(round_ + 1) * chunk]
            latencies[name] += time_each(_predictor(model), part, warmup=3)
    modes: dict[str, Any] = {}
    for name, (model, texts) in runs.items():
        encodings = [model.tokenizer.encode(text) for text in texts]  # unpadded
        tokens = [sum(e.attention_mask) for e in encodings]
        unk = model.tokenizer.token_to_id("[UNK]")
        unknown = sum(e.ids.count(unk) for e in encodings)
        modes[name] = {**summary(latencies[name]),
                       "mean_tokens": round(statistics.fmean(tokens), 2),
                       "unk_share": round(unknown / max(1, sum(tokens)), 4)}
    return modes


def main_languages(args: argparse.Namespace) -> int:
    n = 100 if args.quick else args.n
    zh_data = args.zh_data or CAIS_TEST
    en_data = args.data or SNIPS_TEST
    zh_texts, en_texts = conll_texts(zh_data, n), load_texts(en_data, n)
    modes = bench_languages(args.zh_model, zh_texts, en_texts, args.model, args.threads)
    for name, figures in modes.items():
        print(f"{name:>18}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    ratio = modes["zh_model_zh_texts"]["p50_ms"] / modes["zh_model_en_texts"]["p50_ms"]
    print(f"p50 Chinese / English (same model): {ratio:.2f}")
    result: dict[str, Any] = {
        "benchmark": "nlu_latency_zh", "quick": args.quick, "zh_model": shown(args.zh_model),
        "en_model": None if args.model is None else shown(args.model),
        "zh_data": shown(zh_data), "en_data": shown(en_data), "threads": args.threads,
        "n_utterances": {"zh": len(zh_texts), "en": len(en_texts)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "modes": modes, "zh_vs_en_p50": round(ratio, 3),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "en_model_en_texts" in modes:
        result["zh_vs_en_model_p50"] = round(
            modes["zh_model_zh_texts"]["p50_ms"] / modes["en_model_en_texts"]["p50_ms"], 3)
    out = args.out if args.out != RESULTS else ZH_RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def default_model_and_data() -> tuple[Path, Path]:
    if SNIPS_TEST.is_dir() and (ROOT / ".botfactory" / "models" / "snips").is_dir():
        return ROOT / ".botfactory" / "models" / "snips", SNIPS_TEST
    return ROOT / ".botfactory" / "models" / "banking", ROOT / "bots" / "banking"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer utterances, shorter load")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--n", type=int, default=500, help="utterances per batch-1 mode")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of gRPC load")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads, batch 1")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--zh-model", type=Path, default=None,
                        help="only compare Chinese with English latency on this model")
    parser.add_argument("--zh-data", type=Path, default=None,
                        help="Chinese texts: a token-per-line file with its .intent file "
                             "(default: CAIS test)")
    args = parser.parse_args()
    if args.zh_model is not None:
        return main_languages(args)
    model_dir, data = default_model_and_data()
    model_dir, data = args.model or model_dir, args.data or data
    n, duration = (100, 8.0) if args.quick else (args.n, args.duration)
    if not (model_dir / "metadata.json").is_file():
        from botfactory.local.stack import prepare_model

        prepare_model(data, model_dir.parent)
    texts = load_texts(data, n)
    print(f"model {model_dir}, {len(texts)} utterances from {data}", flush=True)
    modes: dict[str, dict[str, Any]] = {}
    modes["torch_eager"] = bench_torch(model_dir, texts, args.threads)
    modes["ort_fp32"] = bench_ort(model_dir, texts, False, args.threads)
    modes.update(bench_fused_vs_unfused(model_dir, texts, args.threads))
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        second = standin_copy(model_dir, Path(scratch) / "second")
        modes["grpc_service"] = bench_service(model_dir, texts, args.concurrency, duration,
                                              second)
    for name, figures in modes.items():
        print(f"{name:>13}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    speedup = modes["torch_eager"]["p50_ms"] / modes["ort_int8"]["p50_ms"]
    fp32_speedup = modes["torch_eager"]["p50_ms"] / modes["ort_fp32"]["p50_ms"]
    fusion = modes["ort_int8_unfused"]["p50_ms"] / modes["ort_int8"]["p50_ms"]
    print(f"speedup p50: int8 vs torch {speedup:.2f}x, fp32 ort vs torch {fp32_speedup:.2f}x, "
          f"fused int8 vs unfused int8 {fusion:.2f}x")
    result = {
        "benchmark": "nlu_latency", "quick": args.quick, "model": shown(model_dir),
        "model_version": json.loads((model_dir / "metadata.json").read_text())["version"],
        "data": shown(data), "n_utterances": len(texts), "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "modes": modes, "speedup_int8_vs_torch": round(speedup, 2),
        "speedup_ort_fp32_vs_torch": round(fp32_speedup, 2),
        "speedup_fused_vs_unfused_int8": round(fusion, 2),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
