"""The register-tiled inner products every CPU convolution kernel calls, emitted as LLVM vector code.

A tile is P rows x B lanes of accumulators. Each function below has a plain NumPy body (what runs with
NUMBA_DISABLE_JIT=1, and the statement of what it computes) and an overload that compiled kernels call,
which writes the loop directly in LLVM IR: every accumulator is a vector of one machine register
(``<16 x float>`` where the compile target has AVX-512, ``<8 x float>`` otherwise), updated with
``llvm.fmuladd`` (one FMA per register and reduction step). Writing the vectors out, instead of P * B
named scalars left to LLVM's SLP vectorizer, keeps the tile in registers of the full width on AVX-512
machines (whose LLVM tuning otherwise prefers 256-bit vectors) and compiles in milliseconds.

The tile shape follows the target: 8 x 32 with AVX-512 (16 of its 32 vector registers accumulate,
for float32), 5 x 16 otherwise (10 of the 16 AVX2 registers). When P rows x B lanes need more registers
than that budget (float64), the lanes are covered in several passes over the reduction. `micro_tile_into` runs
the same tile over several blocks of lanes and writes each straight into the output, plus a bias. `micro_tile_wide`
and `micro_tile_into_wide` are the same with the wide tile, 6 x 64 with AVX-512 (24 accumulators), which the
gather kernel and the dense weight gradient run for layers of at least 64 output channels per group.
`micro_groups` is the tile for grouped convolutions with 2 or 4 channels per group (in and out): its lanes are
output channels, so one vector holds several groups, and each source vector is multiplied as loaded and with the
lanes of every group rotated (in-register shuffles), against weights stored in that rotated order.
`micro_lanes*` serve the depthwise kernels, whose lanes are channels: LP x LB = 5 x 16 on every target (10 rows
were no faster on AVX-512, measured). `micro_window_into` is `micro_lanes_into` for a depthwise row of k_w
consecutive taps (dilation 1): output columns p*sw + kw share source vectors, so it loads each once per row (7
loads instead of 15 for 5 columns of a 3-tap row at stride 1), its column loop unrolled for each (k_w, sw) of
WINDOWS; it computes one output row or two, and a source row that both read is loaded once for both.
`micro_pixel_into` computes one output pixel over a list of taps: the depthwise edge columns, whose taps in range
differ from column to column. `micro_columns` is micro_lanes for several output channels at once (each source vector
loaded once for all of them): the forward of layers with one input channel, whose lanes are output columns.
`micro_grad_window` is the depthwise weight gradient of k_w consecutive taps of each source row (unit stride and
dilation): a sliding window of source vectors in registers feeds all k_w taps from one load per column.
`micro_rotated` is micro_lanes with c sums per row, its second operand rotated within each group of c lanes by
0..c-1: the weight gradient of grouped convolutions with 2 or 4 channels per group.
"""
import contextlib

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic, overload


def _wide_tile():
    """Whether to use the AVX-512 tile: numba compiles for a CPU with AVX-512F (its host, or the one named by
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES). The choice depends only on what numba's cache keys compiled code by
    (target CPU name and features), so a cached kernel always matches the tile shape of the process loading it."""
    if config.CPU_FEATURES:
        return "+avx512f" in config.CPU_FEATURES.split(",")
    if config.CPU_NAME and config.CPU_NAME != "host":
        return False  # a named CPU without explicit features: the narrower tile is safe everywhere
    return bool(llvm.get_host_cpu_features().get("avx512f", False))


WIDE = _wide_tile()
VECTOR_BYTES = 64 if WIDE else 32
P, B = (8, 32) if WIDE else (5, 16)  # dense tile: rows (output pixels) x lanes (output channels)
# The wide dense tile of the gather kernel, for packs of at least WB output channels: 6 x 64 with AVX-512 (24
# accumulators: 6 broadcasts and 4 weight vectors per 24 multiply-adds, against 8 and 2 per 16), else the dense tile.
WP, WB = (6, 64) if WIDE else (P, B)
LP, LB = 5, 16                       # depthwise tiles: rows (output columns) x lanes (channels)
_ACCUMULATORS = 16 if WIDE else 10   # vector registers one reduction pass may hold
_WIDE_ACCUMULATORS = 24 if WIDE else _ACCUMULATORS  # the same for the wide tile
_ROTATED_ACCUMULATORS = 20 if WIDE else 8  # the same for micro_rotated (beside its group rotations of v)
# The dense tiles prefetch the row of v this many reduction steps ahead: v streams from L2 (a block of weights is too
# large for L1), and the hardware prefetchers left the tile waiting on it (2 threads, forwards: DeepLab 5.20-5.30 ->
# 5.03-5.11 ms, ResNet-50 1x1 reduce 2.26-2.27 -> 2.16, C3D 13.86-14.0 -> 13.67-13.71; 8 and 32 steps alike).
_PREFETCH_STEPS = 16


# ---------------------------------------------------------------- plain bodies (NUMBA_DISABLE_JIT=1)

def micro_tile(src, a, c, v, tile, lanes):
    """tile[p, b] = sum_s src[a[p] + c[s]] * v[s, b] for p < P, b < lanes <= B (the other lanes of tile: unspecified);
    src flat, a and c unsigned, v (len(c), >= B) C-contiguous rows."""
    n = c.shape[0]
    tile[:P, :lanes] = src[a[:P, None] + c[None, :]] @ v[:n, :lanes]


def micro_tile_wide(src, a, c, v, tile, lanes):
    """micro_tile with the wide tile: WP rows, lanes <= WB."""
    n = c.shape[0]
    tile[:WP, :lanes] = src[a[:WP, None] + c[None, :]] @ v[:n, :lanes]


def micro_groups(src, a, shift, c, v, tile, lanes, cg):
    """tile[p, b] = sum_{s, r < cg} src[a[p] + shift + c[s] + b - b % cg + (b + r) % cg] * v[s*cg + r, b] for p < P,
    b < lanes <= B (the other lanes of tile: unspecified): lane b sums the cg source channels of its group (runs of cg
    lanes), rotated by r, against the rows of v, which hold the weights in that rotated order. src flat, a and c
    unsigned, v (len(c) * cg, >= B) C-contiguous rows, cg 2 or 4 (dividing a vector's lanes); every source vector
    holding one of the first `lanes` lanes of a pixel lies inside src."""
    n = c.shape[0]
    b = np.arange(lanes)
    tile[:, :lanes] = 0
    for r in range(cg):
        channels = (b - b % cg + (b + r) % cg).astype(np.uint64)
        x = src[a[:P, None, None] + np.uint64(shift) + c[None, :, None] + channels]  # (P, n, lanes)
        tile[:, :lanes] += (x * v[np.arange(n) * cg + r, :lanes]).sum(axis=1)


def micro_tile_into(src, a, c, v, dst, d, base, add):
    """For every block k < len(v): dst[d[p] + k*B + b] = (dst[d[p] + k*B + b] if add else base[k*B + b]) +
    sum_s src[a[p] + c[s]] * v[k, s, b] for p < P, b < B (micro_tile over several whole blocks of lanes, written
    straight to dst); src, dst flat, a, c, d unsigned, the P rows of dst distinct, v (blocks, len(c), >= B) with
    rows of B contiguous elements, base contiguous."""
    _tile_into(src, a, c, v, dst, d, base, add, P, B)


