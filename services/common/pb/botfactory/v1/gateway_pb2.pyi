from services.common.pb.botfactory.v1 import conversation_pb2 as _conversation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SendMessageRequest(_message.Message):
    __slots__ = ("bot_id", "conversation_id", "message_id", "text", "sender", "metadata", "no_wait", "include_nlu")
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
    SENDER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    NO_WAIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_NLU_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    message_id: str
    text: str
    sender: str
    metadata: _containers.ScalarMap[str, str]
    no_wait: bool
    include_nlu: bool
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., text: _Optional[str] = ..., sender: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., no_wait: _Optional[bool] = ..., include_nlu: _Optional[bool] = ...) -> None: ...

class SendMessageResponse(_message.Message):
    __slots__ = ("message_id", "replies", "complete", "duplicate", "handoff", "nlu")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    HANDOFF_FIELD_NUMBER: _ClassVar[int]
    NLU_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    replies: _containers.RepeatedCompositeFieldContainer[_conversation_pb2.BotMessage]
    complete: bool
    duplicate: bool
    handoff: bool
    nlu: _conversation_pb2.TurnNlu
    def __init__(self, message_id: _Optional[str] = ..., replies: _Optional[_Iterable[_Union[_conversation_pb2.BotMessage, _Mapping]]] = ..., complete: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., handoff: _Optional[bool] = ..., nlu: _Optional[_Union[_conversation_pb2.TurnNlu, _Mapping]] = ...) -> None: ...

class GetTranscriptRequest(_message.Message):
    __slots__ = ("bot_id", "conversation_id", "limit")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    limit: int
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class TranscriptEntry(_message.Message):
    __slots__ = ("type", "message_id", "in_reply_to", "text", "buttons", "at_unix_ms", "citations")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IN_REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BUTTONS_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    type: str
    message_id: str
    in_reply_to: str
    text: str
    buttons: _containers.RepeatedCompositeFieldContainer[_conversation_pb2.Button]
    at_unix_ms: int
    citations: _containers.RepeatedCompositeFieldContainer[_conversation_pb2.Citation]
    def __init__(self, type: _Optional[str] = ..., message_id: _Optional[str] = ..., in_reply_to: _Optional[str] = ..., text: _Optional[str] = ..., buttons: _Optional[_Iterable[_Union[_conversation_pb2.Button, _Mapping]]] = ..., at_unix_ms: _Optional[int] = ..., citations: _Optional[_Iterable[_Union[_conversation_pb2.Citation, _Mapping]]] = ...) -> None: ...

class GetTranscriptResponse(_message.Message):
    __slots__ = ("bot_id", "conversation_id", "entries")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    entries: _containers.RepeatedCompositeFieldContainer[TranscriptEntry]
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[TranscriptEntry, _Mapping]]] = ...) -> None: ...

class SendFeedbackRequest(_message.Message):
    __slots__ = ("feedback",)
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    feedback: _conversation_pb2.Feedback
    def __init__(self, feedback: _Optional[_Union[_conversation_pb2.Feedback, _Mapping]] = ...) -> None: ...

class SendFeedbackResponse(_message.Message):
    __slots__ = ("message_id", "rating")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    rating: int
    def __init__(self, message_id: _Optional[str] = ..., rating: _Optional[int] = ...) -> None: ...

class ConverseRequest(_message.Message):
    __slots__ = ("bot_id", "conversation_id", "message_id", "text", "sender", "metadata")
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
    SENDER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    message_id: str
    text: str
    sender: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., message_id: _Optional[str] = ..., text: _Optional[str] = ..., sender: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class MessageAck(_message.Message):
    __slots__ = ("message_id", "duplicate")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    duplicate: bool
    def __init__(self, message_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class ConverseError(_message.Message):
    __slots__ = ("message_id", "code", "status", "detail", "retry_after_s")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    code: int
    status: str
    detail: str
    retry_after_s: int
    def __init__(self, message_id: _Optional[str] = ..., code: _Optional[int] = ..., status: _Optional[str] = ..., detail: _Optional[str] = ..., retry_after_s: _Optional[int] = ...) -> None: ...

class ConverseResponse(_message.Message):
    __slots__ = ("message", "ack", "error")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    message: _conversation_pb2.BotMessage
    ack: MessageAck
    error: ConverseError
    def __init__(self, message: _Optional[_Union[_conversation_pb2.BotMessage, _Mapping]] = ..., ack: _Optional[_Union[MessageAck, _Mapping]] = ..., error: _Optional[_Union[ConverseError, _Mapping]] = ...) -> None: ...
