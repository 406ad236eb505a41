"""benchmarks/sass_report.py: the control-flow analysis on a hand-written listing, and,
where nvcc and nvdisasm are found, the report on the real kernels (a few seconds: two
instantiations for sm_90), whose tensor-core counts per output must match the tiling."""

import os
import shutil
import sys

import pytest

from tests.harness import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import sass_report  # noqa: E402


def _listing(text):
    out = []
    for line in text.strip().splitlines():
        line = line.strip()
        if line.endswith(":"):
            out.append(sass_report.Instr(-1, "LABEL", line[:-1], ()))
        else:
            body = line.rstrip(" ;")
            op = body.split()[1] if body.startswith("@") else body.split()[0]
            out.append(sass_report.Instr(len(out), op, body, ()))
    return out


def test_cold_code_jumping_back_is_not_a_loop():
    # block 0: entry; .L_x_1: a loop (blocks 1-2) whose exit branch goes to cold code at the
    # end, which jumps back into the loop's tail: a backward branch that closes no loop
    instrs = _listing("""
        MOV R0, RZ ;
        .L_x_1:
        HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        @P1 BRA `(.L_x_9) ;
        .L_x_2:
        IADD3 R0, R0, 0x1, RZ ;
        @P0 BRA `(.L_x_1) ;
        EXIT ;
        .L_x_9:
        FFMA R4, R5, R6, R4 ;
        BRA `(.L_x_2) ;
    """)
    blocks, succ = sass_report.basic_blocks(instrs)
    loops = sass_report.natural_loops(succ)
    assert list(loops) == [1], loops
    assert loops[1] == {1, 2, 4}  # the cold block is inside the loop it returns to, not a loop itself
    assert [len(b) for b in blocks] == [1, 2, 2, 1, 2]


def test_call_to_a_local_label_is_a_jump():
    # ptxas leaves some loops by CALL.REL.NOINC to one of the function's labels (nothing
    # returns); a call to a named subroutine (a division slow path) falls through
    instrs = _listing("""
        .L_x_1:
        STG.E.128 [R2.64], R4 ;
        @P1 CALL.REL.NOINC `(.L_x_2) ;
        BRA `(.L_x_1) ;
        .L_x_2:
        CALL.REL.NOINC `($__internal_5_$__cuda_sm3x_div_rn_noftz_f32_slowpath) ;
        EXIT ;
    """)
    blocks, succ = sass_report.basic_blocks(instrs)
    assert [len(b) for b in blocks] == [2, 1, 2]
    assert succ == [[2, 1], [0], []]
    assert sass_report.natural_loops(succ) == {0: {0, 1}}


def test_wavefronts_and_trips():
    assert sass_report.wavefronts("LDSM.16.M88.4") == 4
    assert sass_report.wavefronts("LDSM.16.M88.2") == 2
    assert sass_report.wavefronts("STS.128") == 4
    assert sass_report.wavefronts("LDS.U16") == 1
    assert sass_report.wavefronts("FFMA") == 0
    assert sass_report.wavefronts("LDGSTS.E.BYPASS.128") == 4
    assert sass_report.wavefronts("LDGSTS.E.64") == 2
    # k = 7, NCHW: 8 planes x 5 vectors = 40 (plane, vector) pairs, 6 threads to a pair, each on
    # every 6th of the 38 rows (7 rows from rows 0 and 1, 6 from rows 2-5), copied 2 x 8 bytes
    # at a time; a warp runs as long as its longest lane: warps 0-2 7 trips, 3-7 6
    units = sass_report.lane_units(7, "nchw", "copy_box_async")
    assert [units(t) for t in (0, 39, 40, 79, 80, 200, 239, 240, 255)] == [7, 7, 7, 7, 6, 6, 6, 0, 0]
    assert sass_report.warp_trips(units, 1) == (3 * 7 + 5 * 6) / 8
    assert sass_report.warp_trips(units, 4) == 1  # unrolled by 4: one trip, and 3 or 2 rows left
    assert sass_report.warp_trips(units, 1, rest_of=4) == (3 * 3 + 5 * 2) / 8
    # the result out, NCHW: 32 (plane, vector) pairs, 8 threads to a pair, 4 of the 32 rows each
    assert sass_report.warp_trips(sass_report.lane_units(7, "nchw", "store_box"), 1) == 4


