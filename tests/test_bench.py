"""The benchmark instruments: the suite definition (nbconv/_bench_suite.py), the NumPy im2col reference,
`python -m nbconv bench`, the asv suite."""
import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import nbconv
from nbconv import _bench, _bench_suite
from nbconv.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the asv suite lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_conv, common  # noqa: E402

ALL = _bench_suite.SUITES["all"]


@pytest.fixture
def quick(monkeypatch):
    """Measurements of one call each (no 50 ms minimum per figure): CLI tests in seconds."""
    monkeypatch.setattr(_bench, "MIN_SECONDS", 0.0)


# ---------------------------------------------------------------- the suite definition

# What issue 13 asks the named suite to hold, record by record.
EXPECTED = {
    "resnet50.stem": ((4, 224, 224, 3), 64, dict(kernel=(7, 7), stride=(2, 2), padding=(3, 3))),
    "resnet50.conv2_3x3": ((8, 56, 56, 64), 64, dict(kernel=(3, 3), padding=(1, 1))),
    "resnet50.conv3_3x3_s2": ((8, 56, 56, 128), 128, dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1))),
    "resnet50.conv4_1x1_reduce": ((8, 14, 14, 1024), 256, dict(kernel=(1, 1))),
    "resnet50.conv2_1x1_expand": ((8, 56, 56, 64), 256, dict(kernel=(1, 1))),
    "resnext50_32x4d.conv2_grouped": ((4, 56, 56, 128), 128, dict(kernel=(3, 3), padding=(1, 1), groups=32)),
    "mobilenetv2.dw3x3": ((8, 56, 56, 144), 144, dict(kernel=(3, 3), padding=(1, 1), groups=144)),
    "mobilenetv2.dw3x3_s2": ((4, 112, 112, 96), 96, dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=96)),
    "efficientnet_b0.dw5x5": ((8, 14, 14, 672), 672, dict(kernel=(5, 5), padding=(2, 2), groups=672)),
    "efficientnet_b0.dw5x5_s2": ((8, 28, 28, 240), 240, dict(kernel=(5, 5), stride=(2, 2), padding=(2, 2),
                                                            groups=240)),
    "mobilenetv2.expand_1x1": ((8, 28, 28, 32), 192, dict(kernel=(1, 1))),
    "mobilenetv2.project_1x1": ((8, 28, 28, 192), 32, dict(kernel=(1, 1))),
    "lenet5.conv1": ((64, 28, 28, 1), 6, dict(kernel=(5, 5), padding=(2, 2))),
    "lenet5.conv2": ((64, 14, 14, 6), 16, dict(kernel=(5, 5))),
    "deeplabv3.atrous_3x3": ((2, 28, 28, 256), 256, dict(kernel=(3, 3), padding=(2, 2), dilation=(2, 2))),
    "wavenet.dilated_1d": ((4, 16384, 64), 64, dict(kernel=(3,), padding=(4,), dilation=(4,))),
    "dcgan.deconv": ((16, 16, 16, 128), 64, dict(kernel=(4, 4), stride=(2, 2), padding=(1, 1), transposed=True)),
    "unet.decoder_up": ((4, 32, 32, 128), 64, dict(kernel=(2, 2), stride=(2, 2), transposed=True)),
    "unet3d.encoder_3x3x3": ((2, 16, 32, 32, 32), 32, dict(kernel=(3, 3, 3), padding=(1, 1, 1))),
    "c3d.video_3x3x3_ts2": ((4, 16, 28, 28, 64), 64, dict(kernel=(3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1))),
    "x3d.dw3x3x3": ((4, 16, 28, 28, 64), 64, dict(kernel=(3, 3, 3), padding=(1, 1, 1), groups=64)),
    "i3d.proj_1x1x1": ((4, 8, 28, 28, 128), 128, dict(kernel=(1, 1, 1))),
    "resnet50.conv2_3x3.f64": ((8, 56, 56, 64), 64, dict(kernel=(3, 3), padding=(1, 1), dtype="float64")),
    "mobilenetv2.dw3x3.f64": ((8, 56, 56, 144), 144, dict(kernel=(3, 3), padding=(1, 1), groups=144,
                                                          dtype="float64")),
}


