"""Structural guarantees of the package: the register tiles' LLVM code computes what their NumPy bodies
state, on this machine's tile and on the narrower one; the padding modes have one definition that its
NumPy and kernel forms agree on; and the backend interface is implemented."""
import os
import subprocess
import sys

import numpy as np
import pytest

from nbconv import _backend, _micro, _padding
from nbconv._jit import kernel


@kernel()
def _tiles(src, a, c, v, lanes, v_blocks, v0, v_step, tile, lanes_tile, dst, d, base, dst_add, tv_blocks, t_dst, t_d,
           t_base, t_dst_add):
    _micro.micro_tile(src, a, c, v, tile, lanes)
    _micro.micro_tile_into(src, a, c, tv_blocks, t_dst, t_d, t_base, False)
    _micro.micro_tile_into(src, a, c, tv_blocks, t_dst_add, t_d, t_base, True)
    _micro.micro_lanes(src, a, c, v, v0, v_step, lanes_tile)
    _micro.micro_lanes_into(src, a, c, v_blocks, v0, v_step, dst, d, base, False)
    _micro.micro_lanes_into(src, a, c, v_blocks, v0, v_step, dst_add, d, base, True)


@pytest.mark.parametrize("lanes", [1, 9, 17, 32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_red", [0, 1, 7])
def test_micro_tiles_llvm_code_matches_numpy_bodies(dtype, n_red, lanes):
    rng = np.random.default_rng(n_red)
    P, B, LP, LB = _micro.P, _micro.B, _micro.LP, _micro.LB
    src = rng.standard_normal(400).astype(dtype)
    a = rng.choice(200, max(P, LP), replace=False).astype(np.uint64)
    c = rng.integers(0, 150, n_red).astype(np.uint64)
    v = rng.standard_normal((2 * n_red + 1, B + 3)).astype(dtype)  # rows of B + 3: the tile reads B of each
    v_blocks = rng.standard_normal((2, 2 * n_red + 1, LB + 3)).astype(dtype)  # two blocks of LB lanes
    d = (np.arange(LP) * (2 * LB + 1)).astype(np.uint64)
    dst = rng.standard_normal(LP * (2 * LB + 1) + 5).astype(dtype)
    base = rng.standard_normal(2 * LB + 2).astype(dtype)
    tv_blocks = rng.standard_normal((2, n_red, B + 3)).astype(dtype)  # two blocks of B lanes
    t_d = (np.arange(P) * (2 * B + 1)).astype(np.uint64)
    t_dst = rng.standard_normal(P * (2 * B + 1) + 5).astype(dtype)
    t_base = rng.standard_normal(2 * B + 2).astype(dtype)
    got = (np.full((P, B), np.nan, dtype), np.full((LP, LB), np.nan, dtype), dst.copy(), dst.copy(), t_dst.copy(),
           t_dst.copy())
    lanes = min(lanes, B)
    _tiles(src, a, c, v, lanes, v_blocks, 1, 2, got[0], got[1], got[2], d, base, got[3], tv_blocks, got[4], t_d,
           t_base, got[5])
    want = np.empty((P, B), dtype), np.empty((LP, LB), dtype), dst.copy(), dst.copy(), t_dst.copy(), t_dst.copy()
    _micro.micro_tile(src, a, c, v, want[0], lanes)
    got[0][:, lanes:] = want[0][:, lanes:] = 0  # unspecified lanes
    _micro.micro_lanes(src, a, c, v, 1, 2, want[1])
    _micro.micro_lanes_into(src, a, c, v_blocks, 1, 2, want[2], d, base, False)
    _micro.micro_lanes_into(src, a, c, v_blocks, 1, 2, want[3], d, base, True)
    _micro.micro_tile_into(src, a, c, tv_blocks, want[4], t_d, t_base, False)
    _micro.micro_tile_into(src, a, c, tv_blocks, want[5], t_d, t_base, True)
    assert not np.array_equal(want[2], want[3]) and not np.array_equal(want[4], t_dst)
    assert not np.array_equal(want[4], want[5])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tol)


@kernel()
def _wide_tiles(src, a, c, v, lanes, tile, tv_blocks, t_dst, t_d, t_base, t_dst_add):
    _micro.micro_tile_wide(src, a, c, v, tile, lanes)
    _micro.micro_tile_into_wide(src, a, c, tv_blocks, t_dst, t_d, t_base, False)
    _micro.micro_tile_into_wide(src, a, c, tv_blocks, t_dst_add, t_d, t_base, True)


@pytest.mark.parametrize("lanes", [1, 17, 33, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_red", [0, 1, 7])
def test_wide_tiles_llvm_code_matches_numpy_bodies(dtype, n_red, lanes):
    """The gather kernel's wide tile (WP rows x WB lanes: 6 x 64 with AVX-512, the dense tile elsewhere), alone and
    over two blocks of lanes written into dst (set and added), against its NumPy bodies."""
    rng = np.random.default_rng(n_red + 10)
    WP, WB = _micro.WP, _micro.WB
    lanes = min(lanes, WB)
    src = rng.standard_normal(400).astype(dtype)
    a = rng.choice(200, WP, replace=False).astype(np.uint64)
    c = rng.integers(0, 150, n_red).astype(np.uint64)
    v = rng.standard_normal((n_red, WB + 3)).astype(dtype)  # rows of WB + 3: the tile reads WB of each
    tv_blocks = rng.standard_normal((2, n_red, WB)).astype(dtype)
    t_d = (np.arange(WP) * (2 * WB + 1)).astype(np.uint64)
    t_dst = rng.standard_normal(WP * (2 * WB + 1) + 5).astype(dtype)
    t_base = rng.standard_normal(2 * WB + 2).astype(dtype)
    got = np.full((WP + 1, WB + 1), np.nan, dtype), t_dst.copy(), t_dst.copy()
    _wide_tiles(src, a, c, v, lanes, got[0], tv_blocks, got[1], t_d, t_base, got[2])
    want = np.full((WP + 1, WB + 1), np.nan, dtype), t_dst.copy(), t_dst.copy()
    _micro.micro_tile_wide(src, a, c, v, want[0], lanes)
    _micro.micro_tile_into_wide(src, a, c, tv_blocks, want[1], t_d, t_base, False)
    _micro.micro_tile_into_wide(src, a, c, tv_blocks, want[2], t_d, t_base, True)
    got[0][:WP, lanes:] = want[0][:WP, lanes:] = 0  # unspecified lanes; the row and column past the tile untouched
    assert not np.array_equal(want[1], t_dst) and not np.array_equal(want[1], want[2])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **tol)


@kernel()
def _columns_tile(src, a, c, v, taps, tile):
    _micro.micro_columns(src, a, c, v, taps, tile)


@pytest.mark.parametrize("channels", [1, 3, 4, 6, 9, 31])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_red", [0, 1, 25])
def test_columns_tile_llvm_code_matches_numpy_body(dtype, n_red, channels):
    """micro_columns (LP rows of LB output columns for every output channel, each source vector loaded once for a
    pass of several channels; the last pass partial) against its NumPy body, with taps > len(c) (the weight rows of
    channel k start at k*taps) and rows of v wider than LB; a tile row past the channels stays untouched."""
    rng = np.random.default_rng(n_red + channels)
    LP, LB = _micro.LP, _micro.LB
    taps = n_red + 2
    src = rng.standard_normal(300).astype(dtype)
    a = rng.choice(150, LP, replace=False).astype(np.uint64)
    c = rng.integers(0, 120, n_red).astype(np.uint64)
    v = rng.standard_normal((channels * taps, LB + 3)).astype(dtype)
    got, want = (np.full((channels + 1, LP, LB), np.nan, dtype) for _ in range(2))
    _columns_tile(src, a, c, v, taps, got[:channels])
    _micro.micro_columns(src, a, c, v, taps, want[:channels])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, want, **tol)
    assert np.isnan(got[channels]).all() and (n_red or not got[:channels].any())


@kernel()
def _grad_window_tile(src, rows, pix, gy, g0, g_step, n, k_w, tile):
    _micro.micro_grad_window(src, rows, pix, gy, g0, g_step, n, k_w, tile)


@pytest.mark.parametrize("k_w", _micro.GRAD_WINDOWS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows", [1, 2, 5, 9])
@pytest.mark.parametrize("n", [0, 1, 23])
def test_grad_window_tile_llvm_code_matches_numpy_body(k_w, dtype, n_rows, n):
    """micro_grad_window (each source row's k_w taps over n columns, a sliding window of source vectors; passes of
    several rows, the last partial) against its NumPy body: rows at scattered offsets, pixels and grad_out rows
    wider than LB; the tile rows past the source rows' taps stay untouched."""
    rng = np.random.default_rng(n + 10 * n_rows + k_w)
    LB = _micro.LB
    pix, g_step = LB + 3, LB + 5
    src = rng.standard_normal(40 * pix + (n + k_w) * pix).astype(dtype)
    rows = (rng.choice(40, n_rows, replace=False) * pix).astype(np.uint64)
    gy = rng.standard_normal(7 + n * g_step + LB).astype(dtype)
    got, want = (np.full((n_rows * k_w + 1, LB), np.nan, dtype) for _ in range(2))
    _grad_window_tile(src, rows, pix, gy, 7, g_step, n, k_w, got)
    _micro.micro_grad_window(src, rows, pix, gy, 7, g_step, n, k_w, want)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, want, **tol)
    assert np.isnan(got[-1]).all() and (n or not got[:-1].any())


@kernel()
def _window_tile(src, a0, rows, w_rows, pix, v_blocks, dst, d, base, k_w, sw, i_lo, i_hi):
    _micro.micro_window_into(src, a0, rows, w_rows, pix, v_blocks, dst, d, base, k_w, sw, i_lo, i_hi)


@pytest.mark.parametrize("window", _micro.WINDOWS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_rows", [0, 1, 3])
@pytest.mark.parametrize("columns", ["all", "first skipped", "last skipped"])
@pytest.mark.parametrize("n_out", [1, 2])
def test_window_tile_llvm_code_matches_numpy_body(window, dtype, n_rows, columns, n_out):
    """micro_window_into (each source vector loaded once for the columns that read it) for every (k_w, stride) it
    is compiled for: two blocks of LB lanes, rows of the source at scattered offsets, pixels 2*LB + 3 apart; with
    every source column read, or the first or last ones skipped (the tiles at a row's ends, whose a0 may lie before
    the source: the skipped columns are never read, here NaN); one output row, or two, whose weight rows differ and
    which each skip one source row (the first output row the last source row, the second the first: with one
    source row, neither reads it); one output row skips the middle one of three source rows."""
    k_w, sw = window
    rng = np.random.default_rng(n_rows)
    LP, LB = _micro.LP, _micro.LB
    pix = 2 * LB + 3
    n_i = (LP - 1) * sw + k_w
    i_lo, i_hi = {"all": (-1, n_i + 2), "first skipped": (k_w - 1, n_i), "last skipped": (0, n_i - k_w + 1)}[columns]
    a0 = 7 - 2 * pix if columns == "first skipped" else 7
    src = rng.standard_normal(6 * 40 * pix).astype(dtype)
    rows = (rng.choice(5, n_rows, replace=False) * 40 * pix).astype(np.uint64)
    for r in rows:  # the skipped columns: NaN, which would show in every output that read one
        for i in range(n_i):
            if not i_lo <= i < i_hi and 0 <= a0 + int(r) + i * pix:
                src[a0 + int(r) + i * pix:a0 + int(r) + i * pix + 2 * LB] = np.nan
    v_blocks = rng.standard_normal((2, 1 + 2 * n_rows * k_w, LB + 3)).astype(dtype)
    w_rows = np.empty((n_rows, n_out), dtype=np.int64)
    w_rows[:, 0] = 1 + np.arange(n_rows) * k_w
    if n_out == 1 and n_rows == 3:
        w_rows[1, 0] = -1  # a source row that the output row does not read
    if n_out == 2:
        w_rows[:, 1] = 1 + (n_rows + np.arange(n_rows)) * k_w
        w_rows[n_rows - 1:, 0] = -1
        w_rows[:1, 1] = -1
    d = (np.arange(n_out * LP)[::-1] * (2 * LB + 1)).astype(np.uint64).reshape(n_out, LP)
    dst = rng.standard_normal(n_out * LP * (2 * LB + 1) + 5).astype(dtype)
    base = rng.standard_normal(2 * LB + 2).astype(dtype)
    got, want = dst.copy(), dst.copy()
    _window_tile(src, a0, rows, w_rows, pix, v_blocks, got, d, base, k_w, sw, i_lo, i_hi)
    _micro.micro_window_into(src, a0, rows, w_rows, pix, v_blocks, want, d, base, k_w, sw, i_lo, i_hi)
    assert not np.array_equal(want, dst)  # every output pixel written (base alone where no source row is read)
    assert not np.isnan(got).any() and not np.isnan(want).any()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, want, **tol)


@kernel()
def _pixel_tile(src, c, wi, n, v_blocks, dst, d, base):
    _micro.micro_pixel_into(src, c, wi, n, v_blocks, dst, d, base)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 9])