def test_bank_wavefronts():
    w = sass_report.bank_wavefronts
    assert w([4 * l for l in range(32)], 4) == 1  # 32 consecutive words
    assert w([0] * 32, 4) == 1  # one word, broadcast
    assert w([128 * l for l in range(32)], 4) == 32  # one bank
    assert w([128 * (l % 8) + 4 * (l // 8) for l in range(32)], 4) == 8  # 8 rows of 32 words, 4 lanes each
    assert w([2 * l for l in range(32)], 2) == 1  # 16-bit elements: two per word
    assert w([16 * l for l in range(32)], 16) == 4  # 16 bytes: a quarter warp per wavefront
    assert w([8 * l for l in range(32)], 8) == 2


_have_host_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")


@_have_host_compiler
def test_the_dh_scratch_is_free_of_bank_conflicts():
    # every store of dh into the weight gradient's scratch and every A load from it is one
    # wavefront (rows of 64 elements, as first written, put 8 lanes on each bank)
    scratch = sass_report.dweight_scratch()
    assert set(scratch) == {(tile, k) for tile in ("wide", "narrow") for k in (5, 7, 9)}
    for (tile, k), (ops, tasks) in scratch.items():
        assert tasks == 2
        nb = 4 if tile == "wide" else 2
        assert [kind for kind, _, _ in ops].count("sts") == 3 * 2 * nb  # 2 NB pairs: one 32-bit, two 16-bit stores
        assert [kind for kind, _, _ in ops].count("lds") == 16 * (2 * ((8 * nb + 8) // 16) + 2)
        for kind, width, addresses in ops:
            assert sass_report.bank_wavefronts(addresses, width) == 1, (tile, k, kind, addresses)


@_have_host_compiler
def test_plans_fit_every_device():
    # launch.cuh's planner on sm_90, sm_80 and sm_86 devices (228, 164, 100 KB per SM): 32 x 32
    # tiles where they fit, 16 x 16 for float32's backward on sm_86, and refusals only for
    # float32 at the largest generic kernel sizes on sm_86
    plans = sass_report.plan_table()
    for (dtype, k, call), by_arch in plans.items():
        want = "generic" if k not in (3, 5, 7, 9) else "wide"
        assert by_arch["sm_90"] == by_arch["sm_80"] == want, (dtype, k, call, by_arch)
        if dtype == "16-bit":
            assert by_arch["sm_86"] == want, (dtype, k, call, by_arch)
        elif want == "wide":
            assert by_arch["sm_86"] == ("narrow" if call == "backward" else "wide"), (dtype, k, call, by_arch)
    refused = {(k, call) for (dtype, k, call), by_arch in plans.items() if ":" in by_arch["sm_86"]}
    assert (31, "eval") in refused and (31, "train") in refused and (31, "backward") in refused
    assert all(dtype == "float32" and k >= 26 for (dtype, k, call), by_arch in plans.items()
               if ":" in by_arch["sm_86"])


def _have_tools():
    try:
        for name in ("nvcc", "nvdisasm"):
            sass_report.tool(name)
    except SystemExit:
        return False
    return shutil.which("g++") is not None


@pytest.mark.skipif(not _have_tools(), reason="nvcc, nvdisasm or g++ not found")
def test_report_counts_the_tensor_core_work_of_the_tiling(tmp_path):
    out = tmp_path / "report.md"
    sass_report.main(["--label", "test", "--arch", "sm_90", "--out", str(out)])
    text = out.read_text()
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| 768 | 7 |") or line.startswith("| 1536 | 9 |")]
    mix_rows = [r for r in rows if len(r) == len(sass_report.CLASSES) + 8]  # the mix table, not the breakdown
    assert len(mix_rows) == 8, text
    for r in mix_rows:
        k = int(r[2])
        # per item a warp runs 2 tasks x k kernel rows x 4 n-tiles of m16n8k16, and 3 ldmatrix per row
        # (2 x4 + 1 x2); 8 warps share the item's 8 x 32 x 32 outputs
        assert float(r[5]) == pytest.approx(2 * k * 4 * 8 / 8192, abs=6e-4), r
        assert float(r[6]) == pytest.approx(2 * k * 3 * 8 / 8192, abs=6e-4), r
    assert "| H200 SXM | 1536 | 9 |" in text
