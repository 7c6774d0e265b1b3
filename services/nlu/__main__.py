"""`python -m services.nlu`: the NLU gRPC service (config: BOTFACTORY_NLU_* variables)."""

import sys

from services.common.lifecycle import service_main
from services.nlu import config
from services.nlu.app import NluServer
from services.nlu.engine import ModelLoadError

if __name__ == "__main__":
    sys.exit(service_main("nlu", config.load, NluServer, fatal=(ModelLoadError,)))
