"""Relative model paths resolve in each executor's working directory (issue 29 row 5):
``--archives e5.tgz#text_model --set embed.text.model=text_model`` on YARN unpacks ``text_model``
in every executor's working directory; the builders the driver ships must name the model as the
conf does, not by the driver's absolute path. The driver still checks and fingerprints the model
in its own working directory."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from listing_dedup.config import ImageEmbedConf, TextEmbedConf
from listing_dedup.embed.encoder import TextEncoderBuilder, resolve_model_path
from listing_dedup.embed.image import ImageEncoderBuilder

# what an executor does with the builders it received: resolve and load in its own cwd
CHILD = r"""
import os, pickle, sys
text, image = pickle.load(open(sys.argv[1], "rb"))
print(text.local()[1])
print(image.local_weights())
enc = text()
vec = enc.encode(["rice cooker digital"])
print(vec.shape[1], enc.runtime)
"""


def linked_copy(src: str, dst: Path) -> None:
    """A copy of a model directory made of hard links (same bytes, no copying)."""
    shutil.copytree(src, dst, copy_function=os.link)


@pytest.mark.slow
def test_relative_model_paths_resolve_in_the_executors_working_directory(tmp_path, monkeypatch):
    minilm = resolve_model_path("minilm")
    driver, executor = tmp_path / "driver", tmp_path / "executor"
    for d in (driver, executor):
        d.mkdir()
        linked_copy(minilm, d / "text_model")
        (d / "weights.pth").write_bytes(b"weights")

    monkeypatch.chdir(driver)
    text = TextEncoderBuilder.from_conf(TextEmbedConf(model="text_model", device="cpu"))
    image = ImageEncoderBuilder.from_conf(ImageEmbedConf(model="weights.pth", device="cpu"))
    assert (text.path, image.weights_path) == ("text_model", "weights.pth")  # shipped as the conf names them
    fp = text.fingerprint()  # checked and fingerprinted in the driver's working directory
    assert text.local()[1] == str(driver / "text_model")
    shutil.rmtree(driver / "text_model")  # the driver's copy is not on the executor's node
    (driver / "weights.pth").unlink()
    shipped = tmp_path / "builders.pkl"
    shipped.write_bytes(pickle.dumps((text, image)))

    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(shipped)],
        cwd=executor,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0] == str(executor / "text_model")
    assert lines[1] == str(executor / "weights.pth")
    assert lines[2] == "384 cpu-fp32"
    # the same files under another folder: the same fingerprint (the executor's vectors are reusable)
    monkeypatch.chdir(executor)
    assert text.fingerprint() == fp
