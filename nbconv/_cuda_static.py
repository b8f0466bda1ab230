"""Static check of nbconv's CUDA kernels for real GPUs, without a GPU.

``python -m nbconv._cuda_static [--json PATH] [--jobs N] [--arch sm_80 --arch sm_90]``

1. Records every kernel launch that real calls make: the public functions run on numba device
   arrays whose memory is fake (never touched), with allocation, host-to-device copies and the
   launch itself replaced by recorders (:func:`recorded_launches`). The calls (:data:`SCENARIOS`)
   cover every path of nbconv/_cuda.py: implicit-GEMM forward / input gradient (sub-pixel phases,
   folds of padded gradients) / weight gradient (one and several chunks) with zero padding and with
   the other modes, narrow and wide tiles, 32- and 64-bit indices, the direct kernels (depthwise,
   few channels per group), layout copies, fills and sums, in float32 and float64. What is recorded is
   each kernel with the argument types numba would compile it for, and its block size.
2. Compiles each (kernel, argument types) as a launch would (the dispatcher's options; numba types
   and lowers it once) and NVVM turns it into PTX for each architecture (no driver); ``ptxas -v``
   assembles that (registers, spill stores/loads, stack frame, shared memory) and ``nvdisasm``
   disassembles the cubin (SASS). The work is spread over processes (``--jobs``, default: the CPUs),
   the GEMM kernels that share an unrolled device function in one process, largest units first.
3. Measures the instruction mix: the main loop is the innermost loop (a backward branch's range in
   the SASS) that holds fused multiply-adds; its FMA share is FFMA + DFMA over its instructions.
   Occupancy is computed from registers, shared memory and the block size with the architecture's
   limits (:func:`occupancy`).

Needs numba-cuda with the CUDA toolkit wheels (``pip install "numba-cuda[cu12]"
nvidia-cuda-nvdisasm``: nbconv's ``test`` and ``cuda-static`` extras); run it with NUMBA_ENABLE_CUDASIM
unset or 0. tests/test_cuda_static.py runs it and asserts the targets (about 4 CPU-minutes: 2 minutes
on 2 cores).
"""
import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from collections import Counter

import numpy as np

ARCHS = ("sm_80", "sm_90")
# Per-SM limits for occupancy: registers, shared memory (bytes), threads, blocks, and the shared memory
# the driver reserves per block.
LIMITS = {"sm_80": dict(regs=65536, smem=167936, threads=2048, blocks=32, reserved=1024),
          "sm_90": dict(regs=65536, smem=233472, threads=2048, blocks=32, reserved=1024)}
FMA_OPS = ("FFMA", "DFMA")


# ---------------------------------------------------------------- the toolkit

def _nvidia_dirs():
    try:
        import nvidia
        return list(nvidia.__path__)
    except ImportError:
        return []


def find_tool(name):
    """Path of a CUDA toolkit binary (ptxas, nvdisasm): the pip wheels (nvidia/*/bin), CUDA_HOME/bin, or PATH."""
    candidates = []
    for root in _nvidia_dirs():
        candidates += sorted(glob.glob(os.path.join(root, "*", "bin", name)))
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", name))
    candidates = [c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)]
    return candidates[0] if candidates else shutil.which(name)


def missing():
    """Why the check cannot run here (None when it can)."""
    try:
        import numba_cuda  # noqa: F401  (the maintained CUDA target; numba's own is deprecated)
    except ImportError:
        return "numba-cuda is not installed (pip install -e '.[test]', or 'numba-cuda[cu12]' nvidia-cuda-nvdisasm)"
    for tool in ("ptxas", "nvdisasm"):
        if find_tool(tool) is None:
            return f"{tool} not found (pip install 'numba-cuda[cu12]' nvidia-cuda-nvdisasm)"
    return None


# ---------------------------------------------------------------- recording launches

class FakePointer:
    """Device memory that is never touched: what numba's device arrays ask of a MemoryPointer while they
    are reshaped, viewed and typed."""

    context = None   # no device: nbconv's placement enters no device context

    def __init__(self, size, address=1 << 40):
        self.size = size
        self.address = address
        self.device_ctypes_pointer = address

    def view(self, start, stop=None):
        return FakePointer((self.size if stop is None else stop) - start, self.address + start)