def micro_tile_into_wide(src, a, c, v, dst, d, base, add):
    """micro_tile_into with the wide tile: WP rows, blocks of WB lanes."""
    _tile_into(src, a, c, v, dst, d, base, add, WP, WB)


def _tile_into(src, a, c, v, dst, d, base, add, rows, lanes):
    tile = np.empty((rows, lanes), dtype=dst.dtype)
    for k in range(v.shape[0]):
        tile[...] = src[a[:rows, None] + c[None, :]] @ v[k, :c.shape[0], :lanes]
        for p in range(rows):
            at = d[p] + k * lanes
            dst[at:at + lanes] = (dst[at:at + lanes] if add else base[k * lanes:(k + 1) * lanes]) + tile[p]


def micro_lanes(src, a, c, v, v0, v_step, tile):
    """tile[p, b] = sum_s src[a[p] + c[s] + b] * v[v0 + s*v_step, b] for p < LP, b < LB; src flat, a and c unsigned,
    v C-contiguous rows of >= LB."""
    lanes = np.arange(LB, dtype=np.uint64)
    rows = v[v0 + np.arange(c.shape[0]) * v_step, :LB]
    tile[:, :] = (src[a[:LP, None, None] + c[None, :, None] + lanes] * rows).sum(axis=1)


def micro_columns(src, a, c, v, taps, tile):
    """tile[k, p, b] = sum_s src[a[p] + c[s] + b] * v[k*taps + s, b] for k < len(tile), p < LP, b < LB: micro_lanes
    for every output channel k (rows k*taps.. of v), each source vector loaded once for several channels; src flat, a
    and c unsigned, len(c) <= taps, v C-contiguous rows of >= LB, tile (channels, LP, LB) C-contiguous."""
    for k in range(tile.shape[0]):
        micro_lanes(src, a, c, v, k * taps, 1, tile[k])


GRAD_WINDOWS = (3, 5)  # the row lengths k_w micro_grad_window is compiled for


def micro_grad_window(src, rows, pix, gy, g0, g_step, n, k_w, tile):
    """tile[u*k_w + kw, b] = sum_{i < n} src[rows[u] + (i + kw)*pix + b] * gy[g0 + i*g_step + b] for u < len(rows),
    kw < k_w, b < LB: the depthwise weight gradient of k_w consecutive taps (stride 1, dilation 1) of each source row
    u over n output columns, each source vector loaded once for the k_w taps that read it (a sliding window of
    vectors in registers); k_w in GRAD_WINDOWS; src and gy flat, rows unsigned, tile (>= len(rows)*k_w, LB)
    C-contiguous."""
    lanes = np.arange(LB)
    for u in range(rows.shape[0]):
        for kw in range(k_w):
            acc = np.zeros(LB, dtype=tile.dtype)
            for i in range(n):
                at = int(rows[u]) + (i + kw) * pix
                acc += src[at + lanes] * gy[g0 + i * g_step + lanes]
            tile[u * k_w + kw] = acc


def micro_rotated(src, a, c, v, v0, v_step, tile, cg):
    """tile[p, r, b] = sum_s src[a[p] + c[s] + b] * v[v0 + s*v_step + b - b % cg + (b % cg + r) % cg] for p < LP,
    r < cg, b < LB: micro_lanes with each row of v rotated within its runs of cg lanes by r = 0..cg-1 (the weight
    gradient of a grouped convolution with cg channels per group: lane b is input channel b % cg of its group, and
    rotation r pairs it with the group's output channel (b % cg + r) % cg); src and v flat, a and c unsigned, cg 2
    or 4."""
    lanes = np.arange(LB)
    rows = v[v0 + np.arange(c.shape[0])[:, None] * v_step + lanes]
    x = src[a[:LP, None, None] + c[None, :, None] + lanes.astype(np.uint64)]  # (LP, n, LB)
    for r in range(cg):
        tile[:, r, :] = (x * rows[:, lanes - lanes % cg + (lanes % cg + r) % cg]).sum(axis=1)


def micro_lanes_into(src, a, c, v, v0, v_step, dst, d, base, add):
    """For every block k < len(v): dst[d[p] + k*LB + b] = (dst[d[p] + k*LB + b] if add else base[k*LB + b]) +
    sum_s src[a[p] + c[s] + k*LB + b] * v[k, v0 + s*v_step, b] for p < LP, b < LB; src, dst flat, a, c, d unsigned,
    the LP rows of dst distinct, v (blocks, rows, >= LB) with C-contiguous rows, base contiguous."""
    tile = np.empty((LP, LB), dtype=dst.dtype)
    for k in range(v.shape[0]):
        micro_lanes(src, a + np.uint64(k * LB), c, v[k], v0, v_step, tile)
        for p in range(LP):
            at = d[p] + k * LB
            dst[at:at + LB] = (dst[at:at + LB] if add else base[k * LB:(k + 1) * LB]) + tile[p]


WINDOWS = ((3, 1), (3, 2), (5, 1), (5, 2))  # the (k_w, sw) pairs micro_window_into is compiled for


def window_supported(k_w, sw, dw):
    """Whether micro_window_into serves a depthwise row of k_w taps, stride sw and dilation dw."""
    return dw == 1 and (k_w, sw) in WINDOWS


def micro_window_into(src, a0, rows, w_rows, pix, v, dst, d, base, k_w, sw, i_lo, i_hi):
    """For every output row q < len(d) (one or two) and block k < len(v): dst[d[q, p] + k*LB + b] =
    base[k*LB + b] + sum_{u, kw < k_w} src[a0 + rows[u] + i*pix + k*LB + b] *
    v[k, w_rows[u, q] + kw, b] over the source rows u with w_rows[u, q] >= 0 (in order of u) and the source columns
    i = p*sw + kw with i_lo <= i < i_hi (the others lie outside the source row: skipped), for p < LP, b < LB:
    micro_lanes_into for taps that are k_w consecutive columns of each source row (dilation 1), loading each source
    vector once for every output column of either output row that reads it; (k_w, sw) in WINDOWS; src, dst flat, a0
    signed (negative when the first columns are skipped), rows and d unsigned, w_rows (U, len(d)) int64, the output
    pixels distinct, v (blocks, rows, >= LB) with C-contiguous rows, base contiguous."""
    for q in range(d.shape[0]):
        for k in range(v.shape[0]):
            for p in range(LP):
                at = int(d[q, p]) + k * LB
                acc = np.zeros(LB, dtype=dst.dtype)
                for u in range(rows.shape[0]):
                    if w_rows[u, q] < 0:
                        continue
                    for kw in range(k_w):
                        i = p * sw + kw
                        if i_lo <= i < i_hi:
                            first = int(a0) + int(rows[u]) + i * pix + k * LB
                            acc += src[first:first + LB] * v[k, w_rows[u, q] + kw, :LB]
                dst[at:at + LB] = base[k * LB:(k + 1) * LB] + acc


def micro_pixel_into(src, c, wi, n, v, dst, d, base):
    """For every block k < len(v): dst[d + k*LB + b] = base[k*LB + b] + sum_{s < n} src[c[s] + k*LB + b] *
    v[k, wi[s], b] for b < LB: one output pixel of a depthwise layer over an arbitrary list of taps (the edge
    columns, whose taps in range differ from column to column), summed in four interleaved partial sums (s mod 4)
    added at the end; src, dst flat, c and wi unsigned, v (blocks, rows, >= LB) with C-contiguous rows."""
    acc = np.zeros((v.shape[0], 4, LB), dtype=dst.dtype)
    for k in range(v.shape[0]):
        for s in range(n):
            at = c[s] + np.uint64(k * LB)
            acc[k, s % 4] += src[at:at + np.uint64(LB)] * v[k, wi[s], :LB]
        dst[d + k * LB:d + (k + 1) * LB] = base[k * LB:(k + 1) * LB] + ((acc[k, 0] + acc[k, 1]) +
                                                                   (acc[k, 2] + acc[k, 3]))


