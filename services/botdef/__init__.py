"""Bot definitions: the YAML bot folder format, its loader and validation, and importers.

Shared library code (beside `services.common`): every service and the CLI read bots with
`load_bot`. See docs/bot-definition.md for the folder format.
"""

from services.botdef.annotation import format_annotated, parse_annotated
from services.botdef.importers import DataImportError, import_bio, import_csv, import_rasa
from services.botdef.loader import load_bot
from services.botdef.model import (
    BotDefinition,
    BotDefinitionError,
    DefinitionIssue,
    EntityDef,
    EntitySpan,
    Example,
    Intent,
    NluSettings,
)
from services.botdef.schema import BOT_FILE_SCHEMA, DATA_FILE_SCHEMA
from services.botdef.writer import write_bot

__all__ = [
    "BOT_FILE_SCHEMA",
    "DATA_FILE_SCHEMA",
    "BotDefinition",
    "BotDefinitionError",
    "DataImportError",
    "DefinitionIssue",
    "EntityDef",
    "EntitySpan",
    "Example",
    "Intent",
    "NluSettings",
    "format_annotated",
    "import_bio",
    "import_csv",
    "import_rasa",
    "load_bot",
    "parse_annotated",
    "write_bot",
]
