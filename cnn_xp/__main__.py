"""``python -m cnn_xp ...`` is the ``cnn-xp`` command."""
import sys

from .cli import main

sys.exit(main())