# ---------------------------------------------------------------- LLVM code

_OPERANDS = {  # the operands of each tile function, by position
    "tile": ("src", "a", "c", "v", "out", "used"),
    "groups": ("src", "a", "shift", "c", "v", "out", "used", "cg"),
    "lanes": ("src", "a", "c", "v", "v0", "v_step", "out"),
    "lanes_into": ("src", "a", "c", "v", "v0", "v_step", "out", "d", "base", "add"),
    "tile_into": ("src", "a", "c", "v", "out", "d", "base", "add"),
}
_OPERANDS.update({f"{kind}_wide": _OPERANDS[kind] for kind in ("tile", "tile_into")})


def _operands(context, builder, sig, args, names):
    """(types, values, arrays) of an intrinsic's operands by name; arrays: the array operands' LLVM structs."""
    typ = dict(zip(names, sig.args))
    val = dict(zip(names, args))
    return typ, val, {k: context.make_array(t)(context, builder, val[k]) for k, t in typ.items()
                      if isinstance(t, types.Array)}


def _emit(context, builder, sig, args, kind):
    """Call the tile function of `kind` (defined once per module by `_define`) on the operands' data pointers."""
    i64 = ir.IntType(64)
    names = _OPERANDS[kind]
    typ, val, arr = _operands(context, builder, sig, args, names)
    itemsize = context.get_abi_sizeof(context.get_value_type(typ["src"].dtype))

    def integer(name, default):
        return context.cast(builder, val[name], typ[name], types.intp) if name in val else ir.Constant(i64, default)

    def row_stride(a, ndim, axis=0):  # elements between steps along `axis`
        return builder.sdiv(cgutils.unpack_tuple(builder, a.strides, ndim)[axis], ir.Constant(i64, itemsize))

    wide = kind.endswith("_wide")
    kind = kind.removesuffix("_wide")
    n_rows, n_lanes = (LP, LB) if kind.startswith("lanes") else (WP, WB) if wide else (P, B)
    accumulate = kind.endswith("_into")
    src = arr["src"].data
    if "shift" in val:
        src = builder.gep(src, [integer("shift", 0)])
    out = arr["out"]
    out_stride = ir.Constant(i64, 0) if accumulate else row_stride(out, 2)
    d = arr["d"].data if accumulate else ir.Constant(arr["a"].data.type, None)
    base = arr["base"].data if accumulate else ir.Constant(out.data.type, None)
    no = ir.Constant(ir.IntType(1), 0)
    add = context.cast(builder, val["add"], typ["add"], types.boolean) if "add" in val else no
    if accumulate:  # v is (blocks, rows, lanes)
        n_blocks = cgutils.unpack_tuple(builder, arr["v"].shape, 3)[0]
        v_block, v_row = row_stride(arr["v"], 3, 0), row_stride(arr["v"], 3, 1)
    else:
        n_blocks, v_block, v_row = ir.Constant(i64, 1), ir.Constant(i64, 0), row_stride(arr["v"], typ["v"].ndim)
    c_len = cgutils.unpack_tuple(builder, arr["c"].shape, 1)[0]
    elem = context.get_value_type(typ["src"].dtype)

    def call(group, v_step):
        fn = _define(builder.module, elem, kind, group, n_rows, n_lanes, _WIDE_ACCUMULATORS if wide else _ACCUMULATORS)
        builder.call(fn, [src, arr["a"].data, arr["c"].data, c_len, arr["v"].data, v_row, integer("v0", 0), v_step,
                          out.data, out_stride, d, base, add, n_blocks, v_block, integer("used", n_lanes)])

    if kind == "groups":  # one function per group size (the shuffle masks are constants)
        cg = integer("cg", 0)
        with builder.if_else(builder.icmp_unsigned("==", cg, ir.Constant(i64, 2))) as (two, four):
            with two:
                call(2, ir.Constant(i64, 2))
            with four:
                call(4, ir.Constant(i64, 4))
    else:
        call(0, integer("v_step", 1))
    return context.get_dummy_value()


