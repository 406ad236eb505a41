"""Per-kernel resource and cost report of the CUDA tile kernels, read from their SASS.

No GPU is needed: nvcc compiles the instantiations the key shapes run (bf16 eval forward,
batch 128, 32 x 32, C = 768 k = 7 and C = 1536 k = 9: the 32 x 32 tile of 8 channels,
Mode::kApply) to a cubin with line information; ptxas gives registers and spills;
nvdisasm gives the instructions, each with its chain of inlined source lines, and the
control-flow graph, so each instruction gets the number of times one warp runs it per
work item:

  - 0 for the code of the other layout, the other activations, the staging the key shapes
    do not run (they take the aligned paths with two shared buffers on sm_80 and sm_90
    alike: cp.async in NCHW, the landing buffer in channels_last; not the element-wise
    paths nor the one-buffer channels_last transpose from global memory) and the exact
    CUDA-core recomputation that only a non-finite accumulator enters (with the code ptxas
    copies into its path);
  - the trip count of its staging loop (a model of the loop bounds of the staging
    functions, below) inside an inner loop, else 1;
  - times 1 / items_per_block outside the item loop (block setup, the first item's
    copies, the partials).

Summed over a block's 8 warps and divided by the item's CB * TH * TW outputs, that is the
instruction mix per output. With the hardware constants below it gives four floors for
the shape (DRAM, issue slots, shared-memory wavefronts, tensor cores); the largest is the
bound the code can at best reach. It is a static model: no latency or occupancy effects,
wavefronts from the SASS assume conflict-free accesses (the SASS has no addresses),
subroutine calls (division slow paths) are not followed, and code ptxas merges between
activations counts for the one its line information names. Only a GPU measures the real
time.

Host-side tables follow, from a host build of launch.cuh: the shared memory of every
configuration and the pipeline depth on sm_90, sm_80 and sm_86/sm_89 devices; the tiles the
planner takes per call on each; and the bank conflicts of the dh pass's weight-gradient
scratch, counted from the addresses its own functions give every lane (`bank_wavefronts`).

    python benchmarks/sass_report.py --label before --out benchmarks/results/cuda_sass_report_before.md
"""

import argparse
import collections
import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

# The instantiations of the key shapes: tile_kernel<bf16, K, CfgWide, Mode::kApply>.
CB, TH, TW, THREADS, WARPS, BATCH_LOADS, VEC = 8, 32, 32, 256, 8, 4, 8
KEY_SHAPES = [  # (C, k)
    (768, 7),
    (1536, 9),
]
N, H, W = 128, 32, 32
LAYOUTS = ("nchw", "channels_last")
ACTIVATIONS = ("gelu", "relu")


@dataclasses.dataclass
class Hardware:
    name: str
    sms: int
    ghz: float
    copy_tbs: float  # achievable copy bandwidth, TB/s
    note: str


HARDWARE = [
    Hardware("H200 SXM", 132, 1.98, 4.3, "copy 4.3 TB/s as DESIGN.md measures it (4.8 TB/s spec)"),
    Hardware("H100 SXM", 132, 1.98, 3.0, "copy 3.0 TB/s assumed: 0.9 of the 3.35 TB/s spec, the H200's ratio"),
]
ISSUE_PER_CLK = 4       # warp instructions per SM per clock (4 schedulers)
WAVEFRONTS_PER_CLK = 1  # shared-memory wavefronts (128 bytes) per SM per clock
MMA_CLK = 2             # SM clocks per m16n8k16 (2048 FMA) at the dense bf16 peak of 1024 FMA/clk/SM;
                        # mma.sync is not documented to reach it, so this floor is optimistic