def test_the_named_suite_is_the_issues_list():
    assert [s.name for s in _bench_suite.SUITE] == list(EXPECTED)
    defaults = dict(stride=1, padding=0, dilation=1, groups=1, transposed=False, output_padding=0, dtype="float32")
    for shape in _bench_suite.SUITE:
        x_shape, c_out, options = EXPECTED[shape.name]
        expected = _bench_suite.Shape(shape.name, x_shape[0], x_shape[1:-1], x_shape[-1], c_out,
                                      **{**defaults, **options}, source=shape.source)
        assert shape == expected, shape.name
        assert shape.source, shape.name  # each record says where it comes from
    assert _bench_suite.by_name("dcgan.deconv").y_shape == (16, 32, 32, 64)  # 16x16 -> 32x32
    assert _bench_suite.by_name("unet.decoder_up").y_shape == (4, 64, 64, 64)


def test_suite_names_are_unique_and_well_formed():
    for suite in _bench_suite.SUITES.values():
        names = [s.name for s in suite]
        assert len(names) == len(set(names))
    assert set(_bench_suite.BY_NAME) == {s.name for s in ALL}
    for shape in ALL:
        assert re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", shape.name), shape.name  # network.layer[.variant]
    with pytest.raises(KeyError, match="no suite shape is named 'nope'"):
        _bench_suite.by_name("nope")


@pytest.mark.parametrize("shape", ALL, ids=lambda s: s.name)
def test_every_record_is_valid(shape):
    """Construction checks a record; the derived sizes agree with nbconv's own output size rule."""
    assert dataclasses.replace(shape) == shape  # re-validates
    assert shape.dims == len(shape.sizes) and all(len(getattr(shape, f)) == shape.dims for f in
                                                  ("kernel", "stride", "padding", "dilation", "output_padding"))
    assert shape.c_in % shape.groups == 0 and shape.c_out % shape.groups == 0 and min(shape.output_sizes) >= 1
    assert shape.dtype in ("float32", "float64") and 0 < shape.flops
    small = shape.tiny()
    x, w, b, _ = _bench_suite.make_data(small)
    assert x.shape == small.x_shape and w.shape == small.w_shape and x.dtype == np.dtype(shape.dtype)
    assert getattr(nbconv, small.function)(x, w, b, **small.options()).shape == small.y_shape
    assert _bench_suite.parse(shape.spec()) == dataclasses.replace(shape, source="")  # the keyword form


def test_the_issue3_shapes_keep_their_asv_keys():
    """asv's stored history of the per-dimension classes is keyed by these exact tuples."""
    assert common.CONV2D_SHAPES == [
        (10, 32, 32, 8, 16, 3, 1, 0, 1), (64, 28, 28, 1, 32, 3, 1, 0, 1), (64, 26, 26, 32, 64, 3, 1, 0, 1),
        (8, 56, 56, 64, 64, 3, 1, 1, 1), (8, 28, 28, 128, 128, 3, 2, 1, 1), (32, 14, 14, 256, 256, 1, 1, 0, 1),
        (8, 56, 56, 64, 64, 3, 1, 1, 64)]
    assert common.CONV3D_SHAPES == [
        (2, 16, 32, 32, 32, 32, 3, 1, 1, 1), (4, 16, 28, 28, 64, 64, 3, (2, 1, 1), 1, 1),
        (4, 16, 28, 28, 64, 64, 3, 1, 1, 64), (4, 8, 28, 28, 128, 128, 1, 1, 0, 1)]
    assert common.SUITE_NAMES == [s.name for s in _bench_suite.SUITE]
    for shape in common.CONV2D_SHAPES:
        record = _bench_suite.parse(",".join("x".join(map(str, v)) if isinstance(v, tuple) else str(v)
                                             for v in shape))
        assert record.flops == common.conv2d_flops(shape)
    for shape in _bench_suite.SHAPES_3D:
        assert shape.flops == common.conv3d_flops(shape.legacy_tuple())
        small = shape.tiny()
        for ours, theirs in zip(_bench_suite.make_data(small), common.conv3d_data(small.legacy_tuple())):
            np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("text, expected", [
    ("2,6,6,4,4,3,1,1,2", dict(n=2, sizes=(6, 6), c_in=4, c_out=4, kernel=3, padding=1, groups=2)),
    ("1,3,5,4,2,4,3,2x1x1,1,2", dict(n=1, sizes=(3, 5, 4), c_in=2, c_out=4, kernel=3, stride=(2, 1, 1), padding=1,
                                     groups=2)),
    ("4,100,8,8,3,1,1,1", dict(n=4, sizes=(100,), c_in=8, c_out=8, kernel=3, padding=1)),  # 1-D
    ("2,9,9,4,4,3x1,1,1x0,1", dict(n=2, sizes=(9, 9), c_in=4, c_out=4, kernel=(3, 1), padding=(1, 0))),
    ("n=16,size=16x16,cin=128,cout=64,k=4,stride=2,pad=1,transposed",
     dict(n=16, sizes=(16, 16), c_in=128, c_out=64, kernel=4, stride=2, padding=1, transposed=True)),
    ("name=mine,k=3,size=50,n=2,cin=6,cout=6,dilation=3,g=3,dtype=float64",
     dict(name="mine", n=2, sizes=(50,), c_in=6, c_out=6, kernel=3, dilation=3, groups=3, dtype="float64")),
    ("n=1,size=5x5x5,cin=4,cout=2,k=3,s=2,op=1,transposed=1",
     dict(n=1, sizes=(5, 5, 5), c_in=4, c_out=2, kernel=3, stride=2, output_padding=1, transposed=True)),
])
def test_shape_text_forms(text, expected):
    shape = _bench_suite.parse(text)
    assert shape == _bench_suite.Shape(**{"name": text, **expected})
    assert dataclasses.replace(_bench_suite.parse(shape.spec()), name=shape.name) == shape