def _new_function(module, name, arg_types):
    """A new internal, noinline, nounwind void function of `module` and a builder at its entry, or (the function, None)
    when the module already defines `name` (noinline: inside it, every general register is free for the tile)."""
    if name in module.globals:
        return module.globals[name], None
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), arg_types), name=name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    fn.attributes.add("nounwind")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _vector_ops(module, elem):
    """(vector type of one register, its llvm.fmuladd, its zero, elements per register, bytes per element)."""
    itemsize = 4 if isinstance(elem, ir.FloatType) else 8
    vl = VECTOR_BYTES // itemsize
    vec = ir.VectorType(elem, vl)
    fmuladd = cgutils.get_or_insert_function(module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fmuladd.v{vl}{'f32' if itemsize == 4 else 'f64'}")
    return vec, fmuladd, ir.Constant(vec, [0.0] * vl), vl, itemsize


def _define(module, elem, kind, group, n_rows, n_lanes, accumulators):
    """The tile loop of `kind` as a function of its own (noinline: inside it, every general register is free for the
    n_rows row addresses): for p < n_rows, s < n: acc[p][j] = fmuladd(x(p, s, j), vector j of v row (v0 + s*v_step),
    acc[p][j]); then out rows p = acc[p], or (*_into) dst at d[p] = (dst there if add else base) + acc[p].
    x is src[a[p] + c[s]] broadcast (tile), or the vector at src[a[p] + c[s] + j*VL] (lanes). For groups, that vector
    with the lanes of each run of `group` rotated by r, times v row s*group + r, summed over r < group. All of it once
    per block k < n_blocks, with dst and base (and, for lanes, src) shifted by k*n_lanes and v by k*v_block
    (n_blocks is 1 but for *_into); only the vectors j holding the first `used` lanes are computed and stored. The
    broadcast kinds (tile, tile_into) prefetch v's row _PREFETCH_STEPS steps ahead."""
    vec, fmuladd, zero, vl, itemsize = _vector_ops(module, elem)
    accumulate = kind.endswith("_into")
    lanes_src = kind.startswith("lanes") or kind == "groups"
    i64 = ir.IntType(64)
    ptr, iptr = elem.as_pointer(), i64.as_pointer()
    name = f"nbconv_micro_{kind}{group or ''}_{n_rows}x{n_lanes}_a{accumulators}_f{itemsize * 8}_v{vl}"
    fn, builder = _new_function(module, name,
                                [ptr, iptr, iptr, i64, ptr, i64, i64, i64, ptr, i64, iptr, ptr, ir.IntType(1), i64, i64,
                                 i64])
    if builder is None:
        return fn
    src, a, c, n_red, v_first, v_stride, v0, v_step, out, out_stride, d, base, add, n_blocks, v_block, used = fn.args
    splat = ir.Constant(ir.VectorType(ir.IntType(32), vl), [0] * vl)
    n_vec = n_lanes // vl
    # With groups, one vector per pass: its group weight vectors stay in registers beside the accumulators (and a
    # source and its rotation); two vectors per pass spilled registers on every target (read from the assembly).
    per_pass = 1 if group else max(1, min(n_vec, accumulators // n_rows))
    rotations = [ir.Constant(ir.VectorType(ir.IntType(32), vl), [l - l % group + (l % group + r) % group
                                                                  for l in range(vl)]) for r in range(group)]

    def vec_at(data, index, j):  # pointer to the vector at element index + j*vl of a flat buffer
        return builder.bitcast(builder.gep(data, [builder.add(index, ir.Constant(i64, j * vl))]), vec.as_pointer())

    bases = [builder.load(builder.gep(a, [ir.Constant(i64, p)])) for p in range(n_rows)]
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    prefetch = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                              "llvm.prefetch.p0i8")  # (address, read, locality 3: L1, data)

    def const(value):
        return ir.Constant(i64, value)
    # With groups, each accumulator is split in two (even and odd rotations, added at the end) when the tile alone
    # has too few of them to hide the FMA latency (two FMA units, four cycles each); not for float64, where the
    # split spilled registers on 16-register targets.
    split = 2 if group and n_rows < 8 and itemsize == 4 else 1
    accs = [[[cgutils.alloca_once(builder, vec) for _ in range(split)] for _ in range(per_pass)]
            for _ in range(n_rows)]
    block_loop = cgutils.for_range(builder, n_blocks)  # blocks of n_lanes lanes (one, but for the *_into kinds)
    with block_loop as blk:
        shift = builder.mul(blk.index, ir.Constant(i64, n_lanes))
        v = builder.gep(v_first, [builder.mul(blk.index, v_block)])
        rows = [builder.add(b_p, shift) for b_p in bases] if lanes_src else bases  # a tile's source: every block

        def passes(m):  # the first m vectors of the tile, per_pass of them per pass over the reduction
            for j0 in range(0, m, per_pass):
                js = range(j0, min(m, j0 + per_pass))
                for p in range(n_rows):
                    for k, _ in enumerate(js):
                        for half in accs[p][k]:
                            builder.store(zero, half)
                with cgutils.for_range(builder, n_red) as loop:
                    s = loop.index
                    cs = builder.load(builder.gep(c, [s]))
                    v_row = builder.mul(builder.add(v0, builder.mul(s, v_step)), v_stride)
                    if not lanes_src:  # each cache line of the row _PREFETCH_STEPS ahead (for reading, into L1)
                        ahead = builder.mul(builder.add(v0, builder.mul(builder.add(s, const(_PREFETCH_STEPS)),
                                                                        v_step)), v_stride)
                        for j in range(0, n_lanes, 64 // itemsize):
                            line = builder.bitcast(builder.gep(v, [builder.add(ahead, const(j))]), i8p)
                            builder.call(prefetch, [line, i32(0), i32(3), i32(1)])
                    ws = [[builder.load(vec_at(v, builder.add(v_row, builder.mul(ir.Constant(i64, r), v_stride)), j),
                                        align=itemsize) for j in js] for r in range(max(1, group))]
                    for p in range(n_rows):
                        at = builder.add(rows[p], cs)
                        if not lanes_src:
                            x = builder.load(builder.gep(src, [at]))
                            xv = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), x,
                                                                              ir.Constant(ir.IntType(32), 0)),
                                                        ir.Constant(vec, ir.Undefined), splat)
                        for k, j in enumerate(js):
                            if lanes_src:
                                xv = builder.load(vec_at(src, at, j), align=itemsize)
                            for r in range(max(1, group)):
                                x_r = xv if r == 0 else builder.shuffle_vector(xv, ir.Constant(vec, ir.Undefined),
                                                                                rotations[r])
                                half = accs[p][k][r % split]
                                builder.store(builder.call(fmuladd, [x_r, ws[r][k], builder.load(half)]), half)
                for p in range(n_rows):
                    if accumulate:
                        d_p = builder.add(builder.load(builder.gep(d, [ir.Constant(i64, p)])), shift)
                    else:
                        d_p = builder.mul(ir.Constant(i64, p), out_stride)
                    for k, j in enumerate(js):
                        at = vec_at(out, d_p, j)
                        acc = builder.load(accs[p][k][0])
                        if split == 2:
                            acc = builder.fadd(acc, builder.load(accs[p][k][1]))
                        if accumulate:  # dst[d[p] + b] = (dst[d[p] + b] if add else base[b]) + acc
                            init = builder.select(add, at, vec_at(base, shift, j))
                            acc = builder.fadd(builder.load(init, align=itemsize), acc)
                        builder.store(acc, at, align=itemsize)

        if n_vec == 1:
            passes(1)
        else:  # only the vectors holding the lanes the caller needs
            n_used = builder.udiv(builder.add(used, ir.Constant(i64, vl - 1)), ir.Constant(i64, vl))
            done = fn.append_basic_block("done")
            cases = [fn.append_basic_block(f"vectors{m}") for m in range(1, n_vec + 1)]
            switch = builder.switch(n_used, cases[-1])
            for m, case in enumerate(cases, 1):
                switch.add_case(ir.Constant(i64, m), case)
                builder.position_at_end(case)
                passes(m)
                builder.branch(done)
            builder.position_at_end(done)
    builder.ret_void()
    return fn


