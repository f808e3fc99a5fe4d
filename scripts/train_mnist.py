#!/usr/bin/env python3
"""Train a zoo model: the same flags as ``cnn-xp train``.

    python scripts/train_mnist.py --model simple_convnet --dataset mnist --device cpu
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from cnn_xp.app.cli import OneLineParser, add_train_arguments, main  # noqa: E402


def build_parser():
    parser = OneLineParser(prog="train_mnist.py", description="Train a cnn_xp zoo model on MNIST or Fashion-MNIST.")
    add_train_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], parser=build_parser(), command="train"))