def tool(name: str) -> str:
    """nvcc, cuobjdump and nvdisasm: on the PATH, or (the disassemblers) triton's copies."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    sys.exit(f"sass_report: {name} was not found on the PATH (nor in an installed triton)")


def kernel_name(k: int) -> str:
    return f"tile_kernel<__nv_bfloat16, {k}, CfgWide, Mode::kApply>"


def compile_cubin(arch: str, out_dir: str) -> tuple[str, str]:
    src = os.path.join(out_dir, "key_shapes.cu")
    with open(src, "w") as f:
        f.write('#include "cuda/launch.cuh"\nnamespace convmixer_kernels {\nnamespace cuda {\n')
        for _, k in KEY_SHAPES:
            f.write(f"template __global__ void {kernel_name(k)}(const TileArgs);\n")
        f.write("}  // namespace cuda\n}  // namespace convmixer_kernels\n")
    cubin = os.path.join(out_dir, f"key_shapes_{arch}.cubin")
    cmd = [tool("nvcc"), "-cubin", "-std=c++17", "-O3", f"-arch={arch}", "-lineinfo", "--resource-usage",
           "-I", CSRC, src, "-o", cubin]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"sass_report: nvcc failed:\n{proc.stderr[-4000:]}")
    return cubin, proc.stdout + proc.stderr


def ptxas_usage(log: str) -> dict:
    """{mangled name: (registers, spill stores, spill loads, stack)} from ptxas -v."""
    usage, name = {}, None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            usage.setdefault(name, {}).update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            usage.setdefault(name, {})["regs"] = int(m.group(1))
    return usage


# ------------------------------------------------------------------ source structure


# The staging functions of tile_staging.cuh, and those the key shapes run per layout.
STAGING = {"copy_box_async": "stage", "land_box_async": "stage", "unpack_box": "stage",
           "transpose_into_planes": "stage", "stage_box_nhwc": "stage", "stage_box_elementwise": "stage",
           "store_box": "store"}
RUNS = {"nchw": {"copy_box_async", "store_box"},
        "channels_last": {"land_box_async", "unpack_box", "transpose_into_planes", "store_box"}}


class Sources:
    """Which function (and which branch of a layout-dispatching function) a source line
    of csrc/cuda lies in, read from the files themselves."""

    DEF = re.compile(r"^(?:template <.*>\s*)?(?:__global__|__device__|__host__)"
                     r"(?:[^(]|__launch_bounds__\([^)]*\))*?\b(?!__launch_bounds__)(\w+)\s*\(")
    VARIANTS = {  # the top-level branches of the staging functions, in order
        "store_box": ("nchw16", "channels_last16", "elementwise"),
    }

    def __init__(self):
        self.func = {}     # (file, line) -> function name
        self.variant = {}  # (file, line) -> variant of a staging function
        self.cases = {}    # with_activation's call lines per activation
        for dirpath, _, names in os.walk(os.path.join(CSRC, "cuda")):
            for name in names:
                if name.endswith((".cuh", ".cu")):
                    self._scan(os.path.join(dirpath, name))

    def _scan(self, path):
        with open(path) as f:
            lines = f.read().splitlines()
        current, variant, branches = None, None, 0
        for i, text in enumerate(lines, 1):
            after_template = i > 1 and lines[i - 2].startswith("template")
            m = self.DEF.match(text) or (self.DEF.match(lines[i - 2] + " " + text) if after_template else None)
            if m:
                current, variant, branches = m.group(1), None, 0
            if current in self.VARIANTS and re.match(r"^  (\} else )?if \(|^  \} else \{", text):
                variant = self.VARIANTS[current][branches]
                branches += 1
            if current:
                self.func[(path, i)] = current
                if variant:
                    self.variant[(path, i)] = variant
            m = re.search(r"\bf\(Act(\w+)\{\}\)", text) if current == "with_activation" else None
            if m:  # ActGelu and ActGeluFast are both gelu
                act = {"GeluTanh": "gelu_tanh", "Relu": "relu", "Silu": "silu"}.get(m.group(1), "gelu")
                self.cases.setdefault(act, set()).add((path, i))
            if text.startswith("}"):
                current, variant = None, None


# ------------------------------------------------------------------ SASS


@dataclasses.dataclass
class Instr:
    addr: int
    op: str          # the opcode with its modifiers, e.g. LDSM.16.M88.4
    text: str
    chain: tuple     # ((file, line), ...) innermost first
    block: int = -1


def disassemble(cubin: str) -> dict:
    """{mangled function name: [Instr]} from nvdisasm -gi."""
    out = subprocess.run([tool("nvdisasm"), "-c", "-gi", cubin], capture_output=True, text=True, check=True).stdout
    funcs, cur, chain, pending = {}, None, (), []
    for line in out.splitlines():
        m = re.match(r"^\.text\.(\S+):$", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            chain, pending = (), []
            continue
        m = re.match(r'^\s*//## File "([^"]+)", line (\d+)', line)
        if m:
            pending.append((m.group(1), int(m.group(2))))
            continue
        m = re.match(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;", line)
        if m and cur is not None:
            if pending:
                chain, pending = tuple(pending), []
            body = m.group(2)
            pred = re.match(r"^@!?U?P[T0-9]\s+", body)
            op = body[pred.end():] if pred else body
            cur.append(Instr(int(m.group(1), 16), op.split()[0], body, chain))
        elif re.match(r"^\.L_x_\d+:", line) and cur is not None:
            cur.append(Instr(-1, "LABEL", line.strip().rstrip(":"), chain))
    return funcs


def local_jump(ins) -> bool:
    """A CALL.REL.NOINC to a label of the function itself: how ptxas leaves some loops (a
    jump, nothing returns); to a named subroutine (division slow paths) it is a call."""
    return ins.op == "CALL.REL.NOINC" and "`(.L_x_" in ins.text


def basic_blocks(instrs):
    """Splits the listing into basic blocks; returns (blocks, successors) with blocks as
    lists of Instr (labels dropped) and successors as lists of block indices."""
    label_block, blocks, cur = {}, [], []
    starts_new = True
    for ins in instrs:
        if ins.op == "LABEL":
            if cur:
                blocks.append(cur)
                cur = []
            label_block[ins.text] = len(blocks)
            continue
        if starts_new and cur:
            blocks.append(cur)
            cur = []
        cur.append(ins)
        starts_new = ins.op.split(".")[0] in ("BRA", "EXIT", "RET", "BRX", "JMP") or local_jump(ins)
    if cur:
        blocks.append(cur)
    succ = []
    for b, blk in enumerate(blocks):
        for ins in blk:
            ins.block = b
        last = blk[-1]
        nxt = [b + 1] if b + 1 < len(blocks) else []
        base = last.op.split(".")[0]
        if base == "BRA" or local_jump(last):
            m = re.search(r"`\((\.L_x_\d+)\)", last.text)
            target = [label_block[m.group(1)]] if m and m.group(1) in label_block else []
            predicated = last.text.startswith("@")
            succ.append(target + (nxt if predicated else []))
        elif base in ("EXIT", "RET"):
            succ.append(nxt if last.text.startswith("@") else [])
        else:
            succ.append(nxt)
    return blocks, succ


def dominators(succ):
    """dom[b]: the blocks every path from the entry (block 0) to b passes through."""
    preds = collections.defaultdict(list)
    for b, ss in enumerate(succ):
        for s in ss:
            preds[s].append(b)
    everything = set(range(len(succ)))
    dom = [everything] * len(succ)
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for b in range(1, len(succ)):
            ps = [dom[p] for p in preds[b]]
            new = (set.intersection(*ps) if ps else set()) | {b}
            if new != dom[b]:
                dom[b], changed = new, True
    return dom, preds


def natural_loops(succ):
    """{header: set of blocks} for each back edge (an edge to a block dominating its
    source; cold code placed at the end jumps backwards without forming a loop)."""
    dom, preds = dominators(succ)
    loops = {}
    for b, ss in enumerate(succ):
        for h in ss:
            if h in dom[b]:
                body, stack = {h, b}, [b] if b != h else []
                while stack:
                    x = stack.pop()
                    for p in preds[x]:
                        if p not in body:
                            body.add(p)
                            stack.append(p)
                loops.setdefault(h, set()).update(body)
    return loops


# ------------------------------------------------------------------ the cost model


def lane_units(k: int, layout: str, func: str):
    """The units (iterations of its innermost loop in the source) each thread t of a staging
    function runs at the key shapes (the input tile of kApply: rows x pitch; the result out:
    TH x TW), as tile_staging.cuh writes its loops: a function of t."""
    rows, pitch, nv = TH + k - 1, TW + 8, CB // VEC

    def strided(first, step, bound):  # for (u = first; u < bound; u += step)
        return 0 if first is None or first >= bound else math.ceil((bound - first) / step)

    def chunked(pairs, rows):  # one (plane, chunk) per thread, every groups-th row of it
        groups = max(1, THREADS // pairs)
        return lambda t: strided(t // pairs if t < pairs * groups else None, groups, rows)

    if func == "copy_box_async":  # for_box_vectors_nchw: a vector is 2 copies of 8 bytes
        return chunked(CB * pitch // VEC, rows)
    if func == "land_box_async":
        return chunked(pitch * nv, rows)
    if func in ("unpack_box", "transpose_into_planes", "stage_box_nhwc"):
        return lambda t: strided(t, THREADS, rows * pitch // VEC * nv)
    if func == "store_box":
        if layout == "nchw":  # for_box_vectors_nchw
            return chunked(CB * TW // VEC, TH)
        return lambda t: strided(t, THREADS, TH * TW // VEC * nv)
    raise ValueError(func)


# The instruction that marks one unit of a staging loop, and how many a unit has: ptxas
# unrolls some loops (by 4, with a loop for the rest), so a loop's unroll factor is its
# markers over these.
MARKERS = {"copy_box_async": ("LDGSTS", 2), "land_box_async": ("LDGSTS", 1), "unpack_box": ("STS", VEC),
           "transpose_into_planes": ("STS", VEC), "stage_box_nhwc": ("STS", VEC),
           "store_box": ("STG", {"nchw": 1, "channels_last": VEC})}


def warp_trips(units, unroll: int, rest_of: int = 0) -> float:
    """Iterations per warp of a loop running `unroll` units per iteration (or, rest_of > 0,
    the loop for the units left over by one unrolled rest_of times), averaged over the
    block's warps: a warp runs until its last lane is done."""
    def lane(t):
        u = units(t)
        return u % rest_of if rest_of else u // unroll
    return sum(max(lane(32 * w + l) for l in range(32)) for w in range(WARPS)) / WARPS


