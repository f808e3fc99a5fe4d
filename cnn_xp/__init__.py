"""cnn_xp: convolutional networks from scratch, one ``xp`` (NumPy on CPU, CuPy on GPU).

    import cnn_xp
    (x, t), (x_test, t_test) = cnn_xp.datasets.load("mnist")
    model = cnn_xp.models.build("lenet5")
    history = cnn_xp.fit(model, cnn_xp.models.build_optimizer("lenet5", model), (x, t),
                         epochs=2, batch_size=100, validation_data=(x_test, t_test))
    print(cnn_xp.evaluate(model, (x_test, t_test))["accuracy"])
"""
from . import backend, dispatch, gradcheck, init, layers, ops, optim
from .errors import CnnXpError
from .model import Sequential
from .recipe import Recipe
from .loading import load
from .training import History, evaluate, fit

__version__ = "0.2.0"

_LAZY = ("models", "data", "datasets", "callbacks", "checkpoint", "parallel", "schedules", "export", "explain", "app")


def __getattr__(name):
    # The zoo, data, callbacks, checkpoints, threads and the application load on first use.
    if name in _LAZY:
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cnn_xp' has no attribute {name!r}")


__all__ = ["backend", "dispatch", "gradcheck", "init", "layers", "ops", "optim", "Sequential", "fit", "evaluate",
           "load", "History", "Recipe", "CnnXpError", "__version__", *_LAZY]
