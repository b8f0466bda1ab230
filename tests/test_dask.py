"""nbconv.dask against the in-memory nbconv functions (the oracle: they are tested against PyTorch and the
naive reference elsewhere).

Grids are pairwise coverings (every pair of values of any two factors appears in some case) of
dims x stride x dilation x padding kind x padding mode x groups x chunking x dtype, built
deterministically at collection time, plus full products where three factors interact (padding kind
x padding mode x dims, on chunks smaller than the halo) and a seeded sample of random 1-D geometries.
Each case checks the forward result and all three gradients (grad_out chunked differently from x);
the transposed convolutions have their own grid. Arrays are tiny: the cost is the kernels' JIT
compilation (shared with the rest of the suite) and dask's per-task overhead. Local cases run on the
threaded scheduler; one case runs on the processes scheduler and one on a distributed LocalCluster
(two worker processes on 127.0.0.1, bounded by timeouts).
"""
import itertools
import random
import subprocess
import sys

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

import nbconv  # noqa: E402
import nbconv.dask as nbd  # noqa: E402
from nbconv import _dask_halo as halo  # noqa: E402
from nbconv import _padding  # noqa: E402
from nbconv._shapes import conv_params  # noqa: E402

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-12}
SPATIAL = {1: (11,), 2: (8, 7), 3: (5, 6, 4)}
KERNEL = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}
PADDINGS = {"int": lambda nd: 2, "per-dim": lambda nd: (1, 2, 0)[:nd],
            "pairs": lambda nd: ((2, 0), (1, 3), (0, 1))[:nd], "same": lambda nd: "same",
            "valid": lambda nd: "valid"}
MODES = ("zeros", "reflect", "replicate", "circular")
GROUPS = {"1": (1, 2, 3), "2": (2, 4, 6), "depthwise": (3, 3, 6)}  # groups, C_in, C_out
CHUNKINGS = ("batch", "spatial", "uneven", "tiny", "channels", "single")


@pytest.fixture(autouse=True)
def threaded_scheduler():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


def close(got, want):
    want = np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    tol = TOL[want.dtype]
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def uneven(n):
    """An uneven split of n: (1, 2, rest...) style, deterministic."""
    out, size, left = [], 1, n
    while left > 0:
        out.append(min(size, left))
        left -= out[-1]
        size = size % 3 + 1
    return tuple(out) or (0,)