def items_per_block(c: int, sms: int = 132) -> int:
    """launch.cuh's make_plan for the wide tile (8 items at most, about 16 blocks per SM)."""
    items = N * math.ceil(H / TH) * math.ceil(W / TW)
    blocks = items * math.ceil(c / CB)
    return min(8, max(1, math.ceil(blocks / (16 * sms))))


def classify(op: str) -> str:
    base = op.split(".")[0]
    if base == "HMMA":
        return "mma"
    if base == "LDSM":
        return "ldmatrix"
    if base in ("LDS", "STS"):
        return base.lower()
    if base in ("LDG", "STG", "LDGSTS", "UTMALDG", "UBLKCP"):
        return "global"
    if base in ("LDL", "STL"):
        return "local"
    if base in ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "FCHK", "HFMA2", "HADD2", "HMUL2"):
        return "fp32"
    if base == "MUFU":
        return "mufu"
    if base in ("F2F", "F2FP", "I2F", "F2I", "PRMT"):
        return "convert"
    if base in ("BRA", "BSSY", "BSYNC", "BAR", "VOTE", "WARPSYNC", "EXIT", "CALL", "RET", "NOP", "DEPBAR"):
        return "control"
    if base.startswith("U") or base in ("S2R", "S2UR", "CS2R", "LDC"):
        return "uniform/const"
    return "int/addr"