def test_pixel_tile_llvm_code_matches_numpy_body(dtype, n):
    """micro_pixel_into (one pixel over a list of taps, four partial sums): tap counts around multiples of four,
    two blocks of LB lanes, weight rows in any order."""
    rng = np.random.default_rng(n)
    LB = _micro.LB
    src = rng.standard_normal(2000).astype(dtype)
    c = rng.integers(0, 1900, n).astype(np.uint64)
    wi = rng.permutation(12)[:n].astype(np.uint64)
    v_blocks = rng.standard_normal((2, 12, LB + 3)).astype(dtype)
    dst = rng.standard_normal(3 * LB).astype(dtype)
    base = rng.standard_normal(2 * LB + 2).astype(dtype)
    got, want = dst.copy(), dst.copy()
    _pixel_tile(src, c, wi, n, v_blocks, got, 5, base)
    _micro.micro_pixel_into(src, c, wi, n, v_blocks, want, 5, base)
    assert not np.array_equal(want, dst)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, want, **tol)


@kernel()
def _rotated_tile(src, a, c, v, v0, v_step, tile, cg):
    _micro.micro_rotated(src, a, c, v, v0, v_step, tile, cg)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cg", [2, 4])
@pytest.mark.parametrize("n_red", [0, 1, 7])
def test_rotated_tile_llvm_code_matches_numpy_body(dtype, cg, n_red):
    """micro_rotated (rows of v rotated within each group of cg lanes, one sum per rotation): both group sizes,
    unaligned source and v offsets, every element of the tile written."""
    rng = np.random.default_rng(cg * 10 + n_red)
    LP, LB = _micro.LP, _micro.LB
    src = rng.standard_normal(600).astype(dtype)
    a = rng.choice(300, LP, replace=False).astype(np.uint64)
    c = rng.integers(0, 250, n_red).astype(np.uint64)
    v = rng.standard_normal(9 * n_red + 3 * LB).astype(dtype)
    got, want = np.full((LP, cg, LB), np.nan, dtype), np.full((LP, cg, LB), np.nan, dtype)
    _rotated_tile(src, a, c, v, 3, 9, got, cg)
    _micro.micro_rotated(src, a, c, v, 3, 9, want, cg)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, want, **tol)
    if n_red:
        assert not np.array_equal(want[:, 0], want[:, 1])  # the rotations differ


