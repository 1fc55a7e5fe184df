"""An offline stand-in for Speech Commands: the same 12 classes spoken by speech synthesisers.

No package registry ships Speech Commands recordings, so the keyword-spotting pipeline can run offline on a small
synthetic set instead. Its accuracies say that the pipeline works and that growth has something to learn; they
are **not comparable** to results on Speech Commands.

How it is made (Debian's ``espeak-ng``, ``flite`` and ``sox``; ``apt-get install -y espeak-ng flite sox``):

* *speakers*: each is one synthetic voice: espeak-ng with one of 8 English accents and one of 16 voice variants,
  or one of flite's 5 voices (about a quarter of the speakers); the speaker's name is an 8-digit hexadecimal
  string drawn so that TensorFlow's hash split (:func:`splitgrow.data.speech.which_set`) puts 10% of the speakers
  in validation and 10% in testing, even for a small set;
* *keywords*: every keyword ``clips_per_word`` times, two takes per speaker (``<speaker>_nohash_0.wav``, ``_1``);
* *unknown words*: ``2 * clips_per_word`` clips of the 20 other Speech Commands words (bed, bird, ..., zero);
* *each take*: sox shifts the pitch by U[-300, 300] cents and the tempo by a factor U[0.85, 1.15]; the word is
  trimmed of silence, scaled to a peak of U[0.1, 0.9], placed at a random onset in the 1 s clip (cut if longer),
  and white noise of standard deviation U[0.0005, 0.01] is added;
* *silence*: as for the real data, the loader makes it from ``_background_noise_/``: here white, pink and brown
  noise and mains hum, 30 s each;
* the list files hold TensorFlow's hash split, so both ``split`` modes of the loader agree.

Every random choice comes from ``seed`` and is drawn before any tool runs (the tools themselves are
deterministic; sox runs with ``-R -D``), so a seed gives the same files on any machine with the same tool
versions (``synthetic.json`` records them). The set is built in a temporary folder renamed into place at the
end, and cached: ``~/.cache/splitgrow/speech-synthetic-v1-<seed>-<clips_per_word>``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write_text
from .common import CACHE, DataError
from .speech import (
    BACKGROUND_FOLDER,
    CLIP_SAMPLES,
    KEYWORDS,
    LIST_FILES,
    SAMPLE_RATE,
    SYNTHETIC_DESCRIPTION,
    which_set,
)
from .wav import write_wav

#: bump when the generator changes, so that caches of an older generator are not reused
SYNTHETIC_VERSION = "v1"
TOOLS = ("espeak-ng", "flite", "sox")
INSTALL_TOOLS = "apt-get install -y espeak-ng flite sox"
#: the Speech Commands words that are not keywords: the unknown class
FILLER_WORDS = (
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip
ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3", "klatt4",
)  # fmt: skip
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FLITE_SHARE = 0.25
TAKES_PER_SPEAKER = 2
#: clips of unknown words, in all, per clip of one keyword
FILLER_CLIPS_PER_KEYWORD_CLIP = 2
PITCH_CENTS = 300.0
TEMPO_RANGE = (0.85, 1.15)
PEAK_RANGE = (0.1, 0.9)
NOISE_STD_RANGE = (0.0005, 0.01)
BACKGROUND_SECONDS = 30
#: of every 10 speakers, which partition their name must hash to (10% validation, 10% testing)
_PARTITION_CYCLE = ("validation", "testing") + ("training",) * 8


@dataclass(frozen=True)
class Speaker:
    """A synthetic voice: ``engine`` 'espeak-ng' (voice 'accent+variant') or 'flite' (voice name)."""

    name: str
    engine: str
    voice: str


@dataclass(frozen=True)
class _Take:
    """Everything needed to synthesise one clip, drawn in advance."""

    path: str
    word: str
    speaker: Speaker
    pitch_cents: float
    tempo: float
    peak: float
    onset: float  # fraction of the free time before the word
    noise_std: float
    noise_seed: int


def synthetic_root(seed: int, clips_per_word: int) -> Path:
    """The cache folder of a synthetic set."""
    return CACHE / f"speech-synthetic-{SYNTHETIC_VERSION}-{seed}-{clips_per_word}"


def check_tools() -> None:
    """Raise a one-line :class:`DataError` naming the apt packages when a synthesis tool is missing."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise DataError(
            f"the synthetic keyword set needs {', '.join(missing)}: install them with `{INSTALL_TOOLS}`, or pass "
            "--data-root to Speech Commands"
        )


