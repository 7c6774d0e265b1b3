"""`make run` entry point: see botfactory/local/stack.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from botfactory.local.stack import main

sys.exit(main())
