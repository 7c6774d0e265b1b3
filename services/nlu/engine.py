"""ONNX Runtime inference for one model directory (docs/model-format.md).

The same code path serves gRPC requests and `botfactory test` evaluations. It imports
onnxruntime, tokenizers and numpy only: never torch or transformers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from services.common.modelformat import (
    ENTITIES_FILE,
    FP32_FILE,
    LABELS_FILE,
    METADATA_FILE,
    MODEL_FORMAT,
    TOKENIZER_FILE,
    content_version,
    served_file,
)
from services.common.pii import email_spans
from services.common.regexsafety import BotPattern, UnsafeRegex, compile_bot_regex
from services.common.textenc import OUTSIDE as OUTSIDE_TAG
from services.common.textenc import Span, decode_spans, load_tokenizer, words

REQUIRED_FILES = (METADATA_FILE, LABELS_FILE, TOKENIZER_FILE, ENTITIES_FILE)
MAX_RULE_TEXT_CHARS = 4096
"""Regex and lookup entities are searched in the first this many characters of a text."""


class ModelLoadError(Exception):
    """A model directory is missing, corrupt or incompatible with this server."""


@dataclass(frozen=True)
class Entity:
    entity: str
    start: int
    end: int
    text: str
    value: str
    extractor: str
    confidence: float


@dataclass(frozen=True)
class Prediction:
    intent: str
    confidence: float
    ranking: list[tuple[str, float]]
    entities: list[Entity]
    out_of_scope: bool


Rule = BotPattern | re.Pattern[str]
"""A bot author's regex (RE2) or a lookup list's alternation (escaped values)."""


@dataclass(frozen=True)
class RuleExtractors:
    """Regex and lookup extractors plus synonym normalisation from `entities.json`."""

    synonyms: dict[str, dict[str, str]]
    patterns: dict[str, list[Rule]]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RuleExtractors:
        patterns: dict[str, list[Rule]] = {}
        for entity, regexes in config.get("regex", {}).items():
            try:  # RE2, as the loader checked (a model made before it did may not comply)
                patterns[entity] = [compile_bot_regex(p) for p in regexes]
            except UnsafeRegex as exc:
                raise ModelLoadError(f"entities.json: unsafe regex for {entity!r}: {exc}") \
                    from None
        lookups: dict[str, list[Rule]] = {}
        for entity, values in config.get("lookup", {}).items():
            alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
            lookups[entity] = [re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)]
        synonyms = {e: dict(m) for e, m in config.get("synonyms", {}).items()}
        tagged = {**_tag("regex", patterns), **_tag("lookup", lookups)}
        return cls(synonyms=synonyms, patterns=tagged)

    def normalise(self, entity: str, raw: str) -> str:
        return self.synonyms.get(entity, {}).get(raw.lower(), raw)

    def admits(self, entity: str, raw: str) -> bool:
        """Whether the tagger's span `raw` may be `entity`: an entity with regexes takes
        only what one of them (or its lookup list, or a synonym) matches whole; "12345" is
        no `claim_id` of pattern `[A-Z]{2}[0-9]{6}`."""
        regexes = self.patterns.get(f"regex:{entity}")
        if not regexes or any(p.fullmatch(raw) for p in regexes):
            return True
        lookups = self.patterns.get(f"lookup:{entity}", [])
        return raw.lower() in self.synonyms.get(entity, {}) or \
            any(p.fullmatch(raw) for p in lookups)

    def merge(self, text: str, predicted: list[Entity]) -> list[Entity]:
        """The tagger's entities that their regexes admit, then the regex and lookup matches
        that overlap none of those (a regex match wins over a mis-tagged part of it), by
        position."""
        found = [e for e in predicted if self.admits(e.entity, e.text)]
        for extra in self.extract(text):
            if not any(_overlaps(extra, e) for e in found):
                found.append(extra)
        return sorted(found, key=lambda e: (e.start, e.end))

    def extract(self, text: str) -> list[Entity]:
        text = text[:MAX_RULE_TEXT_CHARS]  # bounds the time of every regex
        found: list[Entity] = []
        for key, patterns in self.patterns.items():
            extractor, entity = key.split(":", 1)
            for pattern in patterns:
                for match in pattern.finditer(text):
                    if match.end() > match.start():
                        raw = match.group(0)
                        found.append(Entity(entity, match.start(), match.end(), raw,
                                            self.normalise(entity, raw), extractor, 1.0))
        return found


def _tag(extractor: str, patterns: dict[str, list[Rule]]) -> dict[str, list[Rule]]:
    return {f"{extractor}:{entity}": p for entity, p in patterns.items()}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name}: cannot read: {exc}") from exc


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return result


class NluModel:
    """One loaded model: tokenizer, onnxruntime session, label maps and rule extractors."""

    def __init__(self, directory: Path, session: ort.InferenceSession, tokenizer: Tokenizer,
                 labels: dict[str, list[str]], metadata: dict[str, Any],
                 rules: RuleExtractors) -> None:
        self.directory = directory
        self.session = session
        self.tokenizer = tokenizer
        self.intents: list[str] = labels["intents"]
        self.tags: list[str] = labels.get("tags", [])
        self.metadata = metadata
        self.rules = rules
        self._outputs = ["intent_logits", "tag_logits"] if self.tags else ["intent_logits"]
        self._transitions: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def bot(self) -> str:
        return str(self.metadata["bot"])

    @property
    def kind(self) -> str:
        return str(self.metadata.get("kind", "nlu"))

    @property
    def confidence_threshold(self) -> float:
        return float(self.metadata.get("confidence_threshold", 0.0))

    @property
    def out_of_scope_intent(self) -> str | None:
        value = self.metadata.get("out_of_scope_intent")
        return str(value) if value else None

    @classmethod
    def load(cls, directory: str | Path, *, quantized: bool = True, intra_op_threads: int = 1,
             verify_version: bool = True) -> NluModel:
        """Load and validate a model directory; a warm-up run proves the graph works.

        `quantized=True` loads the graph the model is served with (metadata.json's
        `serving.file`: int8, mixed or fp32, as training chose); False loads the fp32 graph."""
        path = Path(directory)
        if not path.is_dir():
            raise ModelLoadError(f"{path}: not a model directory")
        missing = [n for n in REQUIRED_FILES if not (path / n).is_file()]
        if missing:
            raise ModelLoadError(f"{path}: missing {', '.join(missing)}")
        metadata = _read_json(path / "metadata.json")
        _check_metadata(metadata, path)
        graph = served_file(metadata) if quantized else FP32_FILE
        if not (path / graph).is_file():
            raise ModelLoadError(f"{path}: missing {graph}")
        if verify_version and content_version(path) != metadata["version"]:
            raise ModelLoadError(f"{path}: content does not match version {metadata['version']}")
        labels = _read_json(path / "labels.json")
        if not isinstance(labels, dict) or not labels.get("intents"):
            raise ModelLoadError(f"{path}/labels.json: no intents")
        rules = RuleExtractors.from_config(_read_json(path / "entities.json"))
        try:
            tokenizer = load_tokenizer(path / "tokenizer.json", int(metadata["max_length"]))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelLoadError(f"{path}/tokenizer.json: {exc}") from exc
        session = _session(path / graph, intra_op_threads)
        model = cls(path, session, tokenizer, labels, metadata, rules)
        model._warm_up()
        return model

    def _warm_up(self) -> None:
        try:
            _, logits = self._infer(["warm up"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{self.directory}: inference failed: {exc}") from exc
        if logits[0].shape[-1] != len(self.intents):
            raise ModelLoadError(f"{self.directory}: graph has {logits[0].shape[-1]} intents, "
                                 f"labels.json {len(self.intents)}")
        if self.tags and logits[1].shape[-1] != len(self.tags):
            raise ModelLoadError(f"{self.directory}: graph has {logits[1].shape[-1]} tags, "
                                 f"labels.json {len(self.tags)}")

    def _infer(self, texts: Sequence[str]) -> tuple[list[Any], list[np.ndarray]]:
        encodings = self.tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        outputs: list[np.ndarray] = self.session.run(self._outputs, feeds)
        return encodings, outputs

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> list[Prediction]:
        """Predictions for `texts`, in order, running at most `batch_size` texts at a time."""
        results: list[Prediction] = []
        for offset in range(0, len(texts), batch_size):
            results.extend(self._predict_batch(texts[offset:offset + batch_size]))
        return results

    def _predict_batch(self, texts: Sequence[str]) -> list[Prediction]:
        encodings, outputs = self._infer(texts)
        intent_probs = _softmax(outputs[0])
        tag_probs = _softmax(outputs[1]) if self.tags else None
        return [
            self._prediction(text, encoding, intent_probs[i],
                             None if tag_probs is None else tag_probs[i])
            for i, (text, encoding) in enumerate(zip(texts, encodings, strict=False))
        ]

    def _prediction(self, text: str, encoding: Any, intent_probs: np.ndarray,
                    tag_probs: np.ndarray | None) -> Prediction:
        order = np.argsort(-intent_probs)
        ranking = [(self.intents[i], float(intent_probs[i])) for i in order]
        intent, confidence = ranking[0]
        entities = self._entities(text, encoding, tag_probs) if tag_probs is not None else []
        oos = intent == self.out_of_scope_intent or confidence < self.confidence_threshold
        return Prediction(intent, confidence, ranking, entities, oos)

    @property
    def tag_decoding(self) -> str:
        """metadata.json `serving.tag_decoding`: "bio-viterbi" or "argmax" (the default)."""
        serving = self.metadata.get("serving")
        value = serving.get("tag_decoding") if isinstance(serving, dict) else None
        return str(value) if value else ARGMAX

    def _entities(self, text: str, encoding: Any, tag_probs: np.ndarray) -> list[Entity]:
        if self.tag_decoding == VITERBI:
            if self._transitions is None:  # built once a model: n_tags² checks
                self._transitions = bio_transitions(self.tags)
            tags = viterbi_tags(encoding, tag_probs, self.tags, self._transitions)
        else:
            tags = [self.tags[i] for i in tag_probs.argmax(axis=-1)]
        found: list[Entity] = []
        for span in whole_addresses(text, decode_spans(encoding, tags)):
            raw = text[span.start:span.end]
            confidence = _span_confidence(encoding, span, tag_probs)
            found.append(Entity(span.entity, span.start, span.end, raw,
                                self.rules.normalise(span.entity, raw), "model", confidence))
        return self.rules.merge(text, found)


ARGMAX = "argmax"
VITERBI = "bio-viterbi"


def bio_transitions(tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(start, transition) penalties of BIO: `I-x` only after `B-x` or `I-x`."""
    def allowed(previous: str | None, tag: str) -> bool:
        return not tag.startswith("I-") or previous in (f"B-{tag[2:]}", tag)

    start = np.array([0.0 if allowed(None, t) else -np.inf for t in tags])
    moves = np.array([[0.0 if allowed(a, b) else -np.inf for b in tags] for a in tags])
    return start, moves


