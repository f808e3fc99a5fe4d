"""The report of ``cnn-xp bench --real`` (``cnn_xp.app.bench_training``): one line per run,
the mean over seeds per model and side, and the markdown table."""
from __future__ import annotations

import statistics

def _fmt_time(seconds):
    return "not reached" if seconds is None else f"{seconds:.1f} s"


def summary_line(row) -> str:
    parts = []
    for label in ("ours", "torch"):
        if label in row:
            r = row[label]
            parts.append(f"{label}: epochs {', '.join(f'{s:.1f}' for s in r['epoch_seconds'])} s, test "
                         f"{100 * r['final_accuracy']:.2f}%, to {100 * row['target']:g}%: {_fmt_time(r['time_to_target'])}")
    return f"{row['model']} seed {row['seed']}: " + "; ".join(parts)


def summarize_seeds(results) -> list:
    """Per model: mean and range over seeds of final test accuracy and time to target."""
    out = []
    for name in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == name]
        entry = {"model": name, "seeds": [r["seed"] for r in rows]}
        for label in ("ours", "torch"):
            if label not in rows[0]:
                continue
            accs = [r[label]["final_accuracy"] for r in rows]
            times = [r[label]["time_to_target"] for r in rows]
            entry[label] = {"mean_accuracy": statistics.fmean(accs), "min_accuracy": min(accs),
                            "max_accuracy": max(accs), "mean_total_seconds":
                                statistics.fmean(r[label]["total_seconds"] for r in rows),
                            "mean_epoch_seconds": statistics.fmean(s for r in rows for s in r[label]["epoch_seconds"]),
                            "time_to_target": times}
        if "torch" in entry:
            entry["total_ratio"] = entry["torch"]["mean_total_seconds"] / entry["ours"]["mean_total_seconds"]
        out.append(entry)
    return out


def markdown_table(report) -> str:
    peer = report["peer"] is not None
    head = ["model", "seed", "epochs", "s/epoch, each"]
    head += ["torch s/epoch", "epoch ratio"] if peer else []
    head += ["test acc"] + (["torch test acc"] if peer else [])
    head += ["time to target"] + (["torch time to target", "ratio"] if peer else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        ours = r["ours"]
        row = [r["model"], str(r["seed"]), str(r["epochs"]), ", ".join(f"{s:.1f}" for s in ours["epoch_seconds"])]
        if peer:
            row += [", ".join(f"{s:.1f}" for s in r["torch"]["epoch_seconds"]), f"{r['epoch_ratio']:.2f}x"]
        row += [f"{100 * ours['final_accuracy']:.2f}%"] + ([f"{100 * r['torch']['final_accuracy']:.2f}%"] if peer else [])
        row += [_fmt_time(ours["time_to_target"])]
        if peer:
            ratio = r.get("time_to_target_ratio")
            row += [_fmt_time(r["torch"]["time_to_target"]), "-" if ratio is None else f"{ratio:.2f}x"]
        lines.append("| " + " | ".join(row) + " |")
    for entry in report.get("summary", []):
        if len(entry["seeds"]) < 2:
            continue
        parts = []
        for label in ("ours", "torch"):
            if label in entry:
                e = entry[label]
                parts.append(f"{label} test accuracy {100 * e['mean_accuracy']:.2f}% "
                             f"({100 * e['min_accuracy']:.2f}-{100 * e['max_accuracy']:.2f}%) in "
                             f"{e['mean_total_seconds']:.1f} s")
        ratio = f"; ratio {entry['total_ratio']:.2f}x" if "total_ratio" in entry else ""
        lines.append(f"| {entry['model']} | mean of seeds {', '.join(map(str, entry['seeds']))}: "
                     + "; ".join(parts) + f" (loading, set-up, training, evaluations){ratio} |"
                     + " |" * (len(head) - 2))
    target = report["results"][0]["target"] if report["results"] else None
    kernels = (f"; kernels {report['kernels']}, accelerator {report['accelerator']}"
               if report.get("accelerator") else "")
    lines += ["", f"Real training on {report['dataset']} ({report['train_images']} train, {report['test_images']} "
              f"test images); time to target = data loading + set-up + training + a test evaluation after every "
              f"epoch, until test accuracy >= {target}; ratio = torch seconds / ours. Device: {report['device']} "
              f"({report['machine']}){kernels}; numpy {report['versions']['numpy']}"
              + (f", torch {report['versions']['torch']} ({report['torch_threads']} threads)" if peer else "")
              + f"; command: `{report['command']}`"]
    return "\n".join(lines) + "\n"
