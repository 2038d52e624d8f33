"""Fused-attention export experiment for the Helios denoiser (stage-2 shape, real dimensions, few layers).

`prepare`: builds HeliosTransformer3DModel(num_layers=N) with random weights (bf16, `_keep_in_fp32_modules`
fp32), wraps it like tools/export/export.py `DenoiserStage` (fp32 graph I/O, frame indices baked in) and
exports it on the CPU (torch.onnx dynamo, as export.py) in up to three attention variants:

  mha     diffusers' attention call (`dispatch_attention_fn`) replaced by a custom torch op
          (heliosbench::mha, eager = SDPA) that the exporter translates (custom_translation_table, onnxscript)
          to com.microsoft::MultiHeadAttention on [B,S,H*D] q/k/v (bf16; onnxruntime CUDA picks
          flash / memory-efficient kernels). Self- and cross-attention both.           opset 22
  attn23  unchanged model exported at opset 23: torch.onnx maps SDPA to the ONNX `Attention` op.
  plain   unchanged model at opset 22: SDPA decomposed to MatMul + Softmax (the current export.py graphs;
          materialises the [40, L, L] score tensor).

Then it moves the same weights to the GPU and times torch eager (native SDPA = flash; also the
memory-efficient backend as a kernel-noise baseline) and saves inputs and outputs.

`ort`: runs one exported graph in onnxruntime-gpu (CUDAExecutionProvider, CPU fallback disabled, IoBinding
with device-resident inputs/outputs), times it, measures device memory, compares with the torch output.

Device usage (see docs/gpu-notes.md):
  python3 tools/bench/fused_attention.py prepare --layers 1 --dir /tmp/fa --variants mha,attn23,plain
  PYTHONPATH=/tmp/ortpy:$PYTHONPATH python3 tools/bench/fused_attention.py ort --dir /tmp/fa --variant mha
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "export"))
sys.path.insert(0, str(ROOT / "tools" / "bench"))

HEADS, HEAD_DIM = 40, 128
INPUTS = [  # name, shape, dtype (stage 2 at 384x640)
    ("hidden_states", (1, 16, 9, 48, 80), np.float32),
    ("timestep", (1,), np.int64),
    ("encoder_hidden_states", (1, 512, 4096), np.float32),
    ("latents_history_short", (1, 16, 2, 48, 80), np.float32),
    ("latents_history_mid", (1, 16, 2, 48, 80), np.float32),
    ("latents_history_long", (1, 16, 16, 48, 80), np.float32),
]
OPSET = {"mha": 22, "mha16": 22, "attn23": 23, "plain": 22}


@torch.library.custom_op("heliosbench::mha", mutates_args=())
def mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, S, H, D] q, [B, L, H, D] k/v -> [B, S, H, D]; no mask, scale 1/sqrt(D) (diffusers' native call)."""
    o = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2).contiguous()


@mha.register_fake
def _mha_fake(q, k, v):
    return torch.empty_like(q)


def register_mha_schema():
    """onnx's Python schema registry has no com.microsoft ops (onnxscript then can't build the node): register a
    minimal MultiHeadAttention schema (q, k, v -> output; num_heads) matching onnxruntime's contrib op."""
    import onnx
    from onnx.defs import OpSchema

    try:
        onnx.defs.get_schema("MultiHeadAttention", 1, "com.microsoft")
        return
    except Exception:  # noqa: BLE001
        pass
    T = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    schema = OpSchema(
        "MultiHeadAttention", "com.microsoft", 1, doc="onnxruntime contrib MultiHeadAttention (subset)",
        inputs=[OpSchema.FormalParameter("query", "T"), OpSchema.FormalParameter("key", "T"),
                OpSchema.FormalParameter("value", "T")],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", T, "float tensors")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "heads")],
    )
    onnx.defs.register_schema(schema)