def _define_columns(module, elem):
    """micro_columns as a function of its own: per pass over the reduction, `channels` output channels (a runtime loop
    over passes; a switch on the last pass's count) and `halves` of the LB lanes: LP x channels x halves accumulators
    (_WIDE_ACCUMULATORS at most); at each step the LP x halves source vectors are loaded once, each weight vector once
    per channel."""
    vec, fmuladd, zero, vl, itemsize = _vector_ops(module, elem)
    i64 = ir.IntType(64)
    ptr, iptr = elem.as_pointer(), i64.as_pointer()
    fn, builder = _new_function(module, f"nbconv_micro_columns_{LP}x{LB}_a{_WIDE_ACCUMULATORS}_f{itemsize * 8}_v{vl}",
                                [ptr, iptr, iptr, i64, ptr, i64, i64, i64, ptr])
    if builder is None:
        return fn
    src, a, c, n, v, v_stride, taps, n_co, out = fn.args
    n_halves = LB // vl
    halves = min(n_halves, max(1, _WIDE_ACCUMULATORS // LP))  # vectors of the lanes per pass
    channels = max(1, _WIDE_ACCUMULATORS // (LP * halves))  # output channels per pass
    accs = [[[cgutils.alloca_once(builder, vec) for _ in range(halves)] for _ in range(channels)] for _ in range(LP)]
    bases = [builder.load(builder.gep(a, [ir.Constant(i64, p)])) for p in range(LP)]

    def const(value):
        return ir.Constant(i64, value)

    def vec_at(data, index):
        return builder.bitcast(builder.gep(data, [index]), vec.as_pointer())

    def one_pass(k0, m, h0, h1):  # channels k0 .. k0 + m - 1, vectors h0 .. h1 - 1 of the lanes
        hs = range(h0, h1)
        for p in range(LP):
            for k in range(m):
                for i, _ in enumerate(hs):
                    builder.store(zero, accs[p][k][i])
        with cgutils.for_range(builder, n) as loop:
            s = loop.index
            cs = builder.load(builder.gep(c, [s]))
            xs = [[builder.load(vec_at(src, builder.add(builder.add(bases[p], cs), const(h * vl))), align=itemsize)
                   for h in hs] for p in range(LP)]
            for k in range(m):
                row = builder.mul(builder.add(builder.mul(builder.add(k0, const(k)), taps), s), v_stride)
                for i, h in enumerate(hs):
                    w = builder.load(vec_at(v, builder.add(row, const(h * vl))), align=itemsize)
                    for p in range(LP):
                        acc = accs[p][k][i]
                        builder.store(builder.call(fmuladd, [xs[p][i], w, builder.load(acc)]), acc)
        for p in range(LP):
            for k in range(m):
                at = builder.mul(builder.add(builder.mul(builder.add(k0, const(k)), const(LP)), const(p)), const(LB))
                for i, h in enumerate(hs):
                    builder.store(builder.load(accs[p][k][i]), vec_at(out, builder.add(at, const(h * vl))),
                                  align=itemsize)

    n_passes = builder.udiv(builder.add(n_co, const(channels - 1)), const(channels))
    for h0 in range(0, n_halves, halves):
        with cgutils.for_range(builder, n_passes) as passes:
            k0 = builder.mul(passes.index, const(channels))
            left = builder.sub(n_co, k0)
            m = builder.select(builder.icmp_unsigned("<", left, const(channels)), left, const(channels))
            done = fn.append_basic_block(f"columns_done{h0}")
            cases = [fn.append_basic_block(f"columns{h0}_{count}") for count in range(1, channels + 1)]
            switch = builder.switch(m, cases[-1])
            for count, case in enumerate(cases, 1):
                switch.add_case(const(count), case)
                builder.position_at_end(case)
                one_pass(k0, count, h0, min(n_halves, h0 + halves))
                builder.branch(done)
            builder.position_at_end(done)
    builder.ret_void()
    return fn


@intrinsic
def _columns_ir(typingctx, src, a, c, v, taps, tile):
    _check_float(src, v, tile)

    def codegen(context, builder, sig, args):
        typ, val, arr = _operands(context, builder, sig, args, ("src", "a", "c", "v", "taps", "tile"))
        itemsize = context.get_abi_sizeof(context.get_value_type(typ["src"].dtype))
        v_stride = builder.sdiv(cgutils.unpack_tuple(builder, arr["v"].strides, 2)[0],
                                ir.Constant(ir.IntType(64), itemsize))
        fn = _define_columns(builder.module, context.get_value_type(typ["src"].dtype))
        builder.call(fn, [arr["src"].data, arr["a"].data, arr["c"].data,
                          cgutils.unpack_tuple(builder, arr["c"].shape, 1)[0], arr["v"].data, v_stride,
                          context.cast(builder, val["taps"], typ["taps"], types.intp),
                          cgutils.unpack_tuple(builder, arr["tile"].shape, 3)[0], arr["tile"].data])
        return context.get_dummy_value()
    return types.void(src, a, c, v, taps, tile), codegen


def _define_grad_window(module, elem, k_w):
    """micro_grad_window for one k_w as a function of its own: per pass over the n columns, per_pass source rows (3
    for k_w = 3 with AVX-512: 9 accumulators, 6 window vectors; else 1) and one vector of the LB lanes; at each column
    the grad_out vector and each row's newest source vector are loaded once, and each row's last k_w source vectors
    (kept in registers, shifted by one per column) multiply-add into its k_w accumulators. The last pass repeats the
    last row where the rows run out (its sums computed and stored again, alike): one loop body per k_w."""
    vec, fmuladd, zero, vl, itemsize = _vector_ops(module, elem)
    i64 = ir.IntType(64)
    ptr, iptr = elem.as_pointer(), i64.as_pointer()
    per_pass = 3 if k_w == 3 and WIDE else 1  # 3: the rows of a 3x3 layer in one pass
    fn, builder = _new_function(module, f"nbconv_micro_grad_window{k_w}_{per_pass}x{LB}_f{itemsize * 8}_v{vl}",
                                [ptr, iptr, i64, i64, ptr, i64, i64, i64, ptr])
    if builder is None:
        return fn
    src, rows, n_u, pix, gy, g0, g_step, n, out = fn.args
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(k_w)] for _ in range(per_pass)]
    wins = [[cgutils.alloca_once(builder, vec) for _ in range(k_w - 1)] for _ in range(per_pass)]

    def const(value):
        return ir.Constant(i64, value)

    def vec_at(data, index):
        return builder.bitcast(builder.gep(data, [index]), vec.as_pointer())

    def one_pass(us, h):  # source rows us, vector h of the lanes
        m = len(us)
        firsts = [builder.add(builder.load(builder.gep(rows, [u])), const(h * vl)) for u in us]
        for g in range(m):
            for kw in range(k_w):
                builder.store(zero, accs[g][kw])
            for j in range(k_w - 1):
                builder.store(builder.load(vec_at(src, builder.add(firsts[g], builder.mul(const(j), pix))),
                                           align=itemsize), wins[g][j])
        with cgutils.for_range(builder, n) as loop:
            i = loop.index
            gv = builder.load(vec_at(gy, builder.add(builder.add(g0, builder.mul(i, g_step)), const(h * vl))),
                              align=itemsize)
            for g in range(m):
                newest = builder.load(vec_at(src, builder.add(firsts[g], builder.mul(builder.add(i, const(k_w - 1)),
                                                                                     pix))), align=itemsize)
                window = [builder.load(wins[g][j]) for j in range(k_w - 1)] + [newest]
                for kw in range(k_w):
                    builder.store(builder.call(fmuladd, [window[kw], gv, builder.load(accs[g][kw])]), accs[g][kw])
                for j in range(k_w - 1):
                    builder.store(window[j + 1], wins[g][j])
        for g, u in enumerate(us):
            for kw in range(k_w):
                at = builder.mul(builder.add(builder.mul(u, const(k_w)), const(kw)), const(LB))
                builder.store(builder.load(accs[g][kw]), vec_at(out, builder.add(at, const(h * vl))), align=itemsize)

    n_passes = builder.udiv(builder.add(n_u, const(per_pass - 1)), const(per_pass))
    last = builder.sub(n_u, const(1))
    for h in range(LB // vl):
        with cgutils.for_range(builder, n_passes) as passes:
            u0 = builder.mul(passes.index, const(per_pass))
            us = [u0] + [builder.select(builder.icmp_unsigned("<", builder.add(u0, const(g)), n_u),
                                        builder.add(u0, const(g)), last) for g in range(1, per_pass)]
            one_pass(us, h)
    builder.ret_void()
    return fn


@intrinsic
def _grad_window_ir(typingctx, src, rows, pix, gy, g0, g_step, n, k_w, tile):
    _check_float(src, gy, tile)

    def codegen(context, builder, sig, args):
        names = ("src", "rows", "pix", "gy", "g0", "g_step", "n", "k_w", "tile")
        typ, val, arr = _operands(context, builder, sig, args, names)
        i64 = ir.IntType(64)

        def integer(name):
            return context.cast(builder, val[name], typ[name], types.intp)

        operands = [arr["src"].data, arr["rows"].data, cgutils.unpack_tuple(builder, arr["rows"].shape, 1)[0],
                    integer("pix"), arr["gy"].data, integer("g0"), integer("g_step"), integer("n"), arr["tile"].data]
        k_w = integer("k_w")  # GRAD_WINDOWS[0] or [1] (the caller's precondition): any other width runs [1]'s
        with builder.if_else(builder.icmp_unsigned("==", k_w, ir.Constant(i64, GRAD_WINDOWS[0]))) as (first, other):
            for width, branch in zip(GRAD_WINDOWS, (first, other)):
                with branch:
                    builder.call(_define_grad_window(builder.module, context.get_value_type(typ["src"].dtype),
                                                     width), operands)
        return context.get_dummy_value()
    return types.void(src, rows, pix, gy, g0, g_step, n, k_w, tile), codegen


def _define_rotated(module, elem, group):
    """micro_rotated as a function of its own: per vector j of the LB lanes and per pass of up to
    _ROTATED_ACCUMULATORS // group rows, group accumulators per row; at each reduction step the row of v is loaded
    once and rotated group - 1 times (in-register shuffles), then each row's source vector is loaded once and
    multiply-added with every rotation."""
    vec, fmuladd, zero, vl, itemsize = _vector_ops(module, elem)
    i64 = ir.IntType(64)
    ptr, iptr = elem.as_pointer(), i64.as_pointer()
    fn, builder = _new_function(module, f"nbconv_micro_rotated{group}_{LP}x{LB}_f{itemsize * 8}_v{vl}",
                                [ptr, iptr, iptr, i64, ptr, i64, i64, ptr])
    if builder is None:
        return fn
    src, a, c, n, v, v0, v_step, out = fn.args
    rows_per_pass = max(1, min(LP, _ROTATED_ACCUMULATORS // group))
    rotations = [ir.Constant(ir.VectorType(ir.IntType(32), vl), [l - l % group + (l % group + r) % group
                                                                  for l in range(vl)]) for r in range(1, group)]
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(group)] for _ in range(rows_per_pass)]
    bases = [builder.load(builder.gep(a, [ir.Constant(i64, p)])) for p in range(LP)]

    def vec_at(data, index):
        return builder.bitcast(builder.gep(data, [index]), vec.as_pointer())

    for j in range(LB // vl):
        for p0 in range(0, LP, rows_per_pass):
            rows = range(p0, min(LP, p0 + rows_per_pass))
            for k, _ in enumerate(rows):
                for acc in accs[k]:
                    builder.store(zero, acc)
            with cgutils.for_range(builder, n) as loop:
                s = loop.index
                cs = builder.load(builder.gep(c, [s]))
                v_row = builder.add(v0, builder.mul(s, v_step))
                w = builder.load(vec_at(v, builder.add(v_row, ir.Constant(i64, j * vl))), align=itemsize)
                ws = [w] + [builder.shuffle_vector(w, ir.Constant(vec, ir.Undefined), mask) for mask in rotations]
                for k, p in enumerate(rows):
                    x = builder.load(vec_at(src, builder.add(builder.add(bases[p], cs), ir.Constant(i64, j * vl))),
                                     align=itemsize)
                    for r in range(group):
                        builder.store(builder.call(fmuladd, [x, ws[r], builder.load(accs[k][r])]), accs[k][r])
            for k, p in enumerate(rows):
                for r in range(group):
                    builder.store(builder.load(accs[k][r]),
                                  vec_at(out, ir.Constant(i64, (p * group + r) * LB + j * vl)), align=itemsize)
    builder.ret_void()
    return fn


def _emit_rotated(context, builder, sig, args):
    """Call micro_rotated's function for the group size cg (one per size: its shuffle masks are constants)."""
    i64 = ir.IntType(64)
    names = ("src", "a", "c", "v", "v0", "v_step", "out", "cg")
    typ, val, arr = _operands(context, builder, sig, args, names)
    elem = context.get_value_type(typ["src"].dtype)

    def integer(name):
        return context.cast(builder, val[name], typ[name], types.intp)

    n = cgutils.unpack_tuple(builder, arr["c"].shape, 1)[0]
    cg = integer("cg")
    with builder.if_else(builder.icmp_unsigned("==", cg, ir.Constant(i64, 2))) as (two, four):
        for group, branch in ((2, two), (4, four)):
            with branch:
                fn = _define_rotated(builder.module, elem, group)
                builder.call(fn, [arr["src"].data, arr["a"].data, arr["c"].data, n, arr["v"].data, integer("v0"),
                                  integer("v_step"), arr["out"].data])
    return context.get_dummy_value()


def _define_window(module, elem):
    """micro_window_into as a function of its own: per block, per vector j of the block's lanes (one pass each), LP
    accumulators per output row; for each source row u (a loop), the k_w weight vectors of each output row it feeds,
    then every source column i <= (LP - 1)*sw + k_w - 1 loaded once and multiply-added into the accumulators p with
    p*sw + kw = i of those output rows; the columns unrolled for each (k_w, sw) of WINDOWS (a switch on them), as no
    other loop order reads each vector once. With two output rows, a source row feeds the first, the second or both
    (a branch per source row). A tile with columns outside [i_lo, i_hi) runs a second copy of the loop, where each
    column is a branch (taken alike in every row)."""
    vec, fmuladd, zero, vl, itemsize = _vector_ops(module, elem)
    i64 = ir.IntType(64)
    ptr, iptr = elem.as_pointer(), i64.as_pointer()
    fn, builder = _new_function(module, f"nbconv_micro_window_{LP}x{LB}_f{itemsize * 8}_v{vl}",
                                [ptr, i64, iptr, i64, i64, ptr, i64, iptr, i64, i64, i64, ptr, iptr, i64, ptr, i64,
                                 i64, i64, i64, i64, i64])
    if builder is None:
        return fn
    src, a0, rows, n_u, pix, v_first, v_stride, w_rows, w_row_step, w_col_step, n_out, out, d, d_step, base, \
        n_blocks, v_block, k_w, sw, i_lo, i_hi = fn.args
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(LP)] for _ in range(2)]

    def vec_at(data, index):
        return builder.bitcast(builder.gep(data, [index]), vec.as_pointer())

    def const(value):
        return ir.Constant(i64, value)

    def tiles(kw_n, sw_n, inside, n_rows):  # the passes for n_rows output rows; inside: per column, if read (or None)
        d_p = [[builder.load(builder.gep(d, [builder.add(builder.mul(const(q), d_step), const(p))]))
                for p in range(LP)] for q in range(n_rows)]
        with cgutils.for_range(builder, n_blocks) as blk:
            v = builder.gep(v_first, [builder.mul(blk.index, v_block)])
            lane0 = builder.mul(blk.index, const(LB))
            for j in range(LB // vl):  # one pass over the source rows per vector of the block
                shift = builder.add(lane0, const(j * vl))
                for acc in accs[:n_rows]:
                    for a in acc:
                        builder.store(zero, a)
                with cgutils.for_range(builder, n_u) as loop:
                    u = loop.index
                    row = builder.add(builder.add(a0, builder.load(builder.gep(rows, [u]))), shift)
                    w_row = [builder.load(builder.gep(w_rows, [builder.add(builder.mul(u, w_row_step),
                                                                           builder.mul(const(q), w_col_step))]))
                             for q in range(n_rows)]

                    def body(fed):  # the output rows q in `fed` read this source row
                        ws = {q: [builder.load(vec_at(v, builder.add(builder.mul(builder.add(w_row[q], const(kw)),
                                                                                 v_stride), const(j * vl))),
                                               align=itemsize) for kw in range(kw_n)] for q in fed}
                        for i in range((LP - 1) * sw_n + kw_n):
                            users = [(p, i - p * sw_n) for p in range(LP) if 0 <= i - p * sw_n < kw_n]
                            with builder.if_then(inside[i]) if inside else contextlib.nullcontext():
                                x = builder.load(vec_at(src, builder.add(row, builder.mul(const(i), pix))),
                                                 align=itemsize)
                                for q in fed:
                                    for p, kw in users:
                                        acc = accs[q][p]
                                        builder.store(builder.call(fmuladd, [x, ws[q][kw], builder.load(acc)]), acc)

                    feeds = [builder.icmp_signed(">=", w_row[q], const(0)) for q in range(n_rows)]
                    if n_rows == 1:
                        with builder.if_then(feeds[0]):  # a source row that the output row does not read: skipped
                            body((0,))
                    else:
                        with builder.if_else(builder.and_(*feeds)) as (both, one):
                            with both:
                                body((0, 1))
                            with one:
                                with builder.if_else(feeds[0]) as (first, other):
                                    with first:
                                        body((0,))
                                    with other:
                                        with builder.if_then(feeds[1]):  # a source row that neither reads: skipped
                                            body((1,))
                for q in range(n_rows):
                    for p in range(LP):
                        at = vec_at(out, builder.add(d_p[q][p], shift))
                        builder.store(builder.fadd(builder.load(vec_at(base, shift), align=itemsize),
                                                   builder.load(accs[q][p])), at, align=itemsize)

    done = fn.append_basic_block("done")
    cases = {pair: fn.append_basic_block(f"window{pair[0]}s{pair[1]}") for pair in WINDOWS}
    switch = builder.switch(builder.add(builder.mul(k_w, const(16)), sw), done)
    for (kw_n, sw_n), block in cases.items():
        switch.add_case(const(kw_n * 16 + sw_n), block)
        builder.position_at_end(block)
        n_i = (LP - 1) * sw_n + kw_n
        inside = [builder.and_(builder.icmp_signed("<=", i_lo, const(i)), builder.icmp_signed(">", i_hi, const(i)))
                  for i in range(n_i)]
        every = builder.and_(builder.icmp_signed("<=", i_lo, const(0)), builder.icmp_signed(">=", i_hi, const(n_i)))
        with builder.if_else(builder.icmp_signed(">", n_out, const(1))) as (two, single):
            for n_rows, branch in ((2, two), (1, single)):
                with branch:
                    with builder.if_else(every) as (whole, part):
                        with whole:
                            tiles(kw_n, sw_n, None, n_rows)
                        with part:
                            tiles(kw_n, sw_n, inside, n_rows)
        builder.branch(done)
    builder.position_at_end(done)
    builder.ret_void()
    return fn


def _define_pixel(module, elem):
    """micro_pixel_into as a function of its own: per block and vector of its lanes, four accumulators (taps s mod 4,
    so that four multiply-adds are in flight), added pairwise at the end, plus the base."""
    vec, fmuladd, zero, vl, itemsize = _vector_ops(module, elem)
    i64 = ir.IntType(64)
    ptr, iptr = elem.as_pointer(), i64.as_pointer()
    fn, builder = _new_function(module, f"nbconv_micro_pixel_{LB}_f{itemsize * 8}_v{vl}",
                                [ptr, iptr, iptr, i64, ptr, i64, i64, ptr, i64, ptr, i64])
    if builder is None:
        return fn
    src, c, wi, n, v_first, v_stride, v_block, out, d, base, n_blocks = fn.args
    n_vec = LB // vl
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(4)] for _ in range(n_vec)]

    def vec_at(data, index):
        return builder.bitcast(builder.gep(data, [index]), vec.as_pointer())

    def const(value):
        return ir.Constant(i64, value)

    def taps(s, parts):  # the multiply-adds of tap s into partial sums `parts` (one per vector)
        at = builder.load(builder.gep(c, [s]))
        w_row = builder.mul(builder.load(builder.gep(wi, [s])), v_stride)
        for j in range(n_vec):
            x = builder.load(vec_at(src, builder.add(builder.add(at, lane0), const(j * vl))), align=itemsize)
            w = builder.load(vec_at(v, builder.add(w_row, const(j * vl))), align=itemsize)
            builder.store(builder.call(fmuladd, [x, w, builder.load(parts[j])]), parts[j])

    with cgutils.for_range(builder, n_blocks) as blk:
        v = builder.gep(v_first, [builder.mul(blk.index, v_block)])
        lane0 = builder.mul(blk.index, const(LB))
        for j in range(n_vec):
            for acc in accs[j]:
                builder.store(zero, acc)
        quads = builder.udiv(n, const(4))
        with cgutils.for_range(builder, quads) as loop:
            for r in range(4):
                taps(builder.add(builder.mul(loop.index, const(4)), const(r)), [accs[j][r] for j in range(n_vec)])
        rest = builder.sub(n, builder.mul(quads, const(4)))
        for r in range(3):  # the last n % 4 taps, tap s into partial sum s % 4
            with builder.if_then(builder.icmp_unsigned(">", rest, const(r))):
                taps(builder.add(builder.mul(quads, const(4)), const(r)), [accs[j][r] for j in range(n_vec)])
        for j in range(n_vec):
            parts = [builder.load(acc) for acc in accs[j]]
            total = builder.fadd(builder.fadd(parts[0], parts[1]), builder.fadd(parts[2], parts[3]))
            at = builder.add(builder.add(d, lane0), const(j * vl))
            b = builder.load(vec_at(base, builder.add(lane0, const(j * vl))), align=itemsize)
            builder.store(builder.fadd(b, total), vec_at(out, at), align=itemsize)
    builder.ret_void()
    return fn


