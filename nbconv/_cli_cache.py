"""`python -m nbconv cache [--clear]`: where Numba's on-disk cache of nbconv's CPU kernels lives, its
size, and how to empty it.

Every CPU kernel is compiled with ``cache=True``. Numba picks the directory (its "cache locator") when
the kernel module is imported:

- ``NUMBA_CACHE_DIR`` set: a subdirectory of it named after the package (``nbconv_<hash>``);
- otherwise ``__pycache__`` beside the package's modules (``.../site-packages/nbconv/__pycache__``)
  when that directory is writable;
- otherwise a per-user directory (``~/.cache/numba/...`` on Linux).

The files are ``*.nbi`` (an index per kernel) and ``*.nbc`` (one per compiled specialization). An
entry is reused only by the same kernel source, Numba version and CPU; stale ones stay until cleared.
``pip uninstall nbconv`` does not remove them (pip deletes only the files it installed), so run
``python -m nbconv cache --clear`` before uninstalling, or delete the directory it prints.
"""
import importlib
import os
import sys

# The modules that define nbconv's CPU kernels (importing them compiles nothing).
KERNEL_MODULES = ("nbconv._cpu", "nbconv._depthwise", "nbconv._micro", "nbconv._pool")
SUFFIXES = (".nbi", ".nbc")


def _dispatchers():
    """Numba dispatchers defined in nbconv's kernel modules (and any other nbconv module already imported)."""
    from numba.core.dispatcher import Dispatcher

    for name in KERNEL_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # a module renamed or removed: the others still tell the directory
            pass
    found = []
    for name, module in list(sys.modules.items()):
        if name == "nbconv" or name.startswith("nbconv."):
            found.extend(v for v in vars(module).values() if isinstance(v, Dispatcher))
    return found


def _locator_name(locator):
    return {"UserProvidedCacheLocator": "NUMBA_CACHE_DIR", "InTreeCacheLocator": "beside the package",
            "UserWideCacheLocator": "per-user (the package directory is not writable)"}.get(
        type(locator).__name__.lstrip("_"), type(locator).__name__)


def cache_dirs():
    """{directory: how numba chose it} for nbconv's kernels, in a stable order; empty when no cache
    location is writable (the kernels then compile in memory in every process)."""
    dirs = {}
    dispatchers = _dispatchers()
    for dispatcher in dispatchers:
        cache = getattr(dispatcher, "_cache", None)
        impl = getattr(cache, "_impl", None)
        if impl is None:  # caching off for this dispatcher
            continue
        dirs.setdefault(impl.locator.get_cache_path(), _locator_name(impl.locator))
    if not dispatchers:  # no kernel module could be imported: numba's default, beside the package
        dirs[os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")] = "beside the package"
    return dict(sorted(dirs.items()))


def cache_files(dirs=None):
    """The cache files (*.nbi, *.nbc) in nbconv's cache directories."""
    files = []
    for directory in cache_dirs() if dirs is None else dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:  # not created yet
            continue
        files.extend(os.path.join(directory, n) for n in names if n.endswith(SUFFIXES))
    return files


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def summary():
    """A dict describing the cache: directories (with how numba chose them), file count, bytes."""
    dirs = cache_dirs()
    files = cache_files(dirs)
    return {"dirs": dirs, "files": len(files), "bytes": sum(_size(f) for f in files),
            "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR") or None}


def clear():
    """Delete nbconv's cache files; (files removed, bytes freed)."""
    removed = freed = 0
    for path in cache_files():
        size = _size(path)
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        removed += 1
        freed += size
    return removed, freed


def human(n_bytes):
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000


def describe(info):
    """Lines describing `summary()`'s result."""
    if not info["dirs"]:
        return ["none: no cache location is writable, so the kernels compile in memory in every process "
                "(set NUMBA_CACHE_DIR to a writable directory)"]
    lines = [f"{path}  ({how})" for path, how in info["dirs"].items()]
    lines.append(f"{info['files']} file(s), {human(info['bytes'])}")
    return lines


def add_arguments(parser):
    parser.add_argument("--clear", action="store_true",
                        help="delete nbconv's compiled kernels from the cache (they recompile on next use)")


def run(args):
    if args.clear:
        removed, freed = clear()
        print(f"removed {removed} file(s), {human(freed)}, from:")
        for path in cache_dirs():
            print(f"  {path}")
        return 0
    print("Numba's on-disk cache of nbconv's CPU kernels:")
    for line in describe(summary()):
        print(f"  {line}")
    print("Clear it with `python -m nbconv cache --clear` (do so before `pip uninstall nbconv`, which leaves "
          "it behind); set NUMBA_CACHE_DIR to move it.")
    return 0