def mha_translation(opset: int, heads: int, head_dim: int, fp16: bool = False):
    import onnxscript

    op = getattr(onnxscript, f"opset{opset}")
    register_mha_schema()
    msft = onnxscript.values.Opset("com.microsoft", 1)
    mha_op = msft.MultiHeadAttention

    def heliosbench_mha(q, k, v):
        to3 = op.Constant(value_ints=[0, 0, -1])
        q3, k3, v3 = op.Reshape(q, to3), op.Reshape(k, to3), op.Reshape(v, to3)
        if fp16:  # bf16 graph, attention core in fp16 (onnxruntime's flash path is fp16-only here)
            q3, k3, v3 = op.Cast(q3, to=10), op.Cast(k3, to=10), op.Cast(v3, to=10)
        o = mha_op(q3, k3, v3, num_heads=heads)
        if fp16:
            o = op.CastLike(o, q)
        return op.Reshape(o, op.Constant(value_ints=[0, 0, heads, head_dim]))

    return heliosbench_mha


def set_attention(fused: bool):
    import diffusers.models.transformers.transformer_helios as th

    if not hasattr(th, "_orig_dispatch"):
        th._orig_dispatch = th.dispatch_attention_fn
    th.dispatch_attention_fn = (lambda q, k, v, *a, **kw: torch.ops.heliosbench.mha(q, k, v)) if fused \
        else th._orig_dispatch


def build(layers: int, seed: int, config: dict | None = None):
    from diffusers import HeliosTransformer3DModel
    from reference import KEEP_FP32

    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        tr = HeliosTransformer3DModel(**(config or {"num_layers": layers}))
    finally:
        torch.set_default_dtype(prev)
    for name, p in tr.named_parameters():
        if any(k in name.split(".") for k in KEEP_FP32):
            p.data = p.data.float()
    return tr.eval().requires_grad_(False)


def make_inputs(seed: int, inputs=INPUTS):
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, shape, dt in inputs:
        if dt == np.int64:
            out.append(torch.tensor([857], dtype=torch.int64))
        else:
            x = torch.randn(shape, generator=g)
            if name == "encoder_hidden_states":
                x[:, 24:] = 0
            out.append(x)
    return out


def export(module, args, names, path: Path, opset: int, fused: bool):
    set_attention(fused)
    table = {torch.ops.heliosbench.mha.default: mha_translation(opset, HEADS_CFG[0], HEADS_CFG[1], fused == "fp16")} \
        if fused else None
    t = time.perf_counter()
    with torch.no_grad():
        prog = torch.onnx.export(module, tuple(args), None, input_names=names, output_names=["velocity"],
                                 opset_version=opset, dynamo=True, optimize=True, verbose=False,
                                 custom_translation_table=table)
    prog.save(str(path), external_data=True)
    set_attention(False)
    ops = {}
    for n in prog.model.graph:
        key = (n.domain + "::" if n.domain else "") + n.op_type
        ops[key] = ops.get(key, 0) + 1
    return time.perf_counter() - t, ops


HEADS_CFG = [HEADS, HEAD_DIM]


def cuda_time(fn, warm=3, reps=10):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts), min(ts)