def _emit_pixel(context, builder, sig, args):
    """Call micro_pixel_into's function (defined once per module) on the operands' data pointers."""
    i64 = ir.IntType(64)
    names = ("src", "c", "wi", "n", "v", "out", "d", "base")
    typ, val, arr = _operands(context, builder, sig, args, names)
    itemsize = context.get_abi_sizeof(context.get_value_type(typ["src"].dtype))

    def row_stride(axis):
        return builder.sdiv(cgutils.unpack_tuple(builder, arr["v"].strides, 3)[axis], ir.Constant(i64, itemsize))

    fn = _define_pixel(builder.module, context.get_value_type(typ["src"].dtype))
    n, d = (context.cast(builder, val[k], typ[k], types.intp) for k in ("n", "d"))
    builder.call(fn, [arr["src"].data, arr["c"].data, arr["wi"].data, n, arr["v"].data, row_stride(1), row_stride(0),
                      arr["out"].data, d, arr["base"].data, cgutils.unpack_tuple(builder, arr["v"].shape, 3)[0]])
    return context.get_dummy_value()

def _emit_window(context, builder, sig, args):
    """Call micro_window_into's function (defined once per module) on the operands' data pointers."""
    i64 = ir.IntType(64)
    names = ("src", "a0", "rows", "w_rows", "pix", "v", "out", "d", "base", "k_w", "sw", "i_lo", "i_hi")
    typ, val, arr = _operands(context, builder, sig, args, names)
    itemsize = context.get_abi_sizeof(context.get_value_type(typ["src"].dtype))

    def integer(name):
        return context.cast(builder, val[name], typ[name], types.intp)

    def row_stride(axis):
        return builder.sdiv(cgutils.unpack_tuple(builder, arr["v"].strides, 3)[axis], ir.Constant(i64, itemsize))

    def step(name, axis):  # w_rows and d may be views: their steps in elements (8 bytes each)
        return builder.sdiv(cgutils.unpack_tuple(builder, arr[name].strides, 2)[axis], ir.Constant(i64, 8))

    n_u = cgutils.unpack_tuple(builder, arr["rows"].shape, 1)[0]
    n_out = cgutils.unpack_tuple(builder, arr["d"].shape, 2)[0]
    n_blocks = cgutils.unpack_tuple(builder, arr["v"].shape, 3)[0]
    fn = _define_window(builder.module, context.get_value_type(typ["src"].dtype))
    builder.call(fn, [arr["src"].data, integer("a0"), arr["rows"].data, n_u, integer("pix"), arr["v"].data,
                      row_stride(1), arr["w_rows"].data, step("w_rows", 0), step("w_rows", 1), n_out, arr["out"].data,
                      arr["d"].data, step("d", 0), arr["base"].data, n_blocks, row_stride(0), integer("k_w"),
                      integer("sw"), integer("i_lo"), integer("i_hi")])
    return context.get_dummy_value()


