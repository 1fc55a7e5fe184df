"""Google Speech Commands v0.01 for keyword spotting, with Hello Edge's conventions (TensorFlow's speech_commands
example, ``input_data.py``, which Hello Edge trained with).

*Layout.* A folder per word (``yes/``, ``bed/``, ...) of 16 kHz mono WAV files named
``<speaker>_nohash_<n>.wav``, a ``_background_noise_/`` folder of long noise recordings, and the list files
``validation_list.txt`` / ``testing_list.txt``, in v0.01 and v0.02 alike (hidden files, such as the ``._*.wav``
that macOS leaves in archives, are ignored). The root may also be the folder above the dataset, as torchaudio
leaves it (``SpeechCommands/speech_commands_v0.02/``) or as an archive unpacked into a folder of its name
(``speech_commands_v0.01/``). The offline stand-in (:mod:`splitgrow.data.speech_synthetic`) is written in the
same layout, plus a ``synthetic.json`` that marks it.

*Classes.* 12: ``_silence_``, ``_unknown_`` and the ten keywords yes, no, up, down, left, right, on, off, stop, go.
Every other word is ``_unknown_``.

*Partitions.* TensorFlow's ``which_set``: the SHA-1 of the file name without its ``_nohash_...`` suffix, as an
integer modulo 2^27, times 100 / (2^27 - 1), is a percentage: below 10 validation, below 20 testing, else
training, so a speaker's clips stay in one set. TensorFlow's input_data.py never reads the list files: it always
hashes, and Hello Edge's accuracies come from that split (the list files shipped with the data may not match it
exactly; ARM-software/ML-KWS-for-MCU issue 61). So ``split="hash"`` (the default) ignores the lists, as TensorFlow
does; ``split="lists"`` uses them instead (everything listed in neither is training).

*Silence and unknown.* Per partition, as input_data.py: ceil(10% of the keyword clips) silence clips and
ceil(10%) unknown clips drawn at random from that partition's other words, then the partition is shuffled
(from ``seed``, where TensorFlow uses its fixed RANDOM_SEED).

*Audio.* Clips are zero-padded or cut to 1 s. :func:`mix_audio` applies input_data.py's processing graph: the
clip (silenced for ``_silence_``) is shifted by a whole number of samples uniform in [-100 ms, +100 ms) with zero
fill (training only), a random 1 s stretch of a random background recording is added at volume U[0, 0.1] with
probability 0.8 (training only) or at U[0, 1] for every silence clip (every partition, as TensorFlow does), and
the sum is clipped to [-1, 1]. :func:`precompute_features` turns several such augmented copies into MFCCs once.

A missing folder, a corrupt or truncated WAV, another sample rate: one-line :class:`DataError` naming the file
and the fix. ``download=True`` fetches the official archive (1.4 GB, SHA-256 verified) into a new folder,
atomically: the folder appears complete or not at all.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..features.mfcc import HELLO_EDGE_MFCC, MfccSettings, mfcc
from .common import CACHE, DataError
from .wav import read_wav

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000  # one second
SILENCE_LABEL = "_silence_"
UNKNOWN_LABEL = "_unknown_"
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
#: label index -> name, in TensorFlow's order (silence 0, unknown 1, then the keywords)
CLASSES = (SILENCE_LABEL, UNKNOWN_LABEL, *KEYWORDS)
BACKGROUND_FOLDER = "_background_noise_"
#: the five words v0.02 added to v0.01's thirty
_WORDS_ADDED_IN_V002 = ("backward", "follow", "forward", "learn", "visual")
LIST_FILES = {"validation": "validation_list.txt", "testing": "testing_list.txt"}
PARTITIONS = ("training", "validation", "testing")
SPLITS = ("hash", "lists")
#: the file that marks a folder as the synthetic stand-in (written by :mod:`splitgrow.data.speech_synthetic`)
SYNTHETIC_DESCRIPTION = "synthetic.json"
#: TensorFlow's MAX_NUM_WAVS_PER_CLASS: the hash is taken modulo this + 1
_HASH_MODULUS = 2**27 - 1

_ARCHIVE = (
    "https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
    "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",  # SHA-256
)
_HOW_TO_GET = (
    "pass --data-root to a folder in Speech Commands' layout (one folder per word, _background_noise_/), or pass "
    "--download to fetch v0.01 (1.4 GB)"
)
#: where the dataset folder may sit under the root a user gives: torchaudio's SPEECHCOMMANDS leaves
#: SpeechCommands/speech_commands_v0.0X, and an archive unpacked into a folder of its name gives speech_commands_v0.0X
_NESTED_FOLDERS = tuple(
    f"{parent}speech_commands_{version}" for parent in ("SpeechCommands/", "") for version in ("v0.01", "v0.02")
)


def default_speech_root() -> Path:
    """Where Speech Commands v0.01 is looked for (and downloaded to) without --data-root."""
    return CACHE / "speech-commands-v0.01"


def which_set(file_name: str, validation_percentage: float = 10.0, testing_percentage: float = 10.0) -> str:
    """TensorFlow's partition of a clip from its file name: 'training', 'validation' or 'testing'.

    Only the base name before ``_nohash_`` counts, so all clips of one speaker land in the same partition.
    """
    speaker = re.sub(r"_nohash_.*$", "", PurePosixPath(file_name).name)
    # the name's bytes on disk (its UTF-8 for every valid name): a name that is not UTF-8 is hashed too
    digest = int(hashlib.sha1(os.fsencode(speaker), usedforsecurity=False).hexdigest(), 16)
    percentage = (digest % (_HASH_MODULUS + 1)) * (100.0 / _HASH_MODULUS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


# ------------------------------------------------------------------------------------------ the data in memory


@dataclass
class KeywordSet:
    """One partition in memory.

    Attributes:
        partition: 'training', 'validation' or 'testing'.
        audio: (N, 16000) int16 clips; a silence clip is all zeros (its sound is background noise, mixed in by
            :func:`mix_audio`).
        labels: (N,) int64 indexes into ``classes``.
        files: each clip's path relative to the dataset folder ('' for silence).
        background: the noise recordings, float32 in [-1, 1], each longer than a clip.
        classes: label names.
    """

    partition: str
    audio: Tensor
    labels: Tensor
    files: tuple[str, ...]
    background: tuple[Tensor, ...]
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int]:
        """Clips per class name."""
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, counts))


@dataclass
class KeywordData:
    """The three partitions of a keyword dataset, and where it came from.

    Attributes:
        name: 'speech-commands' or, for the offline stand-in, 'speech-synthetic' (results must say which).
        root: the dataset folder.
        training, validation, testing: the partitions.
        description: for the synthetic set, its ``synthetic.json`` (generator, seed, voices); else empty.
    """

    name: str
    root: Path
    training: KeywordSet
    validation: KeywordSet
    testing: KeywordSet
    description: dict[str, Any]

    @property
    def synthetic(self) -> bool:
        return self.name == "speech-synthetic"

    @property
    def version(self) -> str:
        """'v0.02' when the words only that version recorded are there, else 'v0.01'."""
        return "v0.02" if any((self.root / word).is_dir() for word in _WORDS_ADDED_IN_V002) else "v0.01"

    def partition(self, name: str) -> KeywordSet:
        """'training', 'validation' or 'testing'."""
        if name not in PARTITIONS:
            raise ValueError(f"partition must be one of {', '.join(PARTITIONS)}, got {name!r}")
        return getattr(self, name)


# ------------------------------------------------------------------------------------------ loading


def _dataset_folder(root: Path) -> Path:
    """``root`` if it holds the dataset's folders, else the one standard folder below it that does (see
    :data:`_NESTED_FOLDERS`); ``root`` when there is none."""
    if any((root / name).is_dir() for name in (*KEYWORDS, BACKGROUND_FOLDER)):
        return root
    nested = [root / name for name in _NESTED_FOLDERS if (root / name).is_dir()]
    if len(nested) > 1:
        raise DataError(
            f"several versions of Speech Commands: {', '.join(str(n.relative_to(root)) for n in nested)}",
            root,
            "pass --data-root to the one to use",
        )
    return nested[0] if nested else root


def _clips(folder: Path) -> list[Path]:
    """The WAV files of ``folder`` (``.wav`` in any case), without hidden files: macOS leaves ``._<name>.wav``
    resource forks in archives it makes."""
    return [path for path in folder.iterdir() if path.suffix.lower() == ".wav" and not path.name.startswith(".")]


def _word_files(root: Path) -> dict[str, list[str]]:
    """Relative paths of every clip, per word folder (lower case), in sorted order."""
    words: dict[str, list[str]] = {}
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        if folder.name == BACKGROUND_FOLDER or folder.name.startswith("."):
            continue
        files = sorted(f"{folder.name}/{wav.name}" for wav in _clips(folder))
        if files:
            words.setdefault(folder.name.lower(), []).extend(files)
    if not words:
        raise DataError("no <word>/*.wav clips: not Speech Commands' layout", root, _HOW_TO_GET)
    missing = [word for word in KEYWORDS if word not in words]
    if missing:
        raise DataError(
            f"no folder of clips for {', '.join(missing)} (missing, or empty): is it Speech Commands?",
            root,
            _HOW_TO_GET,
        )
    return words


def _read_list(root: Path, partition: str) -> set[str]:
    path = root / LIST_FILES[partition]
    if not path.is_file():
        raise DataError(
            f"split='lists' needs the list file {path.name}, which is missing",
            path,
            "restore it, or use split='hash' (TensorFlow's split)",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(
            "not a text file of clip names", path, "replace it with the dataset's own, or use split='hash'"
        ) from None
    return {line.strip() for line in text.splitlines() if line.strip()}


def _assign(
    words: dict[str, list[str]], split: str, root: Path, validation_percentage: float, testing_percentage: float
) -> dict[str, tuple[list[str], list[str]]]:
    """partition -> (keyword clips, other clips)."""
    lists = {name: _read_list(root, name) for name in LIST_FILES} if split == "lists" else {}
    if lists:
        clips = {file for files in words.values() for file in files}
        for name, listed in lists.items():
            if unknown := sorted(listed - clips):
                raise DataError(
                    f"the list names {len(unknown)} clip(s) that are not in the dataset folder, the first "
                    f"{unknown[0]!r}: the list of another version of the dataset, or clips deleted",
                    root / LIST_FILES[name],
                    "restore them, remove them from the list, or use split='hash'",
                )
        if both := sorted(lists["validation"] & lists["testing"]):
            raise DataError(
                f"{len(both)} clip(s) are in both {LIST_FILES['validation']} and {LIST_FILES['testing']}, the first "
                f"{both[0]!r}",
                root,
                "remove them from one list, or use split='hash'",
            )
    result: dict[str, tuple[list[str], list[str]]] = {name: ([], []) for name in PARTITIONS}
    for word, files in words.items():
        for file in files:
            if split == "hash":
                partition = which_set(file, validation_percentage, testing_percentage)
            else:
                partition = next((name for name, listed in lists.items() if file in listed), "training")
            result[partition][0 if word in KEYWORDS else 1].append(file)
    return result


def _read_clip(path: Path) -> np.ndarray:
    """A clip cut or zero-padded to one second. A clip of no samples is refused: padded, it would be a silent clip
    labelled as its word (as an empty file is refused, whose header is cut short too)."""
    samples = read_wav(path, SAMPLE_RATE)[:CLIP_SAMPLES]
    if not samples.shape[0]:
        raise DataError("a WAV file of no samples (a header without audio)", path, "replace it or delete it")
    return np.pad(samples, (0, CLIP_SAMPLES - samples.shape[0]))


def _read_background(root: Path) -> tuple[Tensor, ...]:
    folder = root / BACKGROUND_FOLDER
    if not folder.is_dir():
        raise DataError(
            f"no {BACKGROUND_FOLDER} folder: silence clips and noise augmentation need it", folder, _HOW_TO_GET
        )
    recordings = []
    for path in sorted(_clips(folder)):
        samples = read_wav(path, SAMPLE_RATE)
        if samples.shape[0] <= CLIP_SAMPLES:
            raise DataError(
                f"{samples.shape[0]} samples: a background noise recording must be longer than 1 s",
                path,
                "replace it with a longer recording, or delete it",
            )
        recordings.append(torch.from_numpy(samples.astype(np.float32) / 32768.0))
    if not recordings:
        raise DataError(
            "no .wav recordings: silence clips need background noise", folder, "restore the dataset's recordings"
        )
    return tuple(recordings)


def load_keyword_data(
    root: Path | None = None,
    *,
    download: bool = False,
    split: str = "hash",
    seed: int = 0,
    validation_percentage: float = 10.0,
    testing_percentage: float = 10.0,
    silence_percentage: float = 10.0,
    unknown_percentage: float = 10.0,
) -> KeywordData:
    """Load Speech Commands (or a folder in its layout, such as the synthetic stand-in) into memory.

    Args:
        root: the dataset folder; default :func:`default_speech_root`.
        download: fetch Speech Commands v0.01 into ``root`` first if it is not there (1.4 GB).
        split: 'hash' (TensorFlow's which_set, Hello Edge's split) or 'lists' (the dataset's list files).
        seed: draws the unknown clips of each partition and the order of the clips.
        validation_percentage, testing_percentage: the hash split's shares.
        silence_percentage, unknown_percentage: silence and unknown clips per partition, in percent of its keyword
            clips (rounded up).

    Raises:
        DataError: a missing folder, a missing keyword, a missing list file (split='lists'), a corrupt WAV file
            or one at another sample rate.
    """
    if split not in SPLITS:
        raise DataError(
            f"split must be one of {', '.join(SPLITS)}, got {split!r}",
            "split",
            "hash is TensorFlow's split by speaker, lists the dataset's list files",
        )
    root = _dataset_folder(Path(root) if root is not None else default_speech_root())
    if root.exists() and not root.is_dir():
        raise DataError("a file, not the folder of the dataset", root, f"give --data-root a folder; {_HOW_TO_GET}")
    if download:
        fetch_speech_commands(root)
    if not root.is_dir():
        raise DataError("the keyword data folder does not exist", root, _HOW_TO_GET)
    words = _word_files(root)
    background = _read_background(root)
    assigned = _assign(words, split, root, validation_percentage, testing_percentage)
    rng = np.random.default_rng(seed)
    partitions = {}
    for partition in ("validation", "testing", "training"):  # TensorFlow's order of draws
        keyword_files, other_files = assigned[partition]
        silence_count = math.ceil(len(keyword_files) * silence_percentage / 100)
        unknown_count = math.ceil(len(keyword_files) * unknown_percentage / 100)
        unknown_files = [other_files[i] for i in rng.permutation(len(other_files))[:unknown_count]]
        files = keyword_files + unknown_files + [""] * silence_count
        labels = [CLASSES.index(file.split("/")[0].lower()) for file in keyword_files]
        labels += [CLASSES.index(UNKNOWN_LABEL)] * len(unknown_files) + [CLASSES.index(SILENCE_LABEL)] * silence_count
        order = rng.permutation(len(files))
        audio = np.zeros((len(files), CLIP_SAMPLES), dtype=np.int16)
        for row, index in enumerate(order):
            if files[index]:
                audio[row] = _read_clip(root / files[index])
        partitions[partition] = KeywordSet(
            partition,
            torch.from_numpy(audio),
            torch.tensor([labels[i] for i in order], dtype=torch.int64),
            tuple(files[i] for i in order),
            background,
        )
    description = _synthetic_description(root)
    return KeywordData(
        "speech-synthetic" if description else "speech-commands",
        root,
        partitions["training"],
        partitions["validation"],
        partitions["testing"],
        description,
    )


def _synthetic_description(root: Path) -> dict[str, Any]:
    """The ``synthetic.json`` that marks the synthetic stand-in (empty for real Speech Commands).

    Raises:
        DataError: the file is there but is not a JSON object (results must say truly which data they come from).
    """
    path = root / SYNTHETIC_DESCRIPTION
    if not path.is_file():
        return {}
    fix = f"delete {root} to synthesise it again, or only {path} if the folder holds Speech Commands"
    try:
        description = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise DataError("corrupt description of the synthetic set, not valid JSON", path, fix) from None
    if not isinstance(description, dict) or not description:
        raise DataError("not the description of a synthetic set (a JSON object)", path, fix)
    return description


# ------------------------------------------------------------------------------------------ download


def _is_complete(root: Path) -> bool:
    return all((root / name).is_file() for name in LIST_FILES.values()) and all(
        (root / word).is_dir() for word in (*KEYWORDS, BACKGROUND_FOLDER)
    )


def _extract(archive_path: Path, destination: Path) -> None:
    with tarfile.open(archive_path, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts:
                raise DataError(
                    f"an unsafe member {member.name!r} (outside the folder): not extracted",
                    archive_path,
                    "download the archive from its official address",
                )
            if member.isfile() or member.isdir():
                members.append(member)
        # Python >= 3.12 (and 3.10.12, 3.11.4) filters members itself and warns without a filter
        safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(destination, members=members, **safety)


def fetch_speech_commands(root: Path, *, opener: Callable[..., Any] = urllib.request.urlopen) -> None:
    """Download and unpack Speech Commands v0.01 into ``root`` unless it is already there.

    The archive is streamed to a temporary file beside ``root`` and its SHA-256 checked; it is unpacked into a
    temporary folder that is renamed to ``root`` at the end, so ``root`` is complete or absent. A download that
    fails leaves nothing behind: not the temporary files, nor the folders above ``root`` it created for them.

    Raises:
        DataError: ``root`` holds other files, the download fails, or the checksum differs.
        OSError: the archive cannot be written beside ``root`` (a full disk, no permission), naming ``root``.
    """
    root = Path(root)
    if _is_complete(root):
        return
    if root.exists() and any(root.iterdir()):
        raise DataError(
            "--download needs a new or empty folder, and this one holds other files",
            root,
            "leave out --download to read what is there, or choose another --data-root",
        )
    created = []  # the folders above root that do not exist yet, deepest first: made here, removed on failure
    folder = root.parent
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        _download_and_unpack(root, opener)
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()
            except OSError:  # no longer empty: something else was put there meanwhile
                break
        raise


def _download_and_unpack(root: Path, opener: Callable[..., Any]) -> None:
    """The body of :func:`fetch_speech_commands`, once the folder that holds ``root`` exists."""
    url, checksum = _ARCHIVE
    by_hand = (
        f"check the connection, or download it by hand, unpack it into {root} (`mkdir -p {root} && tar xzf "
        f"{PurePosixPath(url).name} -C {root}`) and run again without --download"
    )
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=root.parent, prefix=f".{root.name}.", suffix=".tar.gz") as archive:
        try:
            response = opener(url, timeout=60)
        except (OSError, http.client.HTTPException) as error:
            raise DataError(f"could not download {url}: {error}", root, by_hand) from None
        with response:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, http.client.HTTPException) as error:  # IncompleteRead: the connection dropped
                    raise DataError(f"could not download {url}: {error}", root, by_hand) from None
                if not chunk:
                    break
                digest.update(chunk)
                try:
                    archive.write(chunk)
                except OSError as error:  # a full disk is not the connection's fault: the file system's own error
                    raise OSError(error.errno, error.strerror, str(root)) from None
        archive.flush()
        if digest.hexdigest() != checksum:
            raise DataError(
                f"{url} has SHA-256 {digest.hexdigest()}, expected {checksum}: not unpacked",
                root,
                "try again later (a mirror or proxy may have changed it), or download it by hand",
            )
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".partial"))
        try:
            _extract(Path(archive.name), staging)
            if root.exists():
                root.rmdir()  # empty, checked above
            staging.replace(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


# ------------------------------------------------------------------------------------------ augmentation and features


@dataclass(frozen=True)
class Augmentation:
    """TensorFlow speech_commands' distortions (its train.py flags and Hello Edge's values).

    Attributes:
        time_shift_ms: shifts are uniform in [-time_shift_ms, +time_shift_ms) (whole samples).
        background_frequency: probability that a non-silence clip gets background noise.
        background_volume: that noise's volume is uniform in [0, background_volume].
    """

    time_shift_ms: float = 100.0
    background_frequency: float = 0.8
    background_volume: float = 0.1


#: Hello Edge's training distortions
TRAINING_AUGMENTATION = Augmentation()
#: validation and testing: no shift, no noise on words (silence clips still get noise at volume U[0, 1])
EVALUATION = Augmentation(time_shift_ms=0.0, background_frequency=0.0, background_volume=0.0)


@dataclass(frozen=True)
class _Draws:
    """The random choices of one augmented copy of a partition, one entry per clip."""

    shift: Tensor
    recording: Tensor
    offset: Tensor
    volume: Tensor


def _draw(keyword_set: KeywordSet, augmentation: Augmentation, generator: torch.Generator) -> _Draws:
    count = len(keyword_set)
    limit = round(augmentation.time_shift_ms * SAMPLE_RATE / 1000)
    shift = (
        torch.randint(-limit, limit, (count,), generator=generator)
        if limit > 0
        else torch.zeros(count, dtype=torch.long)
    )
    recording = torch.randint(0, len(keyword_set.background), (count,), generator=generator)
    spare = torch.tensor([len(noise) - CLIP_SAMPLES for noise in keyword_set.background])[recording]
    offset = (torch.rand(count, generator=generator, dtype=torch.float64) * spare).long()
    level = torch.rand(count, generator=generator)
    noisy = torch.rand(count, generator=generator) < augmentation.background_frequency
    silence = keyword_set.labels == CLASSES.index(SILENCE_LABEL)
    volume = torch.where(silence, level, torch.where(noisy, level * augmentation.background_volume, 0.0))
    return _Draws(shift, recording, offset, volume)


def mix_audio(
    keyword_set: KeywordSet,
    indices: Tensor,
    augmentation: Augmentation,
    generator: torch.Generator,
) -> Tensor:
    """Float32 waveforms (B, 16000) in [-1, 1] of clips ``indices``: shifted, with background noise mixed in."""
    subset = KeywordSet(
        keyword_set.partition, keyword_set.audio[indices], keyword_set.labels[indices], (), keyword_set.background
    )
    return _mix(subset, torch.arange(len(subset)), _draw(subset, augmentation, generator))


def _mix(keyword_set: KeywordSet, indices: Tensor, draws: _Draws) -> Tensor:
    audible = keyword_set.labels[indices] != CLASSES.index(SILENCE_LABEL)  # TensorFlow mutes the silence clips
    foreground = keyword_set.audio[indices].float() / 32768.0 * audible.unsqueeze(1)
    shift = draws.shift[indices]
    limit = int(shift.abs().max()) if len(shift) else 0
    # output[t] = clip[t - shift]: a positive shift delays the word, zeros fill the gap (TensorFlow pads and slices);
    # unfold gives every shifted window as a view, so only the chosen ones are copied
    windows = torch.nn.functional.pad(foreground, (limit, limit)).unfold(1, CLIP_SAMPLES, 1)
    shifted = windows[torch.arange(len(indices)), limit - shift]
    noise = torch.cat(keyword_set.background)
    starts = torch.tensor([0] + [len(b) for b in keyword_set.background[:-1]]).cumsum(0)
    background = noise.unfold(0, CLIP_SAMPLES, 1)[starts[draws.recording[indices]] + draws.offset[indices]]
    return (shifted + draws.volume[indices].unsqueeze(1) * background).clamp(-1.0, 1.0)


def precompute_features(
    keyword_set: KeywordSet,
    copies: int = 1,
    seed: int = 0,
    *,
    augmentation: Augmentation | None = None,
    settings: MfccSettings = HELLO_EDGE_MFCC,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """MFCCs of ``copies`` augmented copies of every clip, computed once instead of at every training step.

    Args:
        keyword_set: a partition.
        copies: augmented copies (each with fresh shifts and noise); 1 for validation and testing.
        seed: the source of every shift and noise choice; the same seed gives the same features.
        augmentation: default Hello Edge's for the training partition, :data:`EVALUATION` otherwise.
        settings: the MFCC parameters (Hello Edge's by default: 49 x 10 per clip).
        batch_size: clips per MFCC batch (memory only: the features do not depend on it).
        device: where the MFCCs are computed (the results come back to the CPU).

    Returns:
        features (copies * N, 1, frames, coefficients) float32 on the CPU, copy c in rows c*N .. (c+1)*N - 1, ready
        for :class:`splitgrow.models.DSCNN`; labels (copies * N,) int64.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if augmentation is None:
        augmentation = TRAINING_AUGMENTATION if keyword_set.partition == "training" else EVALUATION
    generator = torch.Generator().manual_seed(seed)
    count = len(keyword_set)
    features = torch.empty(copies * count, 1, settings.frames(CLIP_SAMPLES), settings.coefficients)
    for copy in range(copies):
        draws = _draw(keyword_set, augmentation, generator)  # all of a copy's choices first: batch-size independent
        for start in range(0, count, batch_size):
            indices = torch.arange(start, min(start + batch_size, count))
            waveforms = _mix(keyword_set, indices, draws).to(device)
            rows = slice(copy * count + start, copy * count + start + len(indices))
            features[rows, 0] = mfcc(waveforms, settings).float().cpu()
    return features, keyword_set.labels.repeat(copies)
