"""``python -m cnn_xp ...`` is the ``cnn-xp`` command."""
import sys

from .app.cli import main

sys.exit(main())
