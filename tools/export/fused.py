"""The GPU export path of the denoiser (`export.py graphs --fused-attention mha|attn23`).

docs/gpu-notes.md found three things that make the plain export unusable on onnxruntime's CUDA provider:

* RoPE: diffusers' `apply_rotary_emb_transposed` writes the rotated pairs with strided in-place slices
  (`out[..., 0::2] = ...`), which the exporter turns into 4 ScatterND nodes per block (~62 ms each at stage 2,
  87 % of a 1-layer forward). `rope_pairwise` computes the same values with reshapes (view the head dim as
  (d/2, 2), rotate the pair, stack, flatten): Mul/Sub/Add/Concat/Reshape instead of ScatterND. Same fp32
  operations in the same order as the original, so the result is bit-identical in torch
  (`check_rope_rewrite`).
* bf16 Pad: onnxruntime 1.31.1 has no bf16 Pad kernel. diffusers' `pad_for_3d_conv` pads by zero frames/pixels
  at every resolution the sampler runs (multiples of 64 px); `pad_for_3d_conv_nopad` returns the input itself
  when all pads are zero (no node at all) and otherwise pads in fp32 (replicate padding is exact in any dtype).
* Attention: the exporter decomposes SDPA into MatMul + Softmax, which materialises the [heads, L, L] score
  tensor (9.75 GB per layer at stage 2). `mha` replaces diffusers' `dispatch_attention_fn` by a custom torch op
  (eager: SDPA, exactly diffusers' native call) that the exporter translates to
  `com.microsoft::MultiHeadAttention` on [B, S, heads*head_dim] tensors (cuDNN flash kernel on sm90 in bf16,
  measured); `attn23` leaves diffusers alone and exports at opset 23, where torch maps SDPA to ONNX `Attention`.

Everything else (bf16 weights with `_keep_in_fp32_modules` in fp32, the fp32 LayerNorms and modulation) is
what `from_pretrained(torch_dtype=bf16)` gives, as in the plain export.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

MODES = ("mha", "attn23")
ATTN23_OPSET = 23
MHA_OPSET = 22  # bf16 Conv needs >= 22; MultiHeadAttention is a com.microsoft op (its own opset 1)


# ----------------------------------------------------------------------------------------------------------
# RoPE without ScatterND
# ----------------------------------------------------------------------------------------------------------


def rope_pairwise(hidden_states: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """diffusers 0.42.1 `apply_rotary_emb_transposed` without strided writes.

    hidden_states [B, L, H, D] (the transformer dtype), freqs_cis [B, L, 2D] fp32 = [cos | sin], each angle
    repeated twice (interleaved). For pair i: out[2i] = x[2i]*cos[2i] - x[2i+1]*sin[2i+1],
    out[2i+1] = x[2i]*sin[2i+1] + x[2i+1]*cos[2i]; computed in fp32 (type promotion of x * fp32 table),
    rounded once to the input dtype, exactly like the original."""
    x_1, x_2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cis.unsqueeze(-2).chunk(2, dim=-1)
    c = cos.unflatten(-1, (-1, 2))[..., 0]  # = cos[..., 0::2]
    s = sin.unflatten(-1, (-1, 2))[..., 1]  # = sin[..., 1::2]
    even = x_1 * c - x_2 * s
    odd = x_1 * s + x_2 * c
    return torch.stack([even, odd], dim=-1).flatten(-2).type_as(hidden_states)


def pad_for_3d_conv_nopad(x: torch.Tensor, kernel_size) -> torch.Tensor:
    """diffusers `pad_for_3d_conv` (replicate-pad T, H, W at the end to multiples of the kernel) without a Pad
    node when nothing is padded; a real pad runs in fp32 (exact) because ORT 1.31 has no bf16 Pad kernel."""
    _, _, t, h, w = x.shape
    pt, ph, pw = kernel_size
    pads = ((pt - t % pt) % pt, (ph - h % ph) % ph, (pw - w % pw) % pw)
    if not any(pads):
        return x
    y = torch.nn.functional.pad(x.float(), (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
    return y.to(x.dtype)


# ----------------------------------------------------------------------------------------------------------
# Attention as com.microsoft::MultiHeadAttention
# ----------------------------------------------------------------------------------------------------------


@torch.library.custom_op("helios::mha", mutates_args=())
def mha(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, S, H, D] q, [B, L, H, D] k/v -> [B, S, H, D]; no mask, scale 1/sqrt(D): what diffusers' native
    attention backend computes for Helios (`dispatch_attention_fn` with the default backend)."""
    o = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2).contiguous()


