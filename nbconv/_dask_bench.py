"""Benchmark of nbconv.dask: ``python -m nbconv._dask_bench [options]`` (needs the ``dask`` extra).

Runs one convolution layer (conv2d or conv3d, "same" zero padding) over an array that is generated
chunk by chunk inside the workers (it never exists in full anywhere), and reports:

- the in-memory ``nbconv.conv*d`` call on a slice that fits (the reference throughput);
- ``nbconv.dask`` on that same slice, chunked (the overhead of chunking at equal size); both write
  into one preallocated array (``out=`` and ``dask.array.store``);
- ``nbconv.dask`` on the whole array on the threaded scheduler;
- ``nbconv.dask`` on the whole array on a ``distributed.LocalCluster`` (127.0.0.1) for each worker
  count in ``--workers``, each worker with ``--memory-limit`` and ``--threads`` threads (dask's and
  Numba's: NUMBA_NUM_THREADS), with the peak resident memory of the worker processes (sampled every
  20 ms).

The result of the whole-array runs is reduced (``y.sum()``), so no output is stored; the time to
generate the input alone is reported for context. Kernels are compiled (or loaded from the cache) and
workers warmed up before any timing; each figure is the best of ``--repeats`` runs. GFLOP/s counts
2 * multiply-adds.
"""
import argparse
import math
import threading
import time

import numpy as np


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def _fill(block_info=None, dtype="float32"):
    """One chunk of the benchmark input: uniform [0, 1) numbers seeded by the chunk's position."""
    info = block_info[None]
    seed = hash(tuple(info["chunk-location"])) & 0xFFFFFFFF
    return np.random.default_rng(seed).random(info["chunk-shape"], dtype=np.dtype(dtype))


def _source(shape, chunks, dtype):
    """A dask array of `shape` and `chunks`, generated chunk by chunk where it is computed."""
    import dask.array as da
    from functools import partial
    chunks = da.core.normalize_chunks(chunks, shape, dtype=np.dtype(dtype))
    return da.map_blocks(partial(_fill, dtype=np.dtype(dtype).name), dtype=np.dtype(dtype), chunks=chunks,
                         meta=np.empty((0,) * len(shape), dtype=dtype))


