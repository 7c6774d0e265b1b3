"""`python -m services.dialogue`: the dialogue worker (config: BOTFACTORY_DIALOGUE_*)."""

import sys

from services.botdef import BotDefinitionError
from services.common.lifecycle import service_main
from services.dialogue import config
from services.dialogue.app import DialogueServer

if __name__ == "__main__":
    sys.exit(service_main("dialogue", config.load, DialogueServer, fatal=(BotDefinitionError,)))
