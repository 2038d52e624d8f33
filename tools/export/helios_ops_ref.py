"""onnx.reference implementations of the `com.helios` operators (docs/fused-ops.md), for CPU verification.

bevy_helios implements these operators in Rust / CUDA (`src/core/runtime/kernels/`); onnxruntime's Python package
cannot run them. To check a fused denoiser graph in Python (`fused_graph.py verify`), the graph runs in
`onnx.reference.ReferenceEvaluator` with these classes as `new_ops`. Each operator is a plain function (wrapped in
an OpRun class below) written line by line from the pseudo-code of docs/fused-ops.md, deliberately literal rather
than fast, so that a graph that passes here computes what the spec says and any disagreement with diffusers
points at the spec or the graph, not at this file:

* `f(x)`  = exact widening of a `T` value to fp32 (`astype(float32)`; ml_dtypes bfloat16 -> fp32 is exact),
* `round(v)` = fp32 -> `T` (`astype(T)`; ml_dtypes rounds to nearest even, identity for float32),
* every intermediate is an fp32 numpy array and the operations run in the order the spec writes them.

Reductions (`Σ`) use numpy's fp32 pairwise summation; the spec allows any summation order (last-bit
differences before the final rounding).

`python tools/export/helios_ops_ref.py` checks each function against the diffusers / torch expression it replaces
(fp32 and bf16, exit status 1 on a mismatch).
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

DOMAIN = "com.helios"
F32 = np.float32
GELU_TANH_C = F32(0.7978845608028654)  # sqrt(2 / pi), the constant in the spec
GELU_TANH_K = F32(0.044715)


def _f(x: np.ndarray) -> np.ndarray:
    """f(x): exact widening to fp32."""
    return np.asarray(x).astype(F32)


def _round(v: np.ndarray, dtype) -> np.ndarray:
    """round(v): fp32 -> T (round to nearest even for bfloat16, identity for float32)."""
    if v.dtype != F32:
        raise TypeError(f"round() expects fp32 values, got {v.dtype}")
    return v.astype(dtype)


def _check_t(x: np.ndarray, what: str) -> None:
    if x.dtype == F32:
        return
    if x.dtype.name != "bfloat16":
        raise TypeError(f"{what}: T must be float or bfloat16, got {x.dtype}")


def _rows(x: np.ndarray) -> np.ndarray:
    """The main input viewed as [R, D] (D = last dimension)."""
    return x.reshape(-1, x.shape[-1])


def _mods_rows(mods: np.ndarray, rows: np.ndarray, split: int, k: int) -> np.ndarray:
    """Mods[g(i), k, :] for every input row index i in `rows`: g(i) = (G == 2 && i >= split) ? 1 : 0."""
    if mods.dtype != F32 or mods.ndim != 3 or mods.shape[0] not in (1, 2):
        raise ValueError(f"Mods must be f32 [G in (1, 2), K, D], got {mods.dtype} {mods.shape}")
    if not 0 <= k < mods.shape[1]:
        raise ValueError(f"modulation row {k} outside K = {mods.shape[1]}")
    g = np.where((mods.shape[0] == 2) & (rows >= split), 1, 0)
    return mods[g, k, :]  # [len(rows), D]


def modulated_layer_norm(X, Mods=None, Weight=None, Bias=None, epsilon=1e-6, row_begin=0, split=0, shift=-1, scale=-1):
    """Y = round(LayerNorm(f(X)) [* Weight] [+ Bias] [* (1 + Mods[g, scale])] [+ Mods[g, shift]]) on rows
    row_begin..R."""
    _check_t(X, "ModulatedLayerNorm X")
    T = X.dtype
    d = X.shape[-1]
    rows_all = _rows(X)
    r = rows_all.shape[0]
    if row_begin:
        if not (X.ndim == 2 or (X.ndim == 3 and X.shape[0] == 1)):
            raise ValueError(f"row_begin needs X [1, R, D] or [R, D], got {X.shape}")
        if not 0 <= row_begin <= r:
            raise ValueError(f"row_begin {row_begin} outside 0..{r}")
    for name, v in (("Weight", Weight), ("Bias", Bias)):
        if v is not None and (v.dtype != F32 or v.shape != (d,)):
            raise ValueError(f"{name} must be f32 [{d}], got {v.dtype} {v.shape}")
    if (shift >= 0 or scale >= 0) and Mods is None:
        raise ValueError("shift/scale given without Mods")
    idx = np.arange(row_begin, r)
    x = _f(rows_all[row_begin:])                                   # x_j = f(X[i, j])
    mean = x.sum(axis=-1, keepdims=True, dtype=F32) / F32(d)       # Σ_j x_j / D
    var = ((x - mean) ** 2).sum(axis=-1, keepdims=True, dtype=F32) / F32(d)
    rstd = F32(1.0) / np.sqrt(var + F32(epsilon))
    t = (x - mean) * rstd
    if Weight is not None:
        t = t * Weight
    if Bias is not None:
        t = t + Bias
    if scale >= 0:
        t = t * (F32(1.0) + _mods_rows(Mods, idx, split, scale))
    if shift >= 0:
        t = t + _mods_rows(Mods, idx, split, shift)
    y = _round(t, T)
    if row_begin:
        y = y.reshape((1, r - row_begin, d) if X.ndim == 3 else (r - row_begin, d))
    else:
        y = y.reshape(X.shape)
    return y


def bias_rms_norm_rope(X, Bias=None, Weight=None, Rope=None, epsilon=1e-6, head_dim=0):
    """q = round(f(X) + f(Bias)); y = round(f(q) * rsqrt(mean f(q)^2 + eps) * f(Weight)); optional pair-wise RoPE
    with the [cos | sin] table (each angle twice), rounded once more."""
    _check_t(X, "BiasRmsNormRope X")
    T = X.dtype
    d = X.shape[-1]
    x = _rows(X)
    r = x.shape[0]
    for name, v in (("Bias", Bias), ("Weight", Weight)):
        if v is not None and (v.dtype != T or v.shape != (d,)):
            raise ValueError(f"{name} must be {T} [{d}], got {v.dtype} {v.shape}")
    q = _round(_f(x) + _f(Bias), T) if Bias is not None else x
    qf = _f(q)
    ms = (qf * qf).sum(axis=-1, keepdims=True, dtype=F32) / F32(d)
    rr = F32(1.0) / np.sqrt(ms + F32(epsilon))
    y = _round((qf * rr) * _f(Weight), T) if Weight is not None else _round(qf * rr, T)
    if Rope is None:
        return y.reshape(X.shape)
    hd = int(head_dim)
    if hd <= 0 or hd % 2 or d % hd:
        raise ValueError(f"head_dim {hd} must be even and divide D = {d}")
    if Rope.dtype != F32 or Rope.shape != (r, 2 * hd):
        raise ValueError(f"Rope must be f32 [{r}, {2 * hd}], got {Rope.dtype} {Rope.shape}")
    yf = _f(y).reshape(r, d // hd, hd // 2, 2)
    a, b = yf[..., 0], yf[..., 1]               # y_j, y_j+1 for even j
    c = Rope[:, 0:hd:2][:, None, :]             # c = Rope[i, k],            k = j mod head_dim
    s = Rope[:, hd + 1::2][:, None, :]          # s = Rope[i, head_dim + k + 1]
    even = _round(a * c - b * s, T)
    odd = _round(a * s + b * c, T)
    return np.stack([even, odd], axis=-1).reshape(X.shape)


def gated_residual(X, A, Bias=None, Mods=None, split=0, gate=None):
    """Y = round(f(X) + f(round(f(A) + f(Bias))) * Mods[g(i), gate])."""
    _check_t(X, "GatedResidual X")
    T = X.dtype
    if gate is None:
        raise ValueError("GatedResidual needs the `gate` attribute")
    if Mods is None:
        raise ValueError("GatedResidual needs Mods")
    if A.shape != X.shape or A.dtype != T:
        raise ValueError(f"A must be {T} {X.shape}, got {A.dtype} {A.shape}")
    d = X.shape[-1]
    if Bias is not None and (Bias.dtype != T or Bias.shape != (d,)):
        raise ValueError(f"Bias must be {T} [{d}], got {Bias.dtype} {Bias.shape}")
    x, a = _rows(X), _rows(A)
    if Bias is not None:
        a = _round(_f(a) + _f(Bias), T)
    g = _mods_rows(Mods, np.arange(x.shape[0]), split, gate)
    return _round(_f(x) + _f(a) * g, T).reshape(X.shape)


def tail_residual(X, A, Bias=None):
    """The last Rt rows of X get round(f(X) + f(round(f(A) + f(Bias)))); the others are copied."""
    _check_t(X, "TailResidual X")
    T = X.dtype
    d = X.shape[-1]
    x, a = _rows(X), _rows(A)
    r, rt = x.shape[0], a.shape[0]
    if A.dtype != T or A.shape[-1] != d or rt > r:
        raise ValueError(f"A must be {T} [.., Rt <= {r}, {d}], got {A.dtype} {A.shape}")
    if Bias is not None and (Bias.dtype != T or Bias.shape != (d,)):
        raise ValueError(f"Bias must be {T} [{d}], got {Bias.dtype} {Bias.shape}")
    if Bias is not None:
        a = _round(_f(a) + _f(Bias), T)
    y = x.copy()
    y[r - rt:] = _round(_f(x[r - rt:]) + _f(a), T)
    return y.reshape(X.shape)


def bias_gelu_tanh(X, Bias=None):
    """u = f(round(f(X) + f(Bias))); Y = round(0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))))."""
    _check_t(X, "BiasGeluTanh X")
    T = X.dtype
    d = X.shape[-1]
    if Bias is not None and (Bias.dtype != T or Bias.shape != (d,)):
        raise ValueError(f"Bias must be {T} [{d}], got {Bias.dtype} {Bias.shape}")
    u = _f(_round(_f(X) + _f(Bias), T)) if Bias is not None else _f(X)
    inner = GELU_TANH_C * (u + GELU_TANH_K * (u * u * u))
    return _round(F32(0.5) * u * (F32(1.0) + np.tanh(inner)), T)


def channel_rms_norm(X, Gamma, Bias=None, scale=None, epsilon=1e-12, silu=0):
    """Over the channels c of X [B, C, S..]: y = round(f(X) / max(||f(X)||, eps)), then round(y * scale),
    round(y * f(Gamma)), [round(y + f(Bias))], [round(y / (1 + exp(-y)))] (WanRMS_norm [+ SiLU])."""
    _check_t(X, "ChannelRmsNorm X")
    T = X.dtype
    if X.ndim < 2:
        raise ValueError(f"X must be [B, C, S..], got {X.shape}")
    if scale is None:
        raise ValueError("ChannelRmsNorm needs the `scale` attribute")
    b, c = X.shape[:2]
    for name, v in (("Gamma", Gamma), ("Bias", Bias)):
        if v is not None and (v.dtype != T or v.size != c):
            raise ValueError(f"{name} must be {T} with {c} values, got {v.dtype} {v.shape}")
    x = _f(X).reshape(b, c, -1)
    n = np.sqrt((x * x).sum(axis=1, keepdims=True, dtype=F32))   # over the channels, per (b, s)
    y = _round(x / np.maximum(n, F32(epsilon)), T)
    y = _round(_f(y) * F32(scale), T)
    y = _round(_f(y) * _f(Gamma).reshape(1, c, 1), T)
    if Bias is not None:
        y = _round(_f(y) + _f(Bias).reshape(1, c, 1), T)
    if silu:
        yf = _f(y)
        y = _round(yf / (F32(1.0) + np.exp(-yf)), T)
    return y.reshape(X.shape)


# ----------------------------------------------------------------------------------------------------------
# OpRun wrappers (the node's inputs in order, empty names arrive as None; the node's attributes as keywords,
# absent ones take the spec's defaults from the function signatures)
# ----------------------------------------------------------------------------------------------------------


def _op(name: str, fn):
    def _run(self, *inputs, **attrs):
        return (fn(*inputs, **attrs),)

    return type(name, (OpRun,), {"op_domain": DOMAIN, "_run": _run, "__doc__": fn.__doc__})


ModulatedLayerNorm = _op("ModulatedLayerNorm", modulated_layer_norm)
BiasRmsNormRope = _op("BiasRmsNormRope", bias_rms_norm_rope)
GatedResidual = _op("GatedResidual", gated_residual)
TailResidual = _op("TailResidual", tail_residual)
BiasGeluTanh = _op("BiasGeluTanh", bias_gelu_tanh)
ChannelRmsNorm = _op("ChannelRmsNorm", channel_rms_norm)
OPS = (ModulatedLayerNorm, BiasRmsNormRope, GatedResidual, TailResidual, BiasGeluTanh, ChannelRmsNorm)


def reference_ops() -> list:
    """The com.helios OpRun classes plus com.microsoft::MultiHeadAttention (fused.reference_ops): the `new_ops`
    a fused graph needs in onnx.reference.ReferenceEvaluator."""
    import fused

    return list(OPS) + fused.reference_ops()


# ----------------------------------------------------------------------------------------------------------
# Self-check: the spec's pseudo-code against diffusers' own modules on random data (python helios_ops_ref.py)
# ----------------------------------------------------------------------------------------------------------


def _selfcheck(seed: int = 0) -> dict:
    """Each function against the diffusers / torch expression it replaces (the "Reference" lines of
    docs/fused-ops.md) on random rows ([1, 7, 24], 3 history rows; RoPE with diffusers' own table and
    `apply_rotary_emb_transposed`), in fp32 and bf16. The torch side rounds where the spec rounds (a Linear's
    output is a T tensor before the bias in the exported graph, so `a + bias` is formed as a rounded T tensor).
    Returns {dtype: {op: max abs error / max |reference|}}."""
    import diffusers.models.transformers.transformer_helios as th
    import ml_dtypes
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

    g = torch.Generator().manual_seed(seed)
    heads, hd = 2, 12
    rope = th.HeliosRotaryPosEmbed((4, 4, 4), 10000.0)(torch.tensor([[3, 4]]), 2, 2, torch.device("cpu"))
    table = rope.flatten(2).transpose(1, 2)  # [1, 8, 24]: 2 frames x 2 x 2 tokens, [cos | sin]
    res = {}
    for tdt, npdt in ((torch.float32, F32), (torch.bfloat16, ml_dtypes.bfloat16)):
        r, d, split = 7, heads * hd, 3
        x = torch.randn(1, r, d, generator=g).to(tdt)
        a = torch.randn(1, r, d, generator=g).to(tdt)
        bias = torch.randn(d, generator=g).to(tdt)
        mods = torch.randn(2, 6, d, generator=g)
        w = torch.randn(d, generator=g).to(tdt)
        lnw, lnb = torch.randn(d, generator=g), torch.randn(d, generator=g)
        m = mods[torch.tensor([0] * split + [1] * (r - split))]  # [R, 6, D]: per-row modulation
        q8 = torch.randn(1, 8, d, generator=g).to(tdt)

        def np_(t):
            return t.float().numpy().astype(npdt)

        def rel(got, want):
            want = want.float().numpy()
            return float(np.abs(_f(got) - want).max() / np.abs(want).max())

        def rms(v, weight):
            v = v.float()
            return (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.float()).to(tdt)

        ab = a + bias
        q8b = q8 + bias
        wan = WanRMS_norm(6, images=False, bias=True)  # [B, C, T, H, W] activations of the VAE
        with torch.no_grad():
            wan.gamma.copy_(torch.randn(wan.gamma.shape, generator=g))
            wan.bias.copy_(torch.randn(wan.bias.shape, generator=g))
        wan = wan.to(tdt)
        v = torch.randn(1, 6, 2, 3, 4, generator=g).to(tdt)
        with torch.no_grad():
            wan_out = wan(v)
        res[str(tdt).replace("torch.", "")] = {
            "ModulatedLayerNorm": rel(
                modulated_layer_norm(np_(x), mods.numpy(), split=split, shift=0, scale=1),
                (torch.nn.functional.layer_norm(x.float(), (d,), eps=1e-6) * (1 + m[:, 1]) + m[:, 0]).to(tdt)),
            "ModulatedLayerNorm(row_begin, affine)": rel(
                modulated_layer_norm(np_(x), None, lnw.numpy(), lnb.numpy(), row_begin=split),
                torch.nn.functional.layer_norm(x[:, split:].float(), (d,), lnw, lnb, eps=1e-6).to(tdt)),
            "GatedResidual": rel(gated_residual(np_(x), np_(a), np_(bias), mods.numpy(), split=split, gate=2),
                                 (x.float() + ab * m[:, 2]).to(tdt)),
            "TailResidual": rel(tail_residual(np_(x), np_(a[:, split:]), np_(bias)),
                                torch.cat([x[:, :split], x[:, split:] + ab[:, split:]], dim=1)),
            "BiasGeluTanh": rel(bias_gelu_tanh(np_(a), np_(bias)), torch.nn.functional.gelu(ab, approximate="tanh")),
            "BiasRmsNormRope(no rope)": rel(bias_rms_norm_rope(np_(a), np_(bias), np_(w)), rms(ab, w)),
            "BiasRmsNormRope(rope)": rel(
                bias_rms_norm_rope(np_(q8), np_(bias), np_(w), table[0].numpy(), head_dim=hd),
                th.apply_rotary_emb_transposed(rms(q8b, w).unflatten(2, (heads, hd)), table).flatten(2)),
            "ChannelRmsNorm": rel(
                channel_rms_norm(np_(v), np_(wan.gamma.detach()), np_(wan.bias.detach()), scale=wan.scale),
                wan_out),
            "ChannelRmsNorm(silu)": rel(
                channel_rms_norm(np_(v), np_(wan.gamma.detach()), np_(wan.bias.detach()), scale=wan.scale, silu=1),
                torch.nn.functional.silu(wan_out)),
        }
    return res


if __name__ == "__main__":
    import json
    import sys

    result = _selfcheck()
    print(json.dumps(result, indent=1))
    # fp32: rounding noise; bf16: at most one ulp of the largest value (the spec's and torch's last fp32 bits
    # may straddle a rounding boundary).
    limits = {"float32": 1e-5, "bfloat16": 2.0 ** -7}
    bad = [f"{dt} {op}: {e:.2e}" for dt, ops in result.items() for op, e in ops.items() if not e <= limits[dt]]
    print("helios_ops_ref self-check: " + ("OK" if not bad else "FAILED " + "; ".join(bad)), file=sys.stderr)
    sys.exit(1 if bad else 0)
