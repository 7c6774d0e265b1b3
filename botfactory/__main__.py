import sys

from botfactory.cli import main

sys.exit(main())
