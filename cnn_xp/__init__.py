"""cnn_xp: convolutional networks from scratch, one ``xp`` (NumPy on CPU, CuPy on GPU)."""
from . import backend, dispatch, gradcheck, init, layers, ops, optim
from .model import Sequential

__version__ = "0.1.0"


def __getattr__(name):
    # The zoo, data, checkpoints, threads and the application load on first use.
    if name in ("models", "data", "checkpoint", "parallel", "app"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cnn_xp' has no attribute {name!r}")


__all__ = ["backend", "dispatch", "gradcheck", "init", "layers", "ops", "optim", "Sequential", "__version__"]
