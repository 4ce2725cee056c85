"""``python -m kernels install|show``: see :mod:`kernels.install`."""

import sys

from kernels.install import main

sys.exit(main())
