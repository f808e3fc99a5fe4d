"""What the two benchmarks (``bench``: steps; ``bench_training``: real training) share: the
error type, the settle pause, the machine's description, and the PyTorch twins of our nets
and optimizers."""
from __future__ import annotations

import json
import os
import platform

from .. import backend, dispatch
from ..atomic import write_text
from ..errors import CnnXpError
from ..layers import Affine, Conv2D


class BenchError(CnnXpError):
    """A user-facing problem: printed as one line, exit status 2."""


# Pause before each timed CPU run. Both libraries leave worker threads spinning for a while
# after their last parallel call (OpenBLAS for NumPy, OpenMP for PyTorch); on a 2-core CPU
# a run that starts at once shares the cores with them (docs/history.md, "A correction").
SETTLE_SECONDS = 0.3


def accelerator_description(device: str) -> str:
    """The device's accelerator and the ops it runs in ``auto`` mode, or why there is none."""
    fast = [op for op, name in dispatch.table(device).items() if name != "reference"]
    return dispatch.describe_accelerator(device) + (f" for {', '.join(fast)}" if fast else "")


def machine_description(device: str) -> str:
    if device == "gpu":
        cp = backend.cupy()
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores"


# -- the PyTorch peer -----------------------------------------------------------------
def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def torch_optimizer(torch, name: str, params, lr: float, kwargs: dict):
    """Our optimizer's PyTorch twin (same update rule and constants)."""
    name = name.lower()
    decay = float(kwargs.get("weight_decay", 0.01 if name == "adamw" else 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=decay)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=kwargs.get("momentum", 0.9), nesterov=name == "nesterov",
                               weight_decay=decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=kwargs.get("eps", 1e-7), weight_decay=decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=kwargs.get("decay", 0.99), eps=kwargs.get("eps", 1e-7),
                                   weight_decay=decay)
    if name in ("adam", "adamw"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, betas=(kwargs.get("beta1", 0.9), kwargs.get("beta2", 0.999)),
                   eps=kwargs.get("eps", 1e-8), weight_decay=decay)
    raise BenchError(f"no PyTorch twin for optimizer {name!r}")


def torch_twin(torch, model):
    """An ``nn.Sequential`` mirroring our layers, with our initial weights copied in."""
    from ..layers import Dropout, MaxPool2D, ReLU
    nn = torch.nn
    mods = []
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            oc, c, kh, kw = layer.params["W"].shape
            mod = nn.Conv2d(c, oc, (kh, kw), stride=layer.stride, padding=layer.pad)
            mod.weight.data = torch.from_numpy(backend.to_numpy(layer.params["W"]).copy())
            mod.bias.data = torch.from_numpy(backend.to_numpy(layer.params["b"]).copy())
            mods.append(mod)
        elif isinstance(layer, Affine):
            fan_in, fan_out = layer.params["W"].shape
            if not mods or not isinstance(mods[-1], nn.Flatten):
                mods.append(nn.Flatten())
            mod = nn.Linear(fan_in, fan_out)
            mod.weight.data = torch.from_numpy(backend.to_numpy(layer.params["W"]).T.copy())
            mod.bias.data = torch.from_numpy(backend.to_numpy(layer.params["b"]).copy())
            mods.append(mod)
        elif isinstance(layer, ReLU):
            mods.append(nn.ReLU())
        elif isinstance(layer, MaxPool2D):
            mods.append(nn.MaxPool2d(layer.kernel, stride=layer.stride, padding=layer.pad))
        elif isinstance(layer, Dropout):
            mods.append(nn.Dropout(layer.p))
        else:
            raise BenchError(f"no PyTorch twin for layer {layer!r}")
    return nn.Sequential(*mods)


def torch_param_groups(torch_net_params: dict, model, hp) -> list:
    """PyTorch parameter groups equal to our optimizer's: one group per lr group, the rest
    in a last group at the base rate. ``torch_net_params``: our name -> torch parameter."""
    from ..optim import resolve_param_groups

    names = [name for name, _, _ in model.params_and_grads()]
    groups, claimed = [], set()
    for group in resolve_param_groups(names, hp.get("lr_groups") or []):
        lr = group["lr"] if "lr" in group else float(hp["lr"]) * group["lr_scale"]
        groups.append({"params": [torch_net_params[n] for n in group["params"]], "lr": lr})
        claimed.update(group["params"])
    rest = [torch_net_params[n] for n in names if n not in claimed]
    if rest:
        groups.append({"params": rest, "lr": float(hp["lr"])})
    return groups


def twin_parameters(model, net) -> dict:
    """Our parameter names ("0.W", ...) -> the twin's torch parameters."""
    ours = [i for i, layer in enumerate(model.layers) if isinstance(layer, (Conv2D, Affine))]
    theirs = [m for m in net if hasattr(m, "weight")]
    mapping = {}
    for index, module in zip(ours, theirs, strict=True):
        mapping[f"{index}.W"], mapping[f"{index}.b"] = module.weight, module.bias
    return mapping


def write_report(report: dict, table: str, args) -> None:
    """Print the markdown table; write it (``--markdown``) and the report (``--json``)."""
    print(table, end="")
    if args.json:
        write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        write_text(args.markdown, table)
