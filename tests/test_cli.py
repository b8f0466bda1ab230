"""The command line: --version, --help, and the compile / info / cache subcommands (bench, demo and
lenet have their own test modules)."""
import json
import os
import subprocess
import sys

import pytest

import nbconv
from nbconv.__main__ import COMMANDS, main


def _run(*args, env=None, timeout=600):
    """`python -m nbconv ARGS` in a fresh process; CompletedProcess with text output."""
    environment = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "nbconv", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout)


def test_version_flag_prints_the_package_version():
    result = _run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"nbconv {nbconv.__version__}"


def test_version_is_one_string_that_packaging_metadata_agrees_with():
    import importlib.metadata

    assert isinstance(nbconv.__version__, str) and nbconv.__version__.count(".") >= 2
    assert importlib.metadata.version("nbconv") == nbconv.__version__


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in ("bench", "demo", "lenet", "compile", "info", "cache"):
        assert name in COMMANDS and name in text


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["compile", "--dims", "4"], "'4' is not a dimension count"),
    (["compile", "--dims", ","], "give at least one dimension count"),
    (["compile", "--dtypes", "float16"], "'float16' is not a dtype"),
    (["compile", "--groups", "everything"], "'everything' is not a kernel group"),
])
def test_compile_rejects_bad_option_values_with_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_compile_plan_covers_each_group_dim_and_dtype_once():
    from nbconv._cli_compile import GROUPS, plan

    steps = plan((1, 2, 3), ("float32", "float64"), GROUPS)
    assert len(steps) == len(set(steps)) == 2 * (3 * (len(GROUPS) - 1) + 1)
    assert plan((2,), ("float64",), ("forward",)) == [("2-D forward float64", "forward", 2, "float64")]


