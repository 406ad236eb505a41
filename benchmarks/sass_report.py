"""Per-kernel resource and cost report of the CUDA tile kernels, read from their SASS.

No GPU is needed: nvcc compiles the instantiations the key shapes run (bf16 eval forward,
batch 128, 32 x 32, C = 768 k = 7 and C = 1536 k = 9: the 32 x 32 tile of 8 channels,
Mode::kApply) to a cubin with line information; ptxas gives registers and spills;
nvdisasm gives the instructions, each with its chain of inlined source lines, and the
control-flow graph, so each instruction gets the number of times one warp runs it per
work item:

  - 0 for the code of the other layout, the other activations, the element-wise staging
    (the key shapes take the 16-byte paths) and the exact CUDA-core recomputation that
    only a non-finite accumulator enters (with the code ptxas copies into its path);
  - the trip count of its staging loop (a model of the loop bounds of stage_input and
    move_tile, below) inside an inner loop of the item loop, else 1;
  - 1 / items_per_block outside the item loop (block setup and the partials).

Summed over a block's 8 warps and divided by the item's CB * TH * TW outputs, that is the
instruction mix per output. With the hardware constants below it gives four floors for
the shape (DRAM, issue slots, shared-memory wavefronts, tensor cores); the largest is the
bound the code can at best reach. It is a static model: no latency, occupancy or
bank-conflict effects (wavefronts assume conflict-free accesses), subroutine calls
(division slow paths) are not followed, and code ptxas merges between activations counts
for the one its line information names. Only a GPU measures the real time.

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


class Sources:
    """Which function (and which branch of a layout-dispatching function) a source line
    of csrc/cuda lies in, read from the files themselves."""

    DEF = re.compile(r"^(?:template <.*>\s*)?(?:__global__|__device__|__host__)"
                     r"(?:[^(]|__launch_bounds__\([^)]*\))*?\b(?!__launch_bounds__)(\w+)\s*\(")
    VARIANTS = {  # the top-level branches of the staging functions, in order
        "stage_input": ("nchw16", "nchw1", "channels_last16", "channels_last1"),
        "move_tile": ("nchw16", "nchw1", "channels_last16", "channels_last1"),
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
        starts_new = ins.op.split(".")[0] in ("BRA", "EXIT", "RET", "BRX", "JMP")
    if cur:
        blocks.append(cur)
    succ = []
    for b, blk in enumerate(blocks):
        for ins in blk:
            ins.block = b
        last = blk[-1]
        nxt = [b + 1] if b + 1 < len(blocks) else []
        base = last.op.split(".")[0]
        if base == "BRA":
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


def staging_trips(k: int, layout: str, region: str) -> float:
    """Iterations per warp of the staging loops (`for (u0 = threadIdx.x; u0 < units; u0 +=
    kBatch * kThreads)`) at the key shapes, averaged over the block's warps."""
    rows, pitch = TH + k - 1, TW + 8
    if region == "stage_input":
        units = CB * rows * (pitch // VEC) if layout == "nchw" else rows * pitch * (CB // VEC)
    else:  # move_tile, the result out
        units = CB * TH * (TW // VEC) if layout == "nchw" else TH * TW * (CB // VEC)
    step = BATCH_LOADS * THREADS
    rounds = math.ceil(units / step)
    return sum(sum(1 for t in range(rounds) if t * step + 32 * w < units) for w in range(WARPS)) / WARPS


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
CLASSES = ("mma", "ldmatrix", "lds", "sts", "global", "fp32", "mufu", "convert", "int/addr", "control",
           "uniform/const")


def wavefronts(op: str) -> float:
    """Shared-memory wavefronts of one warp instruction, conflict-free."""
    base = op.split(".")[0]
    if base == "LDSM":
        return float(op.split(".")[-1]) if op.split(".")[-1] in ("1", "2", "4") else 1.0
    if base in ("LDS", "STS"):
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
    inner = {h: body for h, body in loops.items() if h != item_header and body < item_body}
    ipb = items_per_block(c)
    other_cases = set().union(*(v for a, v in src.cases.items() if a != act))
    wanted = f"{'nchw' if layout == 'nchw' else 'channels_last'}16"
    cold = cold_blocks(blocks, succ, src)

    def excluded(ins):
        if ins.block in cold:
            return True
        for frame in ins.chain:
            if frame in other_cases or src.func.get(frame) == "conv_exact":
                return True
            var = src.variant.get(frame)
            if var is not None and var != wanted:
                return True
        return False

    def region(body):
        funcs = collections.Counter(src.func.get(f) for blk in body for i in blocks[blk] for f in i.chain[:1])
        for name in ("stage_input", "move_tile"):
            if funcs[name]:
                return name
        return None

    trips = {}
    for h, body in inner.items():
        reg = region(body)
        t = staging_trips(k, layout, reg) if reg else 1.0
        for b in body:
            trips[b] = trips.get(b, 1.0) * t
    case_frames = set().union(*src.cases.values())

    def part(ins):
        """Which part of the kernel an instruction belongs to, for the breakdown."""
        if ins.block not in item_body:
            return "setup"
        for frame in ins.chain:
            name = src.func.get(frame)
            if name in ("stage_input", "move_tile", "conv_mma"):
                return {"stage_input": "stage", "move_tile": "store", "conv_mma": "conv"}[name]
            if frame in case_frames:
                return "epilogue"
        return "loop"

    per_item, per_part = collections.Counter(), collections.Counter()
    wave = 0.0
    for blk in blocks:
        for ins in blk:
            if excluded(ins):
                continue
            weight = trips.get(ins.block, 1.0) if ins.block in item_body else 1.0 / ipb
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


def arch_section(arch: str, src: Sources, tmp: str) -> list:
    cubin, log = compile_cubin(arch, tmp)
    usage = ptxas_usage(log)
    by_k = {}
    for name, instrs in disassemble(cubin).items():
        m = re.search(r"tile_kernelI13__nv_bfloat16Li(\d+)E", name)
        if m:
            by_k[int(m.group(1))] = (name, instrs)
    lines = [f"## {arch}", ""]
    lines += header("kernel", "registers", "spill st/ld (B)", "stack (B)", "dynamic smem (B)",
                    "blocks/SM by registers, by smem (228 KB)", "static instructions")
    for _, k in KEY_SHAPES:
        name, instrs = by_k[k]
        u = usage.get(name, {})
        smem = dynamic_smem(k)
        by_regs = 65536 // (THREADS * math.ceil(u["regs"] / 8) * 8)
        by_smem = (228 * 1024) // (smem + 1024)  # 1 KB per block is reserved
        lines.append(row(f"k={k}", u["regs"], f"{u['spill_st']}/{u['spill_ld']}", u["stack"], smem,
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
        "(each issues once for 32 lanes) per output element; wavefronts assume no bank conflicts. See the module "
        "docstring for the model and what it leaves out.",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            lines += arch_section(arch, src, tmp)
    lines += ["Hardware constants: " + "; ".join(f"{hw.name}: {hw.sms} SMs at {hw.ghz} GHz, {hw.note}"
                                                 for hw in HARDWARE) + ".", ""]
    return "\n".join(lines)


def nvcc_version() -> str:
    out = subprocess.run([tool("nvcc"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+)", out)
    return m.group(1) if m else "?"


def dynamic_smem(k: int) -> int:
    """SmemLayout<bf16, k, CfgWide, kApply>(rows, pitch, k).total, from a host build of
    launch.cuh (the kernels' own function, not a copy of it)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "smem.cpp")
        with open(src, "w") as f:
            f.write('#include <cstdio>\n#include "cuda/launch.cuh"\nusing namespace convmixer_kernels::cuda;\n'
                    f"int main() {{ std::printf(\"%zu\", SmemLayout<__nv_bfloat16, {k}, CfgWide, Mode::kApply>"
                    f"(CfgWide::TH + {k} - 1, CfgWide::TW + 8, {k}).total); }}\n")
        exe = os.path.join(tmp, "smem")
        cxx = shutil.which(os.environ.get("CXX", "g++")) or sys.exit("sass_report: no host C++ compiler")
        subprocess.run([cxx, "-std=c++17", "-x", "c++", "-DCONVMIXER_KERNELS_CUDA_EMULATOR", "-I", CSRC,
                        "-I", os.path.join(ROOT, "tests", "harness", "cuda_emulator", "include"), src, "-c", "-o", exe + ".o"], check=True)
        # the emulator's runtime is not linked: only the constexpr-like layout arithmetic runs
        subprocess.run([cxx, exe + ".o", "-o", exe], check=True)
        return int(subprocess.run([exe], capture_output=True, text=True, check=True).stdout)


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