def _check_float(*arrays):
    if arrays[0].dtype not in (types.float32, types.float64) or any(a.dtype != arrays[0].dtype for a in arrays):
        raise TypeError(f"nbconv micro tile: operands of one float dtype expected, got {arrays}")


@intrinsic
def _tile_ir(typingctx, src, a, c, v, tile, lanes):
    _check_float(src, v, tile)
    return (types.void(src, a, c, v, tile, lanes),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, "tile"))


@intrinsic
def _groups_ir(typingctx, src, a, shift, c, v, tile, lanes, cg):
    _check_float(src, v, tile)
    return (types.void(src, a, shift, c, v, tile, lanes, cg),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, "groups"))


@intrinsic
def _lanes_ir(typingctx, src, a, c, v, v0, v_step, tile):
    _check_float(src, v, tile)
    return (types.void(src, a, c, v, v0, v_step, tile),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, "lanes"))


@intrinsic
def _lanes_into_ir(typingctx, src, a, c, v, v0, v_step, dst, d, base, add):
    _check_float(src, v, dst, base)
    return (types.void(src, a, c, v, v0, v_step, dst, d, base, add),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, "lanes_into"))


@intrinsic
def _tile_wide_ir(typingctx, src, a, c, v, tile, lanes):
    _check_float(src, v, tile)
    return (types.void(src, a, c, v, tile, lanes),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, "tile_wide"))


