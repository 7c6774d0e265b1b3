from services.common.pb.botfactory.v1 import conversation_pb2 as _conversation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParseRequest(_message.Message):
    __slots__ = ("bot_id", "text", "conversation_id", "ranking_length", "model_version")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    RANKING_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    text: str
    conversation_id: str
    ranking_length: int
    model_version: str
    def __init__(self, bot_id: _Optional[str] = ..., text: _Optional[str] = ..., conversation_id: _Optional[str] = ..., ranking_length: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class IntentScore(_message.Message):
    __slots__ = ("name", "confidence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    confidence: float
    def __init__(self, name: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("entity", "value", "raw", "start", "end", "extractor", "confidence")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    entity: str
    value: str
    raw: str
    start: int
    end: int
    extractor: str
    confidence: float
    def __init__(self, entity: _Optional[str] = ..., value: _Optional[str] = ..., raw: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., extractor: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class Sentiment(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ParseResponse(_message.Message):
    __slots__ = ("bot_id", "text", "intent", "ranking", "entities", "sentiment", "out_of_scope", "model_version", "variant")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INTENT_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_SCOPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    text: str
    intent: IntentScore
    ranking: _containers.RepeatedCompositeFieldContainer[IntentScore]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    sentiment: Sentiment
    out_of_scope: bool
    model_version: str
    variant: str
    def __init__(self, bot_id: _Optional[str] = ..., text: _Optional[str] = ..., intent: _Optional[_Union[IntentScore, _Mapping]] = ..., ranking: _Optional[_Iterable[_Union[IntentScore, _Mapping]]] = ..., entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., sentiment: _Optional[_Union[Sentiment, _Mapping]] = ..., out_of_scope: _Optional[bool] = ..., model_version: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class ParseBatchRequest(_message.Message):
    __slots__ = ("bot_id", "texts", "conversation_ids", "ranking_length", "model_version")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_IDS_FIELD_NUMBER: _ClassVar[int]
    RANKING_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    conversation_ids: _containers.RepeatedScalarFieldContainer[str]
    ranking_length: int
    model_version: str
    def __init__(self, bot_id: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., conversation_ids: _Optional[_Iterable[str]] = ..., ranking_length: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class ParseBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ParseResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[ParseResponse, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("bot_id", "version", "kind", "source", "loaded_at_unix_ms")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    version: str
    kind: str
    source: str
    loaded_at_unix_ms: int
    def __init__(self, bot_id: _Optional[str] = ..., version: _Optional[str] = ..., kind: _Optional[str] = ..., source: _Optional[str] = ..., loaded_at_unix_ms: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("bot_id", "query", "k", "kb_version")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    KB_VERSION_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    query: str
    k: int
    kb_version: str
    def __init__(self, bot_id: _Optional[str] = ..., query: _Optional[str] = ..., k: _Optional[int] = ..., kb_version: _Optional[str] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("kind", "id", "score", "document", "heading_path", "position", "text", "snippet", "title", "buttons", "url")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    HEADING_PATH_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BUTTONS_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    id: str
    score: float
    document: str
    heading_path: _containers.RepeatedScalarFieldContainer[str]
    position: int
    text: str
    snippet: str
    title: str
    buttons: _containers.RepeatedCompositeFieldContainer[_conversation_pb2.Button]
    url: str
    def __init__(self, kind: _Optional[str] = ..., id: _Optional[str] = ..., score: _Optional[float] = ..., document: _Optional[str] = ..., heading_path: _Optional[_Iterable[str]] = ..., position: _Optional[int] = ..., text: _Optional[str] = ..., snippet: _Optional[str] = ..., title: _Optional[str] = ..., buttons: _Optional[_Iterable[_Union[_conversation_pb2.Button, _Mapping]]] = ..., url: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("bot_id", "index_version", "hits")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    index_version: str
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    def __init__(self, bot_id: _Optional[str] = ..., index_version: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ...) -> None: ...
