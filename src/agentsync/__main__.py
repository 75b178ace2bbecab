import sys

from agentsync.cli import main

sys.exit(main())
