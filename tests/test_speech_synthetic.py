"""The offline keyword set: Speech Commands' layout, TensorFlow's split by speaker, determinism and the cache."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from splitgrow.data import speech_synthetic
from splitgrow.data.common import DataError
from splitgrow.data.speech import KEYWORDS, load_keyword_data, which_set
from splitgrow.data.speech_synthetic import FILLER_WORDS, TOOLS, synthesize_keywords
from splitgrow.data.wav import read_wav

needs_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason="espeak-ng, flite or sox is not installed (apt-get install -y espeak-ng flite sox; CI installs them)",
)


def digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.wav")}


@needs_tools
def test_a_small_set_in_the_standard_layout(tmp_path):
    root = synthesize_keywords(tmp_path / "a", seed=1, clips_per_word=6, jobs=2)
    description = json.loads((root / "synthetic.json").read_text())
    assert description["seed"] == 1 and description["clips"] == 10 * 6 + 12 and len(description["speakers"]) == 3
    assert {speaker["engine"] for speaker in description["speakers"]} <= {"espeak-ng", "flite"}
    for word in KEYWORDS:
        assert len(list((root / word).glob("*_nohash_*.wav"))) == 6
    fillers = [p for word in FILLER_WORDS for p in (root / word).glob("*.wav")]
    assert len(fillers) == 12
    assert sorted(p.name for p in (root / "_background_noise_").iterdir()) == [
        "brown_noise.wav",
        "hum.wav",
        "pink_noise.wav",
        "white_noise.wav",
    ]
    for name, partition in (("validation_list.txt", "validation"), ("testing_list.txt", "testing")):
        listed = (root / name).read_text().split()
        assert listed and all(which_set(path) == partition for path in listed)

    data = load_keyword_data(root)
    assert data.synthetic and data.name == "speech-synthetic" and data.description["seed"] == 1
    # three speakers, one per partition: each says every keyword twice
    for partition in ("training", "validation", "testing"):
        counts = data.partition(partition).class_counts()
        assert all(counts[word] == 2 for word in KEYWORDS) and counts["_silence_"] == counts["_unknown_"] == 2
    clips = [read_wav(root / file, 16000) / 32768 for file in data.training.files if file]
    peaks = np.array([np.abs(clip).max() for clip in clips])
    assert peaks.min() > 0.08 and peaks.max() < 0.95  # a peak of U[0.1, 0.9], plus the recording noise
    onsets = [int(np.flatnonzero(np.abs(clip) > 0.05 * np.abs(clip).max())[0]) for clip in clips]
    assert max(onsets) - min(onsets) > 2000  # words start at random times

    again = synthesize_keywords(tmp_path / "b", seed=1, clips_per_word=6)
    assert digests(again) == digests(root)
    other = synthesize_keywords(tmp_path / "c", seed=2, clips_per_word=2)
    assert set(digests(other).values()).isdisjoint(digests(root).values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_missing_tools_name_the_apt_packages(tmp_path, monkeypatch):
    monkeypatch.setattr(speech_synthetic.shutil, "which", lambda tool: None if tool == "flite" else "/usr/bin/x")
    with pytest.raises(DataError, match=r"needs flite: install them with `apt-get install -y espeak-ng flite sox`"):
        synthesize_keywords(tmp_path / "set", clips_per_word=2)
    assert not list(tmp_path.iterdir())


@needs_tools
def test_a_built_set_is_taken_from_the_cache(tmp_path, monkeypatch):
    root = synthesize_keywords(tmp_path / "cached", seed=0, clips_per_word=2)
    before = digests(root)
    monkeypatch.setattr(speech_synthetic.shutil, "which", lambda tool: None)  # the tools are not needed again
    assert synthesize_keywords(tmp_path / "cached", seed=0, clips_per_word=2) == root
    assert digests(root) == before
    monkeypatch.setattr(speech_synthetic, "CACHE", tmp_path / "cache")
    assert speech_synthetic.synthetic_root(3, 200) == tmp_path / "cache" / "speech-synthetic-v1-3-200"
