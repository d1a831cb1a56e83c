"""``python -m pyinterp ...`` is the same as the ``pyinterp`` command."""
import sys

from pyinterp.cli import main

sys.exit(main())
