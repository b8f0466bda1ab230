"""Make the TBB runtime of the tbb wheel visible to Numba (run once, by ``import nbconv``; see `nbconv._jit`)."""
import ctypes
import os
import site
import sys


def load():
    """Load the TBB runtime installed by the tbb wheel (in sys.prefix/lib, or the user base's lib where user site
    packages are enabled) by its full path, so that Numba's later lookup of libtbb.so.12 by name finds it; nothing
    where the loader finds one by name already (no second copy) or there is none (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    try:  # the loader finds one by name already (system-wide, or on the executable's run path): Numba's too
        ctypes.CDLL("libtbb.so.12")
        return
    except OSError:
        pass
    prefixes = [sys.prefix] + ([site.getuserbase()] if site.ENABLE_USER_SITE else [])
    for prefix in prefixes:
        path = os.path.join(prefix, "lib", "libtbb.so.12")
        if os.path.isfile(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:  # a broken copy: Numba chooses another layer, as it would without nbconv
                pass