@kernel()
def _group_tile(src, a, shift, c, v, tile, lanes, cg):
    _micro.micro_groups(src, a, shift, c, v, tile, lanes, cg)


@pytest.mark.parametrize("cg", [2, 4])
@pytest.mark.parametrize("lanes", [4, 8, 16, 32])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_red", [0, 1, 7])
def test_group_tile_llvm_code_matches_numpy_body(dtype, n_red, lanes, cg):
    """micro_groups (the groups side by side in the lanes, each lane summing its group's rotated channels)."""
    rng = np.random.default_rng(n_red)
    P, B = _micro.P, _micro.B
    lanes = min(lanes, B)
    src = rng.standard_normal(600).astype(dtype)
    a = (rng.choice(8, P, replace=False) * 40).astype(np.uint64)
    c = (rng.integers(0, 5, n_red) * 40).astype(np.uint64)
    v = rng.standard_normal((n_red * cg, B + 3)).astype(dtype)  # rows of B + 3: the tile reads B of each
    got, want = np.full((P, B), np.nan, dtype), np.full((P, B), np.nan, dtype)
    _group_tile(src, a, 4, c, v, got, lanes, cg)
    _micro.micro_groups(src, a, 4, c, v, want, lanes, cg)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got[:, :lanes], want[:, :lanes], **tol)


