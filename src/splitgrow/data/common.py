"""What every dataset loader shares: the error type, the default cache folder, reading members of an archive."""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

from ..errors import SplitgrowError

#: where downloaded datasets go when no --data-root is given
CACHE = Path.home() / ".cache" / "splitgrow"


class DataError(SplitgrowError):
    """A dataset file is missing, truncated or corrupt."""


def read_archive_members(
    raw: bytes, path: Path, members: Sequence[str], *, kind: str, missing: str, fix: str
) -> list[bytes]:
    """The bytes of each of ``members`` of the gzipped tar archive ``raw`` (the file ``path``, a ``kind`` archive
    such as ".tgz"), in order, without writing anything.

    Raises:
        DataError: the archive is truncated or corrupt, or a member is missing (``missing``, a message with
            ``{member}``); both with ``fix``.
    """
    found = []
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
            for member in members:
                try:
                    stream = archive.extractfile(member)
                except KeyError:
                    stream = None
                if stream is None:
                    raise DataError(missing.format(member=member), path, fix)
                found.append(stream.read())
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"not a readable {kind} archive ({error}): truncated or corrupt", path, fix) from None
    return found