@mha.register_fake
def _mha_fake(q, k, v):
    return torch.empty_like(q)


def register_mha_schema() -> None:
    """onnx's Python registry has no com.microsoft schemas; onnxscript needs one to build the node. A minimal
    MultiHeadAttention (query, key, value -> output; num_heads) matching onnxruntime's contrib op."""
    import onnx
    from onnx.defs import OpSchema

    try:
        onnx.defs.get_schema("MultiHeadAttention", 1, "com.microsoft")
        return
    except Exception:  # noqa: BLE001  (SchemaError: not registered yet)
        pass
    types_ = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    onnx.defs.register_schema(OpSchema(
        "MultiHeadAttention", "com.microsoft", 1, doc="onnxruntime contrib MultiHeadAttention (q, k, v subset)",
        inputs=[OpSchema.FormalParameter("query", "T"), OpSchema.FormalParameter("key", "T"),
                OpSchema.FormalParameter("value", "T")],
        outputs=[OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", types_, "float tensors")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "number of heads")],
    ))


def mha_translation_table(opset: int, heads: int, head_dim: int) -> dict:
    """custom_translation_table for torch.onnx.export: helios::mha -> Reshape, MultiHeadAttention, Reshape."""
    import onnxscript

    op = getattr(onnxscript, f"opset{opset}")
    register_mha_schema()
    mha_op = onnxscript.values.Opset("com.microsoft", 1).MultiHeadAttention

    def helios_mha(q, k, v):
        to3 = op.Constant(value_ints=[0, 0, -1])
        o = mha_op(op.Reshape(q, to3), op.Reshape(k, to3), op.Reshape(v, to3), num_heads=heads)
        return op.Reshape(o, op.Constant(value_ints=[0, 0, heads, head_dim]))

    return {torch.ops.helios.mha.default: helios_mha}


def _dispatch_mha(query, key, value, *args, **kwargs):
    if kwargs.get("attn_mask") is not None or kwargs.get("is_causal") or kwargs.get("dropout_p", 0.0):
        raise NotImplementedError("fused export: Helios attention has no mask, no dropout, not causal")
    if kwargs.get("scale") is not None:
        raise NotImplementedError("fused export: only the default 1/sqrt(head_dim) scale")
    return torch.ops.helios.mha(query, key, value)


@contextlib.contextmanager
def gpu_export_patches(mode: str):
    """While active, diffusers' Helios transformer computes RoPE with `rope_pairwise`, pads with
    `pad_for_3d_conv_nopad` and (mode `mha`) attends through the `helios::mha` op."""
    import diffusers.models.transformers.transformer_helios as th

    if mode not in MODES:
        raise ValueError(f"fused attention mode {mode!r} (expected one of {MODES})")
    saved = {k: getattr(th, k) for k in ("apply_rotary_emb_transposed", "pad_for_3d_conv", "dispatch_attention_fn")}
    th.apply_rotary_emb_transposed = rope_pairwise
    th.pad_for_3d_conv = pad_for_3d_conv_nopad
    if mode == "mha":
        th.dispatch_attention_fn = _dispatch_mha
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(th, k, v)


def opset_for(mode: str) -> int:
    return ATTN23_OPSET if mode == "attn23" else MHA_OPSET


def translation_table(mode: str, transformer, opset: int) -> dict | None:
    if mode != "mha":
        return None
    cfg = transformer.config
    return mha_translation_table(opset, cfg.num_attention_heads, cfg.attention_head_dim)


# ----------------------------------------------------------------------------------------------------------
# Graph post-processing and checks
# ----------------------------------------------------------------------------------------------------------


def name_nodes_by_block(model) -> int:
    """Prefixes the name of every node inside `transformer.blocks.N` with `blocks.N/` (from the exporter's
    name-scope metadata, before it is stripped), so an onnxruntime profile can tell per-layer time from the
    rest. Returns the number of renamed nodes. Names only; the computation is untouched."""
    import ast

    import onnx_ir as ir

    count = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
        if not scopes:
            continue
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            continue
        block = next((p for p in parts if p.startswith("transformer.blocks.") and p.count(".") == 2), None)
        if block is not None and node.name and not node.name.startswith("blocks."):
            node.name = f"{block[len('transformer.'):]}/{node.name}"
            count += 1
    return count


def op_census(path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        key = (n.domain + "::" if n.domain and n.domain != "ai.onnx" else "") + n.op_type
        ops[key] = ops.get(key, 0) + 1
    return ops


def check_gpu_graph(path, mode: str) -> list[str]:
    """Problems that make a denoiser graph unfit for onnxruntime's CUDA provider (empty list = fine):
    ScatterND, any Pad on a bf16 tensor, a Softmax (= unfused attention), no fused attention node."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    problems = []
    ops = op_census(path)
    if ops.get("ScatterND"):
        problems.append(f"{ops['ScatterND']} ScatterND nodes (RoPE not rewritten?)")
    if ops.get("Softmax"):
        problems.append(f"{ops['Softmax']} Softmax nodes (attention not fused)")
    want = "com.microsoft::MultiHeadAttention" if mode == "mha" else "Attention"
    if not ops.get(want):
        problems.append(f"no {want} node")
    if ops.get("Pad"):
        inferred = onnx.shape_inference.infer_shapes(m)
        types_ = {v.name: v.type.tensor_type.elem_type for v in
                  list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
        for n in m.graph.node:
            if n.op_type == "Pad" and types_.get(n.input[0]) == onnx.TensorProto.BFLOAT16:
                problems.append(f"bf16 Pad node {n.name} (onnxruntime 1.31 has no bf16 Pad kernel)")
    return problems


# ----------------------------------------------------------------------------------------------------------
# onnx.reference support (CPU verification of bf16 graphs, which onnxruntime's CPU provider cannot run)
# ----------------------------------------------------------------------------------------------------------


def reference_ops() -> list:
    """OpRun implementations for onnx.reference.ReferenceEvaluator(new_ops=...): com.microsoft
    MultiHeadAttention (q, k, v [B, S, H*D]; softmax(q k^T / sqrt(D)) v with fp32 math, result in q's dtype)."""
    from onnx.reference.op_run import OpRun

    class MultiHeadAttention(OpRun):
        op_domain = "com.microsoft"

        def _run(self, query, key, value, num_heads=None):  # noqa: D401
            heads = num_heads or self.num_heads
            b, s, hd = query.shape
            d = hd // heads
            q = query.astype(np.float32).reshape(b, s, heads, d).transpose(0, 2, 1, 3)
            k = key.astype(np.float32).reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
            v = value.astype(np.float32).reshape(b, -1, heads, d).transpose(0, 2, 1, 3)
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(np.float32(d))
            scores -= scores.max(-1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(-1, keepdims=True)
            o = (p @ v).transpose(0, 2, 1, 3).reshape(b, s, hd)
            return (o.astype(query.dtype),)

    return [MultiHeadAttention]


# ----------------------------------------------------------------------------------------------------------
# Self-checks (run by `python tools/export/fused.py`)
# ----------------------------------------------------------------------------------------------------------


def check_rope_rewrite(seed: int = 0) -> dict:
    """`rope_pairwise` against diffusers' `apply_rotary_emb_transposed` on real-dimension tables (head_dim 128,
    rope (44, 42, 42), the stage-2 current-token grid of 384x640 and the mid/long pooled history tables) and
    random q in fp32 and bf16. Returns the max abs difference per dtype (0.0 = bit-identical)."""
    import diffusers.models.transformers.transformer_helios as th

    rope = th.HeliosRotaryPosEmbed((44, 42, 42), 10000.0)
    tables = []
    for idx, (h, w) in (([list(range(20, 29))], (24, 40)), ([[0, 19]], (24, 40)), ([[17, 18]], (24, 40))):
        t = rope(torch.tensor(idx), h, w, torch.device("cpu"))
        tables.append(t.flatten(2).transpose(1, 2))
    mid = th.center_down_sample_3d(rope(torch.tensor([[17, 18]]), 24, 40, torch.device("cpu")), (2, 2, 2))
    tables.append(mid.flatten(2).transpose(1, 2))
    freqs = torch.cat(tables, dim=1)  # [1, L, 256], includes non-unit (pooled) rotations
    g = torch.Generator().manual_seed(seed)
    res = {}
    for dt in (torch.float32, torch.bfloat16):
        x = (torch.randn(1, freqs.shape[1], 40, 128, generator=g) * 3).to(dt)
        a = th.apply_rotary_emb_transposed(x, freqs)
        b = rope_pairwise(x, freqs)
        res[str(dt).replace("torch.", "")] = {
            "max_abs_diff": float((a.double() - b.double()).abs().max()),
            "bit_identical": bool(torch.equal(a.view(torch.int16 if dt == torch.bfloat16 else torch.int32),
                                              b.view(torch.int16 if dt == torch.bfloat16 else torch.int32))),
            "tokens": int(freqs.shape[1]),
        }
    return res


if __name__ == "__main__":
    import json

    print(json.dumps({"rope_rewrite_vs_diffusers": check_rope_rewrite()}, indent=1))
