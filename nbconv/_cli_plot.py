"""Charts for the command line (matplotlib, the ``plot`` extra; imported only when a chart is drawn).

- `bench_chart(data, path)`: nbconv vs the references per shape, from the dict that
  ``python -m nbconv bench --json FILE`` writes (forward and backward times, log scale).
- `training_curves(history, path)`: loss and accuracy per epoch, from a list of
  ``{"epoch", "loss", "train_acc", "test_acc"}`` dicts (accuracies as fractions).
- ``python -m nbconv plot FILE.json --out FILE.png`` draws whichever of the two FILE.json holds.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot state, no display needed) at
SIZE inches and DPI dots per inch, so a PNG is SIZE * DPI pixels.
"""
import json
import sys

SIZE = (10.0, 5.0)
DPI = 100


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _figure(ncols):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable('charts need matplotlib: pip install "nbconv[plot]"') from None
    figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, ncols)


def _shape_label(row):
    """The row's name (bench's rows since the named suite); for rows of older bench files, which have none,
    the shape in --shape's positional form ('4,16,28,28,64,64,3,2x1x1,1,1')."""
    if row.get("name") is not None:
        return str(row["name"])
    return ",".join("x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for v in row["shape"])


def bench_chart(data, path):
    """Save a bar chart of `data` (bench's JSON: {"config": ..., "rows": [...]}) to `path`."""
    rows = data["rows"]
    if not rows:
        raise ValueError("the benchmark results hold no rows")
    for row in rows:  # KeyError/TypeError for anything but bench's rows
        float(row["nbconv_forward_ms"]), float(row["nbconv_backward_ms"]), _shape_label(row)
    figure, (forward, backward) = _figure(2)
    labels = [_shape_label(r) for r in rows]
    series = {
        forward: [("nbconv", "nbconv_forward_ms"), ("PyTorch", "torch_forward_ms"), ("NumPy im2col", "im2col_forward_ms")],
        backward: [("nbconv", "nbconv_backward_ms"), ("PyTorch", "torch_backward_ms")],
    }
    colors = {"nbconv": "tab:blue", "PyTorch": "tab:orange", "NumPy im2col": "tab:gray"}
    for axes, title in ((forward, "forward"), (backward, "backward (input, weight and bias gradients)")):
        present = [(name, key) for name, key in series[axes] if any(r.get(key) is not None for r in rows)]
        width = 0.8 / len(present)
        for j, (name, key) in enumerate(present):
            xs = [i + (j - (len(present) - 1) / 2) * width for i in range(len(rows))]
            values = [r.get(key) if r.get(key) is not None else float("nan") for r in rows]
            axes.bar(xs, values, width, label=name, color=colors[name])
        axes.set_yscale("log")
        axes.set_title(title)
        axes.set_ylabel("milliseconds (log scale; lower is faster)")
        axes.set_xticks(range(len(rows)), labels, rotation=35 if len(rows) <= 12 else 60, ha="right",
                        fontsize=8 if len(rows) <= 12 else 6)
        if not any(r.get("name") is not None for r in rows):
            axes.set_xlabel("shape: N,[D,]H,W,C_in,C_out,K,stride,pad,groups")
        axes.legend(fontsize=8)
        axes.grid(axis="y", which="both", alpha=0.3)
    config = data.get("config", {})
    dtype = config.get("dtype") or ", ".join(config.get("dtypes") or []) or "?"
    figure.suptitle(f"nbconv bench, {dtype}, {config.get('threads', '?')} thread(s), {config.get('cpu', '?')}")
    figure.savefig(path, format="png")
    return path


def training_curves(history, path, title="training"):
    """Save loss and accuracy curves of `history` (one dict per epoch) to `path`."""
    if not history:
        raise ValueError("the training history is empty")
    figure, (loss_axes, accuracy_axes) = _figure(2)
    epochs = [h["epoch"] for h in history]
    loss_axes.plot(epochs, [h["loss"] for h in history], marker="o")
    loss_axes.set_title("training loss")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("cross-entropy")
    for key, label in (("train_acc", "train"), ("test_acc", "test")):
        if all(key in h for h in history):
            accuracy_axes.plot(epochs, [100 * h[key] for h in history], marker="o", label=label)
    accuracy_axes.set_title("accuracy")
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.set_ylabel("%")
    accuracy_axes.legend()
    from matplotlib.ticker import MaxNLocator

    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    figure.suptitle(title)
    figure.savefig(path, format="png")
    return path


def add_arguments(parser):
    parser.add_argument("data", metavar="FILE.json",
                        help="what `bench --json FILE` wrote, or a training history (a list of per-epoch dicts, "
                             "or {\"history\": [...]})")
    parser.add_argument("--out", "-o", required=True, metavar="FILE.png", help="where to save the PNG")


def run(args):
    try:
        with open(args.data) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        print(f"nbconv plot: cannot read {args.data}: {error}", file=sys.stderr)
        return 2
    try:
        if isinstance(data, dict) and "rows" in data:
            bench_chart(data, args.out)
        elif isinstance(data, list) or (isinstance(data, dict) and "history" in data):
            history = data if isinstance(data, list) else data["history"]
            training_curves(history, args.out, title=(data.get("title", "training") if isinstance(data, dict)
                                                      else "training"))
        else:
            print(f"nbconv plot: {args.data} holds neither bench results nor a training history", file=sys.stderr)
            return 2
    except PlotUnavailable as error:
        print(f"nbconv plot: {error}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, ValueError) as error:
        print(f"nbconv plot: {args.data} is not in the expected form ({type(error).__name__}: {error})",
              file=sys.stderr)
        return 2
    print(f"saved {args.out}")
    return 0