def viterbi_tags(encoding: Any, tag_probs: np.ndarray, tags: Sequence[str],
                 transitions: tuple[np.ndarray, np.ndarray] | None = None) -> list[str]:
    """Per-token tags where each word's tag (on its first piece) is the most probable BIO-valid
    sequence over the words (no `I-x` after `O` or another entity), not each word's own argmax:
    a per-character tagger (Chinese) otherwise splits or retypes spans. Other pieces: `O`."""
    result = [OUTSIDE_TAG] * len(tag_probs)
    firsts = [word.first_token for word in words(encoding)]
    if not firsts:
        return result
    start, moves = transitions if transitions is not None else bio_transitions(tags)
    scores = np.log(np.maximum(tag_probs[firsts], 1e-12))
    best = start + scores[0]
    back: list[np.ndarray] = []
    for row in scores[1:]:
        candidates = best[:, None] + moves
        back.append(candidates.argmax(axis=0))
        best = candidates.max(axis=0) + row
    path = [int(best.argmax())]
    for pointers in reversed(back):
        path.append(int(pointers[path[-1]]))
    for token, tag in zip(firsts, reversed(path), strict=True):
        result[token] = tags[tag]
    return result


def whole_addresses(text: str, spans: list[Span]) -> list[Span]:
    """The model's spans with any that covers part of an e-mail address widened to the whole
    address (the tokenizer splits `jane@example.com` at `@` and `.`, and the tagger may tag
    only `jane`); spans then inside a widened one are dropped."""
    addresses = email_spans(text[:MAX_RULE_TEXT_CHARS])
    if not addresses:
        return spans
    widened: list[Span] = []
    for span in spans:
        for start, end in addresses:
            if span.start < end and start < span.end:
                span = Span(min(span.start, start), max(span.end, end), span.entity)
        if not any(w.start <= span.start and span.end <= w.end for w in widened):
            widened.append(span)
    return widened


def _overlaps(a: Entity, b: Entity) -> bool:
    return a.start < b.end and b.start < a.end


def _span_confidence(encoding: Any, span: Span, tag_probs: np.ndarray) -> float:
    scores = [float(tag_probs[w.first_token].max()) for w in words(encoding)
              if span.start <= w.start < span.end]
    return sum(scores) / len(scores) if scores else 0.0


def _check_metadata(metadata: Any, path: Path) -> None:
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{path}/metadata.json: not an object")
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelLoadError(f"{path}: model format {metadata.get('format')!r} is not supported "
                             f"(this server reads format {MODEL_FORMAT})")
    for key in ("bot", "version", "max_length"):
        if key not in metadata:
            raise ModelLoadError(f"{path}/metadata.json: missing '{key}'")


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"{path}: cannot load ONNX graph: {exc}") from exc


__all__ = ["Entity", "ModelLoadError", "NluModel", "Prediction", "content_version"]
