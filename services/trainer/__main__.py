"""`python -m services.trainer`: the trainer worker (config: BOTFACTORY_TRAINER_*)."""

import sys

from services.common.lifecycle import service_main
from services.trainer import config
from services.trainer.app import TrainerServer

if __name__ == "__main__":
    sys.exit(service_main("trainer", config.load, TrainerServer))