@overload(micro_tile)
def _micro_tile_jit(src, a, c, v, tile, lanes):
    return lambda src, a, c, v, tile, lanes: _tile_ir(src, a, c, v, tile, lanes)


@overload(micro_tile_wide)
def _micro_tile_wide_jit(src, a, c, v, tile, lanes):
    return lambda src, a, c, v, tile, lanes: _tile_wide_ir(src, a, c, v, tile, lanes)


@overload(micro_groups)
def _micro_groups_jit(src, a, shift, c, v, tile, lanes, cg):
    return lambda src, a, shift, c, v, tile, lanes, cg: _groups_ir(src, a, shift, c, v, tile, lanes, cg)


@intrinsic
def _tile_into_ir(typingctx, src, a, c, v, dst, d, base, add):
    _check_float(src, v, dst, base)
    return (types.void(src, a, c, v, dst, d, base, add),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, "tile_into"))


@intrinsic
def _tile_into_wide_ir(typingctx, src, a, c, v, dst, d, base, add):
    _check_float(src, v, dst, base)
    return (types.void(src, a, c, v, dst, d, base, add),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, "tile_into_wide"))


@overload(micro_tile_into)
def _micro_tile_into_jit(src, a, c, v, dst, d, base, add):
    return lambda src, a, c, v, dst, d, base, add: _tile_into_ir(src, a, c, v, dst, d, base, add)


@overload(micro_tile_into_wide)
def _micro_tile_into_wide_jit(src, a, c, v, dst, d, base, add):
    return lambda src, a, c, v, dst, d, base, add: _tile_into_wide_ir(src, a, c, v, dst, d, base, add)


@overload(micro_lanes)
def _micro_lanes_jit(src, a, c, v, v0, v_step, tile):
    return lambda src, a, c, v, v0, v_step, tile: _lanes_ir(src, a, c, v, v0, v_step, tile)


@intrinsic
def _rotated_ir(typingctx, src, a, c, v, v0, v_step, tile, cg):
    _check_float(src, v, tile)
    return (types.void(src, a, c, v, v0, v_step, tile, cg),
            lambda ctx, b, sig, args: _emit_rotated(ctx, b, sig, args))


@overload(micro_columns)
def _micro_columns_jit(src, a, c, v, taps, tile):
    return lambda src, a, c, v, taps, tile: _columns_ir(src, a, c, v, taps, tile)


@overload(micro_grad_window)
def _micro_grad_window_jit(src, rows, pix, gy, g0, g_step, n, k_w, tile):
    return lambda src, rows, pix, gy, g0, g_step, n, k_w, tile: _grad_window_ir(src, rows, pix, gy, g0, g_step, n,
                                                                                 k_w, tile)


@overload(micro_rotated)
def _micro_rotated_jit(src, a, c, v, v0, v_step, tile, cg):
    return lambda src, a, c, v, v0, v_step, tile, cg: _rotated_ir(src, a, c, v, v0, v_step, tile, cg)


@overload(micro_lanes_into)
def _micro_lanes_into_jit(src, a, c, v, v0, v_step, dst, d, base, add):
    return lambda src, a, c, v, v0, v_step, dst, d, base, add: _lanes_into_ir(src, a, c, v, v0, v_step, dst, d, base,
                                                                              add)


@intrinsic
def _window_ir(typingctx, src, a0, rows, w_rows, pix, v, dst, d, base, k_w, sw, i_lo, i_hi):
    _check_float(src, v, dst, base)
    if not (w_rows.ndim == 2 and w_rows.dtype == types.int64 and d.ndim == 2 and d.dtype == types.uint64):
        raise TypeError(f"micro_window_into: w_rows (U, n) int64 and d (n, LP) uint64 expected, got {w_rows}, {d}")
    return (types.void(src, a0, rows, w_rows, pix, v, dst, d, base, k_w, sw, i_lo, i_hi),
            lambda ctx, b, sig, args: _emit_window(ctx, b, sig, args))


@overload(micro_window_into)
def _micro_window_into_jit(src, a0, rows, w_rows, pix, v, dst, d, base, k_w, sw, i_lo, i_hi):
    return lambda src, a0, rows, w_rows, pix, v, dst, d, base, k_w, sw, i_lo, i_hi: _window_ir(
        src, a0, rows, w_rows, pix, v, dst, d, base, k_w, sw, i_lo, i_hi)


@intrinsic
def _pixel_ir(typingctx, src, c, wi, n, v, dst, d, base):
    _check_float(src, v, dst, base)
    return (types.void(src, c, wi, n, v, dst, d, base), lambda ctx, b, sig, args: _emit_pixel(ctx, b, sig, args))


@overload(micro_pixel_into)
def _micro_pixel_into_jit(src, c, wi, n, v, dst, d, base):
    return lambda src, c, wi, n, v, dst, d, base: _pixel_ir(src, c, wi, n, v, dst, d, base)
