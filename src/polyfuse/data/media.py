"""Where a media cell's bytes come from: a path (relative to the table's folder), raw bytes, or base64."""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from pathlib import Path

from polyfuse.data.errors import MediaError

# A media value after resolution: a file on disk, or the encoded file's bytes (PNG, WAV, ...).
MediaSource = Path | bytes

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DATA_URI = re.compile(r"^data:[\w/+.-]*;base64,", re.ASCII)
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}$")


def is_missing(value: object) -> bool:
    """None, NaN, pandas NA and blank strings all mean 'this row lacks the modality'."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    if isinstance(value, bytes | bytearray) and len(value) == 0:
        return True
    try:
        import pandas as pd

        return bool(value is pd.NA or value is pd.NaT)
    except ImportError:  # pragma: no cover - pandas is a core dependency
        return False


def describe_source(source: MediaSource) -> str:
    """A short name for error messages: the path, or '<N bytes>'."""
    return str(source) if isinstance(source, Path) else f"<{len(source)} bytes>"


def resolve_media(
    value: object, base_dir: Path | None, allow_base64: bool = True, allow_paths: bool = True
) -> MediaSource | None:
    """Turn a table cell into a MediaSource; None when the cell is missing.

    Relative paths resolve against `base_dir` (the table's folder). URLs are refused: polyfuse never
    fetches remote inputs (a server that does is an SSRF hole). Base64 is accepted as a data URI, or, when
    `allow_base64` (tables built in Python), as a long string that decodes cleanly and is not a path.

    `allow_paths=False` is for values from someone else (a server's requests): a string is then only ever
    data (base64 or a data URI), never a file name, so a request cannot make polyfuse read its own files.
    """
    if isinstance(value, str) and len(value) <= _MEMO_MAX_CHARS:
        return _resolve_text(value, base_dir, allow_base64, allow_paths)
    return _resolve(value, base_dir, allow_base64, allow_paths)


# Every epoch resolves the same cells again; a path's parsing costs more than the cached features' lookup.
_MEMO_MAX_CHARS = 1024  # longer strings are inline data, not worth keeping twice


@functools.lru_cache(maxsize=1 << 16)
def _resolve_text(
    value: str, base_dir: Path | None, allow_base64: bool, allow_paths: bool
) -> MediaSource | None:
    return _resolve(value, base_dir, allow_base64, allow_paths)


def _resolve(
    value: object, base_dir: Path | None, allow_base64: bool, allow_paths: bool
) -> MediaSource | None:
    if is_missing(value):
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if not allow_paths:
        return _data_only(value)
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str):
        text = value.strip()
        if _DATA_URI.match(text):
            return _b64decode(text.split(",", 1)[1])
        if _URL.match(text):
            raise _url_refused(text)
        if allow_base64 and len(text) >= 64 and _BASE64_CHARS.match(text) and "/" not in text[:1]:
            decoded = _try_b64decode(text)
            if decoded is not None:
                return decoded
        path = Path(text).expanduser()
    else:
        raise MediaError(
            f"expected a file path, bytes or base64 string, got {type(value).__name__}",
            "put a path to the file in this cell",
        )
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def read_source_bytes(source: MediaSource, max_bytes: int) -> bytes:
    """The encoded bytes of a source, refusing files larger than `max_bytes` before reading them."""
    if isinstance(source, bytes):
        if len(source) > max_bytes:
            raise MediaError(
                f"{len(source)} bytes is over the {max_bytes}-byte limit", "use a smaller file", "too_large"
            )
        return source
    try:
        size = source.stat().st_size
    except FileNotFoundError:
        raise MediaError(
            f"file not found: {source}", "fix the path or drop the row (--drop-invalid)"
        ) from None
    except OSError as e:
        raise MediaError(
            f"cannot read {source}: {e.strerror}", "check the path and its permissions"
        ) from None
    if not source.is_file():
        raise MediaError(f"not a regular file: {source}", "point the cell at a file")
    if size > max_bytes:
        raise MediaError(
            f"file is {size} bytes, over the {max_bytes}-byte limit", "use a smaller file", "too_large"
        )
    return source.read_bytes()


def _url_refused(
    text: str, fix: str = "download the file and give its local path, or pass its bytes"
) -> MediaError:
    return MediaError(f"URLs are not accepted as media ('{text[:60]}')", fix)


def _data_only(value: object) -> bytes:
    """A media value that must be the file's bytes as base64 (or a base64 data URI): never a path."""
    if not isinstance(value, str):
        raise MediaError(
            f"expected the file's bytes as a base64 string, got {type(value).__name__}",
            "send the file's bytes base64-encoded",
        )
    text = value.strip()
    if _DATA_URI.match(text):
        return _b64decode(text.split(",", 1)[1])
    if _URL.match(text):
        raise _url_refused(text, "send the file's bytes base64-encoded")
    decoded = _try_b64decode("".join(text.split()))  # line-wrapped base64 (e.g. `base64` output) is fine
    if decoded is None:
        # Never echo the value: it may be a path, and saying whether it exists would leak the file system.
        raise MediaError(
            "not valid base64: file paths are not accepted here, only the file's bytes",
            "send the file's bytes base64-encoded (standard alphabet, with padding)",
        )
    return decoded


def _try_b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _b64decode(text: str) -> bytes:
    decoded = _try_b64decode(text.strip())
    if decoded is None:
        raise MediaError("invalid base64 in data URI", "encode the file's bytes with standard base64")
    return decoded
