"""The VAE decoder of the fused export (`export.py --fused-kernels`): every `WanRMS_norm` becomes one
`com.helios::ChannelRmsNorm` node, and the SiLU that follows it in the residual blocks and the decoder head is
folded into that node (`silu=1`). docs/fused-ops.md gives the operator's exact arithmetic.

Why: the exporter writes `F.normalize(x, dim=1) * scale * gamma + bias` and `nn.SiLU` as ReduceL2, Clip, Div,
Mul, Mul, Add, Sigmoid, Mul: about ten full passes over activations of up to 377 MB ([1, 96, 4, 384, 640] f32)
per norm, some 270 norms per chunk at 384x640. The fused node reads the activation twice (norm, output) and
writes it once.

How: while `vae_export_patches()` is active, `WanRMS_norm.forward` calls the custom torch op `helios::channel_rms_norm`
(eager: the same math as diffusers' module, so the traced model is unchanged), which the exporter translates through
`translation_table()`; `fold_silu()` then rewrites `Sigmoid(y), Mul(y, sigmoid)` after a ChannelRmsNorm into its
`silu` attribute. `reference_ops()` gives onnx.reference an implementation for CPU verification.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

DOMAIN = "com.helios"
OP = "ChannelRmsNorm"


@torch.library.custom_op("helios::channel_rms_norm", mutates_args=())
def channel_rms_norm(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | None, scale: float, eps: float,
                     silu: bool) -> torch.Tensor:
    """diffusers 0.42.1 `WanRMS_norm.forward` (normalise over dim 1 in fp32, round to x's dtype, `* scale * gamma
    + bias`), then `F.silu` when `silu`."""
    wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = F.normalize(wide, dim=1, eps=eps).to(x.dtype) * scale * gamma
    if bias is not None:
        y = y + bias
    return F.silu(y) if silu else y


@channel_rms_norm.register_fake
def _channel_rms_norm_fake(x, gamma, bias, scale, eps, silu):
    return torch.empty_like(x)


def _patched_forward(self, x):
    # Our own call into the op; `self.bias` is a Parameter or the float 0.0 of a bias-free norm.
    if not self.channel_first:
        raise NotImplementedError("fused VAE export: channel-last WanRMS_norm is not used by the decoder")
    bias = self.bias if isinstance(self.bias, torch.Tensor) else None
    return torch.ops.helios.channel_rms_norm(x, self.gamma, bias, float(self.scale), 1e-12, False)


@contextlib.contextmanager
def vae_export_patches():
    """While active, every `WanRMS_norm` runs through `helios::channel_rms_norm`."""
    import diffusers.models.autoencoders.autoencoder_kl_wan as wan

    saved = wan.WanRMS_norm.forward
    wan.WanRMS_norm.forward = _patched_forward
    try:
        yield
    finally:
        wan.WanRMS_norm.forward = saved


def register_schema() -> None:
    """onnxscript needs an onnx schema to build a node of a domain onnx does not know."""
    import onnx
    from onnx.defs import OpSchema

    try:
        onnx.defs.get_schema(OP, 1, DOMAIN)
        return
    except Exception:  # noqa: BLE001  (SchemaError: not registered yet)
        pass
    types_ = ["tensor(float)", "tensor(bfloat16)"]
    onnx.defs.register_schema(OpSchema(
        OP, DOMAIN, 1, doc="bevy_helios fused channel RMS norm (+SiLU), docs/fused-ops.md",
        inputs=[OpSchema.FormalParameter("X", "T"), OpSchema.FormalParameter("Gamma", "T"),
                OpSchema.FormalParameter("Bias", "T", param_option=OpSchema.FormalParameterOption.Optional)],
        outputs=[OpSchema.FormalParameter("Y", "T")],
        type_constraints=[("T", types_, "float tensors")],
        attributes=[OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "multiplier after the normalisation"),
                    OpSchema.Attribute("epsilon", OpSchema.AttrType.FLOAT, "smallest norm"),
                    OpSchema.Attribute("silu", OpSchema.AttrType.INT, "1: SiLU after the norm")],
    ))


def translation_table(opset: int) -> dict:
    """custom_translation_table entry: helios::channel_rms_norm -> com.helios::ChannelRmsNorm."""
    import onnxscript

    register_schema()
    fused = getattr(onnxscript.values.Opset(DOMAIN, 1), OP)

    def helios_channel_rms_norm(x, gamma, bias=None, scale: float = 1.0, eps: float = 1e-12, silu: bool = False):
        args = (x, gamma) if bias is None else (x, gamma, bias)
        return fused(*args, scale=float(scale), epsilon=float(eps), silu=int(bool(silu)))

    return {torch.ops.helios.channel_rms_norm.default: helios_channel_rms_norm}


def _consumers(graph) -> dict[str, list]:
    """The nodes reading each value of `graph`."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return consumers


def fold_silu(model) -> int:
    """Rewrites `s = Sigmoid(y); z = Mul(y, s)` (either operand order) after a ChannelRmsNorm `y` into that node's
    `silu=1`, when `y` and `s` feed nothing else. `model` is an onnx ModelProto (edited in place); returns the
    number of folded pairs."""
    import onnx

    graph = model.graph
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    drop, folded = set(), 0
    for norm in graph.node:
        if norm.op_type != OP or norm.domain != DOMAIN:
            continue
        y = norm.output[0]
        users = consumers.get(y, [])
        sig = [n for n in users if n.op_type == "Sigmoid"]
        if y in outputs or len(users) != 2 or len(sig) != 1:
            continue
        s = sig[0].output[0]
        mul = [n for n in users if n.op_type == "Mul" and sorted(n.input) == sorted([y, s])]
        if len(mul) != 1 or consumers.get(s, []) != mul:
            continue
        attrs = {a.name: a for a in norm.attribute}
        if attrs.get("silu") is not None and attrs["silu"].i:
            continue
        del norm.attribute[:]
        for name, a in attrs.items():
            if name != "silu":
                norm.attribute.append(a)
        norm.attribute.append(onnx.helper.make_attribute("silu", 1))
        norm.output[0] = mul[0].output[0]
        drop.update((id(sig[0]), id(mul[0])))
        folded += 1
    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(keep)
    return folded


def split_sequences(model) -> int:
    """Rewrites `SplitToSequence(x, split)` whose every consumer is a `SequenceAt` at a constant position into one
    `Split` with an output per chunk. Returns the number of rewritten nodes; `model` is edited in place.

    Why: without the onnxscript optimizer (`export.py --no-optimize-vae`, the full-size export) the exporter writes
    `chunk()` in the VAE's attention blocks as SplitToSequence + SequenceAt. onnxruntime's CUDA provider has no
    SplitToSequence kernel, so those nodes ran on the CPU with a device round trip each (9 per decode, measured on
    the H100 at 40 layers: tools/bench/results/sbs_h100_fused_L40/profile_table.md). The chunk sizes come from the
    split input (a 1-D constant) or, for a scalar chunk size, from the inferred static shape of `x`; anything else
    is left as it is."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    initializers = {i.name: i for i in graph.initializer}
    consumers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}

    def constant(name):
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    shapes = None
    rewritten = 0
    replace: dict[int, list] = {}
    renames: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "SplitToSequence" or node.domain not in ("", "ai.onnx"):
            continue
        seq = node.output[0]
        users = consumers.get(seq, [])
        if seq in graph_outputs or not users or any(u.op_type != "SequenceAt" for u in users):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axis = int(attrs.get("axis", 0))
        split = constant(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if split is None or split.ndim > 1:
            continue
        if split.ndim == 1:
            sizes = [int(v) for v in split]
        else:
            if shapes is None:
                inferred = onnx.shape_inference.infer_shapes(model)
                shapes = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
            info = shapes.get(node.input[0])
            dims = info.type.tensor_type.shape.dim if info is not None else []
            if not dims or not dims[axis].HasField("dim_value"):
                continue
            total, chunk = dims[axis].dim_value, int(split)
            if chunk <= 0:
                continue
            sizes = [chunk] * (total // chunk) + ([total % chunk] if total % chunk else [])
        found = [constant(u.input[1]) for u in users]
        if any(p is None or p.size != 1 for p in found):
            continue
        positions = [int(p.reshape(())) for p in found]
        if any(not -len(sizes) <= p < len(sizes) for p in positions):
            continue
        positions = [p % len(sizes) for p in positions]
        outs = [f"{seq}__part{i}" for i in range(len(sizes))]
        sizes_name = f"{seq}__sizes"
        graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), sizes_name))
        split_node = onnx.helper.make_node("Split", [node.input[0], sizes_name], outs, name=f"{node.name}__split",
                                           axis=axis)
        replace[id(node)] = [split_node]
        for user, pos in zip(users, positions):
            replace[id(user)] = []
            renames[user.output[0]] = outs[pos]
        rewritten += 1
    if not rewritten:
        return 0
    nodes = []
    for n in graph.node:
        nodes.extend(replace.get(id(n), [n]))
    for n in nodes:
        for k, name in enumerate(n.input):
            if name in renames:
                n.input[k] = renames[name]
    for o in graph.output:
        if o.name in renames:
            # A SequenceAt result that is a graph output keeps its name through an Identity.
            nodes.append(onnx.helper.make_node("Identity", [renames[o.name]], [o.name]))
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def split_file(path) -> str:
    """`split_sequences` on a saved graph (external data stays where it is); returns a summary line."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    splits = split_sequences(model)
    if splits:
        onnx.save(model, str(path))
    return f"{splits} SplitToSequence nodes made Split"


def fuse_file(path) -> str:
    """`fold_silu` and `split_sequences` on a saved graph (its external data, if any, stays where it is); returns a
    summary line."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    folded = fold_silu(model)
    splits = split_sequences(model)
    onnx.save(model, str(path))
    ops = count_ops(model)
    return (f"{ops.get(f'{DOMAIN}::{OP}', 0)} ChannelRmsNorm nodes, {folded} with the SiLU folded in; "
            f"{splits} SplitToSequence nodes made Split; {len(model.graph.node)} nodes")


def count_ops(model) -> dict[str, int]:
    ops: dict[str, int] = {}
    for n in model.graph.node:
        key = f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        ops[key] = ops.get(key, 0) + 1
    return ops


def reference_ops() -> list:
    """onnx.reference OpRun of com.helios::ChannelRmsNorm, following docs/fused-ops.md (f32 or bf16 via
    ml_dtypes): the CPU check of fused VAE graphs, which onnxruntime's Python package cannot run."""
    from onnx.reference.op_run import OpRun

    class ChannelRmsNorm(OpRun):
        op_domain = DOMAIN

        def _run(self, x, gamma, bias=None, scale=None, epsilon=None, silu=None):  # noqa: D401
            scale = np.float32(1.0 if scale is None else scale)
            eps = np.float32(1e-12 if epsilon is None else epsilon)
            silu = int(silu or 0)
            dt = x.dtype
            rnd = (lambda v: v.astype(dt).astype(np.float32)) if dt != np.float32 else (lambda v: v)
            xf = x.astype(np.float32)
            c = xf.shape[1]
            bshape = (1, c) + (1,) * (xf.ndim - 2)
            den = np.maximum(np.sqrt(np.sum(xf * xf, axis=1, keepdims=True, dtype=np.float32)), eps)
            y = rnd(xf / den)
            y = rnd(y * scale)
            y = rnd(y * gamma.astype(np.float32).reshape(bshape))
            if bias is not None:
                y = rnd(y + bias.astype(np.float32).reshape(bshape))
            if silu:
                y = y / (np.float32(1) + np.exp(-y))
            return (y.astype(dt),)

    return [ChannelRmsNorm]
