"""`python -m services.rpa_runner`: the RPA runner (config: BOTFACTORY_RPA_*; secrets:
BOTFACTORY_SECRET_<NAME>)."""

import sys

from services.botdef import BotDefinitionError
from services.common.lifecycle import service_main
from services.rpa_runner import config
from services.rpa_runner.app import RunnerServer

if __name__ == "__main__":
    sys.exit(service_main("rpa_runner", config.load, RunnerServer, fatal=(BotDefinitionError,)))
