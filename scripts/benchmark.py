#!/usr/bin/env python
"""Throughput benchmark of the zoo models (and PyTorch alongside): see ``cnn-xp bench --help``."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cnn_xp.app.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
