"""What a finished run leaves besides its checkpoint: the test result, the plots and summary.json.

The plots need matplotlib; without it (the source tree on a bare machine) the run has none
and summary.json says so under ``plots``.

summary.json holds ``recipe`` (every field of ``cnn_xp.Recipe``), the device, the epochs
trained, ``test_accuracy`` (0..1), ``test_loss``, ``per_class_accuracy`` (by class name),
the timings, the parameter count, the run folder, and the package versions.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime

from .. import backend
from ..atomic import write_text
from ..errors import WriteError
from ..training import evaluate


def first_conv_weights(model):
    """Host copy of the first layer's W (out, in, kh, kw), or None if it is not a conv."""
    w = model.layers[0].params.get("W")
    if w is None or w.ndim != 4:
        return None
    return backend.to_numpy(w).copy()


def package_versions(device: str) -> dict:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("cnn_xp", "numpy", "idx2numpy", "tqdm", "matplotlib", "pillow"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if device == "gpu":
        versions["cupy"] = backend.cupy().__version__
    return versions


def load_plots():
    """cnn_xp.app.plots, or None where matplotlib is not installed (the source tree run on a
    bare machine): the run then has no figures."""
    try:
        from . import plots
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "matplotlib":
            raise
        return None
    return plots


def write_results(run_dir, recipe, model, history_rows, data, filters_before, *, device: str,
                  wall_seconds: float, extra: dict | None = None) -> dict:
    """Test the model, draw the plots (where matplotlib is installed), write summary.json;
    return the summary."""
    plots = load_plots()
    result = evaluate(model, (data.x_test, data.t_test), num_classes=len(data.class_names))
    title = f"{recipe.model} on {recipe.dataset}"
    accuracy = result["accuracy"]
    if plots is not None:
        if history_rows:
            plots.plot_curves(history_rows, run_dir / "curves.png", title=title,
                              validation_label="test" if data.validation == "test" else "validation")
        if filters_before is not None:
            plots.plot_filters(filters_before, first_conv_weights(model), run_dir / "filters.png")
        plots.plot_confusion(result["confusion"], run_dir / "confusion.png", data.class_names,
                             title=f"{title}: test accuracy {accuracy:.4f}")
    train_seconds = sum(float(r["seconds"]) for r in history_rows)
    summary = {
        "recipe": recipe.to_dict(), "model": recipe.model, "dataset": recipe.dataset, "device": device,
        "epochs": len(history_rows), "validation": data.validation,
        "test_accuracy": accuracy, "test_loss": result["loss"], "test_images": result["n"],
        "test_correct": int((result["predicted"] == backend.to_numpy(data.t_test)).sum()),
        "per_class_accuracy": dict(zip(data.class_names, result["per_class"])),
        "wall_seconds": round(wall_seconds, 3), "train_seconds": round(train_seconds, 3),
        "seconds_per_epoch": round(train_seconds / len(history_rows), 3) if history_rows else None,
        "parameters": model.num_params(), "run_dir": str(run_dir),
        "finished": datetime.now().isoformat(timespec="seconds"), "versions": package_versions(device),
        **({} if plots is not None else {"plots": "none: matplotlib is not installed"}),
        **(extra or {}),
    }
    try:
        write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    except OSError as exc:
        raise WriteError(f"cannot write {run_dir / 'summary.json'} ({exc.strerror or type(exc).__name__}); "
                         f"{run_dir / 'checkpoint.npz'} holds the trained model") from None
    return summary


__all__ = ["write_results", "first_conv_weights", "package_versions"]