def cmd_prepare(a):
    import export as ex

    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    cfg = None
    inputs = INPUTS
    if a.tiny:  # CPU smoke test of the export path only (fp32, tiny dims, 64x64)
        cfg = dict(ex.TINY_TRANSFORMER)
        HEADS_CFG[:] = [cfg["num_attention_heads"], cfg["attention_head_dim"]]
        inputs = [(n, tuple(s[:3]) + (8, 8) if len(s) == 5 else (s if n != "encoder_hidden_states" else
                   (1, 16, 32)), dt) for n, s, dt in INPUTS]
    t = time.perf_counter()
    tr = build(a.layers, a.seed, cfg)
    if a.tiny:
        tr = tr.float()
    build_s = time.perf_counter() - t
    module = ex.DenoiserStage(tr).eval()
    args = make_inputs(a.seed + 1, inputs)
    names = [n for n, _, _ in inputs]
    info = {"layers": a.layers, "build_s": build_s, "torch": torch.__version__, "variants": {},
            "params": sum(p.numel() for p in tr.parameters())}
    for v in a.variants.split(","):
        try:
            secs, ops = export(module, args, names, d / f"{v}.onnx", OPSET[v],
                               {"mha": True, "mha16": "fp16"}.get(v, False))
            info["variants"][v] = {"export_s": secs, "opset": OPSET[v], "ops": ops}
            print(f"export {v}: {secs:.1f}s  attention-ish ops: "
                  f"{ {k: c for k, c in ops.items() if 'Attention' in k or k in ('Softmax', 'MatMul')} }", flush=True)
        except Exception as e:  # noqa: BLE001
            info["variants"][v] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
            print(f"export {v} FAILED: {type(e).__name__}: {str(e)[:600]}", flush=True)
    np.savez(d / "inputs.npz", **{n: x.numpy() for n, x in zip(names, args)})
    if a.skip_torch:
        (d / f"prepare_{a.variants.replace(',', '_')}.json").write_text(json.dumps(info, indent=1))
        return
    if a.tiny:
        with torch.no_grad():
            np.save(d / "ref_flash.npy", module(*args).numpy())
        (d / "prepare.json").write_text(json.dumps(info, indent=1))
        return
    dev_args = [x.cuda() for x in args]
    module = module.cuda()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
            with sdpa_kernel(backend):
                med, mn = cuda_time(lambda: module(*dev_args))
                out = module(*dev_args).float().cpu().numpy()
            np.save(d / f"ref_{name}.npy", out)
            info[f"torch_{name}_ms"] = {"median": med, "min": mn}
            print(f"torch eager ({name} SDPA): median {med:.2f} ms  min {mn:.2f} ms", flush=True)
    info["torch_peak_activation_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9
    info["torch_weights_gb"] = base / 1e9
    f, e = np.load(d / "ref_flash.npy"), np.load(d / "ref_efficient.npy")
    info["torch_flash_vs_efficient"] = errors(e, f)
    print("torch flash vs efficient:", info["torch_flash_vs_efficient"])
    (d / "prepare.json").write_text(json.dumps(info, indent=1))


def errors(x, ref):
    x, ref = x.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(x - ref)
    return {"max_abs": float(diff.max()), "max_ref": float(np.abs(ref).max()),
            "max_abs_over_max_ref": float(diff.max() / max(np.abs(ref).max(), 1e-12)),
            "rel_l2": float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-12)), "nan": bool(np.isnan(x).any())}


