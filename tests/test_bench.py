"""The benchmark instruments: the NumPy im2col reference, `python -m nbconv bench`, the asv suite."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import nbconv
from nbconv import _bench
from nbconv.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the asv suite lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_conv, common  # noqa: E402


@pytest.mark.parametrize("shape", [
    (2, 7, 6, 3, 4, 3, 1, 0, 1),
    (1, 9, 8, 4, 6, 3, 2, 1, 2),
    (3, 5, 5, 6, 6, 3, 1, 1, 6),
    (2, 6, 7, 5, 3, 1, 1, 0, 1),
    (1, 8, 8, 2, 4, 4, 3, 2, 1),
    (1, 9, 8, 4, 6, 3, (2, 1), (1, 0), 2),  # per-dimension stride and pad
])
def test_im2col_matches_nbconv(shape):
    x, w, b, _ = _bench.make_data(shape, np.float64)
    _, _, _, _, _, _, stride, pad, groups = shape
    expected = nbconv.conv2d(x, w, b, stride=stride, padding=pad, groups=groups)
    np.testing.assert_allclose(_bench.im2col_conv2d(x, w, b, stride, pad, groups), expected, rtol=1e-12, atol=1e-12)


def test_bench_shapes_are_the_suites_first_seven():
    assert _bench.SHAPES == common.CONV2D_SHAPES[:7]


def test_bench_3d_shapes_are_the_suites():
    assert _bench.SHAPES_3D == common.CONV3D_SHAPES


def test_bench_flops_and_data_match_the_suites():
    for shape in common.CONV2D_SHAPES:
        assert _bench.conv_flops(shape) == common.conv2d_flops(shape)
    for shape in common.CONV3D_SHAPES:
        assert _bench.conv_flops(shape) == common.conv3d_flops(shape)
    for shape in [(1, 3, 5, 4, 2, 4, 3, (2, 1, 1), 1, 2), (2, 2, 3, 3, 3, 3, 1, 1, 0, 3)]:  # tiny 3-D shapes
        for ours, theirs in zip(_bench.make_data(shape, np.float32), common.conv3d_data(shape)):
            np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("shape", _bench.SHAPES + _bench.SHAPES_3D)
def test_shape_text_round_trips(shape):
    assert _bench.parse_shape(_bench.format_shape(shape)) == shape


def test_bench_command_runs_a_custom_shape(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", "--shape", "2,6,6,4,4,3,1,1,2", "--repeats", "1", "--rounds", "2", "--threads", "1",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| 2,6,6,4,4,3,1,1,2 " in out and "| geomean " in out
    report = json.loads(path.read_text())
    row = report["rows"][0]
    assert report["config"]["threads"] == 1 and row["shape"] == [2, 6, 6, 4, 4, 3, 1, 1, 2]
    samples = row["samples"]["nbconv"]["forward_ms"]
    assert len(samples) >= 2 and row["nbconv_forward_ms"] == min(samples)  # both rounds kept
    assert set(report["geomean"]) == {"conv2d"}  # no 3-D table
    assert report["geomean"]["conv2d"]["im2col_over_nbconv_forward_ungrouped"] is None  # no groups == 1 shape


SHAPE_2D, SHAPE_3D = "1,5,5,2,2,3,1,1,1", "1,3,5,4,2,4,3,2x1x1,1,2"


def test_bench_prints_a_2d_then_a_3d_table(tmp_path, capsys):
    path = tmp_path / "bench.json"
    # given 3-D first: the 2-D table still comes first
    assert main(["bench", "--shape", SHAPE_3D, "--shape", SHAPE_2D, "--repeats", "1", "--threads", "1",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    after_2d_head = out.split("| shape (N,H,W,Cin,Cout,K,s,p,g) ")[1]
    table_2d, table_3d = after_2d_head.split("| shape (N,D,H,W,Cin,Cout,K,s,p,g) ")
    assert "nbconv conv2d and conv3d" in out
    assert f"| {SHAPE_2D} " in table_2d and "im2col fwd ms" in table_2d and "| geomean " in table_2d
    assert f"| {SHAPE_3D} " in table_3d and "im2col" not in table_3d and "| geomean " in table_3d
    report = json.loads(path.read_text())
    assert [row["dims"] for row in report["rows"]] == [2, 3] and report["config"]["dims"] == [2, 3]
    row = report["rows"][1]
    assert row["shape"] == [1, 3, 5, 4, 2, 4, 3, [2, 1, 1], 1, 2] and "im2col_forward_ms" not in row
    assert row["flops_forward"] == common.conv3d_flops((1, 3, 5, 4, 2, 4, 3, (2, 1, 1), 1, 2))
    assert "im2col_over_nbconv_forward_ungrouped" not in report["geomean"]["conv3d"]
    has_torch = "torch fwd ms" in table_3d
    assert has_torch == ("nbconv_over_torch" in report["geomean"]["conv3d"]) == ("torch" in row["samples"])


def test_bench_dims_pick_the_tables(capsys):
    assert main(["bench", "--dims", "3", "--shape", SHAPE_3D, "--repeats", "1", "--threads", "1",
                 "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert "nbconv conv3d," in out and "(N,H,W," not in out and f"| {SHAPE_3D} " in out
    # a picked shape that --dims leaves out is an error, reported before anything runs
    assert main(["bench", "--dims", "2", "--shapes3d", "0"]) == 2
    assert main(["bench", "--dims", "3", "--shapes", "0"]) == 2
    assert "leaves out the picked 2-D shapes" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--shape", "1,4,4,3,4,3,1,0,2"],  # groups does not divide C_in
    ["--shape", "1,2,4,4,2,2,3,2x1,1,1"],  # a 3-D shape with a 2-D stride
    ["--shape", "1,1,4,4,2,2,3,1,0,1"],  # K larger than the padded depth
    ["--shape", "1,4,4,2,2,3,1,1"],  # 8 fields
    ["--shapes3d", "4"],
    ["--dims", "1"],
])
def test_bench_rejects_bad_shapes(argv):
    with pytest.raises(SystemExit):
        main(["bench", *argv])


TINY_2D = (2, 7, 7, 4, 6, 3, 2, 1, 2)
TINY_3D = (2, 4, 5, 5, 4, 6, 3, (2, 1, 1), 1, 2)


def _run(cls, shape):
    """What asv does with one parameter: setup, then the timed, peak-memory and track methods."""
    bench = cls()
    bench.setup(shape)
    bench.time_compute(shape)
    bench.peakmem_compute(shape)
    assert bench.track_gflops(shape) > 0
    return bench.compute()


@pytest.mark.parametrize("cls, shape", [
    (bench_conv.Conv2dForward, TINY_2D), (bench_conv.Conv2dBackward, TINY_2D),
    (bench_conv.DepthwiseForward, (1, 6, 6, 4, 4, 3, 1, 1, 4)),
    (bench_conv.DepthwiseBackward, (1, 6, 6, 4, 4, 3, 1, 1, 4)),
    (bench_conv.Conv1dForward, (2, 11, 3, 4, 3, 1, 1, 1)), (bench_conv.Conv1dBackward, (2, 11, 3, 4, 3, 2, 1, 1)),
    (bench_conv.ConvTranspose2d, (2, 5, 5, 4, 6, 4, 2, 1, 2)),
    (bench_conv.Conv3dForward, TINY_3D), (bench_conv.Conv3dBackward, TINY_3D),
])
def test_asv_benchmark_runs(cls, shape):
    _run(cls, shape)


@pytest.mark.parametrize("ours, theirs, shape", [
    (bench_conv.Conv2dForward, bench_conv.TorchConv2dForward, TINY_2D),
    (bench_conv.Conv2dBackward, bench_conv.TorchConv2dBackward, TINY_2D),
    (bench_conv.ConvTranspose2d, bench_conv.TorchConvTranspose2d, (2, 5, 5, 4, 6, 4, 2, 1, 2)),
    (bench_conv.Conv3dForward, bench_conv.TorchConv3dForward, TINY_3D),
    (bench_conv.Conv3dBackward, bench_conv.TorchConv3dBackward, TINY_3D),
])
def test_asv_torch_reference_computes_the_same(ours, theirs, shape):
    pytest.importorskip("torch")
    expected, got = _run(ours, shape), _run(theirs, shape)
    spatial = range(2, len(shape) - 5)  # torch's spatial axes: 2, 3 (and 4)
    if isinstance(expected, tuple):  # backward: nbconv's (gx, gw, gb) vs torch's (N, C, ...), (O, I, ...)
        got = (got[0].permute(0, *spatial, 1), got[1].permute(*spatial, 1, 0), got[2])
    else:
        expected, got = (expected,), (got.permute(0, *spatial, 1),)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g.detach().numpy(), e, rtol=1e-4, atol=1e-4)


def test_without_torch(monkeypatch, capsys):
    """asv's PyTorch classes skip (NotImplementedError in setup) and both tables drop their PyTorch columns."""
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    for cls, shape in [(bench_conv.TorchConv2dForward, TINY_2D), (bench_conv.TorchConv3dBackward, TINY_3D)]:
        with pytest.raises(NotImplementedError):
            cls().setup(shape)
    assert main(["bench", "--shape", SHAPE_2D, "--shape", SHAPE_3D, "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch is not installed" in out and "torch fwd ms" not in out and "fwd+bwd nbconv/torch" not in out
    assert f"| {SHAPE_2D} " in out and f"| {SHAPE_3D} " in out


# ---------------------------------------------------------------- --plot, progress, option values

def _png_size(path):
    """(width, height) of a PNG file, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_bench_plot_saves_the_chart_of_what_json_holds(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from nbconv import _cli_plot

    charted = []
    real_chart = _cli_plot.bench_chart
    monkeypatch.setattr(_cli_plot, "bench_chart", lambda data, path: charted.append(data) or real_chart(data, path))
    png, report = tmp_path / "bench.png", tmp_path / "bench.json"
    assert main(["bench", "--shape", SHAPE_2D, "--shape", SHAPE_3D, "--repeats", "1", "--threads", "1",
                 "--no-torch", "--json", str(report), "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert f"saved the chart to {png}" in captured.out
    assert _png_size(png) == (round(_cli_plot.SIZE[0] * _cli_plot.DPI), round(_cli_plot.SIZE[1] * _cli_plot.DPI))
    assert json.loads(json.dumps(charted[0])) == json.loads(report.read_text())  # one data set for both
    assert captured.err == ""  # not a terminal: no progress bar


def test_bench_plot_without_matplotlib_fails_before_measuring(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert main(["bench", "--shape", SHAPE_2D, "--repeats", "1", "--plot", str(tmp_path / "x.png")]) == 2
    captured = capsys.readouterr()
    assert 'pip install "nbconv[plot]"' in captured.err and "| geomean " not in captured.out


def test_bench_progress_bar_names_each_measurement_on_a_terminal(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    from nbconv import _cli_progress

    monkeypatch.setattr(_cli_progress, "interactive", lambda: True)
    assert main(["bench", "--shape", SHAPE_2D, "--repeats", "1", "--threads", "1", "--no-torch",
                 "--rounds", "2"]) == 0
    err = capsys.readouterr().err
    assert f"round 2/2: nbconv {SHAPE_2D}" in err and f"round 2/2: im2col {SHAPE_2D}" in err
    assert "0/4" in err  # 2 rounds x (nbconv + im2col) of one shape
    assert main(["bench", "--shape", SHAPE_2D, "--repeats", "1", "--threads", "1", "--no-torch",
                 "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "argument --rounds: must be at least 1, got 0"),
    (["--repeats", "0"], "argument --repeats: must be at least 1, got 0"),
    (["--repeats", "many"], "argument --repeats: 'many' is not an integer"),
    (["--threads", "0"], "argument --threads: must be in 1.."),
    (["--threads", "100000"], "(NUMBA_NUM_THREADS), got 100000"),
])
def test_bench_bad_option_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m nbconv bench" in err and message in err and "Traceback" not in err