@pytest.mark.parametrize("text, message", [
    ("1,4,4,3,4,3,1,0,2", "groups=2 must divide C_in=3"),
    ("1,2,4,4,2,2,3,2x1,1,1", "stride takes 1 or 3 values"),
    ("1,1,4,4,2,2,3,1,0,1", "larger than the padded input 1x4x4"),
    ("1,4,4,2,2", "expected 8 fields N,L,C_in,C_out,K,stride,pad,groups or 9 fields"),
    ("1,4x4,4,2,2,3,1,0,1", "only K, stride and pad may be given per dimension"),
    ("1,a,4,2,2,3,1,0,1", "expected an integer"),
    ("n=1,size=4x4,cin=2,cout=2", "missing k"),
    ("n=1,size=4x4,cin=2,cout=2,k=3,colour=red", "unknown key 'colour'"),
    ("n=1,size=4x4,cin=2,cout=2,k=3,k=1", "'k' given twice"),
    ("n=1,size=4x4,cin=2,cout=2,k=3,dtype=float16", "dtype must be one of float32, float64"),
    ("n=1,size=4x4,cin=2,cout=2,k=3,output_padding=1", "output_padding is for transposed convolutions only"),
    ("n=1,size=4x4,cin=2,cout=2,k=3,stride=2,op=2,transposed", "output_padding must be smaller than the stride"),
    ("n=1,size=4x4,cin=2,cout=2,k=3,transposed=yes", "transposed is a flag"),
    ("n=1,size=4x4,cin=2x2,cout=2,k=3", "cin takes one integer"),
])
def test_shape_text_errors(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _bench_suite.parse(text)


# ---------------------------------------------------------------- im2col, nbconv and PyTorch agree

@pytest.mark.parametrize("text", [
    "2,7,6,3,4,3,1,0,1", "1,9,8,4,6,3,2,1,2", "3,5,5,6,6,3,1,1,6", "1,8,8,2,4,4,3,2,1", "1,9,8,4,6,3,2x1,1x0,2",
    "n=2,size=11,cin=4,cout=6,k=3,stride=2,pad=3,dilation=2,groups=2",     # 1-D, dilated, grouped
    "n=1,size=6x5x7,cin=3,cout=4,k=3x1x2,stride=2x1x1,pad=1x0x1,dilation=1x1x2",  # 3-D, per-dim everything
    "n=1,size=6x6,cin=4,cout=8,k=3,pad=2,dilation=2,groups=4",              # depthwise, channel multiplier 2
    "n=2,size=4x5,cin=4,cout=6,k=3,stride=2,pad=1,op=1,dilation=2,groups=2,transposed",
    "n=2,size=7,cin=3,cout=2,k=4,stride=3,op=2,transposed",
    "n=1,size=3x3x2,cin=2,cout=3,k=2,stride=2x1x2,pad=1x0x0,transposed",
])
def test_im2col_matches_nbconv(text):
    shape = _bench_suite.parse(text).with_dtype("float64")
    data = _bench_suite.make_data(shape)
    forward, _ = _bench_suite.nbconv_calls(shape, data)
    recipe, note = _bench.im2col_call(shape, data)
    assert note is None
    np.testing.assert_allclose(recipe(), forward(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", ALL, ids=lambda s: s.name)
def test_suite_shapes_scaled_down_agree(shape):
    """nbconv, NumPy's recipe and PyTorch compute the same forward (and nbconv and PyTorch the same
    gradients) on a scaled-down copy of every suite shape, in float64."""
    torch = pytest.importorskip("torch")
    small = shape.tiny().with_dtype("float64")
    data = _bench_suite.make_data(small)
    forward, backward = _bench_suite.nbconv_calls(small, data)
    torch_forward, torch_backward = _bench_suite.torch_calls(torch, small, data)
    y = forward()
    np.testing.assert_allclose(_bench.im2col_call(small, data)[0](), y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_bench_suite.from_torch(small, torch_forward()), y, rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(backward(), _bench_suite.from_torch(small, torch_backward())):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_im2col_skips_a_huge_column_matrix(monkeypatch):
    shape = _bench_suite.by_name("resnet50.stem")
    monkeypatch.setattr(_bench, "IM2COL_MAX_BYTES", 1000)
    recipe, note = _bench.im2col_call(shape, (None,) * 4)
    assert recipe is None and note.startswith("skipped: its column matrix would take")


# ---------------------------------------------------------------- python -m nbconv bench

def _bench_json(tmp_path, argv):
    path = tmp_path / "bench.json"
    assert main(["bench", *argv, "--repeats", "1", "--threads", "1", "--roof-size", "16", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_bench_runs_the_whole_suite_at_tiny_size(tmp_path, capsys, quick):
    report = _bench_json(tmp_path, ["--tiny"])
    out = capsys.readouterr().out
    names = [s.name for s in _bench_suite.SUITE]
    assert [row["name"] for row in report["rows"]] == names
    for name in names:
        assert f"| {name} " in out
    assert "| geomean " in out or "PyTorch is not installed" in out
    assert "roof (NumPy matmul 16^3" in out and "% roof" in out
    config = report["config"]
    assert config["suite"] == "named" and config["tiny"] and config["dtypes"] == ["float32", "float64"]
    assert set(config["roof"]) == {"float32", "float64"} and config["roof"]["float32"]["gflops"] > 0
    for row in report["rows"]:
        shape = _bench_suite.by_name(row["name"]).tiny()
        assert row["shape"] == shape.to_dict() and row["label"] == shape.label
        assert row["nbconv_fwd_bwd_ms"] == row["nbconv_forward_ms"] + row["nbconv_backward_ms"]
        assert row["roof_fraction"] == pytest.approx(row["nbconv_forward_gflops"]
                                                     / config["roof"][row["dtype"]]["gflops"])
        assert row["flops_forward"] == shape.flops and row["im2col_forward_ms"] > 0
        if "torch" in row["samples"]:
            assert row["nbconv_over_torch_forward"] == row["nbconv_forward_ms"] / row["torch_forward_ms"]
    if config["torch"] is not None:
        ratios = [row["nbconv_over_torch"] for row in report["rows"]]
        assert report["geomean"]["nbconv_over_torch"] == pytest.approx(np.exp(np.mean(np.log(ratios))))
        assert report["geomean"]["nbconv_over_torch_forward"] > 0


def test_bench_command_runs_a_custom_shape(tmp_path, capsys, quick):
    report = _bench_json(tmp_path, ["--shape", "2,6,6,4,4,3,1,1,2", "--rounds", "2", "--no-torch"])
    out = capsys.readouterr().out
    assert "| 2,6,6,4,4,3,1,1,2 " in out and "torch fwd ms" not in out and "| geomean" not in out
    row, = report["rows"]
    assert report["config"]["threads"] == 1 and report["config"]["suite"] is None
    assert row["shape"]["sizes"] == [6, 6] and row["shape"]["groups"] == 2
    samples = row["samples"]["nbconv"]["forward_ms"]
    assert len(samples) >= 2 and row["nbconv_forward_ms"] == min(samples)  # both rounds kept
    assert len(report["config"]["roof"]["float32"]["ms"]) >= 2
    assert report["geomean"]["im2col_over_nbconv_forward_dense"] is None  # no groups == 1 shape


def test_bench_only_list_suite_dims_and_dtype(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"{s.name} " in out for s in _bench_suite.SUITE) and "24 shape(s)" in out
    assert "dcgan.deconv" in out and "16x16x16x128->64 k4 s2 p1 T" in out
    assert main(["bench", "--list", "--only", "resnet50.*", "--only", "*.f64"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert listed == ["resnet50.stem", "resnet50.conv2_3x3", "resnet50.conv3_3x3_s2", "resnet50.conv4_1x1_reduce",
                      "resnet50.conv2_1x1_expand", "resnet50.conv2_3x3.f64", "mobilenetv2.dw3x3.f64"]
    assert main(["bench", "--list", "--only", "dw"]) == 0  # a plain pattern: a substring
    assert len(capsys.readouterr().out.splitlines()) == 6 + 1  # mobilenetv2 (3), efficientnet_b0 (2), x3d
    assert main(["bench", "--list", "--suite", "issue3", "--dims", "3"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]] == [
        s.name for s in _bench_suite.SHAPES_3D]
    assert main(["bench", "--list", "--suite", "all"]) == 0  # issue3.3 is resnet50.conv2_3x3's layer
    out = capsys.readouterr().out
    assert "issue3.3 is the same layer as resnet50.conv2_3x3: measured once" in out
    assert f"{len(ALL) - 1} shape(s)" in out
    # --dtype float64 turns resnet50.conv2_3x3 into a copy of resnet50.conv2_3x3.f64: that one is dropped
    assert main(["bench", "--list", "--only", "conv2_3x3", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "resnet50.conv2_3x3 " in out and "1 shape(s)" in out
    assert "resnet50.conv2_3x3.f64 is the same layer as resnet50.conv2_3x3" in out
    assert main(["bench", "--list", "--only", "resnet50.stem", "--shape", "1,5,5,2,2,3,1,1,1"]) == 0
    assert "2 shape(s)" in capsys.readouterr().out  # picked suite shapes, then the custom one


def test_bench_selection_errors_are_reported_before_measuring(capsys):
    assert main(["bench", "--only", "x3d", "--dims", "2"]) == 2
    assert "--dims 2 leaves no shape of the 'named' suite" in capsys.readouterr().err
    assert main(["bench", "--suite", "issue3", "--only", "resnet50"]) == 2
    assert "--only resnet50 matches no shape of the 'issue3' suite" in capsys.readouterr().err
    assert main(["bench", "--dims", "2", "--shape", "1,3,5,4,2,4,3,2x1x1,1,2"]) == 2
    assert "leaves out the custom 3-D shapes" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--shape", "1,4,4,3,4,3,1,0,2"], "groups=2 must divide C_in=3"),
    (["--shape", "1,2,4,4,2,2,3,2x1,1,1"], "stride takes 1 or 3 values"),
    (["--shape", "1,4,4,2,2"], "expected 8 fields"),
    (["--shape", "n=1,size=4,cin=1,cout=1"], "missing k"),
    (["--only", "vgg16"], "'vgg16' matches no suite shape"),
    (["--suite", "imagenet"], "invalid choice: 'imagenet'"),
    (["--dims", "4"], "expected some of 1, 2 and 3"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
    (["--roof-size", "0"], "argument --roof-size: must be at least 1, got 0"),
])
def test_bench_rejects_bad_selections(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m nbconv bench" in err and message in err and "Traceback" not in err


SHAPE_2D, SHAPE_3D = "1,5,5,2,2,3,1,1,1", "1,3,5,4,2,4,3,2x1x1,1,2"


def test_bench_mixed_dims_transposed_and_dtype(tmp_path, capsys, quick):
    transposed = "n=2,size=3x3,cin=4,cout=2,k=4,stride=2,pad=1,transposed,dtype=float64"
    report = _bench_json(tmp_path, ["--shape", SHAPE_3D, "--shape", SHAPE_2D, "--shape", transposed])
    out = capsys.readouterr().out
    assert [row["name"] for row in report["rows"]] == [SHAPE_3D, SHAPE_2D, transposed]  # in the order given
    assert report["config"]["dims"] == [2, 3] and report["config"]["dtypes"] == ["float32", "float64"]
    row = report["rows"][2]
    assert row["transposed"] and row["dtype"] == "float64" and row["label"] == "2x3x3x4->2 k4 s2 p1 T f64"
    assert f"| {row['label']} " in out
    has_torch = "torch fwd ms" in out
    assert has_torch == ("nbconv_over_torch" in report["geomean"]) == ("torch" in row["samples"])


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


@pytest.mark.parametrize("name", ["resnext50_32x4d.conv2_grouped", "wavenet.dilated_1d", "dcgan.deconv",
                                  "x3d.dw3x3x3", "mobilenetv2.dw3x3.f64"])
def test_asv_suite_classes_run_and_match_torch(name, monkeypatch):
    """The Suite* classes take a suite name (here its record scaled down) and time what bench times."""
    small = _bench_suite.by_name(name).tiny()
    monkeypatch.setitem(_bench_suite.BY_NAME, name, small)
    forward, backward = _run(bench_conv.SuiteForward, name), _run(bench_conv.SuiteBackward, name)
    assert forward.shape == small.y_shape and forward.dtype == np.dtype(small.dtype)
    if importlib.util.find_spec("torch") is None:
        return
    np.testing.assert_allclose(_bench_suite.from_torch(small, _run(bench_conv.TorchSuiteForward, name)), forward,
                               rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(backward, _bench_suite.from_torch(small, _run(bench_conv.TorchSuiteBackward, name))):
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


def test_asv_suite_classes_take_every_suite_name():
    for cls in (bench_conv.SuiteForward, bench_conv.SuiteBackward, bench_conv.TorchSuiteForward,
                bench_conv.TorchSuiteBackward):
        assert cls.param_names == ["name"] and cls.params == [[s.name for s in _bench_suite.SUITE]]
    assert callable(bench_conv.Conv1dForward.time_compute)  # .ci/run records this one


def test_without_torch(monkeypatch, capsys, quick):
    """asv's PyTorch classes skip (NotImplementedError in setup) and the table drops its PyTorch columns."""
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    for cls, shape in [(bench_conv.TorchConv2dForward, TINY_2D), (bench_conv.TorchConv3dBackward, TINY_3D),
                       (bench_conv.TorchSuiteForward, "lenet5.conv2"), (bench_conv.TorchSuiteBackward, "dcgan.deconv")]:
        with pytest.raises(NotImplementedError):
            cls().setup(shape)
    assert main(["bench", "--shape", SHAPE_2D, "--shape", SHAPE_3D, "--repeats", "1", "--threads", "1",
                 "--roof-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch is not installed" in out and "torch fwd ms" not in out and "fwd+bwd nbconv/torch" not in out
    assert f"| {SHAPE_2D} " in out and f"| {SHAPE_3D} " in out


# ---------------------------------------------------------------- --plot, progress, option values

def _png_size(path):
    """(width, height) of a PNG file, after checking its signature and header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_bench_plot_saves_the_chart_of_what_json_holds(tmp_path, capsys, monkeypatch, quick):
    pytest.importorskip("matplotlib")
    from nbconv import _cli_plot

    charted = []
    real_chart = _cli_plot.bench_chart
    monkeypatch.setattr(_cli_plot, "bench_chart", lambda data, path: charted.append(data) or real_chart(data, path))
    png, report = tmp_path / "bench.png", tmp_path / "bench.json"
    assert main(["bench", "--shape", SHAPE_2D, "--shape", SHAPE_3D, "--repeats", "1", "--threads", "1",
                 "--roof-size", "16", "--no-torch", "--json", str(report), "--plot", str(png)]) == 0
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


def test_bench_progress_bar_names_each_measurement_on_a_terminal(monkeypatch, capsys, quick):
    pytest.importorskip("tqdm")
    from nbconv import _cli_progress

    monkeypatch.setattr(_cli_progress, "interactive", lambda: True)
    assert main(["bench", "--shape", SHAPE_2D, "--repeats", "1", "--threads", "1", "--no-torch",
                 "--roof-size", "16", "--rounds", "2"]) == 0
    err = capsys.readouterr().err
    assert f"round 2/2: nbconv {SHAPE_2D}" in err and f"round 2/2: im2col {SHAPE_2D}" in err
    assert "round 2/2: roof: NumPy matmul 16^3 float32" in err
    assert "0/6" in err  # 2 rounds x (nbconv + roof + im2col) of one shape
    assert main(["bench", "--shape", SHAPE_2D, "--repeats", "1", "--threads", "1", "--no-torch",
                 "--roof-size", "16", "--no-progress"]) == 0
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