def fake_array(shape, dtype, strides=None):
    """A numba DeviceNDArray of `shape` and `dtype` (C-contiguous unless `strides`) on fake memory."""
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    dtype, shape = np.dtype(dtype), tuple(int(n) for n in shape)
    if strides is None:
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.insert(0, step)
            step *= max(n, 1)
    size = dtype.itemsize * max(1, int(np.prod(shape)))
    return DeviceNDArray(shape, tuple(strides), dtype, stream=0, gpu_data=FakePointer(size))


class Launch:
    """One recorded kernel: its dispatcher, argument types and the largest block it was launched with."""

    def __init__(self, dispatcher, argtypes, block):
        self.dispatcher = dispatcher
        self.argtypes = argtypes
        self.threads = block

    @property
    def label(self):
        """The kernel's name: nbconv's label (dtype, tile, index width, padding class), else its function's
        name with the dtypes of its arrays; ",strided" when it reads arrays of any layout."""
        d = self.dispatcher
        arrays = [t for t in self.argtypes if hasattr(t, "dtype") and hasattr(t, "layout")]
        strided = ",strided" if any(t.layout == "A" for t in arrays) else ""
        if hasattr(d, "nbconv_label"):
            return d.nbconv_label[:-1] + strided + "]" if strided else d.nbconv_label
        dtypes = list(dict.fromkeys(str(t.dtype) for t in arrays))
        return f"direct.{d.py_func.__name__}[{','.join(dtypes)}{strided}]"