def chunks_for(shape, kind):
    """x's chunks for a chunking kind (shape is (N, *spatial, C))."""
    n, spatial, c = shape[0], shape[1:-1], shape[-1]
    if kind == "batch":
        return (1, *spatial, c)
    if kind == "spatial":
        return (n, *(max(1, s // 2) for s in spatial), c)
    if kind == "uneven":
        return (uneven(n), *(uneven(s) for s in spatial), (c,))
    if kind == "tiny":
        return (1, *(1 for _ in spatial), c)
    if kind == "channels":
        return (2, *(3 for _ in spatial), 1)
    return shape


def other_chunks(shape):
    """grad_out's chunks: deliberately unlike x's (batch, spatial and channel all split differently)."""
    return (2, *(2 for _ in shape[1:-1]), max(1, shape[-1] - 1))


def pairwise(factors, seed=0):
    """A deterministic pairwise covering of the product of `factors` (dict name -> values): greedy over
    a shuffled candidate pool, every pair of values of any two factors appears in some case."""
    names = list(factors)
    rnd = random.Random(seed)
    uncovered = {(a, va, b, vb) for a, b in itertools.combinations(range(len(names)), 2)
                 for va in factors[names[a]] for vb in factors[names[b]]}
    cases = []
    while uncovered:
        best, best_gain = None, -1
        for _ in range(60):
            a, va, b, vb = rnd.choice(sorted(uncovered, key=repr))
            case = [rnd.choice(factors[name]) for name in names]
            case[a], case[b] = va, vb
            gain = sum((i, case[i], j, case[j]) in uncovered for i, j in itertools.combinations(range(len(names)), 2))
            if gain > best_gain:
                best, best_gain = case, gain
        cases.append(tuple(best))
        uncovered -= {(i, best[i], j, best[j]) for i, j in itertools.combinations(range(len(names)), 2)}
    return cases


def make_case(rng, nd, groups_kind, dtype, n=3):
    groups, c_in, c_out = GROUPS[groups_kind]
    x = rng.standard_normal((n, *SPATIAL[nd], c_in)).astype(dtype)
    w = rng.standard_normal((*KERNEL[nd], c_in // groups, c_out)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    return x, w, b, groups


def check_conv(rng, nd, x, w, b, x_chunks, **kw):
    """Forward and all three gradients, dask vs in-memory; grad_out chunked unlike x."""
    xd = da.from_array(x, chunks=x_chunks)
    want = getattr(nbconv, f"conv{nd}d")(x, w, b, **kw)
    y = getattr(nbd, f"conv{nd}d")(xd, w, b, **kw)
    assert isinstance(y, da.Array)
    close(y.compute(), want)
    gy = rng.standard_normal(want.shape).astype(x.dtype)
    ref = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, **kw)
    got = getattr(nbd, f"conv{nd}d_backward")(da.from_array(gy, chunks=other_chunks(gy.shape)), xd, w, **kw)
    assert isinstance(got.input, da.Array) and got.input.chunks == xd.chunks
    assert isinstance(got.weight, np.ndarray) and isinstance(got.bias, np.ndarray)
    close(got.input.compute(), ref.input)
    close(got.weight, ref.weight)
    close(got.bias, ref.bias)
    return y


# ---------------------------------------------------------------- forward and gradients

CONV_GRID = pairwise({"nd": (1, 2, 3), "stride": (1, 2, 3), "dilation": (1, 2), "padding": tuple(PADDINGS),
                      "mode": MODES, "groups": tuple(GROUPS), "chunking": CHUNKINGS,
                      "dtype": ("float64", "float32")})


@pytest.mark.parametrize("nd, stride, dilation, padding, mode, groups, chunking, dtype", CONV_GRID,
                         ids=["-".join(map(str, c)) for c in CONV_GRID])
def test_conv_and_gradients_match_in_memory(rng, nd, stride, dilation, padding, mode, groups, chunking, dtype):
    x, w, b, g = make_case(rng, nd, groups, np.dtype(dtype))
    check_conv(rng, nd, x, w, b, chunks_for(x.shape, chunking), stride=stride, dilation=dilation,
               padding=PADDINGS[padding](nd), padding_mode=mode, groups=g)


@pytest.mark.parametrize("nd, padding, mode", list(itertools.product((1, 2, 3), PADDINGS, MODES)))
def test_padding_modes_on_chunks_smaller_than_the_halo(rng, nd, padding, mode):
    """Every padding kind x mode x dims on chunks of 1 (2 in 3-D) against a halo of 4 (dilation 2): each
    border and halo spans several chunks."""
    x, w, b, g = make_case(rng, nd, "1", np.float64, n=2 if nd < 3 else 1)
    chunks = (1, *(1 if nd < 3 else 2 for _ in range(nd)), x.shape[-1])
    check_conv(rng, nd, x, w, b, chunks, stride=2 if nd == 1 else 1, dilation=2,
               padding=PADDINGS[padding](nd), padding_mode=mode, groups=g)


def random_1d_case(seed):
    """A random valid 1-D geometry (drawn again until the in-memory call accepts it)."""
    rnd = random.Random(seed)
    while True:
        n, k, s, d = rnd.randint(1, 12), rnd.randint(1, 4), rnd.randint(1, 5), rnd.randint(1, 4)
        groups = rnd.choice((1, 2))
        mode = rnd.choice(MODES)
        limit = n - 1 if mode == "reflect" else (n if mode == "circular" else 6)
        padding = rnd.choice(("same", "valid", ((rnd.randint(0, limit), rnd.randint(0, limit)),)))
        try:
            conv_params((2, n, 2 * groups), (k, 2, 3 * groups), stride=s, padding=padding, dilation=d,
                        groups=groups, padding_mode=mode)
        except ValueError:
            continue
        chunks = []
        left = n
        while left:
            chunks.append(rnd.randint(1, min(left, 4)))
            left -= chunks[-1]
        return n, k, s, d, groups, mode, padding, tuple(chunks)


@pytest.mark.parametrize("seed", range(30))
def test_random_1d_geometries(rng, seed):
    """Random sizes, strides, dilations, pads and uneven chunks (often smaller than the halo), with a
    transposed convolution on the same chunks."""
    n, k, s, d, groups, mode, padding, chunks = random_1d_case(seed)
    x = rng.standard_normal((2, n, 2 * groups))
    w = rng.standard_normal((k, 2, 3 * groups))
    b = rng.standard_normal(3 * groups)
    check_conv(rng, 1, x, w, b, (1, chunks, x.shape[-1]), stride=s, dilation=d, padding=padding,
               padding_mode=mode, groups=groups)
    wt = rng.standard_normal((k, 3, 2 * groups))
    op = (s * d) % max(s, d)
    try:
        want = nbconv.conv_transpose1d(x, wt, b, stride=s, dilation=d, padding=1, output_padding=op, groups=groups)
    except ValueError:
        return  # an output size below 1
    got = nbd.conv_transpose1d(da.from_array(x, chunks=(1, chunks, 1)), wt, b, stride=s, dilation=d, padding=1,
                               output_padding=op, groups=groups)
    close(got.compute(), want)


# ---------------------------------------------------------------- transposed convolutions

TRANSPOSE_GRID = pairwise({"nd": (1, 2, 3), "stride": (1, 2, 3), "dilation": (1, 2),
                           "padding": ("int", "pairs", "valid"), "output_padding": ("zero", "max"),
                           "groups": tuple(GROUPS), "chunking": CHUNKINGS, "dtype": ("float64", "float32")},
                          seed=1)


@pytest.mark.parametrize("nd, stride, dilation, padding, output_padding, groups, chunking, dtype", TRANSPOSE_GRID,
                         ids=["-".join(map(str, c)) for c in TRANSPOSE_GRID])
def test_conv_transpose_matches_in_memory(rng, nd, stride, dilation, padding, output_padding, groups, chunking,
                                          dtype):
    g, c_in, c_out = GROUPS[groups]
    x = rng.standard_normal((3, *SPATIAL[nd], c_in)).astype(dtype)
    w = rng.standard_normal((*KERNEL[nd], c_out // g, c_in)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    op = 0 if output_padding == "zero" else max(stride, dilation) - 1
    kw = dict(stride=stride, dilation=dilation, padding=PADDINGS[padding](nd), output_padding=op, groups=g)
    want = getattr(nbconv, f"conv_transpose{nd}d")(x, w, b, **kw)
    got = getattr(nbd, f"conv_transpose{nd}d")(da.from_array(x, chunks=chunks_for(x.shape, chunking)), w, b, **kw)
    assert isinstance(got, da.Array) and got.shape == want.shape
    close(got.compute(), want)
    close(getattr(nbd, f"conv_transpose{nd}d")(da.from_array(x, chunks=chunks_for(x.shape, chunking)), w,
                                               **kw).compute(),
          getattr(nbconv, f"conv_transpose{nd}d")(x, w, **kw))


# ---------------------------------------------------------------- chunks, edges and reductions

def test_chunks_of_results(rng):
    x, w, b, _ = make_case(rng, 2, "1", np.float64)
    xd = da.from_array(x, chunks=(1, (3, 5), (2, 2, 3), 1))
    # stride 1 "same": the output keeps x's batch and spatial chunks; channels are one chunk
    y = nbd.conv2d(xd, w, b, padding="same")
    assert y.chunks == ((1, 1, 1), (3, 5), (2, 2, 3), (3,))
    # the input gradient is chunked like x, channel chunks included
    gy = da.from_array(np.ones(y.shape), chunks=(3, 4, 4, 3))
    assert nbd.conv2d_backward(gy, xd, w, padding="same", needs="input").input.chunks == xd.chunks
    # strided: every output element in exactly one chunk; no empty chunks
    y = nbd.conv2d(xd, w, b, stride=3)
    assert sum(y.chunks[1]) == y.shape[1] and 0 not in y.chunks[1] + y.chunks[2]


def test_blocks_reading_only_padding_and_strides_longer_than_chunks(rng):
    """Outputs whose window is all zero padding are the bias; strides and dilations far beyond the chunk
    size leave chunks without outputs (dropped) and halos many chunks deep."""
    x = rng.standard_normal((2, 7, 3))
    w = rng.standard_normal((2, 3, 4))
    b = rng.standard_normal(4)
    check_conv(rng, 1, x, w, b, (1, (2, 1, 4), 3), padding=5)
    check_conv(rng, 1, x, w, b, (2, 1, 3), padding=((6, 1),), stride=10 ** 6)
    check_conv(rng, 1, x, w, b, (2, 3, 3), padding=2, dilation=10)
    check_conv(rng, 1, x, w, b, (1, 1, 3), padding=((9, 2),), padding_mode="replicate", stride=4, dilation=3)


def test_empty_batch_and_empty_spatial_axis(rng):
    w = rng.standard_normal((2, 3, 4))
    b = rng.standard_normal(4)
    check_conv(rng, 1, rng.standard_normal((0, 7, 3)), w, b, (1, 2, 3), padding=1)
    check_conv(rng, 1, rng.standard_normal((2, 0, 3)), w, b, (1, 1, 3), padding=2)


def test_needs_selects_gradients(rng):
    x, w, _, _ = make_case(rng, 2, "1", np.float64)
    xd = da.from_array(x, chunks=(2, 3, 3, 2))
    gy = da.from_array(rng.standard_normal((3, 6, 6, 3)), chunks=2)
    ref = nbconv.conv2d_backward(gy.compute(), x, w)
    only_w = nbd.conv2d_backward(gy, xd, w, needs=("weight",))
    assert only_w.input is None and only_w.bias is None
    close(only_w.weight, ref.weight)
    only_b = nbd.conv2d_backward(gy, xd, w, needs="bias")
    assert only_b.input is None and only_b.weight is None
    close(only_b.bias, ref.bias)


def test_weight_and_bias_gradients_are_reproducible(rng):
    """A fixed-order tree reduction: the same chunking gives the same bits on any thread count (the
    reduction crosses several levels here: 75 partials, 8 per task)."""
    x = rng.standard_normal((3, 10, 10, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    gy = da.from_array(rng.standard_normal((3, 10, 10, 4)).astype(np.float32), chunks=(1, 2, 2, 4))
    xd = da.from_array(x, chunks=(1, 3, 4, 2))
    results = []
    for workers in (1, 2, 4):
        with dask.config.set(scheduler="threads", num_workers=workers):
            results.append(nbd.conv2d_backward(gy, xd, w, padding=1, needs=("weight", "bias")))
    for other in results[1:]:
        np.testing.assert_array_equal(other.weight, results[0].weight)
        np.testing.assert_array_equal(other.bias, results[0].bias)
    ref = nbconv.conv2d_backward(gy.compute(), x, w, padding=1)
    close(results[0].weight, ref.weight)
    close(results[0].bias, ref.bias)


@pytest.mark.parametrize("n, k, s, d, pb, pa, mode", [
    (11, 3, 2, 2, 2, 3, "reflect"), (7, 2, 3, 1, 4, 0, "replicate"), (9, 3, 1, 3, 9, 9, "circular"),
    (5, 1, 7, 1, 6, 6, "zeros"), (10, 4, 1, 2, 3, 3, "zeros"), (8, 2, 5, 4, 7, 1, "reflect")])
def test_halo_plan_computes_each_output_once_and_each_gradient_once(n, k, s, d, pb, pa, mode):
    """The per-axis plan, checked element by element against the padding map: the forward chunks
    partition the outputs and read exactly their windows; the input-gradient boxes of the chunks are
    disjoint, cover every padded position some output reads, and send each to the element it copies."""
    code = _padding.CODES[mode]
    ax = halo.Axis(n, (n + pb + pa - d * (k - 1) - 1) // s + 1, k, s, d, pb, pa, code)
    x_chunks = (2, 1, 3, n - 6)
    out = halo.forward_chunks(ax, x_chunks)
    assert sum(out) == ax.m and min(out) > 0
    for ja, jb in zip(halo.bounds(out), halo.bounds(out)[1:]):
        lo, hi = ax.window(ja, jb)
        source = halo.forward_source(ax, ja, jb)
        read = []
        for start, length, step in source.runs:
            read.extend(start + i * step for i in range(length))
        if not source.runs:  # zero padding only: the block is the bias
            assert mode == "zeros" and (hi <= 0 or lo >= n)
        elif mode == "zeros":
            assert source.pads[0] + len(read) + source.pads[1] == hi - lo
            assert read == list(range(lo + source.pads[0], hi - source.pads[1]))
        else:
            assert source.pads == (0, 0)
            assert read == list(_padding.source_indices(np.arange(lo, hi), n, code))
    read_by_outputs = {q for j in range(ax.m) for q in range(j * s - pb, j * s - pb + d * (k - 1) + 1)
                       if (0 <= q < n or mode != "zeros")}
    boxes = []
    offsets = halo.bounds(x_chunks)
    for b0, b1 in zip(offsets, offsets[1:]):
        for sub in halo.input_grad_subs(ax, b0, b1):
            xa = sub.ja * s - pb + sub.pads[0]
            for i in range(sub.length):
                q = xa + i
                boxes.append(q)
                assert _padding.source_index(q, n, code) == b0 + sub.dest0 + i * sub.step
    assert len(boxes) == len(set(boxes))
    assert set(boxes) >= read_by_outputs and set(boxes) <= set(range(-pb, n + pa))


# ---------------------------------------------------------------- errors (before any work)

def poisoned(shape, chunks):
    """A dask array that raises if any of its blocks is computed."""
    def boom(block):
        raise AssertionError("computed")
    return da.zeros(shape, chunks=chunks).map_blocks(boom, dtype=np.float64)


def test_calls_are_lazy_and_validate_before_any_compute(rng):
    w = rng.standard_normal((3, 3, 2, 4))
    x = poisoned((2, 8, 8, 2), 4)
    y = nbd.conv2d(x, w, padding=1, padding_mode="circular")  # builds the graph only
    assert y.shape == (2, 8, 8, 4)
    assert nbd.conv2d_backward(poisoned((2, 8, 8, 4), 4), x, w, padding=1, needs="input").input.shape == x.shape
    assert nbd.conv_transpose2d(x, rng.standard_normal((3, 3, 4, 2)), stride=2).shape == (2, 17, 17, 4)
    # bad parameters: the in-memory messages, raised before anything is computed
    for kw in (dict(padding=8, padding_mode="reflect"), dict(stride=0), dict(groups=3), dict(padding="full"),
               dict(padding_mode="mirror"), dict(dilation=(1, 2, 3))):
        with pytest.raises((ValueError, TypeError)) as expected:
            nbconv.conv2d(np.zeros(x.shape), w, **kw)
        with pytest.raises(type(expected.value)) as got:
            nbd.conv2d(x, w, **kw)
        assert str(got.value) == str(expected.value)
    with pytest.raises(ValueError, match="grad_out has shape"):
        nbd.conv2d_backward(poisoned((2, 7, 8, 4), 4), x, w, padding=1)
    with pytest.raises(ValueError, match="bias must have shape"):
        nbd.conv2d(x, w, np.zeros(3))
    with pytest.raises(ValueError, match="output_padding"):
        nbd.conv_transpose2d(x, rng.standard_normal((3, 3, 4, 2)), stride=2, output_padding=2)


def test_clear_errors_for_wrong_array_types(rng):
    x = rng.standard_normal((2, 8, 8, 2))
    w = rng.standard_normal((3, 3, 2, 4))
    xd = da.from_array(x, chunks=4)
    with pytest.raises(TypeError, match="x must be a dask array.*from_array"):
        nbd.conv2d(x, w)
    with pytest.raises(TypeError, match="w must be a NumPy array.*compute"):
        nbd.conv2d(xd, da.from_array(w))
    with pytest.raises(TypeError, match="bias must be a NumPy array.*compute"):
        nbd.conv2d(xd, w, da.zeros(4))
    with pytest.raises(TypeError, match="grad_out must be a dask array"):
        nbd.conv2d_backward(np.zeros((2, 6, 6, 4)), xd, w)
    with pytest.raises(TypeError, match="w must be a NumPy array"):
        nbd.conv_transpose2d(xd, [[1.0]])
    with pytest.raises(TypeError, match="out="):
        nbd.conv2d(xd, w, out=np.zeros((2, 6, 6, 4)))
    with pytest.raises(TypeError, match="dtype"):
        nbd.conv2d(xd.astype(np.float32), w)
    with pytest.raises(ValueError, match="x must be 4-D"):
        nbd.conv2d(xd[0], w)
    # a channel axis in chunks of unknown size cannot be merged (nor can halos be planned)
    channels = xd.rechunk({3: 1})[..., da.from_array(np.array([True, True]), chunks=1)]
    with pytest.raises(ValueError, match="unknown chunk sizes.*cannot be merged.*compute_chunk_sizes"):
        nbd.conv2d(channels, w)
    with pytest.raises(ValueError, match="grad_out has unknown chunk sizes"):
        nbd.conv2d_backward(da.zeros((2, 6, 6, 4), chunks=3)[da.arange(2) < 5], xd, w)


def test_importing_nbconv_does_not_import_dask():
    code = "import sys, nbconv; assert 'dask' not in sys.modules and 'distributed' not in sys.modules; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# ---------------------------------------------------------------- schedulers and diagnostics

def test_progress_bar(rng, capsys):
    from dask.diagnostics import ProgressBar
    x, w, b, _ = make_case(rng, 2, "1", np.float64)
    with ProgressBar():
        nbd.conv2d(da.from_array(x, chunks=3), w, b, padding=1).compute()
    assert "100%" in capsys.readouterr().out


def test_processes_scheduler(rng):
    """dask's processes scheduler (spawned workers: nbconv and its cached kernels load in each); one pool
    serves the forward call and both gradient computations."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    x, w, b, g = make_case(rng, 3, "2", np.float64, n=2)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool, \
            dask.config.set(scheduler="processes", pool=pool):
        check_conv(rng, 3, x, w, b, (1, 2, 3, 2, 4), padding=1, padding_mode="reflect", groups=g, stride=2)


def test_distributed_local_cluster(rng):
    """Two worker processes on the loopback interface: forward, gradients and a transposed convolution.
    Kernels are imported (and loaded from the on-disk cache) in the workers."""
    distributed = pytest.importorskip("distributed")
    x, w, b, g = make_case(rng, 2, "2", np.float32)
    kw = dict(padding="same", padding_mode="circular", groups=g, dilation=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster, timeout=60) as client:
        xd = da.from_array(x, chunks=(1, 3, 4, 2))
        want = nbconv.conv2d(x, w, b, **kw)
        close(client.compute(nbd.conv2d(xd, w, b, **kw)).result(timeout=180), want)
        gy = rng.standard_normal(want.shape).astype(np.float32)
        ref = nbconv.conv2d_backward(gy, x, w, **kw)
        got = nbd.conv2d_backward(da.from_array(gy, chunks=(2, 3, 3, 6)), xd, w, **kw)  # uses the client
        close(client.compute(got.input).result(timeout=180), ref.input)
        close(got.weight, ref.weight)
        close(got.bias, ref.bias)
        wt = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
        close(client.compute(nbd.conv_transpose2d(xd, wt, stride=2)).result(timeout=180),
              nbconv.conv_transpose2d(x, wt, stride=2))


def test_bench_command_at_a_small_size(capsys):
    """The benchmark (python -m nbconv._dask_bench) at a tiny size, without the distributed runs."""
    from nbconv import _dask_bench
    _dask_bench.main(["--shape", "1,12,12,12,2", "--chunks", "1,6,6,6,2", "--workers", "", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "| in-memory nbconv.conv3d, slice (1, 3, 12, 12, 2)" in out
    assert "| nbconv.dask.conv3d, whole array, 8 chunks (threads)" in out
