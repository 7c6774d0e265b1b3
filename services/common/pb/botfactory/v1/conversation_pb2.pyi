from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Button(_message.Message):
    __slots__ = ("title", "payload")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    title: str
    payload: str
    def __init__(self, title: _Optional[str] = ..., payload: _Optional[str] = ...) -> None: ...

class UserMessage(_message.Message):
    __slots__ = ("bot_id", "conversation_id", "message_id", "text", "channel", "sender", "sent_at_unix_ms", "role", "metadata", "environment")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    message_id: str
    text: str
    channel: str
    sender: str
    sent_at_unix_ms: int
    role: str
    metadata: _containers.ScalarMap[str, str]
    environment: str
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., text: _Optional[str] = ..., channel: _Optional[str] = ..., sender: _Optional[str] = ..., sent_at_unix_ms: _Optional[int] = ..., role: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., environment: _Optional[str] = ...) -> None: ...

class BotMessage(_message.Message):
    __slots__ = ("bot_id", "conversation_id", "message_id", "in_reply_to", "text", "buttons", "index", "last", "sent_at_unix_ms", "role", "citations")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IN_REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BUTTONS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    message_id: str
    in_reply_to: str
    text: str
    buttons: _containers.RepeatedCompositeFieldContainer[Button]
    index: int
    last: bool
    sent_at_unix_ms: int
    role: str
    citations: _containers.RepeatedCompositeFieldContainer[Citation]
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., in_reply_to: _Optional[str] = ..., text: _Optional[str] = ..., buttons: _Optional[_Iterable[_Union[Button, _Mapping]]] = ..., index: _Optional[int] = ..., last: _Optional[bool] = ..., sent_at_unix_ms: _Optional[int] = ..., role: _Optional[str] = ..., citations: _Optional[_Iterable[_Union[Citation, _Mapping]]] = ...) -> None: ...

class Citation(_message.Message):
    __slots__ = ("title", "document", "heading_path", "url")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    HEADING_PATH_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    title: str
    document: str
    heading_path: _containers.RepeatedScalarFieldContainer[str]
    url: str
    def __init__(self, title: _Optional[str] = ..., document: _Optional[str] = ..., heading_path: _Optional[_Iterable[str]] = ..., url: _Optional[str] = ...) -> None: ...

class TurnSummary(_message.Message):
    __slots__ = ("in_reply_to", "replies", "awaiting_runs", "run_id", "handoff", "nlu")
    IN_REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    AWAITING_RUNS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    NLU_FIELD_NUMBER: _ClassVar[int]
    in_reply_to: str
    replies: int
    awaiting_runs: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    handoff: bool
    nlu: TurnNlu
    def __init__(self, in_reply_to: _Optional[str] = ..., replies: _Optional[int] = ..., awaiting_runs: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., handoff: _Optional[bool] = ..., nlu: _Optional[_Union[TurnNlu, _Mapping]] = ...) -> None: ...

class TurnNlu(_message.Message):
    __slots__ = ("intent", "confidence", "ranking", "entities", "out_of_scope", "sentiment", "model_version", "flow", "step")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_SCOPE_FIELD_NUMBER: _ClassVar[int]
    SENTIMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    intent: str
    confidence: float
    ranking: _containers.RepeatedCompositeFieldContainer[TurnIntent]
    entities: _containers.RepeatedCompositeFieldContainer[TurnEntity]
    out_of_scope: bool
    sentiment: str
    model_version: str
    flow: str
    step: str
    def __init__(self, intent: _Optional[str] = ..., confidence: _Optional[float] = ..., ranking: _Optional[_Iterable[_Union[TurnIntent, _Mapping]]] = ..., entities: _Optional[_Iterable[_Union[TurnEntity, _Mapping]]] = ..., out_of_scope: _Optional[bool] = ..., sentiment: _Optional[str] = ..., model_version: _Optional[str] = ..., flow: _Optional[str] = ..., step: _Optional[str] = ...) -> None: ...

class TurnIntent(_message.Message):
    __slots__ = ("name", "confidence")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    confidence: float
    def __init__(self, name: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class TurnEntity(_message.Message):
    __slots__ = ("entity", "value", "raw", "start", "end")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    entity: str
    value: str
    raw: str
    start: int
    end: int
    def __init__(self, entity: _Optional[str] = ..., value: _Optional[str] = ..., raw: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class ConversationEvent(_message.Message):
    __slots__ = ("bot_id", "conversation_id", "type", "at_unix_ms", "correlation_id", "data_json")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    type: str
    at_unix_ms: int
    correlation_id: str
    data_json: str
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., type: _Optional[str] = ..., at_unix_ms: _Optional[int] = ..., correlation_id: _Optional[str] = ..., data_json: _Optional[str] = ...) -> None: ...

class ConversationEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ConversationEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[ConversationEvent, _Mapping]]] = ...) -> None: ...

class Feedback(_message.Message):
    __slots__ = ("bot_id", "conversation_id", "message_id", "rating", "comment")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    message_id: str
    rating: int
    comment: str
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., rating: _Optional[int] = ..., comment: _Optional[str] = ...) -> None: ...