@contextlib.contextmanager
def recorded_launches():
    """Inside: nbconv's CUDA backend runs on fake arrays and records (instead of launching) every kernel;
    yields the dict of Launch by (dispatcher, argument types)."""
    import numba
    import numba.cuda.dispatcher as dispatcher
    from numba.cuda.cudadrv.devicearray import DeviceNDArray

    from . import _cuda, _cuda_launch
    if numba.config.ENABLE_CUDASIM:
        raise RuntimeError("the static check needs numba's CUDA target: unset NUMBA_ENABLE_CUDASIM")
    records = {}

    def record(config, *args):
        d = config.dispatcher
        argtypes = tuple(d.typeof_pyval(a) for a in args)
        threads = int(np.prod(config.blockdim))
        key = (id(d), argtypes)
        if key in records:
            records[key].threads = max(records[key].threads, threads)
        else:
            records[key] = Launch(d, argtypes, threads)

    def copy_to_device(self, host, stream=0):
        pass

    patches = [(dispatcher._LaunchConfiguration, "__call__", record),
               (dispatcher, "get_current_device", lambda: types.SimpleNamespace(compute_capability=(8, 0))),
               (_cuda_launch, "empty", lambda shape, dtype, stream: fake_array(shape, dtype)),
               (_cuda_launch, "default_stream", lambda: 0),
               (DeviceNDArray, "copy_to_device", copy_to_device),
               (numba.config, "CUDA_LOW_OCCUPANCY_WARNINGS", 0)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, value in patches:
            setattr(obj, name, value)
        yield records
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        _cuda  # noqa: B018  (imported for its kernels)


def _scenarios(dtype):
    """The calls whose launches the check compiles, for one dtype (see the module docstring)."""
    import nbconv
    from nbconv import _cuda_gemm as gemm
    f = lambda *shape, strides=None: fake_array(shape, dtype, strides)  # noqa: E731
    x2, x3 = f(2, 12, 12, 96), f(1, 6, 7, 8, 16)
    # forward: zero padding on wide (64+ columns) and narrow tiles; reflect padding
    nbconv.conv2d(x2, f(3, 3, 96, 128), padding=1)
    nbconv.conv2d(x2, f(3, 3, 96, 16), padding=1, stride=2)
    nbconv.conv2d(x2, f(3, 3, 96, 16), padding=1, padding_mode="reflect")
    # input gradient by phases (stride 2), uncovered phases (stride 3 > kernel 2: a fill), folds (circular),
    # transposed convolution with bias; weight gradients with zero padding and other modes, several chunks
    for kernel, stride, mode, c_out in (((3, 3), 2, "zeros", 128), ((2, 2), 3, "zeros", 16),
                                        ((3, 3), 1, "circular", 96), ((3, 3), 1, "replicate", 16)):
        w = f(*kernel, 96, c_out)
        y = nbconv.conv2d(x2, w, stride=stride, padding=1, padding_mode=mode)
        nbconv.conv2d_backward(f(*tuple(y.shape)), x2, w, stride=stride, padding=1, padding_mode=mode)
    nbconv.conv_transpose3d(x3, f(3, 3, 3, 32, 16), f(32), stride=2, padding=1, output_padding=1)
    nbconv.conv3d_backward(f(1, 6, 7, 8, 64), x3, f(3, 3, 3, 16, 64), padding=1)
    big = f(64, 32, 32, 16)                       # enough output pixels for several weight-gradient chunks
    nbconv.conv2d_backward(f(64, 32, 32, 16), big, f(1, 1, 16, 16), needs=("weight",))
    # direct kernels: depthwise and few channels per group, strided (non-contiguous) operands
    xd = f(2, 9, 9, 24)
    wd = f(3, 3, 1, 48)
    yd = nbconv.conv2d(xd, wd, groups=24, padding=1)
    nbconv.conv2d_backward(f(*tuple(yd.shape)), xd, wd, groups=24, padding=1)
    nbconv.conv2d(xd, f(3, 3, 1, 48), groups=24, padding=1, padding_mode="reflect")
    strided = f(2, 9, 9, 48, strides=(9 * 9 * 48 * 2 * np.dtype(dtype).itemsize, 9 * 48 * 2 * np.dtype(dtype).itemsize,
                                       48 * 2 * np.dtype(dtype).itemsize, 2 * np.dtype(dtype).itemsize))
    nbconv.conv2d(strided, f(1, 1, 48, 64))
    y = nbconv.conv2d(strided, f(3, 3, 1, 48), groups=48, padding=1)   # direct kernels read strided arrays
    nbconv.conv2d_backward(f(*tuple(y.shape)), strided, f(3, 3, 1, 48), groups=48, padding=1)
    from nbconv import _cuda
    _cuda.add(f(4, 5), f(4, 5))
    # 64-bit indices: the same GEMM paths with the 32-bit limit lowered
    limit = gemm.INT32_LIMIT
    gemm.INT32_LIMIT = 64
    try:
        for mode in ("zeros", "reflect"):
            w = f(3, 3, 96, 128)
            y = nbconv.conv2d(x2, w, padding=1, padding_mode=mode)
            nbconv.conv2d_backward(f(*tuple(y.shape)), x2, w, padding=1, padding_mode=mode)
    finally:
        gemm.INT32_LIMIT = limit


def record_all(dtypes=(np.float32, np.float64)):
    """The Launches of every scenario, in a stable order."""
    with recorded_launches() as records:
        for dtype in dtypes:
            _scenarios(dtype)
    return sorted(records.values(), key=lambda r: (r.label, str(r.argtypes)))


# ---------------------------------------------------------------- compiling and reading the SASS

_INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^(\.L_x_\d+):")


def sass_loops(sass):
    """(instructions [(opcode, operands)], loops [(first, last)]): loops are the ranges of backward branches."""
    instructions, labels = [], {}
    for line in sass.splitlines():
        m = _LABEL.match(line)
        if m:
            labels[m.group(1)] = len(instructions)
            continue
        m = _INSTRUCTION.match(line)
        if m:
            instructions.append((m.group(1), m.group(2)))
    loops = []
    for i, (op, operands) in enumerate(instructions):
        if op.startswith("BRA"):
            target = re.search(r"(\.L_x_\d+)", operands)
            if target and labels.get(target.group(1), i + 1) <= i:
                loops.append((labels[target.group(1)], i))
    return instructions, loops


def _mix(instructions):
    return Counter(op.split(".")[0] for op, _ in instructions)


def main_loop(instructions, loops):
    """(first, last, mix) of the innermost loop holding FMAs (the most FMAs among the innermost), or None."""
    with_fma = []
    for lo, hi in loops:
        mix = _mix(instructions[lo:hi + 1])
        fma = sum(mix[op] for op in FMA_OPS)
        if fma:
            with_fma.append((lo, hi, mix, fma))
    innermost = [loop for loop in with_fma
                 if not any(o[0] >= loop[0] and o[1] <= loop[1] and o[:2] != loop[:2] for o in with_fma)]
    if not innermost:
        return None
    lo, hi, mix, _ = max(innermost, key=lambda loop: (loop[3], loop[0] - loop[1]))
    return lo, hi, mix


def occupancy(regs, smem, threads, arch):
    """Fraction of the SM's warp slots a kernel can fill (registers allocated per warp in units of 256)."""
    lim = LIMITS[arch]
    warps = -(-threads // 32)
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    by_regs = lim["regs"] // (per_warp * warps)
    by_smem = lim["smem"] // (smem + lim["reserved"]) if smem else lim["blocks"]
    blocks = min(by_regs, by_smem, lim["threads"] // (warps * 32), lim["blocks"])
    return blocks * warps / (lim["threads"] // 32)


def compile_kernel(launch, archs):
    """{arch: PTX} of one recorded launch: numba types and lowers the kernel once, as a launch does (the
    dispatcher's own options), and NVVM compiles that LLVM IR for each architecture."""
    from numba.cuda.dispatcher import _Kernel
    d = launch.dispatcher
    kernel = _Kernel(d.py_func, launch.argtypes, **d.targetoptions)
    return {arch: kernel.inspect_asm(_cc(arch)) for arch in archs}


def _cc(arch):
    """(major, minor) of "sm_XY"."""
    return int(arch[3:-1]), int(arch[-1])


def analyze(launch, arch, workdir, ptx=None):
    """The static figures of one recorded launch compiled for `arch` (e.g. "sm_90"); `ptx`: its PTX for
    that architecture when already compiled (compile_kernel)."""
    if ptx is None:
        ptx = compile_kernel(launch, (arch,))[arch]
    base = os.path.join(workdir, f"k{abs(hash((launch.label, str(launch.argtypes), arch)))}")
    with open(base + ".ptx", "w") as fh:
        fh.write(ptx)
    done = subprocess.run([find_tool("ptxas"), "-v", f"-arch={arch}", base + ".ptx", "-o", base + ".cubin"],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ptxas failed for {launch.label} on {arch}: {done.stderr[-2000:]}")
    info = done.stderr
    sass = subprocess.run([find_tool("nvdisasm"), "-c", base + ".cubin"], capture_output=True, text=True).stdout
    instructions, loops = sass_loops(sass)
    mix = _mix(instructions)
    loop = main_loop(instructions, loops)
    regs = int(re.search(r"Used (\d+) registers", info).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", info)
    stack = re.search(r"(\d+) bytes stack frame", info)
    smem = re.search(r"(\d+) bytes smem", info)
    smem = int(smem.group(1)) if smem else 0
    result = dict(kernel=launch.label, arch=arch, argtypes=[str(t) for t in launch.argtypes], threads=launch.threads,
                  registers=regs, spill_stores=int(spills.group(1)), spill_loads=int(spills.group(2)),
                  stack=int(stack.group(1)) if stack else 0, shared=smem, instructions=len(instructions),
                  fma=sum(mix[op] for op in FMA_OPS), occupancy=occupancy(regs, smem, launch.threads, arch),
                  loop_instructions=None, loop_fma=None, fma_share=None, loop_mix=None)
    if loop is not None:
        lo, hi, loop_mix = loop
        fma = sum(loop_mix[op] for op in FMA_OPS)
        result.update(loop_instructions=hi - lo + 1, loop_fma=fma, fma_share=fma / (hi - lo + 1),
                      loop_mix=dict(loop_mix.most_common(8)))
    return result


_RECORDS = None


def _work(job):
    """The results of one unit of work: launches (indices into _RECORDS) for every architecture."""
    indices, archs, workdir = job
    results = []
    for index in indices:
        launch = _RECORDS[index]
        ptx = compile_kernel(launch, archs)
        results += [analyze(launch, arch, workdir, ptx[arch]) for arch in archs]
    return results


def work_units(launches):
    """Lists of launch indices, one per unit of work, largest first: the implicit-GEMM kernels of one dtype
    and tile share one unrolled `mma` device function (the costliest part to type and lower), so they
    compile in one process; every other kernel is a unit of its own."""
    groups = {}
    for i, launch in enumerate(launches):
        label = launch.label
        key = (label.split(".")[0],) + tuple(label[label.index("[") + 1:].split(",")[:2]) \
            if label.startswith("gemm.") else (label, i)
        groups.setdefault(key, []).append(i)
    return sorted(groups.values(), key=lambda g: (-len(g), g))


def _without_device(cc=(8, 0)):
    """Compiling a kernel asks the current device for its compute capability (typing, and the PTX a kernel
    object compiles for itself at creation): a stand-in answers `cc`, here the first architecture checked
    (compile_kernel's inspect_asm is told each real target)."""
    import numba.cuda.dispatcher as dispatcher
    from numba.cuda.codegen import CUDACodeLibrary
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    ensure_cc = CUDACodeLibrary.__dict__.get("_nbconv_ensure_cc", CUDACodeLibrary._ensure_cc)
    CUDACodeLibrary._nbconv_ensure_cc = ensure_cc
    CUDACodeLibrary._ensure_cc = lambda self, want: ensure_cc(self, cc if want is None else want)


def run(archs=ARCHS, jobs=None):
    """Record every launch and analyze each for every arch; a list of result dicts (launches in a stable
    order, each launch's architectures in the order of `archs`)."""
    global _RECORDS
    _RECORDS = record_all()
    _without_device(_cc(archs[0]))
    units = work_units(_RECORDS)
    jobs = jobs or min(len(units), os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as workdir:
        work = [(unit, tuple(archs), workdir) for unit in units]
        if jobs == 1:
            done = [_work(job) for job in work]
        else:
            import multiprocessing
            with multiprocessing.get_context("fork").Pool(jobs) as pool:   # workers inherit the records
                done = pool.map(_work, work, chunksize=1)                 # largest units first
    order = {(r.label, tuple(str(t) for t in r.argtypes)): i for i, r in enumerate(_RECORDS)}
    results = [r for unit in done for r in unit]
    return sorted(results, key=lambda r: (order[r["kernel"], tuple(r["argtypes"])], archs.index(r["arch"])))


def summary(results):
    """A Markdown table with one row per kernel: the architectures' figures side by side."""
    archs = list(dict.fromkeys(r["arch"] for r in results))
    rows = {}
    for r in results:
        rows.setdefault((r["kernel"], tuple(r["argtypes"])), {})[r["arch"]] = r
    lines = ["| kernel | threads | registers | shared B | occupancy | main-loop FMA share |", "|---|---|---|---|---|---|"]
    for (kernel, _), by_arch in sorted(rows.items()):
        per = [by_arch.get(a) for a in archs]
        first = next(r for r in per if r)

        def each(f):
            return " / ".join("-" if r is None else f(r) for r in per)

        share = each(lambda r: "-" if r["fma_share"] is None else f"{r['fma_share']:.0%}")
        registers = each(lambda r: str(r["registers"]))
        occupancy = each(lambda r: f"{r['occupancy']:.1%}")
        lines.append(f"| {kernel} | {first['threads']} | {registers} | {first['shared']} | {occupancy} | {share} |")
    return f"Figures per architecture: {' / '.join(archs)}\n\n" + "\n".join(lines)


def table(results):
    """A Markdown table of the results."""
    lines = ["| kernel | arch | threads | registers | spills (st/ld B) | shared B | occupancy | main-loop FMA share |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        share = "-" if r["fma_share"] is None else \
            f"{r['fma_share']:.0%} ({r['loop_fma']}/{r['loop_instructions']})"
        lines.append(f"| {r['kernel']} | {r['arch']} | {r['threads']} | {r['registers']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} | {r['shared']} | {r['occupancy']:.1%} | {share} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nbconv._cuda_static", description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compilations (default: CPU count)")
    parser.add_argument("--arch", action="append", choices=ARCHS, help="architectures (default: all)")
    args = parser.parse_args(argv)
    why = missing()
    if why:
        print(f"cannot run the static check: {why}", file=sys.stderr)
        return 2
    results = run(tuple(args.arch or ARCHS), args.jobs)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