def _speakers(count: int, rng: np.random.Generator) -> list[Speaker]:
    speakers = []
    names: set[str] = set()
    for index in range(count):
        target = _PARTITION_CYCLE[index % len(_PARTITION_CYCLE)]
        while True:  # about 10 draws for a validation or testing name
            name = f"{int(rng.integers(0, 2**32)):08x}"
            if name not in names and which_set(f"{name}_nohash_0.wav") == target:
                break
        names.add(name)
        if rng.random() < FLITE_SHARE:
            speakers.append(Speaker(name, "flite", FLITE_VOICES[rng.integers(len(FLITE_VOICES))]))
        else:
            accent = ESPEAK_ACCENTS[rng.integers(len(ESPEAK_ACCENTS))]
            variant = ESPEAK_VARIANTS[rng.integers(len(ESPEAK_VARIANTS))]
            speakers.append(Speaker(name, "espeak-ng", f"{accent}+{variant}"))
    return speakers


def _plan(seed: int, clips_per_word: int) -> tuple[list[Speaker], list[_Take]]:
    rng = np.random.default_rng(seed)
    speakers = _speakers(-(-clips_per_word // TAKES_PER_SPEAKER), rng)
    lines: list[tuple[str, Speaker, int]] = []  # (word, speaker, take number)
    for word in KEYWORDS:
        lines += [(word, speakers[k // TAKES_PER_SPEAKER], k % TAKES_PER_SPEAKER) for k in range(clips_per_word)]
    taken: dict[tuple[str, str], int] = {}
    filler_clips = FILLER_CLIPS_PER_KEYWORD_CLIP * clips_per_word
    for k in range(filler_clips):
        speaker = speakers[k * len(speakers) // filler_clips]  # spread evenly over the speakers
        word = FILLER_WORDS[rng.integers(len(FILLER_WORDS))]
        take = taken.get((word, speaker.name), 0)
        taken[(word, speaker.name)] = take + 1
        lines.append((word, speaker, take))
    takes = [
        _Take(
            path=f"{word}/{speaker.name}_nohash_{take}.wav",
            word=word,
            speaker=speaker,
            pitch_cents=float(rng.uniform(-PITCH_CENTS, PITCH_CENTS)),
            tempo=float(rng.uniform(*TEMPO_RANGE)),
            peak=float(rng.uniform(*PEAK_RANGE)),
            onset=float(rng.random()),
            noise_std=float(rng.uniform(*NOISE_STD_RANGE)),
            noise_seed=int(rng.integers(0, 2**63)),
        )
        for word, speaker, take in lines
    ]
    return speakers, takes


def _run(command: list[str], stdin: bytes | None = None) -> bytes:
    try:
        result = subprocess.run(command, input=stdin, capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataError(f"`{' '.join(command)}` failed ({error}); reinstall with `{INSTALL_TOOLS}`") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise DataError(f"`{' '.join(command)}` failed: {message[-1] if message else f'exit {result.returncode}'}")
    return result.stdout


def _synthesise(take: _Take, folder: Path) -> None:
    if take.speaker.engine == "flite":
        speech = _run(["flite", "-voice", take.speaker.voice, "-t", take.word, "-o", "/dev/stdout"])
    else:
        speech = _run(["espeak-ng", "-v", take.speaker.voice, "--stdout", take.word])
    sox = ["sox", "-R", "-D", "-t", "wav", "-", "-t", "raw", "-e", "signed", "-b", "16", "-c", "1"]
    sox += ["-r", str(SAMPLE_RATE), "-", "pitch", f"{take.pitch_cents:.1f}", "tempo", f"{take.tempo:.4f}"]
    word = np.frombuffer(_run(sox, speech), dtype="<i2").astype(np.float64) / 32768.0
    loud = np.flatnonzero(np.abs(word) > 0.02 * np.abs(word).max(initial=0.0))
    if loud.size == 0:
        raise DataError(f"{take.speaker.engine} produced silence for {take.word!r} ({take.speaker.voice})")
    word = word[loud[0] : loud[-1] + 1][:CLIP_SAMPLES]
    word *= take.peak / np.abs(word).max()
    clip = np.zeros(CLIP_SAMPLES)
    start = int(take.onset * (CLIP_SAMPLES - len(word)))
    clip[start : start + len(word)] = word
    clip += take.noise_std * np.random.default_rng(take.noise_seed).standard_normal(CLIP_SAMPLES)
    write_wav(folder / take.path, _to_int16(clip), SAMPLE_RATE)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.round(np.clip(samples, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def _background(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Four noise recordings at an RMS of 0.15: white, pink (1/f power), brown (1/f^2) and mains hum."""
    length = BACKGROUND_SECONDS * SAMPLE_RATE
    spectrum = np.fft.rfft(rng.standard_normal(length))
    spectrum[0] = 0.0  # no DC offset
    frequency = np.fft.rfftfreq(length, 1 / SAMPLE_RATE)
    frequency[0] = 1.0  # (its coefficient is zero)
    time = np.arange(length) / SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * 50 * h * time + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3, 5))
    recordings = {
        "white_noise": rng.standard_normal(length),
        "pink_noise": np.fft.irfft(spectrum / np.sqrt(frequency), n=length),
        "brown_noise": np.fft.irfft(spectrum / frequency, n=length),
        "hum": hum + 0.05 * rng.standard_normal(length),
    }
    return {name: 0.15 * x / np.sqrt(np.mean(x**2)) for name, x in recordings.items()}


def _tool_versions() -> dict[str, str]:
    versions = {}
    for tool in TOOLS:
        # flite prints its copyright first and exits with 1; the others print their version line first
        result = subprocess.run([tool, "--version"], capture_output=True, check=False, timeout=60)
        lines = [line.strip() for line in result.stdout.decode(errors="replace").splitlines() if line.strip()]
        versions[tool] = next((line for line in lines if "version" in line.lower()), lines[0] if lines else "")
    return versions


def synthesize_keywords(
    root: Path | None = None,
    *,
    seed: int = 0,
    clips_per_word: int = 200,
    jobs: int | None = None,
    progress: bool = False,
) -> Path:
    """Build (or find in the cache) a synthetic keyword set in Speech Commands' layout; returns its folder.

    Load it with :func:`splitgrow.data.speech.load_keyword_data`. 12 x 200 clips take 1-2 minutes on 2 cores.

    Args:
        root: where to put it; default :func:`synthetic_root` (a folder that exists is taken as built).
        seed: every random choice (voices, pitch, tempo, onset, gain, noise).
        clips_per_word: clips of each keyword; the unknown words get twice as many in all.
        jobs: synthesis processes run at once; default one per CPU core.
        progress: show a progress bar.

    Raises:
        DataError: espeak-ng, flite or sox is missing or fails.
    """
    if clips_per_word < 1:
        raise ValueError(f"clips_per_word must be >= 1, got {clips_per_word}")
    root = Path(root) if root is not None else synthetic_root(seed, clips_per_word)
    if (root / SYNTHETIC_DESCRIPTION).is_file():
        return root
    check_tools()
    speakers, takes = _plan(seed, clips_per_word)
    rng = np.random.default_rng([seed, 1])  # the noise recordings: a stream of their own
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".partial"))
    try:
        for name, recording in _background(rng).items():
            write_wav(staging / BACKGROUND_FOLDER / f"{name}.wav", _to_int16(recording), SAMPLE_RATE)
        with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            done = pool.map(_synthesise, takes, [staging] * len(takes))
            if progress:
                from tqdm import tqdm

                done = tqdm(done, total=len(takes), desc="synthesising keywords", unit="clip")
            for _ in done:
                pass
        for partition, file_name in LIST_FILES.items():
            listed = sorted(take.path for take in takes if which_set(take.path) == partition)
            atomic_write_text(staging / file_name, "".join(f"{path}\n" for path in listed))
        description = {
            "dataset": "speech-synthetic",
            "note": "synthesised speech, not Speech Commands recordings: accuracies are not comparable to theirs",
            "generator": SYNTHETIC_VERSION,
            "seed": seed,
            "clips_per_word": clips_per_word,
            "clips": len(takes),
            "tools": _tool_versions(),
            "speakers": [asdict(speaker) for speaker in speakers],
        }
        atomic_write_text(staging / SYNTHETIC_DESCRIPTION, json.dumps(description, indent=1) + "\n")
        try:
            staging.replace(root)
        except OSError:  # built meanwhile by another process, or an empty folder was there
            if (root / SYNTHETIC_DESCRIPTION).is_file():
                shutil.rmtree(staging)
            else:
                root.rmdir()
                staging.replace(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root
