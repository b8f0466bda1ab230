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
])
def test_im2col_matches_nbconv(shape):
    x, w, b, _ = _bench.make_data(shape, np.float64)
    _, _, _, _, _, _, stride, pad, groups = shape
    expected = nbconv.conv2d(x, w, b, stride=stride, padding=pad, groups=groups)
    np.testing.assert_allclose(_bench.im2col_conv2d(x, w, b, stride, pad, groups), expected, rtol=1e-12, atol=1e-12)


def test_bench_shapes_are_the_suites_first_seven():
    assert _bench.SHAPES == common.CONV2D_SHAPES[:7]


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


def test_bench_rejects_bad_shapes():
    with pytest.raises(SystemExit):
        main(["bench", "--shape", "1,4,4,3,4,3,1,0,2"])  # groups does not divide C_in


TINY_2D = (2, 7, 7, 4, 6, 3, 2, 1, 2)


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
])
def test_asv_benchmark_runs(cls, shape):
    _run(cls, shape)


@pytest.mark.parametrize("ours, theirs, shape", [
    (bench_conv.Conv2dForward, bench_conv.TorchConv2dForward, TINY_2D),
    (bench_conv.Conv2dBackward, bench_conv.TorchConv2dBackward, TINY_2D),
    (bench_conv.ConvTranspose2d, bench_conv.TorchConvTranspose2d, (2, 5, 5, 4, 6, 4, 2, 1, 2)),
])
def test_asv_torch_reference_computes_the_same(ours, theirs, shape):
    pytest.importorskip("torch")
    expected, got = _run(ours, shape), _run(theirs, shape)
    if isinstance(expected, tuple):  # backward: nbconv's (gx, gw, gb) vs torch's NCHW/OIHW gradients
        got = (got[0].permute(0, 2, 3, 1), got[1].permute(2, 3, 1, 0), got[2])
    else:
        expected, got = (expected,), (got.permute(0, 2, 3, 1),)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g.detach().numpy(), e, rtol=1e-4, atol=1e-4)


def test_without_torch(monkeypatch, capsys):
    """asv's PyTorch classes skip (NotImplementedError in setup) and the table drops its PyTorch columns."""
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(NotImplementedError):
        bench_conv.TorchConv2dForward().setup(TINY_2D)
    assert main(["bench", "--shape", "1,5,5,2,2,3,1,1,1", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch is not installed" in out and "torch fwd ms" not in out and "| 1,5,5,2,2,3,1,1,1 " in out
