"""Static GPU check: every CUDA kernel nbconv can launch, with the argument types real calls give it,
compiles for sm_80 and sm_90 in float32 and float64, without a GPU (nbconv/_cuda_static.py records the
launches on fake device arrays, compiles them with NVVM and ptxas and reads the SASS with nvdisasm).

Targets: no register spills in any kernel; in the implicit-GEMM forward, input-gradient and
weight-gradient kernels, fused multiply-adds are at least half of the main loop's instructions. The
float64 kernels with 64-bit indices (launched only when an operand or offset exceeds 2**30 elements)
keep a lower bound: their 64-bit offsets cost more of the loop (see the report printed on failure).

Runs where numba-cuda and the CUDA toolkit wheels are installed (nbconv's `test` extra, which CI
installs, and `cuda-static`: numba-cuda[cu12] and nvidia-cuda-nvdisasm); skipped otherwise. About 4
CPU-minutes (48 kernels, each typed once and compiled for both architectures, in parallel over the CPUs:
2 minutes on CI's 2 cores).
"""
import json
import os
import subprocess
import sys
import types

import pytest

from nbconv import _cuda_static

WHY_NOT = _cuda_static.missing()
needs_toolkit = pytest.mark.skipif(WHY_NOT is not None, reason=f"static GPU check: {WHY_NOT}")

FMA_TARGET = 0.5
FMA_FLOOR_F64_WIDE_INDEX = 0.35


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """The check's results (one dict per kernel and architecture), from a process on numba's CUDA target."""
    out = tmp_path_factory.mktemp("static") / "results.json"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    done = subprocess.run([sys.executable, "-m", "nbconv._cuda_static", "--json", str(out)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-5000:]
    print(done.stdout)
    return json.loads(out.read_text())


def _gemm_variants():
    variants = set()
    for dtype in ("float32", "float64"):
        for kernel in ("conv", "wgrad"):
            for index in ("i32", "i64"):
                for padding in ("zero-pad", "modes"):
                    variants.add(f"gemm.{kernel}[{dtype},wide,{index},{padding}]")
            variants.add(f"gemm.{kernel}[{dtype},narrow,i32,zero-pad]")
    return variants


@needs_toolkit
def test_every_kernel_compiles_for_both_architectures(results):
    """The scenarios reach every kernel: each GEMM variant and each direct kernel, in both dtypes, and
    every recorded kernel compiled for sm_80 and sm_90."""
    labels = {r["kernel"] for r in results}
    expected = _gemm_variants() | {f"direct.{name}[{dtype}]" for dtype in ("float32", "float64") for name in (
        "forward", "gather", "weight_partials", "bias_partials", "sum_rows", "fold", "fill", "swap_channels",
        "add_flat")} | {"direct.forward[float32,strided]", "direct.copy5[float64,strided]"}
    assert expected <= labels, sorted(expected - labels)
    assert {label.split("[")[0] for label in labels} >= {"direct.gather_rows", "direct.copy5"}
    by_kernel = {}
    for r in results:
        by_kernel.setdefault((r["kernel"], tuple(r["argtypes"])), set()).add(r["arch"])
    assert all(archs == set(_cuda_static.ARCHS) for archs in by_kernel.values())


@needs_toolkit
def test_no_spills(results):
    spilling = [f"{r['kernel']} {r['arch']}: {r['spill_stores']}/{r['spill_loads']} B"
                for r in results if r["spill_stores"] or r["spill_loads"]]
    assert not spilling, spilling


@needs_toolkit
def test_gemm_main_loops_are_mostly_fma(results):
    """FFMA/DFMA share of the main loop of the forward, input-gradient and weight-gradient GEMM kernels."""
    low = []
    for r in results:
        if not r["kernel"].startswith("gemm."):
            continue
        floor = FMA_FLOOR_F64_WIDE_INDEX if "float64" in r["kernel"] and ",i64," in r["kernel"] else FMA_TARGET
        if r["fma_share"] is None or r["fma_share"] < floor:
            low.append(f"{r['kernel']} {r['arch']}: {r['fma_share']} (floor {floor}) {r['loop_mix']}")
    assert not low, "\n" + "\n".join(low) + "\n\n" + _cuda_static.table(results)


@needs_toolkit
def test_occupancy_is_reported(results):
    """Every kernel fits an SM at least once (registers, shared memory and block size within the limits)."""
    assert all(0 < r["occupancy"] <= 1 for r in results), [r for r in results if not 0 < r["occupancy"] <= 1]


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDS.128 R4, [R2] ;
.L_x_1:
        /*0020*/                   FFMA R8, R4, R5, R8 ;
        /*0030*/                   FFMA R9, R4, R6, R9 ;
        /*0040*/               @P0 BRA `(.L_x_1) ;
        /*0050*/                   IADD3 R2, R2, 0x4, RZ ;
        /*0060*/              @!P1 BRA `(.L_x_0) ;
        /*0070*/                   EXIT ;
"""


def test_sass_reading():
    """Loops are backward branches; the main loop is the innermost one holding FMAs (runs without a toolkit)."""
    instructions, loops = _cuda_static.sass_loops(SASS)
    assert [op for op, _ in instructions] == ["MOV", "LDS.128", "FFMA", "FFMA", "BRA", "IADD3", "BRA", "EXIT"]
    assert sorted(loops) == [(1, 6), (2, 4)]
    first, last, mix = _cuda_static.main_loop(instructions, loops)
    assert (first, last, mix["FFMA"]) == (2, 4, 2)


def test_occupancy_model():
    assert _cuda_static.occupancy(32, 0, 256, "sm_90") == 1.0           # 8 blocks of 8 warps
    assert _cuda_static.occupancy(128, 8832, 256, "sm_80") == 0.25      # 2 blocks by registers
    assert _cuda_static.occupancy(168, 10880, 128, "sm_90") == 0.1875   # 3 blocks of 4 warps
    assert _cuda_static.occupancy(255, 0, 1024, "sm_80") == 0           # does not fit at all


def test_work_units():
    """GEMM kernels of one dtype and tile share their unrolled device function, so they compile in one
    process; every other kernel is a unit of its own; largest units first (runs without a toolkit)."""
    labels = ["direct.fill[float32]", "gemm.conv[float32,wide,i32,zero-pad]", "gemm.wgrad[float32,wide,i64,modes]",
              "gemm.conv[float64,wide,i32,zero-pad]", "gemm.conv[float32,narrow,i32,zero-pad]", "direct.fill[float64]"]
    launches = [types.SimpleNamespace(label=label) for label in labels]
    assert _cuda_static.work_units(launches) == [[1, 2], [0], [3], [4], [5]]
    assert _cuda_static._cc("sm_90") == (9, 0) and _cuda_static._cc("sm_100") == (10, 0)
