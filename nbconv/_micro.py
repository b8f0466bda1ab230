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
than that budget (float64), the lanes are covered in several passes over the reduction.
`micro_lanes*` serve the depthwise kernels, whose lanes are channels: they use LB = 16 lanes.
"""
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
LB = 16                              # lanes of the depthwise tiles (channels); rows: P
_ACCUMULATORS = 16 if WIDE else 10   # vector registers one reduction pass may hold


# ---------------------------------------------------------------- plain bodies (NUMBA_DISABLE_JIT=1)

def micro_tile(src, a, c, v, tile):
    """tile[p, b] = sum_s src[a[p] + c[s]] * v[s, b] for p < P, b < B; src flat, a and c unsigned, v (len(c), >= B)
    C-contiguous rows."""
    n = c.shape[0]
    tile[:, :] = src[a[:P, None] + c[None, :]] @ v[:n, :B]


def micro_lanes(src, a, c, v, v0, v_step, tile):
    """tile[p, b] = sum_s src[a[p] + c[s] + b] * v[v0 + s*v_step, b] for p < P, b < LB; src flat, a and c unsigned,
    v C-contiguous rows of >= LB."""
    lanes = np.arange(LB, dtype=np.uint64)
    rows = v[v0 + np.arange(c.shape[0]) * v_step, :LB]
    tile[:, :] = (src[a[:P, None, None] + c[None, :, None] + lanes] * rows).sum(axis=1)


def micro_lanes_add(src, a, c, v, v0, v_step, dst, d):
    """dst[d[p] + b] += sum_s src[a[p] + c[s] + b] * v[v0 + s*v_step, b] for p < P, b < LB; src, dst flat, a, c, d
    unsigned, the P rows of dst distinct, v C-contiguous rows of >= LB."""
    tile = np.empty((P, LB), dtype=dst.dtype)
    micro_lanes(src, a, c, v, v0, v_step, tile)
    for p in range(P):
        dst[d[p]:d[p] + LB] += tile[p]


# ---------------------------------------------------------------- LLVM code

def _emit(context, builder, sig, args, lanes_src, n_lanes, accumulate):
    """Emit the tile loop: for s < len(c): acc[p][j] = fmuladd(x(p, s, j), v row (v0 + s*v_step) vector j,
    acc[p][j]); then store acc into tile rows (or add it to dst at d[p]). x is src[a[p] + c[s]] broadcast, or
    with `lanes_src` the vector src[a[p] + c[s] + j*VL ...]."""
    src_t, a_t, c_t, v_t = sig.args[:4]
    src_a, a_a, c_a, v_a = (context.make_array(t)(context, builder, x) for t, x in zip(sig.args[:4], args[:4]))
    if len(args) == 5:  # micro_tile: v rows 0, 1, 2, ...; out = tile
        v0, v_step = context.get_constant(types.intp, 0), context.get_constant(types.intp, 1)
        out_t, out_v = sig.args[4], args[4]
    else:
        v0 = context.cast(builder, args[4], sig.args[4], types.intp)
        v_step = context.cast(builder, args[5], sig.args[5], types.intp)
        out_t, out_v = sig.args[6], args[6]
    out_a = context.make_array(out_t)(context, builder, out_v)
    d_a = context.make_array(sig.args[7])(context, builder, args[7]) if accumulate else None

    elem = context.get_value_type(src_t.dtype)
    itemsize = context.get_abi_sizeof(elem)
    vl = VECTOR_BYTES // itemsize
    vec = ir.VectorType(elem, vl)
    i64 = ir.IntType(64)
    fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fmuladd.v{vl}{'f32' if itemsize == 4 else 'f64'}")
    zero = ir.Constant(vec, [0.0] * vl)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), vl), [0] * vl)
    n_vec = n_lanes // vl
    per_pass = max(1, min(n_vec, _ACCUMULATORS // P))

    def load_index(arr, i):
        return builder.load(builder.gep(arr.data, [ir.Constant(i64, i)]))

    def vec_at(data, index, j):  # pointer to the vector at element index + j*vl of a flat buffer
        return builder.bitcast(builder.gep(data, [builder.add(index, ir.Constant(i64, j * vl))]), vec.as_pointer())

    row_stride_v = builder.sdiv(cgutils.unpack_tuple(builder, v_a.strides, v_t.ndim)[0], ir.Constant(i64, itemsize))
    n_red = cgutils.unpack_tuple(builder, c_a.shape, 1)[0]
    bases = [load_index(a_a, p) for p in range(P)]
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(per_pass)] for _ in range(P)]
    for j0 in range(0, n_vec, per_pass):
        js = range(j0, min(n_vec, j0 + per_pass))
        for p in range(P):
            for k, _ in enumerate(js):
                builder.store(zero, accs[p][k])
        with cgutils.for_range(builder, n_red) as loop:
            s = loop.index
            cs = builder.load(builder.gep(c_a.data, [s]))
            row = builder.add(v0, builder.mul(s, v_step))
            v_row = builder.mul(row, row_stride_v)
            ws = [builder.load(vec_at(v_a.data, v_row, j), align=itemsize) for j in js]
            for p in range(P):
                at = builder.add(bases[p], cs)
                if not lanes_src:
                    x = builder.load(builder.gep(src_a.data, [at]))
                    xv = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), x,
                                                                      ir.Constant(ir.IntType(32), 0)),
                                                ir.Constant(vec, ir.Undefined), splat)
                for k, j in enumerate(js):
                    if lanes_src:
                        xv = builder.load(vec_at(src_a.data, at, j), align=itemsize)
                    builder.store(builder.call(fmuladd, [xv, ws[k], builder.load(accs[p][k])]), accs[p][k])
        for p in range(P):
            if accumulate:
                d_p = load_index(d_a, p)
            else:
                out_strides = cgutils.unpack_tuple(builder, out_a.strides, 2)
                d_p = builder.mul(ir.Constant(i64, p), builder.sdiv(out_strides[0], ir.Constant(i64, itemsize)))
            for k, j in enumerate(js):
                ptr = vec_at(out_a.data, d_p, j)
                acc = builder.load(accs[p][k])
                if accumulate:
                    acc = builder.fadd(builder.load(ptr, align=itemsize), acc)
                builder.store(acc, ptr, align=itemsize)
    return context.get_dummy_value()


def _check_float(*arrays):
    if arrays[0].dtype not in (types.float32, types.float64) or any(a.dtype != arrays[0].dtype for a in arrays):
        raise TypeError(f"nbconv micro tile: operands of one float dtype expected, got {arrays}")


@intrinsic
def _tile_ir(typingctx, src, a, c, v, tile):
    _check_float(src, v, tile)
    return types.void(src, a, c, v, tile), lambda ctx, b, sig, args: _emit(ctx, b, sig, args, False, B, False)


@intrinsic
def _lanes_ir(typingctx, src, a, c, v, v0, v_step, tile):
    _check_float(src, v, tile)
    return (types.void(src, a, c, v, v0, v_step, tile),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, True, LB, False))


@intrinsic
def _lanes_add_ir(typingctx, src, a, c, v, v0, v_step, dst, d):
    _check_float(src, v, dst)
    return (types.void(src, a, c, v, v0, v_step, dst, d),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, True, LB, True))


@overload(micro_tile)
def _micro_tile_jit(src, a, c, v, tile):
    return lambda src, a, c, v, tile: _tile_ir(src, a, c, v, tile)


@overload(micro_lanes)
def _micro_lanes_jit(src, a, c, v, v0, v_step, tile):
    return lambda src, a, c, v, v0, v_step, tile: _lanes_ir(src, a, c, v, v0, v_step, tile)


@overload(micro_lanes_add)
def _micro_lanes_add_jit(src, a, c, v, v0, v_step, dst, d):
    return lambda src, a, c, v, v0, v_step, dst, d: _lanes_add_ir(src, a, c, v, v0, v_step, dst, d)
