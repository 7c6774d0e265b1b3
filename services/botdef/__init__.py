"""Bot definitions: the YAML bot folder format, its loader and validation, and importers.

Shared library code (beside `services.common`): every service and the CLI read bots with
`load_bot`; `BotDefinition.conversation` holds the typed slots, responses and flows. See
docs/bot-definition.md for the folder format.
"""

from services.botdef.annotation import format_annotated, parse_annotated
from services.botdef.conversation import (
    BUILTIN_RESPONSES,
    BUILTIN_TRANSLATIONS,
    Branch,
    ButtonDef,
    Call,
    Collect,
    Condition,
    ConversationDefinition,
    End,
    FlowDef,
    Handoff,
    MessageRef,
    ResponseDef,
    RunWorkflow,
    Say,
    Search,
    SetSlots,
    SlotDef,
    SlotValue,
    Step,
    Validation,
    Variation,
    WorkflowInput,
    answers_only,
    humanize,
    parse_payload,
)
from services.botdef.importers import (
    DataImportError,
    import_bio,
    import_conll,
    import_csv,
    import_rasa,
)
from services.botdef.loader import load_bot
from services.botdef.model import (
    BotDefinition,
    BotDefinitionError,
    DefinitionIssue,
    EntityDef,
    EntitySpan,
    Example,
    Intent,
    KnowledgeSettings,
    NluSettings,
)
from services.botdef.schema import (
    BOT_FILE_SCHEMA,
    CONVERSATION_SCHEMA,
    DATA_FILE_SCHEMA,
    DATE_TYPES,
)
from services.botdef.slotrules import format_number, value_problem
from services.botdef.templates import template_environment
from services.botdef.writer import write_bot

__all__ = [
    "BOT_FILE_SCHEMA",
    "BUILTIN_RESPONSES",
    "BUILTIN_TRANSLATIONS",
    "CONVERSATION_SCHEMA",
    "DATA_FILE_SCHEMA",
    "DATE_TYPES",
    "BotDefinition",
    "BotDefinitionError",
    "Branch",
    "ButtonDef",
    "Call",
    "Collect",
    "Condition",
    "ConversationDefinition",
    "DataImportError",
    "DefinitionIssue",
    "End",
    "EntityDef",
    "EntitySpan",
    "Example",
    "FlowDef",
    "Handoff",
    "Intent",
    "KnowledgeSettings",
    "MessageRef",
    "NluSettings",
    "ResponseDef",
    "RunWorkflow",
    "Say",
    "Search",
    "SetSlots",
    "SlotDef",
    "SlotValue",
    "Step",
    "Validation",
    "Variation",
    "WorkflowInput",
    "answers_only",
    "format_annotated",
    "format_number",
    "humanize",
    "import_bio",
    "import_conll",
    "import_csv",
    "import_rasa",
    "load_bot",
    "parse_annotated",
    "parse_payload",
    "template_environment",
    "value_problem",
    "write_bot",
]
