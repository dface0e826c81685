"""Training curves (loss and validation mIoU against iteration) as a PNG.

matplotlib is an optional dependency (the ``plot`` extra): this is the only module that
imports it, and only inside :func:`write_curves`; without it that call raises an ImportError
saying what to install and the rest of convnet works.
"""

import json
import os


def read_log(path):
    """The records of a ``log.jsonl`` written by ``scripts/train_segmentation.py`` (one JSON
    object a line); a line cut short by a crash is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def write_curves(records, path, title=None):
    """Write ``path`` (PNG): training loss (records with "loss") and validation mIoU and
    pixel accuracy (records with "val") against "iter", on two axes side by side."""
    try:
        # a Figure on the Agg canvas, without pyplot (its import and GUI backends: ~1 s)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"curves need matplotlib: pip install \".[plot]\" ({exc})") from exc
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val" in r and r["val"].get("miou") is not None]
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax_loss, ax_val = fig.subplots(1, 2)
    if train:
        ax_loss.plot([r["iter"] for r in train], [r["loss"] for r in train], lw=1)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    if val:
        its = [r["iter"] for r in val]
        ax_val.plot(its, [r["val"]["miou"] for r in val], "o-", label="val mIoU")
        ax_val.plot(its, [r["val"]["pixel_acc"] for r in val], "s--", label="val pixel acc")
        best = max(val, key=lambda r: r["val"]["miou"])
        ax_val.annotate(f"best {best['val']['miou']:.3f}", (best["iter"], best["val"]["miou"]),
                        textcoords="offset points", xytext=(0, 8), ha="center")
        ax_val.legend(loc="lower right")
    ax_val.set_xlabel("iteration")
    ax_val.set_ylim(0, 1)
    ax_val.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    # fixed margins: tight_layout measured every label's extent (~0.6 s)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.88 if title else 0.95,
                        wspace=0.22)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
