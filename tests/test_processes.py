"""nbconv across processes and broken environments: forked and spawned workers after the parent used
the kernels, a fork while another thread holds nbconv's locks, no writable cache, a corrupted cache,
NUMBA_DISABLE_JIT. Each scenario runs in a fresh interpreter (bounded by a timeout) so that it cannot
take the test process down with it."""
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nbconv

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 240


def run_script(code, env=None, timeout=TIMEOUT):
    """Run `code` in a new interpreter; (returncode, stdout, stderr)."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)
    return done.returncode, done.stdout, done.stderr


PRELUDE = """
    import numpy as np, nbconv
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 32, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    def job(i):
        return float(nbconv.conv2d(x, w, padding=1).astype(np.float64).sum())
    expected = job(0)   # the parent runs the parallel kernels first
"""


def test_kernels_run_on_nbconvs_workers_without_a_numba_threading_layer():
    """The kernels share their work among nbconv's own worker threads; Numba's threading layer (TBB, OpenMP or
    workqueue, each with its own fork and thread limits) is never started."""
    rc, out, err = run_script(PRELUDE + """
    import threading
    import numba.np.ufunc.parallel as numba_parallel
    print("LAYER STARTED", numba_parallel._is_initialized)
    print("WORKERS", sum(t.name.startswith("nbconv") for t in threading.enumerate()))
    """, env={"NUMBA_NUM_THREADS": "2"})
    assert rc == 0 and "LAYER STARTED False" in out and "WORKERS 1" in out, (out, err[-2000:])


@pytest.mark.parametrize("layer", ["omp", "workqueue"])
def test_fork_after_the_program_started_numbas_threads(layer):
    """A program that runs parallel Numba code of its own (here it sets Numba's thread count, which starts the
    layer) under OpenMP or workqueue, uses nbconv, then forks workers that use nbconv: they compute (GNU OpenMP
    would abort a child that runs a parallel Numba region after its parent did; nbconv's kernels run none)."""
    code = PRELUDE + """
    import multiprocessing as mp, numba
    numba.set_num_threads(2)
    assert job(0) == expected
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map_async(job, range(4)).get(timeout=200)
    assert results == [expected] * 4, (results, expected)
    print("OK")
    """
    rc, out, err = run_script(code, env={"NUMBA_THREADING_LAYER": layer, "NUMBA_NUM_THREADS": "2"})
    if rc != 0 and "No threading layer could be loaded" in err:
        pytest.skip(f"Numba's {layer} layer is not available here")
    assert rc == 0 and "OK" in out, (out, err[-2000:])


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_pool_after_parent_used_the_kernels(method):
    code = PRELUDE + f"""
    import multiprocessing as mp
    if __name__ == "__main__":
        with mp.get_context({method!r}).Pool(2) as pool:
            results = pool.map_async(job, range(4)).get(timeout=200)
        assert results == [expected] * 4, (results, expected)
        print("OK")
    """
    rc, out, err = run_script(code if method == "fork" else _as_module(code))
    assert rc == 0 and "OK" in out, err[-2000:]


def _as_module(code):
    """The script written to a temporary module and run from there (spawned children import it)."""
    import tempfile
    path = pathlib.Path(tempfile.mkdtemp()) / "nbconv_spawn_job.py"
    path.write_text(textwrap.dedent(code).replace('if __name__ == "__main__":', "def main():"))
    return f"import sys; sys.path.insert(0, {str(path.parent)!r}); import nbconv_spawn_job as m; m.main()"


def test_process_pool_executor_with_fork():
    code = PRELUDE + """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
        results = list(ex.map(job, range(4), timeout=200))
    assert results == [expected] * 4
    print("OK")
    """
    rc, out, err = run_script(code)
    assert rc == 0 and "OK" in out, err[-2000:]


def test_torch_dataloader_workers_call_nbconv():
    pytest.importorskip("torch")
    code = PRELUDE + """
    import torch
    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 4
        def __getitem__(self, i):
            return torch.tensor(job(i), dtype=torch.float64)
    loader = torch.utils.data.DataLoader(Data(), batch_size=1, num_workers=2,
                                         multiprocessing_context="fork", timeout=200)
    assert [float(b) for b in loader] == [expected] * 4
    print("OK")
    """
    rc, out, err = run_script(code)
    assert rc == 0 and "OK" in out, err[-2000:]


def test_fork_while_another_thread_holds_the_locks():
    """A thread holds nbconv's compile and worker-team locks, and the team itself, while the process forks: the
    child still computes on a team of its own (its locks are fresh), including a kernel compiled for the first time
    in the child."""
    code = PRELUDE + """
    import os, threading
    from nbconv import _jit, _workers
    held, release = threading.Event(), threading.Event()
    def holder():
        crew = _workers.team(_jit._compiled_polls)
        with _jit._compile_lock, _workers._team_lock:
            held.set()
            release.wait(60)
        _workers.release(crew)
    t = threading.Thread(target=holder); t.start(); held.wait(10)
    pid = os.fork()
    if pid == 0:
        try:
            ok = job(1) == expected
            y = nbconv.conv1d(np.ones((1, 9, 2)), np.ones((3, 2, 5)), padding=1, padding_mode="circular")
            os._exit(0 if ok and y.shape == (1, 9, 5) else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    release.set(); t.join()
    print("STATUS", os.waitstatus_to_exitcode(status))
    """
    rc, out, err = run_script(code)
    assert rc == 0 and "STATUS 0" in out, (out, err[-2000:])


def test_no_writable_cache_location_still_computes():
    """No cache locator usable (as with a read-only install and no writable home): one warning that
    names NUMBA_CACHE_DIR, then correct results compiled in memory."""
    code = """
    import warnings
    warnings.simplefilter("always")
    import numpy as np, nbconv
    y = nbconv.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 3)), padding=1)
    assert y[0, 1, 1, 0] == 18.0 and y[0, 0, 0, 0] == 8.0
    from nbconv import _jit
    assert _jit.cache_dirs() == []
    print("OK")
    """
    rc, out, err = run_script(code, env={"NUMBA_CACHE_LOCATOR_CLASSES": "ZipCacheLocator"})
    assert rc == 0 and "OK" in out, err[-2000:]
    assert err.count("no writable Numba cache location") == 1 and "NUMBA_CACHE_DIR" in err


def _corrupt(cache_dir, how):
    files = list(pathlib.Path(cache_dir).rglob("*"))
    assert any(p.suffix == ".nbi" for p in files)
    for p in files:
        if p.suffix == ".nbi" and how in ("truncate", "empty"):
            data = p.read_bytes()
            p.write_bytes(data[:len(data) // 2] if how == "truncate" else b"")
        elif p.suffix == ".nbc" and how == "flip":
            data = bytearray(p.read_bytes())
            for i in range(64, len(data), 97):
                data[i] ^= 0xFF
            p.write_bytes(bytes(data))
        elif p.suffix == ".nbi" and how == "swap":  # an index naming its other overload's object file
            first, second = sorted(pathlib.Path(cache_dir).rglob(p.name.replace(".nbi", ".*.nbc")))
            data = first.read_bytes()
            first.write_bytes(second.read_bytes())
            second.write_bytes(data)


CACHE_JOB = """
    import warnings
    warnings.simplefilter("always")
    import numpy as np, nbconv
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 6, 6, 3)), rng.standard_normal((3, 3, 3, 4))
    gy = rng.standard_normal((2, 6, 6, 4))
    # the bias gradient in float64 and float32: one small kernel (short cold compilations), two overloads
    print("SUM %.12f" % nbconv.conv2d_backward(gy, x, w, padding=1, needs=("bias",)).bias.sum())
    print("SUM %.6f" % nbconv.conv2d_backward(*(a.astype(np.float32) for a in (gy, x, w)), padding=1,
                                              needs=("bias",)).bias.sum())
"""


@pytest.mark.parametrize("how", ["truncate", "empty", "flip", "swap"])
def test_corrupted_cache_is_discarded_and_rebuilt(tmp_path, how):
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    rc, first, err = run_script(CACHE_JOB, env)
    assert rc == 0, err[-2000:]
    _corrupt(tmp_path, how)
    rc, again, err = run_script(CACHE_JOB, env)
    assert rc == 0 and again == first, err[-3000:]
    if how != "swap" or "discarding" in err:   # numba itself may reject a swapped object file quietly
        assert "discarding its Numba cache in " + str(tmp_path) in err
    rc, third, err = run_script(CACHE_JOB, env)   # the rebuilt cache loads cleanly
    assert rc == 0 and third == first and "discarding" not in err, err[-2000:]


def test_a_changed_tile_module_refreshes_the_cached_kernels(tmp_path):
    """Numba reuses a cached kernel while the kernel's own file is unchanged; the register tiles (_micro.py), compiled
    into kernels of other files, are part of every kernel's stamp: after _micro.py changes, a cached kernel of
    _cpu.py is compiled again instead of loaded (a copy of the package, so that its files can change)."""
    import shutil
    shutil.copytree(ROOT / "nbconv", tmp_path / "pkg" / "nbconv", ignore=shutil.ignore_patterns("__pycache__"))
    code = textwrap.dedent("""
        import numpy as np, nbconv
        from nbconv import _cpu
        assert _cpu.__file__.startswith(%r)
        nbconv.conv2d_backward(np.ones((2, 6, 6, 4)), np.ones((2, 6, 6, 3)), np.ones((3, 3, 3, 4)), padding=1,
                               needs=("bias",))
        stats = _cpu._column_sums.stats
        print("HITS", sum(stats.cache_hits.values()), "MISSES", sum(stats.cache_misses.values()))
    """ % str(tmp_path / "pkg"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "pkg"), NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def run():
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, env=env,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split("HITS", 1)[1].split()

    assert run() == ["0", "MISSES", "1"]   # compiled and cached
    assert run() == ["1", "MISSES", "0"]   # loaded from the cache
    with open(tmp_path / "pkg" / "nbconv" / "_micro.py", "a") as tiles:
        tiles.write("# changed\n")
    assert run() == ["0", "MISSES", "1"]   # _cpu.py unchanged, but its cached code is stale: compiled again
    assert run() == ["1", "MISSES", "0"]


def test_disable_jit_runs_the_kernels_as_python():
    code = """
    import numpy as np, nbconv
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 5, 4, 3)), rng.standard_normal((3, 2, 3, 2))
    y = nbconv.conv2d(x, w, padding=1, stride=(2, 1))
    g = nbconv.conv2d_backward(np.ones_like(y), x, w, padding=1, stride=(2, 1))
    values = [y, g.input, g.weight]
    for stride in (1, (1, 2)):  # depthwise (window tiles; the weight gradient's sliding window at stride 1)
        xd, wd = rng.standard_normal((1, 6, 18, 16)), rng.standard_normal((3, 3, 1, 16))
        yd = nbconv.conv2d(xd, wd, padding=1, stride=stride, groups=16)
        values += [yd, nbconv.conv2d_backward(np.ones_like(yd), xd, wd, padding=1, stride=stride, groups=16).weight]
    xc, wc = rng.standard_normal((1, 6, 18, 1)), rng.standard_normal((3, 3, 1, 6))  # one input channel
    values.append(nbconv.conv2d(xc, wc, padding=1))
    print("VALUES", repr(np.concatenate([v.ravel() for v in values]).tolist()))
    """
    rc, out, err = run_script(code, env={"NUMBA_DISABLE_JIT": "1"})
    assert rc == 0, err[-2000:]
    values = np.array(eval(out.split("VALUES", 1)[1]))
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 5, 4, 3)), rng.standard_normal((3, 2, 3, 2))
    y = nbconv.conv2d(x, w, padding=1, stride=(2, 1))
    g = nbconv.conv2d_backward(np.ones_like(y), x, w, padding=1, stride=(2, 1))
    want = [y, g.input, g.weight]
    for stride in (1, (1, 2)):
        xd, wd = rng.standard_normal((1, 6, 18, 16)), rng.standard_normal((3, 3, 1, 16))
        yd = nbconv.conv2d(xd, wd, padding=1, stride=stride, groups=16)
        want += [yd, nbconv.conv2d_backward(np.ones_like(yd), xd, wd, padding=1, stride=stride, groups=16).weight]
    xc, wc = rng.standard_normal((1, 6, 18, 1)), rng.standard_normal((3, 3, 1, 6))
    want.append(nbconv.conv2d(xc, wc, padding=1))
    np.testing.assert_allclose(values, np.concatenate([v.ravel() for v in want]), rtol=1e-12)
