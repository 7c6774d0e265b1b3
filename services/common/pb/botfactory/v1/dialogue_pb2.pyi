from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetTrackerRequest(_message.Message):
    __slots__ = ("bot_id", "conversation_id")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ...) -> None: ...

class TrackerView(_message.Message):
    __slots__ = ("bot_id", "conversation_id", "tracker_json", "revision", "slots", "active_flow", "handed_off")
    class SlotsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACKER_JSON_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FLOW_FIELD_NUMBER: _ClassVar[int]
    HANDED_OFF_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    tracker_json: str
    revision: int
    slots: _containers.ScalarMap[str, str]
    active_flow: str
    handed_off: bool
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., tracker_json: _Optional[str] = ..., revision: _Optional[int] = ..., slots: _Optional[_Mapping[str, str]] = ..., active_flow: _Optional[str] = ..., handed_off: _Optional[bool] = ...) -> None: ...

class ListConversationsRequest(_message.Message):
    __slots__ = ("bot_id", "limit")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    limit: int
    def __init__(self, bot_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListConversationsResponse(_message.Message):
    __slots__ = ("conversation_ids",)
    CONVERSATION_IDS_FIELD_NUMBER: _ClassVar[int]
    conversation_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, conversation_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ResetConversationRequest(_message.Message):
    __slots__ = ("bot_id", "conversation_id")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    conversation_id: str
    def __init__(self, bot_id: _Optional[str] = ..., conversation_id: _Optional[str] = ...) -> None: ...

class ResetConversationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
