from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartRunRequest(_message.Message):
    __slots__ = ("bot_id", "workflow", "inputs_json", "run_id", "conversation_id", "correlation_id")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    workflow: str
    inputs_json: str
    run_id: str
    conversation_id: str
    correlation_id: str
    def __init__(self, bot_id: _Optional[str] = ..., workflow: _Optional[str] = ..., inputs_json: _Optional[str] = ..., run_id: _Optional[str] = ..., conversation_id: _Optional[str] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("bot_id", "workflow", "status", "limit")
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    bot_id: str
    workflow: str
    status: str
    limit: int
    def __init__(self, bot_id: _Optional[str] = ..., workflow: _Optional[str] = ..., status: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason", "by")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    by: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class ApprovalDecision(_message.Message):
    __slots__ = ("run_id", "step", "approver", "comment")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    step: str
    approver: str
    comment: str
    def __init__(self, run_id: _Optional[str] = ..., step: _Optional[str] = ..., approver: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class RetryRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class StepRecord(_message.Message):
    __slots__ = ("step", "kind", "status", "attempts", "visit", "started_at_unix_ms", "finished_at_unix_ms", "duration_ms", "outputs_json", "error", "compensation")
    STEP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    VISIT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    step: str
    kind: str
    status: str
    attempts: int
    visit: int
    started_at_unix_ms: int
    finished_at_unix_ms: int
    duration_ms: float
    outputs_json: str
    error: str
    compensation: bool
    def __init__(self, step: _Optional[str] = ..., kind: _Optional[str] = ..., status: _Optional[str] = ..., attempts: _Optional[int] = ..., visit: _Optional[int] = ..., started_at_unix_ms: _Optional[int] = ..., finished_at_unix_ms: _Optional[int] = ..., duration_ms: _Optional[float] = ..., outputs_json: _Optional[str] = ..., error: _Optional[str] = ..., compensation: _Optional[bool] = ...) -> None: ...

class PendingApproval(_message.Message):
    __slots__ = ("step", "message", "approvers", "deadline_unix_ms", "escalation_level")
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    APPROVERS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    ESCALATION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    step: str
    message: str
    approvers: _containers.RepeatedScalarFieldContainer[str]
    deadline_unix_ms: int
    escalation_level: int
    def __init__(self, step: _Optional[str] = ..., message: _Optional[str] = ..., approvers: _Optional[_Iterable[str]] = ..., deadline_unix_ms: _Optional[int] = ..., escalation_level: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "bot_id", "workflow", "status", "inputs_json", "outputs_json", "error", "conversation_id", "current_step", "steps", "approval", "parent_run_id", "root_run_id", "steps_executed", "resumes", "created_at_unix_ms", "updated_at_unix_ms", "finished_at_unix_ms", "bot_version")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BOT_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    PARENT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_EXECUTED_FIELD_NUMBER: _ClassVar[int]
    RESUMES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    BOT_VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    bot_id: str
    workflow: str
    status: str
    inputs_json: str
    outputs_json: str
    error: str
    conversation_id: str
    current_step: str
    steps: _containers.RepeatedCompositeFieldContainer[StepRecord]
    approval: PendingApproval
    parent_run_id: str
    root_run_id: str
    steps_executed: int
    resumes: int
    created_at_unix_ms: int
    updated_at_unix_ms: int
    finished_at_unix_ms: int
    bot_version: str
    def __init__(self, run_id: _Optional[str] = ..., bot_id: _Optional[str] = ..., workflow: _Optional[str] = ..., status: _Optional[str] = ..., inputs_json: _Optional[str] = ..., outputs_json: _Optional[str] = ..., error: _Optional[str] = ..., conversation_id: _Optional[str] = ..., current_step: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepRecord, _Mapping]]] = ..., approval: _Optional[_Union[PendingApproval, _Mapping]] = ..., parent_run_id: _Optional[str] = ..., root_run_id: _Optional[str] = ..., steps_executed: _Optional[int] = ..., resumes: _Optional[int] = ..., created_at_unix_ms: _Optional[int] = ..., updated_at_unix_ms: _Optional[int] = ..., finished_at_unix_ms: _Optional[int] = ..., bot_version: _Optional[str] = ...) -> None: ...