def flops(x_shape, kernel, c_out, groups=1):
    """2 * multiply-adds of a stride-1 "same" convolution of x_shape (N, *spatial, C_in)."""
    return 2 * math.prod(x_shape[:-1]) * math.prod(kernel) * (x_shape[-1] // groups) * c_out


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class _PeakRSS:
    """Peak resident memory of a set of processes, sampled in a thread every `interval` seconds."""

    def __init__(self, pids, interval=0.02):
        import psutil
        self._procs = [psutil.Process(pid) for pid in pids]
        self.peak = {pid: 0 for pid in pids}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for proc in self._procs:
                try:
                    self.peak[proc.pid] = max(self.peak[proc.pid], proc.memory_info().rss)
                except Exception:  # a worker restarting or gone
                    pass
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _warm(nd, dtype, kernel, c_in, c_out):
    """Load (or compile) the kernels in this process."""
    import nbconv
    x = np.ones((1, *(8,) * nd, c_in), dtype=dtype)
    getattr(nbconv, f"conv{nd}d")(x, np.ones((*kernel, c_in, c_out), dtype=dtype), padding="same")
    return True


def _slice_runs(lazy, w, b, conv, dconv, repeats, row):
    """The in-memory call and nbconv.dask on one slice in memory, both into one preallocated result."""
    import dask.array as da
    nd = lazy.ndim - 2
    part = lazy.compute()
    k, c_out = w.shape[:-2], w.shape[-1]
    result = np.empty((*part.shape[:-1], c_out), dtype=part.dtype)
    conv(part, w, b, padding="same", out=result)
    row(f"in-memory nbconv.conv{nd}d, slice {part.shape}",
        _best(lambda: conv(part, w, b, padding="same", out=result), repeats), flops(part.shape, k, c_out))
    chunked = da.from_array(part, chunks=lazy.chunks)
    y = dconv(chunked, w, b, padding="same")
    da.store(y, result, lock=False)
    row(f"nbconv.dask.conv{nd}d, same slice, {chunked.npartitions} chunks (threads)",
        _best(lambda: da.store(y, result, lock=False), repeats), flops(part.shape, k, c_out))


def run(shape, chunks, c_out=8, kernel=3, dtype="float32", workers=(1, 2), threads=1, memory_limit="1GiB",
        slice_fraction=0.25, repeats=2, out=print):
    """Run the benchmark; returns a list of result rows (dicts) and prints a Markdown table with `out`."""
    import dask
    import nbconv
    import nbconv.dask as nbd
    nd = len(shape) - 2
    k = (kernel,) * nd if isinstance(kernel, int) else tuple(kernel)
    c_in = shape[-1]
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((*k, c_in, c_out)) / math.sqrt(math.prod(k) * c_in)).astype(dtype)
    b = np.zeros(c_out, dtype=dtype)
    conv = getattr(nbconv, f"conv{nd}d")
    dconv = getattr(nbd, f"conv{nd}d")
    x = _source(shape, chunks, dtype)
    rows = []

    def row(what, seconds, n_flops, peak=None):
        rows.append(dict(what=what, seconds=seconds, gflops=n_flops / seconds / 1e9,
                         peak_worker_mib=None if peak is None else peak / 2 ** 20))

    # a slice that fits: the first `slice_fraction` of the first spatial axis
    depth = max(k[0], int(round(shape[1] * slice_fraction)))
    with dask.config.set(scheduler="threads"):
        _warm(nd, dtype, k, c_in, c_out)
        _slice_runs(x[:, :depth], w, b, conv, dconv, repeats, row)
        row(f"input generation only, whole array {tuple(shape)}", _best(lambda: x.sum().compute(), 1), 0)
        total = dconv(x, w, b, padding="same").sum()
        row(f"nbconv.dask.conv{nd}d, whole array, {x.npartitions} chunks (threads)",
            _best(lambda: total.compute(), repeats), flops(shape, k, c_out))
    for n_workers in workers:
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=True, host="127.0.0.1",
                          dashboard_address=None, memory_limit=memory_limit,
                          env={"NUMBA_NUM_THREADS": str(threads)}) as cluster, \
                Client(cluster, timeout=120) as client:
            client.run(_warm, nd, dtype, k, c_in, c_out)
            pids = list(client.run(lambda: __import__("os").getpid()).values())
            client.compute(dconv(x[:, :depth], w, b, padding="same").sum()).result()  # warm the task path
            with _PeakRSS(pids) as peak:
                seconds = _best(lambda: client.compute(total).result(), repeats)
            row(f"nbconv.dask.conv{nd}d, whole array, distributed: {n_workers} worker(s) x {threads} thread(s), "
                f"memory_limit {memory_limit}", seconds, flops(shape, k, c_out), max(peak.peak.values()))
    size = math.prod(shape) * np.dtype(dtype).itemsize
    out(f"conv{nd}d {tuple(shape)} {dtype} ({size / 2 ** 30:.2f} GiB input, {size * c_out / c_in / 2 ** 30:.2f} "
        f"GiB output), kernel {k}, C_out {c_out}, chunks {x.chunksize}, 'same' zero padding; distributed workers "
        f"run {threads} dask thread(s) and NUMBA_NUM_THREADS={threads}")
    out("")
    out("| run | time (s) | GFLOP/s | peak RSS per worker (MiB) |")
    out("|---|---:|---:|---:|")
    for r in rows:
        gf = f"{r['gflops']:.1f}" if r["gflops"] else "-"
        peak = "-" if r["peak_worker_mib"] is None else f"{r['peak_worker_mib']:.0f}"
        out(f"| {r['what']} | {r['seconds']:.3f} | {gf} | {peak} |")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nbconv._dask_bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=_ints, default=(1, 256, 256, 256, 8),
                        help="input shape N,*spatial,C_in (2 or 3 spatial dims; default 1,256,256,256,8)")
    parser.add_argument("--chunks", type=_ints, default=(1, 64, 128, 128, 8),
                        help="chunk shape (default 1,64,128,128,8)")
    parser.add_argument("--c-out", type=int, default=8, help="output channels (default 8)")
    parser.add_argument("--kernel", type=int, default=3, help="kernel size per spatial dim (default 3)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--workers", type=_ints, default=(1, 2),
                        help="distributed worker counts to run, comma-separated; empty for none (default 1,2)")
    parser.add_argument("--threads", type=int, default=1, help="threads per distributed worker (default 1)")
    parser.add_argument("--memory-limit", default="1GiB", help="memory limit per distributed worker (default 1GiB)")
    parser.add_argument("--slice-fraction", type=float, default=0.25,
                        help="fraction of the first spatial axis in the in-memory slice (default 0.25)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per figure, best kept (default 2)")
    args = parser.parse_args(argv)
    if len(args.chunks) != len(args.shape) or len(args.shape) not in (4, 5):
        parser.error(f"--shape and --chunks need 4 or 5 entries each, got {args.shape} and {args.chunks}")
    run(args.shape, args.chunks, c_out=args.c_out, kernel=args.kernel, dtype=args.dtype, workers=args.workers,
        threads=args.threads, memory_limit=args.memory_limit, slice_fraction=args.slice_fraction,
        repeats=args.repeats)


if __name__ == "__main__":
    main()
