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
`micro_lanes*` serve the depthwise kernels, whose lanes are channels: LP x LB = 5 x 16 on every target
(each multiply-add reads its own source vector, so more rows would not save loads; fewer rows leave fewer
output columns to the kernels' scalar edge loops).
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
LP, LB = 5, 16                       # depthwise tiles: rows (output columns) x lanes (channels)
_ACCUMULATORS = 16 if WIDE else 10   # vector registers one reduction pass may hold


# ---------------------------------------------------------------- plain bodies (NUMBA_DISABLE_JIT=1)

def micro_tile(src, a, c, v, tile, lanes):
    """tile[p, b] = sum_s src[a[p] + c[s]] * v[s, b] for p < P, b < lanes <= B (the other lanes of tile: unspecified);
    src flat, a and c unsigned, v (len(c), >= B) C-contiguous rows."""
    n = c.shape[0]
    tile[:, :lanes] = src[a[:P, None] + c[None, :]] @ v[:n, :lanes]


def micro_lanes(src, a, c, v, v0, v_step, tile):
    """tile[p, b] = sum_s src[a[p] + c[s] + b] * v[v0 + s*v_step, b] for p < LP, b < LB; src flat, a and c unsigned,
    v C-contiguous rows of >= LB."""
    lanes = np.arange(LB, dtype=np.uint64)
    rows = v[v0 + np.arange(c.shape[0]) * v_step, :LB]
    tile[:, :] = (src[a[:LP, None, None] + c[None, :, None] + lanes] * rows).sum(axis=1)


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


# ---------------------------------------------------------------- LLVM code

def _emit(context, builder, sig, args, lanes_src, n_rows, n_lanes, accumulate):
    """Call the tile function (defined once per module by `_define`) on the operands' data pointers."""
    arrays = [context.make_array(t)(context, builder, x) if isinstance(t, types.Array) else x
              for t, x in zip(sig.args, args)]
    src_a, a_a, c_a, v_a = arrays[:4]
    i64 = ir.IntType(64)
    used = ir.Constant(i64, n_lanes)
    if len(args) == 6:  # micro_tile: v rows 0, 1, 2, ...; out = tile; the lanes it needs
        v0, v_step, out_i = ir.Constant(i64, 0), ir.Constant(i64, 1), 4
        used = context.cast(builder, args[5], sig.args[5], types.intp)
    else:
        v0 = context.cast(builder, args[4], sig.args[4], types.intp)
        v_step = context.cast(builder, args[5], sig.args[5], types.intp)
        out_i = 6
    out_a = arrays[out_i]
    itemsize = context.get_abi_sizeof(context.get_value_type(sig.args[0].dtype))

    def row_stride(arr, ndim, axis=0):  # elements between steps along `axis`
        return builder.sdiv(cgutils.unpack_tuple(builder, arr.strides, ndim)[axis], ir.Constant(i64, itemsize))

    out_stride = ir.Constant(i64, 0) if accumulate else row_stride(out_a, 2)
    d = arrays[7].data if accumulate else ir.Constant(a_a.data.type, None)
    base = arrays[8].data if accumulate else ir.Constant(out_a.data.type, None)
    add = (context.cast(builder, args[9], sig.args[9], types.boolean) if accumulate
           else ir.Constant(ir.IntType(1), 0))
    if accumulate:  # v is (blocks, rows, lanes)
        n_blocks = cgutils.unpack_tuple(builder, v_a.shape, 3)[0]
        v_block, v_row = row_stride(v_a, 3, 0), row_stride(v_a, 3, 1)
    else:
        n_blocks, v_block, v_row = ir.Constant(i64, 1), ir.Constant(i64, 0), row_stride(v_a, sig.args[3].ndim)
    fn = _define(builder.module, context.get_value_type(sig.args[0].dtype), lanes_src, n_rows, n_lanes, accumulate)
    builder.call(fn, [src_a.data, a_a.data, c_a.data, cgutils.unpack_tuple(builder, c_a.shape, 1)[0], v_a.data,
                      v_row, v0, v_step, out_a.data, out_stride, d, base, add, n_blocks, v_block, used])
    return context.get_dummy_value()


def _define(module, elem, lanes_src, n_rows, n_lanes, accumulate):
    """The tile loop as a function of its own (noinline: inside it, every general register is free for the n_rows
    row addresses): for p < n_rows, s < n: acc[p][j] = fmuladd(x(p, s, j), vector j of v row (v0 + s*v_step),
    acc[p][j]); then out rows p = acc[p], or (`accumulate`) dst at d[p] = (dst there if add else base) + acc[p].
    x is src[a[p] + c[s]] broadcast, or with `lanes_src` the vector at src[a[p] + c[s] + j*VL]. All of it once per block k < n_blocks,
    with src, dst and base shifted by k*n_lanes and v by k*v_block (n_blocks is 1 but for micro_lanes_into); only
    the vectors j holding the first `used` lanes are computed and stored."""
    itemsize = 4 if isinstance(elem, ir.FloatType) else 8
    vl = VECTOR_BYTES // itemsize
    name = f"nbconv_micro_{'lanes' if lanes_src else 'tile'}{'_into' if accumulate else ''}_{n_rows}x{n_lanes}_f{itemsize * 8}_v{vl}"
    if name in module.globals:
        return module.globals[name]
    i64 = ir.IntType(64)
    ptr, iptr = elem.as_pointer(), i64.as_pointer()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, iptr, iptr, i64, ptr, i64, i64, i64, ptr, i64, iptr,
                                                              ptr, ir.IntType(1), i64, i64, i64]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    fn.attributes.add("nounwind")
    src, a, c, n_red, v_first, v_stride, v0, v_step, out, out_stride, d, base, add, n_blocks, v_block, used = fn.args
    builder = ir.IRBuilder(fn.append_basic_block("entry"))

    vec = ir.VectorType(elem, vl)
    fmuladd = cgutils.get_or_insert_function(module, ir.FunctionType(vec, [vec] * 3),
                                             f"llvm.fmuladd.v{vl}{'f32' if itemsize == 4 else 'f64'}")
    zero = ir.Constant(vec, [0.0] * vl)
    splat = ir.Constant(ir.VectorType(ir.IntType(32), vl), [0] * vl)
    n_vec = n_lanes // vl
    per_pass = max(1, min(n_vec, _ACCUMULATORS // n_rows))

    def vec_at(data, index, j):  # pointer to the vector at element index + j*vl of a flat buffer
        return builder.bitcast(builder.gep(data, [builder.add(index, ir.Constant(i64, j * vl))]), vec.as_pointer())

    bases = [builder.load(builder.gep(a, [ir.Constant(i64, p)])) for p in range(n_rows)]
    accs = [[cgutils.alloca_once(builder, vec) for _ in range(per_pass)] for _ in range(n_rows)]
    block_loop = cgutils.for_range(builder, n_blocks)  # blocks of n_lanes lanes (one, but for micro_lanes_into)
    with block_loop as blk:
        shift = builder.mul(blk.index, ir.Constant(i64, n_lanes))
        v = builder.gep(v_first, [builder.mul(blk.index, v_block)])
        rows = [builder.add(b_p, shift) for b_p in bases]

        def passes(m):  # the first m vectors of the tile, per_pass of them per pass over the reduction
            for j0 in range(0, m, per_pass):
                js = range(j0, min(m, j0 + per_pass))
                for p in range(n_rows):
                    for k, _ in enumerate(js):
                        builder.store(zero, accs[p][k])
                with cgutils.for_range(builder, n_red) as loop:
                    s = loop.index
                    cs = builder.load(builder.gep(c, [s]))
                    v_row = builder.mul(builder.add(v0, builder.mul(s, v_step)), v_stride)
                    ws = [builder.load(vec_at(v, v_row, j), align=itemsize) for j in js]
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
                            builder.store(builder.call(fmuladd, [xv, ws[k], builder.load(accs[p][k])]), accs[p][k])
                for p in range(n_rows):
                    if accumulate:
                        d_p = builder.add(builder.load(builder.gep(d, [ir.Constant(i64, p)])), shift)
                    else:
                        d_p = builder.mul(ir.Constant(i64, p), out_stride)
                    for k, j in enumerate(js):
                        at = vec_at(out, d_p, j)
                        acc = builder.load(accs[p][k])
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


def _check_float(*arrays):
    if arrays[0].dtype not in (types.float32, types.float64) or any(a.dtype != arrays[0].dtype for a in arrays):
        raise TypeError(f"nbconv micro tile: operands of one float dtype expected, got {arrays}")


@intrinsic
def _tile_ir(typingctx, src, a, c, v, tile, lanes):
    _check_float(src, v, tile)
    return (types.void(src, a, c, v, tile, lanes),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, False, P, B, False))


@intrinsic
def _lanes_ir(typingctx, src, a, c, v, v0, v_step, tile):
    _check_float(src, v, tile)
    return (types.void(src, a, c, v, v0, v_step, tile),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, True, LP, LB, False))


@intrinsic
def _lanes_into_ir(typingctx, src, a, c, v, v0, v_step, dst, d, base, add):
    _check_float(src, v, dst, base)
    return (types.void(src, a, c, v, v0, v_step, dst, d, base, add),
            lambda ctx, b, sig, args: _emit(ctx, b, sig, args, True, LP, LB, True))


@overload(micro_tile)
def _micro_tile_jit(src, a, c, v, tile, lanes):
    return lambda src, a, c, v, tile, lanes: _tile_ir(src, a, c, v, tile, lanes)


@overload(micro_lanes)
def _micro_lanes_jit(src, a, c, v, v0, v_step, tile):
    return lambda src, a, c, v, v0, v_step, tile: _lanes_ir(src, a, c, v, v0, v_step, tile)


@overload(micro_lanes_into)
def _micro_lanes_into_jit(src, a, c, v, v0, v_step, dst, d, base, add):
    return lambda src, a, c, v, v0, v_step, dst, d, base, add: _lanes_into_ir(src, a, c, v, v0, v_step, dst, d, base,
                                                                              add)
