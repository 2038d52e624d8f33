#!/usr/bin/env python3
"""Self-test of export.py's `--checkpoint` path (the one real Helios checkpoints take) without real weights.

Builds, in a temporary directory, a diffusers-format checkpoint holding the tiny model of `--seed` plus a tiny
random UMT5 text encoder and a word-level tokenizer, then runs `export.py all --checkpoint` on it and checks:
  * every graph is byte-identical to the `--tiny` export in --reference (same weights, deterministic export),
  * the embedding bank came from the pipeline's encode_prompt: [seq, dim] f32, rows after the prompt's tokens
    zero, the same prompt twice gives the same rows,
  * `embed` alone rewrites the embeddings sha256 in an existing manifest.ron.
Writes only to a temporary directory; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export as ex  # noqa: E402


def build_checkpoint(dest: Path, seed: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    ex.build_tiny_pipeline_dir(seed, dest)
    words = "<pad> </s> <unk> a the village square at sunlit cat dog night sky fire forest city ocean".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(dest / "tokenizer")
    torch.manual_seed(seed)
    cfg = UMT5Config(vocab_size=len(words), d_model=ex.TINY_TRANSFORMER["text_dim"], d_kv=8, d_ff=64, num_layers=1,
                     num_heads=4, relative_attention_num_buckets=8)
    UMT5EncoderModel(cfg).save_pretrained(dest / "text_encoder")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", default=str(ex.REPO_ROOT / "models" / "helios-tiny"),
                   help="model dir made by `export.py all --tiny --seed SEED` to compare graphs with")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ref = Path(args.reference)
    failures = []
    with tempfile.TemporaryDirectory(prefix="helios-selftest-") as tmp:
        tmp = Path(tmp)
        ckpt, out = tmp / "checkpoint", tmp / "model"
        build_checkpoint(ckpt, args.seed)
        prompts = tmp / "prompts.txt"
        prompts.write_text("short: a cat at night\nlong: " + "the village square " * 10 + "\nagain: a cat at night\n")
        common = ["--checkpoint", str(ckpt), "--out", str(out), "--text-seq-len", "16", "--prompts", str(prompts)]
        # --sigma-dtype f32: helios-tiny's dmd_step graphs take f32 sigmas (a --checkpoint export defaults to f64).
        rc = ex.main(["all", *common, "--height", "64", "--width", "64", "--cholesky-source", "probe",
                      "--name", "helios-tiny", "--seed", str(args.seed), "--sigma-dtype", "f32"])
        if rc != 0:
            failures.append(f"export.py all --checkpoint exited {rc}")
        else:
            ref_text = (ref / "manifest.ron").read_text()
            for key in ex.GRAPH_ORDER:
                a, b = ex.sha256_file(out / f"{key}.onnx"), ex.sha256_file(ref / f"{key}.onnx")
                if a != b:
                    failures.append(f"{key}.onnx differs from {ref / (key + '.onnx')}")
            if ref_text.split("graphs:")[1] != (out / "manifest.ron").read_text().split("graphs:")[1]:
                failures.append("manifest graphs section differs from the reference")
            from safetensors.torch import load_file

            bank = load_file(str(out / "embeddings.safetensors"))
            short, long_, again = bank["short"], bank["long"], bank["again"]
            nonzero = int((short.abs().sum(1) > 0).sum())
            if list(short.shape) != [16, 32] or short.dtype != torch.float32:
                failures.append(f"embedding shape {list(short.shape)} {short.dtype}")
            if nonzero != 5:  # 4 words + </s>, then zero rows (pipeline's _get_t5_prompt_embeds)
                failures.append(f"short prompt has {nonzero} non-zero rows, expected 5")
            if int((long_.abs().sum(1) > 0).sum()) != 16:
                failures.append("long prompt should fill all 16 rows (truncated)")
            if not torch.equal(short, again):
                failures.append("same prompt gave different rows")
            # `embed` alone must refresh the manifest's sha256 of the bank.
            prompts.write_text("short: a dog at night\n")
            text_before = (out / "manifest.ron").read_text()
            if ex.main(["embed", *common]) != 0:
                failures.append("export.py embed --checkpoint failed")
            text_after = (out / "manifest.ron").read_text()
            sha = ex.sha256_file(out / "embeddings.safetensors")
            if f'sha256: "{sha}"' not in text_after or text_after == text_before:
                failures.append("embed did not update the manifest's embeddings sha256")
            if re.sub(r'sha256: "[0-9a-f]*",\n(\s+seq_len)', "", text_after) != \
                    re.sub(r'sha256: "[0-9a-f]*",\n(\s+seq_len)', "", text_before):
                failures.append("embed changed more of manifest.ron than the embeddings sha256")
    for f in failures:
        print(f"FAIL {f}")
    print("selftest " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