def drop_zero_pads(src: Path, dst: Path) -> int:
    """The bf16 graph has 4 edge-mode Pad nodes (diffusers `pad_for_3d_conv` before the mid/long patch convs)
    whose pads are all zero at 384x640; onnxruntime has no bf16 Pad kernel on CUDA or CPU, so session creation
    fails. Rewrite them to Identity (exact). External weights are referenced, not copied."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src), load_external_data=False)
    consts = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for at in n.attribute:
                if at.name == "value":
                    consts[n.output[0]] = at.t
    count = 0
    for n in m.graph.node:
        if n.op_type == "Pad" and len(n.input) > 1 and n.input[1] in consts:
            t = consts[n.input[1]]
            pads = numpy_helper.to_array(t) if not t.external_data else None
            if pads is not None and not pads.any():
                n.op_type = "Identity"
                del n.input[1:]
                del n.attribute[:]
                count += 1
    onnx.save(m, str(dst))
    return count


def cmd_ort(a):
    import onnxruntime as ort

    d = Path(a.dir)
    if a.fix_pad:
        fixed = d / f"{a.variant}_nopad.onnx"
        n = drop_zero_pads(d / f"{a.variant}.onnx", fixed)
        print(f"{a.variant}: {n} zero Pad nodes -> Identity")
    res = {"variant": a.variant, "ort": ort.__version__, "tf32": a.tf32, "providers_available": ort.get_available_providers()}
    inputs = dict(np.load(d / "inputs.npz"))
    ref = np.load(d / "ref_flash.npy") if (d / "ref_flash.npy").exists() else None
    dev = a.device
    if dev == "cuda":
        torch.cuda.init()
        free0, total = torch.cuda.mem_get_info()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if dev == "cuda":
        if not a.allow_cpu:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        prov = [("CUDAExecutionProvider", {"device_id": 0, "use_tf32": str(a.tf32),
                                           "arena_extend_strategy": "kSameAsRequested"})]
    else:
        prov = ["CPUExecutionProvider"]
    t = time.perf_counter()
    try:
        sess = ort.InferenceSession(str(fixed if a.fix_pad else d / f"{a.variant}.onnx"), so, providers=prov)
    except Exception as e:  # noqa: BLE001
        res["error"] = f"session: {type(e).__name__}: {str(e)[:1500]}"
        print(f"ort {a.variant}: SESSION FAILED {res['error'][:800]}")
        Path(a.json).write_text(json.dumps(res, indent=1)) if a.json else None
        return
    res["session_s"] = time.perf_counter() - t
    res["session_providers"] = sess.get_providers()
    if dev == "cuda":
        free1, _ = torch.cuda.mem_get_info()
        res["session_mem_gb"] = (free0 - free1) / 1e9
    b = sess.io_binding()
    keep = []
    for name, arr in inputs.items():
        v = ort.OrtValue.ortvalue_from_numpy(arr, dev, 0)
        keep.append(v)
        b.bind_ortvalue_input(name, v)
    out_shape = [int(s) for s in sess.get_outputs()[0].shape]
    ov = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, dev, 0)
    b.bind_ortvalue_output("velocity", ov)
    try:
        sess.run_with_iobinding(b)
    except Exception as e:  # noqa: BLE001
        res["error"] = f"run: {type(e).__name__}: {str(e)[:1500]}"
        print(f"ort {a.variant}: RUN FAILED {res['error'][:800]}")
        Path(a.json).write_text(json.dumps(res, indent=1)) if a.json else None
        return
    ts = []
    for i in range(a.reps + 2):
        t = time.perf_counter()
        sess.run_with_iobinding(b)
        if i >= 2:
            ts.append((time.perf_counter() - t) * 1e3)
    res["ms_median"], res["ms_min"] = statistics.median(ts), min(ts)
    if dev == "cuda":
        free2, _ = torch.cuda.mem_get_info()
        res["peak_mem_after_runs_gb"] = (free0 - free2) / 1e9
    out = ov.numpy()
    if ref is not None:
        res["vs_torch_flash"] = errors(out, ref)
        if (d / "ref_efficient.npy").exists():
            res["vs_torch_efficient"] = errors(out, np.load(d / "ref_efficient.npy"))
    if a.kprof and dev == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                sess.run_with_iobinding(b)
        agg = {}
        for ev in prof.events():
            if ev.device_type.name == "CUDA":
                k = ev.name[:90]
                t_, c_ = agg.get(k, (0.0, 0))
                agg[k] = (t_ + ev.device_time_total / 1e3 / 2, c_ + 1)
        top = sorted(agg.items(), key=lambda kv: -kv[1][0])[:25]
        res["kernels_ms_per_run"] = [(k, t_, c_ // 2) for k, (t_, c_) in top]
        res["kernels_total_ms_per_run"] = sum(t_ for t_, _ in agg.values())
        print(f"  kernel time per run {res['kernels_total_ms_per_run']:.1f} ms; top:")
        for k, t_, c_ in res["kernels_ms_per_run"][:14]:
            print(f"   {t_:8.2f} ms x{c_:4d}  {k}")
    print(f"ort {a.variant} tf32={a.tf32}: median {res['ms_median']:.2f} ms (min {res['ms_min']:.2f})  session "
          f"{res['session_s']:.1f}s  mem session {res.get('session_mem_gb', 0):.2f} GB after-runs "
          f"{res.get('peak_mem_after_runs_gb', 0):.2f} GB  vs torch {res.get('vs_torch_flash')}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", required=True)
    p.add_argument("--variants", default="mha,attn23,plain")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny fp32 model, 64x64")
    p.add_argument("--skip-torch", action="store_true", help="export only (inputs are the same for a given seed)")
    o = sub.add_parser("ort")
    o.add_argument("--dir", required=True)
    o.add_argument("--variant", required=True)
    o.add_argument("--tf32", type=int, default=0)
    o.add_argument("--reps", type=int, default=10)
    o.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    o.add_argument("--json", default=None)
    o.add_argument("--kprof", action="store_true", help="torch.profiler (CUPTI) kernel breakdown of 2 runs")
    o.add_argument("--fix-pad", type=int, default=1, help="rewrite all-zero Pad nodes to Identity (default 1)")
    o.add_argument("--allow-cpu", action="store_true", help="allow CPU fallback (the Pad before the mid/long patch convs)")
    a = ap.parse_args()
    {"prepare": cmd_prepare, "ort": cmd_ort}[a.cmd](a)


if __name__ == "__main__":
    main()
