"""`python -m nbconv info [--json]`: what nbconv runs on here. Versions (nbconv, Python, NumPy, Numba,
llvmlite and the optional packages, read from their metadata without importing them), the CPU and
its vector features, the thread count (and a test kernel's result), Numba's threading layer where
the program started it, the kernel cache's directory and size, and CUDA availability. Paste its output
into bug reports.
"""
import importlib.metadata
import json
import os
import platform
import sys

OPTIONAL = ("torch", "numba-cuda", "scikit-learn", "tqdm", "matplotlib", "asv", "dask", "ml_dtypes",
            "threadpoolctl")
# Vector features that matter to nbconv's register tiles, in the order shown.
SIMD = ("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512vnni",
        "avx512bf16", "avx512fp16", "amx-tile", "neon", "sve", "sve2")
ENVIRONMENT = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT",
               "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_ENABLE_CUDASIM", "OMP_NUM_THREADS",
               "CUDA_VISIBLE_DEVICES")


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu():
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    enabled = sorted(name for name, on in features.items() if on)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {"model": _cpu_model(), "llvm_name": binding.get_host_cpu_name(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "simd": [f for f in SIMD if features.get(f)], "features": enabled}


def _threading():
    """The threads nbconv's kernels use (its own workers; see nbconv._jit), Numba's threading layer where the
    program has started it (nbconv does not: asking for it here would), and whether a kernel runs: one tiny
    cached nbconv kernel, a 3-tap convolution."""
    import numba
    import numpy as np

    import nbconv
    from nbconv import _jit

    started = _jit.numba_threads_started()
    info = {"numba_num_threads": numba.config.NUMBA_NUM_THREADS, "threads": _jit.threads(), "kernel": None,
            "requested_layer": numba.config.THREADING_LAYER, "layer": numba.threading_layer() if started else None,
            "error": None}
    try:
        y = nbconv.conv1d(np.arange(3.0).reshape(1, 3, 1), np.ones((3, 1, 1)))
        info["kernel"] = "ok" if y.shape == (1, 1, 1) and y[0, 0, 0] == 3.0 else f"wrong result {y.ravel()}"
    except Exception as error:
        info["error"] = f"{type(error).__name__}: {error}"
    return info


def _cuda():
    import nbconv

    info = {"available": nbconv.cuda_available(), "simulator": os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
            "numba_cuda": _version("numba-cuda"), "devices": []}
    if info["available"]:
        try:
            from numba import cuda
            for device in cuda.gpus:
                with device:
                    current = cuda.get_current_device()
                    name = current.name.decode() if isinstance(current.name, bytes) else current.name
                    info["devices"].append(f"{name} (compute capability "
                                           f"{'.'.join(map(str, current.compute_capability))})")
        except Exception as error:
            info["devices"].append(f"(could not list devices: {type(error).__name__}: {error})")
    return info


def collect():
    """Everything `info` shows, as a JSON-serializable dict."""
    import nbconv

    from . import _cli_cache

    return {
        "nbconv": {"version": nbconv.__version__, "location": os.path.dirname(os.path.abspath(nbconv.__file__))},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable, "platform": platform.platform()},
        "versions": {"numpy": _version("numpy"), "numba": _version("numba"), "llvmlite": _version("llvmlite"),
                     **{name: _version(name) for name in OPTIONAL}},
        "cpu": _cpu(),
        "threading": _threading(),
        "cache": _cli_cache.summary(),
        "cuda": _cuda(),
        "environment": {name: os.environ[name] for name in ENVIRONMENT if name in os.environ},
    }


def format_text(info):
    from ._cli_cache import describe

    cpu, threading, cuda = info["cpu"], info["threading"], info["cuda"]
    versions = info["versions"]
    lines = [f"nbconv {info['nbconv']['version']} at {info['nbconv']['location']}",
             f"Python {info['python']['version']} ({info['python']['implementation']}) on {info['python']['platform']}",
             "NumPy {numpy}, Numba {numba}, llvmlite {llvmlite}".format(**versions),
             "optional: " + ", ".join(f"{name} {version or '-'}" for name, version in versions.items()
                                      if name in OPTIONAL),
             "",
             f"CPU: {cpu['model']} (LLVM target {cpu['llvm_name']}, {cpu['machine']}), "
             f"{cpu['usable_cpus']} of {cpu['cpu_count']} CPUs usable",
             f"  vector features: {' '.join(cpu['simd']) or 'none of ' + ' '.join(SIMD)}",
             f"threads: {threading['threads']} of NUMBA_NUM_THREADS={threading['numba_num_threads']} "
             f"(nbconv's own workers); a test kernel: " + (threading["kernel"] or f"FAILED ({threading['error']})"),
             "Numba's threading layer: " + (threading["layer"] or "not started (nbconv's kernels do not use it)")
             + f" (requested: {threading['requested_layer']})",
             "",
             "kernel cache (Numba's, on disk):"]
    lines += [f"  {line}" for line in describe(info["cache"])]
    lines.append("  clear with `python -m nbconv cache --clear`")
    lines.append("")
    status = "available" if cuda["available"] else "not available"
    if cuda["simulator"]:
        status += " (NUMBA_ENABLE_CUDASIM=1: the CUDA simulator runs the CUDA kernels)"
    lines.append(f"CUDA: {status}; numba-cuda {cuda['numba_cuda'] or 'not installed'}")
    lines += [f"  GPU: {device}" for device in cuda["devices"]]
    if info["environment"]:
        lines.append("")
        lines.append("environment: " + ", ".join(f"{k}={v}" for k, v in info["environment"].items()))
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print the information as JSON")


def run(args):
    info = collect()
    print(json.dumps(info, indent=1) if args.json else format_text(info))
    return 0