PARTS = ("stage", "conv", "epilogue", "store", "loop", "setup")
CLASSES = ("mma", "ldmatrix", "lds", "sts", "global", "local", "fp32", "mufu", "convert", "int/addr", "control",
           "uniform/const")


def wavefronts(op: str) -> float:
    """Shared-memory wavefronts of one warp instruction, conflict-free (LDGSTS: the
    shared-memory write of cp.async)."""
    base = op.split(".")[0]
    if base == "LDSM":
        return float(op.split(".")[-1]) if op.split(".")[-1] in ("1", "2", "4") else 1.0
    if base in ("LDS", "STS", "LDGSTS"):
        width = 4
        for mod, w in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
            if mod in op:
                width = w
        return max(1.0, 32 * width / 128)
    return 0.0


def cold_blocks(blocks, succ, src: Sources) -> set:
    """The blocks only the exact recomputation reaches: those dominated by a block that is
    mostly conv_exact's code (ptxas copies the epilogue after it into its own path)."""
    dom, _ = dominators(succ)

    def exact_share(blk):
        body = [i for i in blk if classify(i.op) != "control"]
        return sum(1 for i in body if any(src.func.get(f) == "conv_exact" for f in i.chain)) / max(1, len(body))

    seeds = {b for b, blk in enumerate(blocks) if exact_share(blk) > 0.5}
    return {b for b in range(len(blocks)) if dom[b] & seeds}


def analyse(instrs, src: Sources, k: int, c: int, layout: str, act: str):
    blocks, succ = basic_blocks(instrs)
    loops = natural_loops(succ)
    mma_blocks = {i.block for blk in blocks for i in blk if i.op.startswith("HMMA")}
    item_header = max((h for h, body in loops.items() if body & mma_blocks), key=lambda h: len(loops[h]))
    item_body = loops[item_header]
    inner = {h: body for h, body in loops.items() if h != item_header}
    ipb = items_per_block(c)
    other_cases = set().union(*(v for a, v in src.cases.items() if a != act))
    wanted = f"{'nchw' if layout == 'nchw' else 'channels_last'}16"
    cold = cold_blocks(blocks, succ, src)

    def excluded(ins):
        if ins.block in cold:
            return True
        for frame in ins.chain:
            func = src.func.get(frame)
            if frame in other_cases or func == "conv_exact":
                return True
            if func in STAGING and func not in RUNS[layout]:
                return True
            var = src.variant.get(frame)
            if var is not None and var != wanted:
                return True
        return False

    def region(body):
        """The staging function a loop belongs to (most of its instructions' innermost
        staging frame), or None."""
        funcs = collections.Counter()
        for blk in body:
            for i in blocks[blk]:
                name = next((src.func.get(f) for f in i.chain if src.func.get(f) in STAGING), None)
                if name:
                    funcs[name] += 1
        return funcs.most_common(1)[0][0] if funcs else None

    # staging loops: their function and unroll factor, then the trips of each (a loop with
    # an unrolled sibling in the same scope runs the units the sibling leaves)
    staging = {}
    for h, body in inner.items():
        reg = region(body)
        if reg in RUNS[layout]:
            marker, per_unit = MARKERS[reg]
            per_unit = per_unit[layout] if isinstance(per_unit, dict) else per_unit
            markers = sum(1 for b in body for i in blocks[b] if i.op.split(".")[0] == marker and not excluded(i))
            staging[h] = (reg, max(1, round(markers / per_unit)), h in item_body)
    trips = {}
    for h, body in inner.items():
        t = 1.0
        # a staging loop around another of its function's (a thread's (plane, chunk) around
        # its rows) runs once per thread at the key shapes; the inner one carries the units
        outer = any(g != h and staging[g][0] == staging.get(h, ("",))[0] and inner[g] < body for g in staging)
        if h in staging and not outer:
            reg, unroll, scope = staging[h]
            siblings = [u for g, (r, u, sc) in staging.items() if g != h and r == reg and sc == scope and u > 1]
            units = lane_units(k, layout, reg)
            t = warp_trips(units, unroll, rest_of=siblings[0] if unroll == 1 and siblings else 0)
        for b in body:
            trips[b] = trips.get(b, 1.0) * t
    case_frames = set().union(*src.cases.values())

    def part(ins):
        """Which part of the kernel an instruction belongs to, for the breakdown."""
        if ins.block not in item_body:
            return "setup"
        for frame in ins.chain:
            name = src.func.get(frame)
            if name in STAGING:
                return STAGING[name]
            if name == "conv_mma":
                return "conv"
            if frame in case_frames:
                return "epilogue"
        return "loop"

    per_item, per_part = collections.Counter(), collections.Counter()
    wave = 0.0
    for blk in blocks:
        for ins in blk:
            if excluded(ins):
                continue
            weight = trips.get(ins.block, 1.0) * (1.0 if ins.block in item_body else 1.0 / ipb)
            per_item[classify(ins.op)] += weight
            per_part[part(ins)] += weight
            wave += weight * wavefronts(ins.op)
    scale = WARPS / (CB * TH * TW)
    per_output = {cls: per_item[cls] * scale for cls in CLASSES}
    parts = {p: per_part[p] * scale for p in PARTS}
    return per_output, parts, wave * scale, ipb