_NARROW_TILE_SCRIPT = """
import numpy as np, nbconv, reference
from nbconv import _micro
assert (_micro.P, _micro.B) == (5, 16), (_micro.P, _micro.B)
rng = np.random.default_rng(0)
cases = [((2, 9, 8, 20), (3, 3, 20, 37), dict(stride=2, padding=1)),             # dense, channel tails
         ((2, 7, 6, 12), (3, 2, 3, 40), dict(padding=(1, 0), groups=4)),        # few channels per group
         ((2, 7, 6, 32), (3, 3, 4, 32), dict(padding=1, stride=(2, 1), groups=8)),  # groups side by side in lanes
         ((2, 6, 7, 36), (2, 3, 2, 36), dict(padding=1, groups=18)),            # 2 per group, a partial block
         ((1, 9, 11, 48), (3, 3, 1, 48), dict(padding=1, groups=48, dilation=2)),  # depthwise
         ((1, 9, 13, 48), (3, 3, 1, 48), dict(padding=1, groups=48)),              # depthwise, window tile
         ((1, 9, 23, 40), (5, 5, 1, 40), dict(padding=2, groups=40, stride=2))]    # window tile, stride 2
for dtype, tol in ((np.float32, 2e-4), (np.float64, 1e-10)):
    for xs, ws, kw in cases:
        x, w = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
        y = nbconv.conv2d(x, w, **kw)
        pads = kw.get("padding", 0)
        ref = dict(stride=kw.get("stride", 1), pads=pads, dilation=kw.get("dilation", 1), groups=kw.get("groups", 1))
        np.testing.assert_allclose(y, reference.conv_forward(x, w, **ref), rtol=tol, atol=tol)
        gy = rng.standard_normal(y.shape).astype(dtype)
        gx, gw, _ = nbconv.conv2d_backward(gy, x, w, **kw)
        rx, rw, _ = reference.conv_grads(gy, x, w, **ref)
        np.testing.assert_allclose(gx, rx, rtol=tol, atol=tol)
        np.testing.assert_allclose(gw, rw, rtol=tol, atol=tol * 10)
print("ok")
"""