def test_compile_runs_every_kernel_group_in_process(capsys):
    """Every step runs against the current public functions (this compiles into the test process's cache)."""
    assert main(["compile", "--dtypes", "float32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("[")]
    assert len(steps) == 3 * 5 + 1
    assert steps[0].startswith("[ 1/16] 1-D forward float32") and steps[0].endswith(" s")
    assert steps[-1].startswith("[16/16] batch_norm float32")
    assert "the cache now holds" in out


def test_compile_fills_a_fresh_cache_that_later_processes_reuse_and_cache_clear_empties(tmp_path):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    args = ("compile", "--dims", "1", "--dtypes", "float64", "--groups", "batch_norm,pooling")
    first = _run(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert str(tmp_path) in first.stdout and "0 file(s), 0 B" in first.stdout
    files = sorted(p.name for p in tmp_path.rglob("*") if p.suffix in (".nbi", ".nbc"))
    assert any(f.startswith("_pool.") for f in files), files

    second = _run(*args, env=env)  # everything is loaded from the cache: nothing new is written
    assert second.returncode == 0, second.stderr
    assert f"the cache now holds {len(files)} file(s)" in second.stdout and "(+0 file(s))" in second.stdout

    shown = _run("cache", env=env)
    assert shown.returncode == 0 and str(tmp_path) in shown.stdout and f"{len(files)} file(s)" in shown.stdout

    cleared = _run("cache", "--clear", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert f"removed {len(files)} file(s)" in cleared.stdout
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".nbi", ".nbc")]


def test_cache_directory_is_numbas_choice_for_the_kernels():
    from nbconv import _cli_cache, _cpu

    dirs = _cli_cache.cache_dirs()
    assert _cpu._gather_conv._cache._cache_path in dirs
    if not os.environ.get("NUMBA_CACHE_DIR"):
        package = os.path.dirname(os.path.abspath(nbconv.__file__))
        assert dirs == {os.path.join(package, "__pycache__"): "beside the package"} or \
            all(how.startswith("per-user") for how in dirs.values())


def test_human_sizes():
    from nbconv._cli_cache import human

    assert [human(n) for n in (0, 999, 1000, 1_234_567, 5 * 10 ** 12)] == \
        ["0 B", "999 B", "1.0 kB", "1.2 MB", "5000.0 GB"]


def test_info_json_describes_versions_cpu_threads_cache_and_cuda(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nbconv"]["version"] == nbconv.__version__
    import numba
    import numpy as np
    assert info["versions"]["numpy"] == np.__version__ and info["versions"]["numba"] == numba.__version__
    assert info["cpu"]["llvm_name"] and info["cpu"]["cpu_count"] >= 1
    assert info["threading"]["kernel"] == "ok", info["threading"]
    assert info["threading"]["layer"] in (None, "tbb", "omp", "workqueue"), info["threading"]
    assert info["threading"]["threads"] >= 1
    assert info["cache"]["dirs"] and info["cache"]["files"] >= 1   # the probe kernel is cached at least
    assert info["cuda"]["available"] is nbconv.cuda_available()


def test_info_text_names_each_section():
    result = _run("info")
    assert result.returncode == 0, result.stderr
    for needle in (f"nbconv {nbconv.__version__}", "NumPy ", "Numba ", "CPU: ", "vector features:",
                   "a test kernel: ok", "threading layer: ", "kernel cache", "python -m nbconv cache --clear",
                   "CUDA: "):
        assert needle in result.stdout, (needle, result.stdout)


# ---------------------------------------------------------------- plot

def _png_size(path):
    """(width, height) of a PNG file, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


BENCH_ROWS = [  # the fields `bench --json` writes that the chart reads (one row without references)
    {"dims": 2, "shape": [10, 32, 32, 8, 16, 3, 1, 0, 1], "nbconv_forward_ms": 0.3, "nbconv_backward_ms": 0.8,
     "torch_forward_ms": 0.2, "torch_backward_ms": 0.7, "im2col_forward_ms": 0.65},
    {"dims": 3, "shape": [2, 8, 8, 8, 8, 8, 3, 1, 1, 1], "nbconv_forward_ms": 0.1, "nbconv_backward_ms": 0.3},
    {"name": "dcgan.deconv", "label": "16x16x16x128->64 k4 s2 p1 T", "dims": 2,  # a row of the named suite
     "shape": {"name": "dcgan.deconv", "n": 16, "sizes": [16, 16], "c_in": 128, "c_out": 64, "kernel": [4, 4]},
     "nbconv_forward_ms": 9.5, "nbconv_backward_ms": 20.0, "torch_forward_ms": 11.0, "torch_backward_ms": 30.0},
]


@pytest.mark.parametrize("kind", ["bench", "history", "history-dict"])
def test_plot_saves_a_png_of_the_expected_size(kind, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from nbconv._cli_plot import DPI, SIZE

    history = [{"epoch": e, "loss": 1.0 / e, "train_acc": 1 - 0.5 / e, "test_acc": 1 - 0.6 / e} for e in (1, 2, 3)]
    data = {"bench": {"config": {"dtype": "float32", "threads": 2, "cpu": "test"}, "rows": BENCH_ROWS},
            "history": history, "history-dict": {"history": history, "title": "digits"}}[kind]
    source, out = tmp_path / "data.json", tmp_path / "chart.png"
    source.write_text(json.dumps(data))
    assert main(["plot", str(source), "--out", str(out)]) == 0
    assert _png_size(out) == (round(SIZE[0] * DPI), round(SIZE[1] * DPI))
    assert f"saved {out}" in capsys.readouterr().out


def test_plot_of_real_bench_json(tmp_path):
    """The chart reads what `bench --json` writes (a tiny shape, nbconv only)."""
    pytest.importorskip("matplotlib")
    source, out = tmp_path / "bench.json", tmp_path / "bench.png"
    assert main(["bench", "--shape", "1,6,6,4,4,3,1,1,1", "--repeats", "1", "--no-torch", "--threads", "1",
                 "--roof-size", "16", "--json", str(source)]) == 0
    assert main(["plot", str(source), "-o", str(out)]) == 0
    assert _png_size(out)[0] > 0


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{not json", "cannot read"),
    ('{"something": 1}', "neither bench results nor a training history"),
    ('{"rows": [{"shape": [1]}]}', "not in the expected form"),
    ("[]", "not in the expected form"),
])
def test_plot_reports_unusable_input_without_a_traceback(content, message, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    source = tmp_path / "data.json"
    if content is not None:
        source.write_text(content)
    assert main(["plot", str(source), "-o", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)   # makes importing them raise ImportError
    source = tmp_path / "history.json"
    source.write_text(json.dumps([{"epoch": 1, "loss": 1.0}]))
    assert main(["plot", str(source), "-o", str(tmp_path / "x.png")]) == 2
    assert 'pip install "nbconv[plot]"' in capsys.readouterr().err


# ---------------------------------------------------------------- option validators

@pytest.mark.parametrize("validator, text, expected", [
    ("positive_int", "3", 3), ("positive_int", "0", "must be at least 1, got 0"),
    ("positive_int", "x", "'x' is not an integer"), ("positive_int", "1.5", "'1.5' is not an integer"),
    ("nonnegative_int", "0", 0), ("nonnegative_int", "-1", "must be at least 0, got -1"),
    ("positive_float", "0.5", 0.5), ("positive_float", "0", "must be greater than 0"),
    ("positive_float", "nan", "'nan' is not a finite number"),
    ("open_fraction", "0.2", 0.2), ("open_fraction", "1.0", "must be between 0 and 1 (exclusive), got 1.0"),
    ("open_fraction", "0", "must be between 0 and 1"),
    ("thread_count", "1", 1), ("thread_count", "0", "must be in 1.."),
    ("thread_count", "100000", "(NUMBA_NUM_THREADS), got 100000"),
])
def test_option_validators_give_usage_errors(validator, text, expected, capsys):
    import argparse

    from nbconv import _cli_args

    parser = argparse.ArgumentParser(prog="nbconv-test")
    parser.add_argument("--value", type=getattr(_cli_args, validator))
    if not isinstance(expected, str):
        assert parser.parse_args(["--value", text]).value == expected
        return
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--value", text])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: nbconv-test" in err and expected in err and "Traceback" not in err


def test_compile_reports_a_failing_step_and_goes_on(capsys, monkeypatch):
    from nbconv import _cli_compile

    def broken(nbconv, rng, nd, dtype):
        raise RuntimeError("boom")

    monkeypatch.setitem(_cli_compile.STEPS, "forward", broken)
    assert main(["compile", "--dims", "1", "--dtypes", "float64", "--groups", "forward,batch_norm",
                 "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "[1/2] 1-D forward float64" in captured.out and "FAILED: RuntimeError: boom" in captured.out
    assert "[2/2] batch_norm float64" in captured.out and "FAILED" not in captured.out.splitlines()[-2]
    assert "1 step(s) failed: 1-D forward float64" in captured.err


# ---------------------------------------------------------------- progress bars (demo, bench, lenet)

class _Stream:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty

    def write(self, text):
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize("stdout_tty, stderr_tty", [(False, False), (True, False), (False, True)])
def test_progress_is_off_unless_stdout_and_stderr_are_terminals(stdout_tty, stderr_tty, monkeypatch):
    from nbconv import _cli_progress

    monkeypatch.setattr(sys, "stdout", _Stream(stdout_tty))
    monkeypatch.setattr(sys, "stderr", _Stream(stderr_tty))
    assert not _cli_progress.interactive()
    assert _cli_progress.bar(10, "x") is None


def test_progress_on_a_terminal_unless_disabled_or_without_tqdm(monkeypatch):
    pytest.importorskip("tqdm")
    from nbconv import _cli_progress

    monkeypatch.setattr(sys, "stdout", _Stream(True))
    monkeypatch.setattr(sys, "stderr", _Stream(True))
    assert _cli_progress.interactive()
    bar = _cli_progress.bar(10, "x", "step")
    assert bar is not None and bar.total == 10
    bar.close()
    assert _cli_progress.bar(10, "x", enabled=False) is None   # --no-progress
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert _cli_progress.bar(10, "x") is None


def test_progress_is_off_under_pytest_capture(capsys):
    from nbconv import _cli_progress

    assert not _cli_progress.interactive() and _cli_progress.bar(3) is None
    _cli_progress.writer(None)("a line")
    assert capsys.readouterr().out == "a line\n"


# ---------------------------------------------------------------- lenet

@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "argument --threads: must be in 1.."),
    (["--threads", "100000"], "(NUMBA_NUM_THREADS), got 100000"),
    (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--lr", "0"], "argument --lr: must be greater than 0"),
    (["--seed", "-3"], "argument --seed: must be at least 0"),
    (["--limit", "0"], "argument --limit: must be at least 1"),
])
def test_lenet_bad_option_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lenet", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m nbconv lenet" in err and message in err and "Traceback" not in err


def test_lenet_short_run_and_its_progress_bar(monkeypatch, capsys):
    """A tiny run (64 images, one epoch): the table without a bar when not a terminal; on a terminal
    the bar names the warm-up (compiling) and each epoch of each variant."""
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    from nbconv import _cli_progress

    argv = ["lenet", "--dataset", "digits", "--limit", "64", "--epochs", "1", "--threads", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "64 training / 360 test images" in captured.out and "| nbconv.torch.Conv2d " in captured.out
    assert captured.err == ""
    monkeypatch.setattr(_cli_progress, "interactive", lambda: True)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warm-up nbconv.torch.Conv2d (compiling the kernels)" in err
    assert "epoch 1/1 torch.nn.Conv2d" in err and "epoch 1/1 nbconv.torch.Conv2d" in err and "0/4" in err