def static_mix(instrs):
    mix = collections.Counter(classify(i.op) for i in instrs if i.op != "LABEL")
    return mix


def floors_us(per_output, wave, c, hw: Hardware):
    outputs = N * c * H * W
    clk = hw.ghz * 1e9 * hw.sms
    issue = sum(per_output.values()) * outputs / (ISSUE_PER_CLK * clk) * 1e6
    smem = wave * outputs / (WAVEFRONTS_PER_CLK * clk) * 1e6
    tensor = per_output["mma"] * outputs * MMA_CLK / clk * 1e6
    dram = 4 * outputs / (hw.copy_tbs * 1e12) * 1e6
    return {"DRAM": dram, "issue": issue, "smem": smem, "tensor": tensor}


def row(*cells) -> str:
    return "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def header(*cells) -> list:
    return [row(*cells), "|" + "---|" * len(cells)]


def arch_section(arch: str, src: Sources, smem: dict, tmp: str) -> list:
    cubin, log = compile_cubin(arch, tmp)
    usage = ptxas_usage(log)
    by_k = {}
    for name, instrs in disassemble(cubin).items():
        m = re.search(r"tile_kernelI13__nv_bfloat16Li(\d+)E", name)
        if m:
            by_k[int(m.group(1))] = (name, instrs)
    lines = [f"## {arch}", ""]
    per_sm = SMEM[arch][0]
    lines += header("kernel", "registers", "spill st/ld (B)", "stack (B)", "shared buffers",
                    "dynamic smem (B)", f"blocks/SM by registers, by smem ({per_sm // 1024} KB)", "static instructions")
    for _, k in KEY_SHAPES:
        name, instrs = by_k[k]
        u = usage.get(name, {})
        cfg = smem[("16-bit", "wide", k, "apply")]
        stages = cfg[f"stages_{arch}"]
        used = cfg[f"total{stages}"]
        by_regs = 65536 // (THREADS * math.ceil(u["regs"] / 8) * 8)
        by_smem = per_sm // (used + 1024)  # 1 KB per block is reserved
        lines.append(row(f"k={k}", u["regs"], f"{u['spill_st']}/{u['spill_ld']}", u["stack"], stages, used,
                         f"{by_regs}, {by_smem}", sum(static_mix(instrs).values())))
    mix, breakdown, floors = [], [], []
    for c, k in KEY_SHAPES:
        for layout in LAYOUTS:
            for act in ACTIVATIONS:
                per_output, parts, wave, ipb = analyse(by_k[k][1], src, k, c, layout, act)
                mix.append(row(c, k, layout, act, *(per_output[x] for x in CLASSES), sum(per_output.values()), wave))
                breakdown.append(row(c, k, layout, act, ipb, *(parts[x] for x in PARTS)))
                floors += [(hw, c, k, layout, act, floors_us(per_output, wave, c, hw)) for hw in HARDWARE]
    lines += ["", "Per output (warp instructions; `wavefronts`: shared-memory wavefronts):", ""]
    lines += header("C", "k", "layout", "act", *CLASSES, "total", "wavefronts") + mix
    lines += ["", "The same totals by part of the kernel (stage: input tile to shared memory; conv: ldmatrix + "
              "mma; epilogue: activation, BN, residual, result to shared memory; store: result to global "
              "memory; loop: the rest of the item loop; setup: per block, over items_per_block items):", ""]
    lines += header("C", "k", "layout", "act", "items/block", *PARTS) + breakdown
    if arch == "sm_90":  # the floors are for Hopper (H100, H200), which runs the sm_90 code
        lines += ["", f"Floors in µs (largest = the bound; {ISSUE_PER_CLK} issues and {WAVEFRONTS_PER_CLK} "
                  f"wavefront per SM clock, an m16n8k16 per {MMA_CLK} SM clocks):", ""]
        lines += header("GPU", "C", "k", "layout", "act", "DRAM", "issue", "smem", "tensor", "bound", "bound / DRAM")
        for hw, c, k, layout, act, f in floors:
            bound = max(f, key=f.get)
            lines.append(row(hw.name, c, k, layout, act, *(f"{f[x]:.0f}" for x in ("DRAM", "issue", "smem", "tensor")),
                             bound, f"{f[bound] / f['DRAM']:.2f}"))
    return lines + [""]