@pytest.mark.skipif(not _micro.WIDE, reason="this process already runs the narrow (AVX2) tile")
def test_narrow_tile_on_this_machine(tmp_path):
    """The AVX2 tile (5 x 16, 256-bit vectors), compiled for Haswell in a fresh process with its own cache,
    against the reference on dense, grouped and depthwise convolutions and their gradients."""
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", _NARROW_TILE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


@pytest.mark.parametrize("mode", _padding.MODES)
def test_padding_index_map_scalar_and_vectorized_agree(mode):
    code = _padding.CODES[mode]
    for n in (1, 2, 5):
        limit = n - 1 if mode == "reflect" else n  # the pads validation allows
        t = np.arange(-limit, n + limit)
        expected = [_padding.source_index(int(i), n, code) for i in t]
        np.testing.assert_array_equal(_padding.source_indices(t, n, code), expected)


@pytest.mark.parametrize("mode, n, expected", [
    ("reflect", 4, [2, 1, 0, 1, 2, 3, 2, 1]),       # PyTorch's reflect: the edge is not repeated
    ("replicate", 4, [0, 0, 0, 1, 2, 3, 3, 3]),
    ("circular", 4, [2, 3, 0, 1, 2, 3, 0, 1]),
    ("zeros", 4, [-1, -1, 0, 1, 2, 3, -1, -1]),
])
def test_padding_index_map_matches_numpy_pad(mode, n, expected):
    t = np.arange(-2, n + 2)
    np.testing.assert_array_equal(_padding.source_indices(t, n, _padding.CODES[mode]), expected)
    if mode != "zeros":
        np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
        np.testing.assert_array_equal(np.pad(np.arange(n), 2, mode=np_mode), expected)


@pytest.mark.parametrize("name", ["_cpu", "_cuda"])
def test_backends_implement_the_protocol(name):
    if name == "_cuda":
        pytest.importorskip("numba.cuda")
    import importlib
    backend = importlib.import_module(f"nbconv.{name}")
    for attr in (a for a in vars(_backend.Backend) if not a.startswith("_")):
        assert callable(getattr(backend, attr, None)), f"nbconv.{name} lacks {attr}"
