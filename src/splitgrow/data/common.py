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
    such as ".tgz"), in order, without writing anything. The archive is decompressed once, in one pass, whatever
    order its members are in (looking members up by name would decompress it again from the start for each one
    that lies before the last one read).

    Raises:
        DataError: the archive is truncated or corrupt, or a member is missing or not a regular file (``missing``,
            a message with ``{member}``); both with ``fix``.
    """
    wanted = set(members)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r|gz") as archive:
            for member in archive:
                if member.name in wanted and member.isfile():
                    stream = archive.extractfile(member)
                    if stream is not None:
                        found[member.name] = stream.read()  # a name given twice: the last, as tar extracts it
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"not a readable {kind} archive ({error}): truncated or corrupt", path, fix) from None
    for member in members:
        if member not in found:
            raise DataError(missing.format(member=member), path, fix)
    return [found[member] for member in members]