def report(label: str, archs) -> str:
    src = Sources()
    lines = [f"# CUDA tile kernels: resources and cost per output from the SASS ({label})", ""]
    lines += [
        f"Generated by `python benchmarks/sass_report.py --label {label}` (nvcc "
        f"{nvcc_version()}); no GPU involved. Kernels: `{kernel_name(7)}` and the k = 9 one, the bf16 eval forward "
        f"of the key shapes (batch {N}, {H}x{W}). The layout is a runtime branch of the same kernel, so both layouts "
        "share the resource line and differ in the per-output mix. Per-output figures are warp instructions "
        "(each issues once for 32 lanes) per output element; their wavefronts assume no bank conflicts (the dh "
        "scratch's, at the end, are counted from its addresses). See the module docstring for the model and what "
        "it leaves out.",
        "",
    ]
    smem = smem_table()
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            lines += arch_section(arch, src, smem, tmp)
    lines += smem_section(smem, plan_table())
    lines += dweight_section(dweight_scratch())
    lines += ["Hardware constants: " + "; ".join(f"{hw.name}: {hw.sms} SMs at {hw.ghz} GHz, {hw.note}"
                                                 for hw in HARDWARE) + ".", ""]
    return "\n".join(lines)


def nvcc_version() -> str:
    out = subprocess.run([tool("nvcc"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+)", out)
    return m.group(1) if m else "?"


# The shared memory of the devices the tables plan for: per multiprocessor and the most one
# block may opt into. sm_86 stands for sm_86 and sm_89 alike (A10, L4, RTX 30 and 40 series),
# which run the sm_80 code.
SMEM = {"sm_90": (228 * 1024, 227 * 1024), "sm_80": (164 * 1024, 163 * 1024), "sm_86": (100 * 1024, 99 * 1024)}
MODES = {"apply": "kApply", "stats": "kStats", "grad_sums": "kGradSums", "grad_h": "kGradH", "grad_x": "kGradX"}
TABLE_K = (3, 5, 7, 9)  # the templated kernel sizes
GENERIC_K = (4, 31)    # the generic path's
PLAN_K = (3, 5, 7, 9, 25, 26, 27, 28, 31)
CALLS = {"eval": "kForwardEval", "train": "kForwardTrain", "backward": "kBackward"}


def host_program(body: str) -> list:
    """The output lines of a C++ program that includes launch.cuh, built on the host against
    the emulator's CUDA headers (the kernels' own functions, not copies of them); the
    emulator's runtime is not linked: only host-side arithmetic runs."""
    head = ('#include <cstdio>\n#include "cuda/launch.cuh"\n'
            "using namespace convmixer_kernels;\nusing namespace convmixer_kernels::cuda;\n")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "host.cpp")
        with open(src, "w") as f:
            f.write(head + body)
        exe = os.path.join(tmp, "host")
        cxx = shutil.which(os.environ.get("CXX", "g++")) or sys.exit("sass_report: no host C++ compiler")
        subprocess.run([cxx, "-std=c++17", "-x", "c++", "-DCONVMIXER_KERNELS_CUDA_EMULATOR", "-I", CSRC,
                        "-I", os.path.join(ROOT, "tests", "harness", "cuda_emulator", "include"), src, "-c", "-o",
                        exe + ".o"], check=True)
        subprocess.run([cxx, exe + ".o", "-o", exe], check=True)
        return subprocess.run([exe], capture_output=True, text=True, check=True).stdout.splitlines()


def budgets() -> str:
    return ", ".join(f"SmemBudget{{{per_sm}, {per_block}, 1024}}" for per_sm, per_block in SMEM.values())


def smem_table() -> dict:
    """{(dtype, tile, k, pass): {total1, total2, stages_<arch>, blocks_<arch>}}: the dynamic
    shared memory of every configuration with one and two buffers, and the depth and blocks
    per multiprocessor launch.cuh's pipeline_stages gives it on each device (blocks of
    several items; 0 blocks: it cannot launch there, and the planner takes another tile)."""
    cases = []
    for dtype, t in (("16-bit", "__nv_bfloat16"), ("float32", "float")):
        for mode in MODES:
            for tile, cfg in (("wide", "CfgWide"), ("narrow", "CfgNarrow")):
                cases += [(dtype, t, tile, cfg, k, k, mode) for k in TABLE_K]
            cases += [(dtype, t, "generic", "CfgGeneric", 0, k, mode) for k in GENERIC_K]
    body = ["template <typename T, int K, class Cfg, Mode M> void show(int k) {\n"
            "  Plan p{}; p.K = K; p.TH = Cfg::TH; p.TW = Cfg::TW;\n"
            "  const InTile t = in_tile<T>(p, k, (k - 1) / 2);\n"
            "  TileArgs a{}; a.rows = t.rows; a.pitch = t.pitch; a.k = k; a.items_per_block = 8;\n"
            "  std::printf(\"%zu %zu\", SmemLayout<T, K, Cfg, M>(a.rows, a.pitch, k, 1).total,\n"
            "              SmemLayout<T, K, Cfg, M>(a.rows, a.pitch, k, 2).total);\n"
            f"  for (const SmemBudget b : {{{budgets()}}}) {{\n"
            "    const int s = pipeline_stages<T, K, Cfg, M>(a, b);\n"
            "    std::printf(\" %d %d\", s, blocks_per_sm(SmemLayout<T, K, Cfg, M>(a.rows, a.pitch, k, s).total, b));\n"
            "  }\n  std::printf(\"\\n\");\n}\nint main() {\n"]
    body += [f"  show<{t}, {K}, {cfg}, Mode::{MODES[mode]}>({k});\n" for _, t, _, cfg, K, k, mode in cases]
    body.append("}\n")
    out = host_program("".join(body))
    table = {}
    for (dtype, _, tile, _, _, k, mode), line in zip(cases, out):
        v = [int(x) for x in line.split()]
        entry = {"total1": v[0], "total2": v[1]}
        for i, arch in enumerate(SMEM):
            entry[f"stages_{arch}"], entry[f"blocks_{arch}"] = v[2 + 2 * i], v[3 + 2 * i]
        table[(dtype, tile, k, mode)] = entry
    return table


def plan_table() -> dict:
    """{(dtype, k, call): {arch: tile or the refusal}}: the tiles launch.cuh's plan_call takes on
    each device for a call that prefers 32 x 32 tiles (batch 128, C = 768, 32 x 32, 132 SMs), or
    the pass it refuses the call for, with its bytes."""
    cases = [(dtype, t, k, call) for dtype, t in (("16-bit", "__nv_bfloat16"), ("float32", "float"))
             for k in PLAN_K for call in CALLS]
    body = ["template <typename T> void show(int k, Call call) {\n"
            "  const Geometry g{128, 768, 32, 32, 768 * 1024, 1024, 32, 1, k};\n"
            f"  for (const SmemBudget b : {{{budgets()}}}) {{\n"
            "    const Plan p = plan_call<T>(g, call, 132, b);\n"
            "    if (p.unfit_pass) std::printf(\"%s:%zu \", p.unfit_pass, p.unfit_bytes);\n"
            "    else std::printf(\"%s \", p.cfg == CfgId::kWide ? \"wide\"\n"
            "                     : p.cfg == CfgId::kNarrow ? \"narrow\" : \"generic\");\n"
            "  }\n  std::printf(\"\\n\");\n}\nint main() {\n"]
    body += [f"  show<{t}>({k}, Call::{CALLS[call]});\n" for _, t, k, call in cases]
    body.append("}\n")
    out = host_program("".join(body))
    return {(dtype, k, call): dict(zip(SMEM, line.split())) for (dtype, _, k, call), line in zip(cases, out)}


def smem_section(smem: dict, plans: dict) -> list:
    devices = ", ".join(f"{arch} ({per_sm // 1024} KB per SM, {per_block // 1024} KB per block)"
                        for arch, (per_sm, per_block) in SMEM.items())
    lines = ["## Shared memory and pipeline depth per configuration", "",
             "Dynamic shared memory per block with one and two buffers of the staged tiles (tile.cuh's SmemLayout), "
             f"and the buffers launch.cuh's pipeline_stages gives each, for blocks of several items, on {devices}, "
             "with the blocks per SM that leaves (registers cap them at 2: `__launch_bounds__(256, 2)`; 1 KB per "
             "block is reserved; `-`: does not fit). Tiles: wide 32 x 32 x 8 channels, narrow 16 x 16 x 16, generic "
             "16 x 16 x 8 (any k); 16-bit: float16 and bfloat16 alike. A block of one item always has one buffer.", ""]
    lines += header("dtype", "tile", "k", "pass", "1 buffer (KB)", "2 buffers (KB)",
                    *(f"{arch}: buffers, blocks/SM" for arch in SMEM))
    for (dtype, tile, k, mode), e in smem.items():
        cells = [f"{e[f'stages_{a}']}, {e[f'blocks_{a}']}" if e[f"blocks_{a}"] else "-" for a in SMEM]
        lines.append(row(dtype, tile, k, mode, f"{e['total1'] / 1024:.1f}", f"{e['total2'] / 1024:.1f}", *cells))
    lines += ["", "The tiles launch.cuh's plan_call takes for each call on each device where 32 x 32 tiles are "
              "preferred (batch 128, C = 768, 32 x 32): the 32 x 32 tile (wide) unless one of the call's passes "
              "does not fit it, then 16 x 16 (narrow); any other k the generic tile; where nothing fits, the pass "
              "the call is refused for and the bytes it needs (with one buffer).", ""]
    lines += header("dtype", "k", "call", *SMEM)
    for (dtype, k, call), by_arch in plans.items():
        lines.append(row(dtype, k, call, *(by_arch[a].replace(":", " needs ") + (" B" if ":" in by_arch[a] else "")
                                           for a in SMEM)))
    return lines + [""]


def dweight_scratch() -> dict:
    """{(tile, k): (per-lane byte addresses of each warp instruction, tasks per warp)}: one task's
    shared-memory accesses of the tensor-core weight gradient's dh scratch (tile_dweight.cuh),
    from its own address functions: the fragment stores of dweight_store_dh (a 32-bit pair into
    copy 0, two 16-bit elements into copy 1) and the A loads of dweight_task_mma (32 bits,
    kLoads per dh row)."""
    body = ["template <int K, class Cfg> void show() {\n"
            "  using M = DweightMma<K, Cfg::NB>;\n  using F = Frag<true, Cfg::NB>;\n"
            "  constexpr int D = band_shift<__nv_bfloat16, K>();\n"
            "  std::printf(\"task %d %d %d\\n\", Cfg::TW, K, Cfg::TPW);\n"
            "  auto op = [](const char* kind, int bytes, auto elem) {\n"
            "    std::printf(\"%s %d\", kind, bytes);\n"
            "    for (int l = 0; l < 32; ++l) std::printf(\" %d\", 2 * elem(l));\n"
            "    std::printf(\"\\n\");\n  };\n"
            "  for (int e = 0; e < 4 * Cfg::NB; e += 2) {\n"
            "    op(\"sts\", 4, [&](int l) { return M::at(0, F::row(e, l), F::col(e, l)); });\n"
            "    for (int h = 0; h < 2; ++h)\n"
            "      op(\"sts\", 2, [&](int l) { return M::at(1, F::row(e, l), F::col(e, l)) + h; });\n"
            "  }\n"
            "  for (int p = 0; p < 16; ++p)\n"
            "    for (int u = 0; u < M::kLoads; ++u)\n"
            "      op(\"lds\", 4, [&](int l) { return M::a_start(l, D) + p * M::kRow + 8 * u; });\n"
            "}\nint main() {\n"]
    body += [f"  show<{k}, {cfg}>();\n" for cfg in ("CfgWide", "CfgNarrow") for k in (5, 7, 9)]
    body.append("}\n")
    table, cur = {}, None
    for line in host_program("".join(body)):
        words = line.split()
        if words[0] == "task":
            tw, k, tpw = (int(w) for w in words[1:])
            cur = table.setdefault(("wide" if tw == 32 else "narrow", k), ([], tpw))[0]
        else:
            cur.append((words[0], int(words[1]), [int(w) for w in words[2:]]))
    return table


def bank_wavefronts(addresses, width: int) -> int:
    """Shared-memory wavefronts of one warp instruction whose lane l accesses `width` bytes at
    byte address addresses[l]: each of the 32 banks (4-byte words, word w in bank w % 32)
    serves one word per wavefront, lanes on the same word share it; 8- and 16-byte accesses
    go a half and a quarter warp at a time."""
    lanes = 32 // max(1, width // 4)
    total = 0
    for first in range(0, len(addresses), lanes):
        words = collections.defaultdict(set)
        for a in addresses[first:first + lanes]:
            for w in range(a // 4, (a + width - 1) // 4 + 1):
                words[w % 32].add(w)
        total += max(len(ws) for ws in words.values())
    return total


def dweight_section(scratch: dict) -> list:
    lines = ["## Bank conflicts of the weight gradient's dh scratch", "",
             "The dh pass on tensor cores (16-bit, k >= 5) writes each task's dh rows into a per-warp scratch and "
             "reads them back as MMA A operands (tile_dweight.cuh). Its instructions and wavefronts per item and "
             "warp, counted from the addresses of every lane (`bank_wavefronts`; the SASS tables above assume "
             "conflict-free accesses):", ""]
    lines += header("tile", "k", "stores", "store wavefronts", "A loads", "A-load wavefronts", "conflict factor")
    for (tile, k), (ops, tpw) in scratch.items():
        count = collections.Counter()
        for kind, width, addresses in ops:
            count[kind] += tpw
            count[kind + "_wave"] += tpw * bank_wavefronts(addresses, width)
        total = count["sts"] + count["lds"]
        lines.append(row(tile, k, count["sts"], count["sts_wave"], count["lds"], count["lds_wave"],
                         f"{(count['sts_wave'] + count['lds_wave']) / total:.2f}"))
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="what the report describes, e.g. before or after")
    parser.add_argument("--arch", default="sm_90,sm_80", help="comma-separated nvcc -arch values")
    parser.add_argument("--out", help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    text = report(args.label, args.arch.split(","))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
