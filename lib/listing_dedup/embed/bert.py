"""A plain-torch runtime for sentence-transformers models of the common BERT shape.

Why: a Python worker that encodes titles first imports its runtime. ``sentence_transformers``
(with ``transformers`` 5) imports torch's compiler, distributed tensors, scipy and sympy: 8.2 s
on this 2-core machine before a single title is encoded, against 2.0 s for torch alone. A nightly
run with the embeddings cache encodes only the few titles it has not seen, so that import was a
third of its embed stage (docs/benchmarks.md, "Incremental runs"). This module runs the same
model with torch, ``tokenizers`` and ``safetensors`` only.

What it runs: a directory whose ``modules.json`` is a Transformer at the root, a Pooling of
the mean of the tokens and optionally a Normalize, a ``config.json`` of ``model_type`` ``bert``
(absolute positions, GELU), ``model.safetensors`` and ``tokenizer.json``: all-MiniLM-L6-v2 (the
packaged ``minilm``) and the encoders ``jobs/train_embedder.py`` fine-tunes from it.
:func:`bert_spec` says whether a directory is of that shape (and why not); any other directory
runs under sentence-transformers (``embed/encoder.py``). The forward pass is BERT's (embeddings,
post-LayerNorm self-attention and GELU feed-forward blocks), mean pooling over the attention
mask and L2 normalisation, as sentence-transformers computes them: the vectors agree with it to
~1e-6 (tests/test_text.py), not bit for bit, so the text fingerprint names the runtime and the
embeddings cache never mixes the two.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RUNTIME = "torch-bert"


def bert_spec(path: str) -> tuple[dict | None, str]:
    """``(config, "")`` when the model directory at ``path`` is one this runtime runs, else
    ``(None, reason)``."""
    root = Path(path)
    try:
        modules = json.loads((root / "modules.json").read_text())
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError) as e:
        return None, f"no readable modules.json / config.json ({e})"
    types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if types not in (["Transformer", "Pooling", "Normalize"], ["Transformer", "Pooling"]) or modules[0].get("path"):
        return None, f"modules {types} are not Transformer, mean Pooling[, Normalize]"
    try:
        pooling = json.loads((root / modules[1]["path"] / "config.json").read_text())
    except (OSError, ValueError, KeyError) as e:
        return None, f"no readable pooling config ({e})"
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
    if modes != ["pooling_mode_mean_tokens"] or pooling.get("include_prompt") is False:
        return None, f"pooling {modes} is not the mean of the tokens"
    if config.get("model_type") != "bert":
        return None, f"model_type {config.get('model_type')!r} is not bert"
    if config.get("position_embedding_type", "absolute") != "absolute" or config.get("hidden_act") != "gelu":
        return None, "not absolute positions with GELU"
    for f in ("model.safetensors", "tokenizer.json"):
        if not (root / f).is_file():
            return None, f"no {f}"
    try:
        lower = json.loads((root / "sentence_bert_config.json").read_text()).get("do_lower_case", False)
    except (OSError, ValueError):
        lower = False
    if lower:  # sentence-transformers lower-cases before the tokenizer: not done here
        return None, "do_lower_case"
    config["normalize"] = types[-1] == "Normalize"
    return config, ""


class BertEncoder:
    """The model at ``path`` (:func:`bert_spec` accepted it), with the ``Encoder`` interface of
    ``embed/encoder.py``: ``dim``, ``token_lengths``, ``encode``."""

    def __init__(self, path: str, config: dict, *, device: str, fp16: bool, batch_size: int, max_seq_length: int):
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
        self.tokenizer.no_padding()  # the file's own settings (e.g. padding to 128) do not apply
        self.max_seq_length = min(int(max_seq_length), int(config["max_position_embeddings"]))
        self.tokenizer.enable_truncation(max_length=self.max_seq_length)
        weights = load_file(str(Path(path) / "model.safetensors"))
        weights = {k.removeprefix("bert."): v for k, v in weights.items()}
        self.model = _Bert(config, weights).to(device).eval()
        if fp16 and device.startswith("cuda"):
            self.model.half()
        self.normalize = bool(config["normalize"])
        self.device, self.batch_size, self.dim = device, batch_size, int(config["hidden_size"])
        self._torch = torch

    def _ids(self, texts: list[str]) -> list[list[int]]:
        # sentence-transformers strips each text before tokenising
        return [e.ids for e in self.tokenizer.encode_batch([str(t).strip() for t in texts])]

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        return np.array([len(i) for i in self._ids(texts)], dtype=np.int64)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Texts of one token length are batched together (no padding), so a text's vector does
        not depend on its batch (as ``SentenceTransformerEncoder.encode``)."""
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self._ids(texts)
        lengths = np.array([len(i) for i in ids])
        with torch.inference_mode():
            for n_tokens in np.unique(lengths):
                rows = np.flatnonzero(lengths == n_tokens)
                for a in range(0, len(rows), self.batch_size):
                    part = rows[a : a + self.batch_size]
                    x = torch.tensor([ids[i] for i in part], dtype=torch.long, device=self.device)
                    v = self.model(x).float()
                    if self.normalize:
                        v = torch.nn.functional.normalize(v, p=2, dim=1)
                    out[part] = v.cpu().numpy()
        return out


def _Bert(config: dict, weights: dict):  # noqa: N802 - builds the torch module (torch imported lazily)
    import torch
    from torch import nn
    from torch.nn import functional as F

    d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    eps = float(config.get("layer_norm_eps", 1e-12))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
            self.o, self.ln1 = nn.Linear(d, d), nn.LayerNorm(d, eps=eps)
            self.up = nn.Linear(d, int(config["intermediate_size"]))
            self.down, self.ln2 = nn.Linear(int(config["intermediate_size"]), d), nn.LayerNorm(d, eps=eps)

        def forward(self, h):
            b, n, _ = h.shape

            def split(t):
                return t.view(b, n, heads, d // heads).transpose(1, 2)

            a = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)))
            h = self.ln1(self.o(a.transpose(1, 2).reshape(b, n, d)) + h)
            return self.ln2(self.down(F.gelu(self.up(h))) + h)

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.words = nn.Embedding(int(config["vocab_size"]), d)
            self.positions = nn.Embedding(int(config["max_position_embeddings"]), d)
            self.types = nn.Embedding(int(config.get("type_vocab_size", 2)), d)
            self.ln = nn.LayerNorm(d, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(int(config["num_hidden_layers"])))

        def forward(self, ids):  # (batch, tokens), no padding: every token attends to every token
            n = ids.shape[1]
            pos = torch.arange(n, device=ids.device)
            h = self.ln(self.words(ids) + self.types(torch.zeros_like(ids)) + self.positions(pos)[None])
            for layer in self.layers:
                h = layer(h)
            return h.sum(dim=1) / float(n)  # the mean over the tokens (all attended)

    model = Bert()
    names = {
        "words.weight": "embeddings.word_embeddings.weight",
        "positions.weight": "embeddings.position_embeddings.weight",
        "types.weight": "embeddings.token_type_embeddings.weight",
        "ln.weight": "embeddings.LayerNorm.weight",
        "ln.bias": "embeddings.LayerNorm.bias",
    }
    parts = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "ln1": "attention.output.LayerNorm",
        "up": "intermediate.dense",
        "down": "output.dense",
        "ln2": "output.LayerNorm",
    }
    for i in range(len(model.layers)):
        for mine, theirs in parts.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{mine}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    missing = [theirs for theirs in names.values() if theirs not in weights]
    if missing:
        raise KeyError(f"model.safetensors lacks {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict({mine: weights[theirs] for mine, theirs in names.items()})
    return model
