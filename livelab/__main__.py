import sys

from livelab.cli import main

sys.exit(main())
