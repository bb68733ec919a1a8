"""The bad-input plan (docs/research/serving-reliability.md c.2): each request gets the right 4xx naming the
field, the error body carries a request id and no traceback, the server stays up, and no file outside the
server's own temp dir is opened while handling it (checked with a Python audit hook)."""

from __future__ import annotations

import base64
import io
import mimetypes
import struct
import sys
import sysconfig
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import request_rows

import polyfuse
from polyfuse.serve import ServeSettings, create_app
from polyfuse.serve.auth import hash_key
from polyfuse.serve.engine import Engine

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
_opened: list[str] = []
_recording = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording and event == "open" and isinstance(args[0], str | bytes | Path):
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # stays for the process; records only while a case runs
mimetypes.init()  # the test client reads /etc/mime.types to label file parts; do it before recording


def png(width: int = 8, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR says width x height (CRC fixed, so only the size is a lie)."""
    data = bytearray(png(1, 1))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="GIF")
    return buffer.getvalue()


def wav(samples: np.ndarray, rate: int = 8000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def wav_claiming_2_31_frames() -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    return header + b"data" + struct.pack("<I", 0xFFFFFFFE) + bytes(32)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def tone(seconds: float, rate: int = 8000, channels: int = 1) -> np.ndarray:
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)
    return np.stack([wave] * channels, 1) if channels > 1 else wave


def nan_float_wav() -> bytes:
    samples = tone(0.2).astype(np.float32)
    samples[100:110] = np.nan
    return wav(samples, subtype="FLOAT")


def row(**cells: Any) -> dict[str, Any]:
    return {"json": {"rows": [cells]}}


def raw(body: bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"content": body, "headers": {"Content-Type": content_type}}


def form(*parts: tuple[str, Any]) -> dict[str, Any]:
    return {"files": list(parts)}


def chunks() -> Iterator[bytes]:
    for _ in range(30):
        yield b" " * 1_000_000


# (id, request kwargs (built lazily), expected status, expected field or None)
Case = tuple[str, Callable[[], dict[str, Any]], int, str | None]
CASES: list[Case] = [
    ("malformed-json", lambda: raw(b'{"rows": [{"text": "a"'), 400, None),
    ("deep-nesting", lambda: raw(b"[" * 100_000 + b"]" * 100_000), 400, None),
    ("nan-in-json", lambda: raw(b'{"rows": [{"amount": NaN}]}'), 400, None),
    ("infinity-in-json", lambda: raw(b'{"rows": [{"amount": -Infinity}]}'), 400, None),
    ("number-overflow", lambda: raw(b'{"rows": [{"amount": 1e999}]}'), 400, None),
    ("5000-digit-int", lambda: raw(b'{"rows": [{"amount": ' + b"9" * 5000 + b"}]}"), 400, None),
    ("invalid-utf8", lambda: raw(b'{"rows": [{"text": "\xff\xfe"}]}'), 400, None),
    ("top-level-array", lambda: raw(b"[1, 2]"), 422, None),
    ("top-level-null", lambda: raw(b"null"), 422, None),
    ("rows-not-a-list", lambda: {"json": {"rows": {"text": "a"}}}, 422, "rows"),
    ("no-rows", lambda: {"json": {"rows": []}}, 422, "rows"),
    ("extra-top-level-key", lambda: {"json": {"rows": [{}], "debug": True}}, 422, "debug"),
    ("unknown-column", lambda: row(imgae=b64(png())), 422, "imgae"),
    ("text-as-number", lambda: row(text=42), 422, "text"),
    ("number-as-string", lambda: row(amount="12"), 422, "amount"),
    ("number-as-list", lambda: row(amount=[1, 2]), 422, "amount"),
    ("category-as-object", lambda: row(colour={"a": 1}), 422, "colour"),
    ("image-as-number", lambda: row(image=7), 422, "image"),
    ("image-path-etc-passwd", lambda: row(image="/etc/passwd"), 422, "image"),
    ("image-path-ssh-key", lambda: row(image="~/.ssh/id_rsa"), 422, "image"),
    ("audio-path-traversal", lambda: row(audio="../../x.wav"), 422, "audio"),
    ("image-file-url", lambda: row(image="file:///etc/passwd"), 422, "image"),
    ("audio-metadata-url", lambda: row(audio="http://169.254.169.254/latest/meta-data/"), 422, "audio"),
    ("image-not-base64", lambda: row(image="!!!not base64!!!"), 422, "image"),
    ("image-random-bytes", lambda: row(image=b64(bytes(range(256)) * 4)), 415, "image"),
    ("image-truncated-png", lambda: row(image=b64(png(64, 64)[:60])), 422, "image"),
    ("png-claiming-10000x10000", lambda: row(image=b64(png_claiming(10_000, 10_000))), 413, "image"),
    ("png-claiming-20000x10000", lambda: row(image=b64(png_claiming(20_000, 10_000))), 413, "image"),
    ("png-zero-width", lambda: row(image=b64(png_claiming(0, 10))), 422, "image"),
    ("gif-not-in-allowlist", lambda: row(image=b64(gif())), 415, "image"),
    ("wav-in-image-field", lambda: row(image=b64(wav(tone(0.1)))), 415, "image"),
    ("png-in-audio-field", lambda: row(audio=b64(png())), 422, "audio"),
    ("wav-claiming-2^31-frames", lambda: row(audio=b64(wav_claiming_2_31_frames())), 422, "audio"),
    ("wav-nan-samples", lambda: row(audio=b64(nan_float_wav())), 422, "audio"),
    ("wav-9-channels", lambda: row(audio=b64(wav(tone(0.1, channels=9)))), 422, "audio"),
    ("wav-768khz", lambda: row(audio=b64(wav(tone(0.01, rate=768_000), rate=768_000))), 422, "audio"),
    ("wav-two-minutes", lambda: row(audio=b64(wav(tone(120.0)))), 413, "audio"),
    ("wav-truncated-header", lambda: row(audio=b64(wav(tone(0.1))[:20])), 422, "audio"),
    ("text-too-long", lambda: row(text="word " * 6000), 413, "text"),
    ("file-over-size-limit", lambda: row(image=b64(b"\x89PNG" + bytes(11_000_000))), 413, "image"),
    ("too-many-rows", lambda: {"json": {"rows": [{}] * 257}}, 413, "rows"),
    ("100MB-body", lambda: raw(b" " * 100_000_000), 413, "body"),
    (
        "chunked-body-over-limit",
        lambda: {"content": chunks(), "headers": {"Content-Type": "application/json"}},
        413,
        "body",
    ),
    ("pickle-content-type", lambda: raw(b"\x80\x04K\x01.", "application/x-python-pickle"), 415, None),
    ("bentoml-pickle", lambda: raw(b"\x80\x04K\x01.", "application/vnd.bentoml+pickle"), 415, None),
    ("octet-stream", lambda: raw(b"\x00\x01", "application/octet-stream"), 415, None),
    ("urlencoded-form", lambda: raw(b"text=hello", "application/x-www-form-urlencoded"), 415, None),
    ("multipart-unknown-field", lambda: form(("nope", (None, "x"))), 422, "nope"),
    ("multipart-file-as-text", lambda: form(("text", ("a.txt", b"hello"))), 422, "text"),
    ("multipart-number-not-a-number", lambda: form(("amount", (None, "twelve"))), 422, "amount"),
    ("multipart-duplicate-field", lambda: form(("text", (None, "a")), ("text", (None, "b"))), 422, "text"),
    (
        "multipart-traversal-filename",
        lambda: form(("audio", ("../../x.wav", b"RIFF" + bytes(2_000_000)))),
        422,
        "audio",
    ),
    ("multipart-row-index-huge", lambda: form(("rows[999999][text]", (None, "a"))), 413, "rows"),
    ("multipart-file-too-large", lambda: form(("image", ("a.png", bytes(11_000_000)))), 413, "image"),
    ("multipart-no-boundary", lambda: raw(b"--x\r\n", "multipart/form-data"), 400, None),
    (
        "multipart-backslash-boundary",
        lambda: raw(b"--x\r\n", 'multipart/form-data; boundary="' + "\\" * 64 + 'a"'),
        400,
        None,
    ),
]


@pytest.fixture(scope="module")
def secured(model_dir: Path, engine: Engine) -> Iterator[TestClient]:
    settings = ServeSettings(api_key_hashes=[hash_key(KEY)])
    with TestClient(create_app(model_dir, settings, engine), raise_server_exceptions=False) as client:
        yield client


def _allowed(path: str, private_tmp: str) -> bool:
    """Library code (read by lazy imports and traceback formatting) and the server's own temp dir."""
    paths = sysconfig.get_paths()
    package = str(Path(polyfuse.__file__).parent)
    roots = [paths["stdlib"], paths["purelib"], paths["platlib"], package, private_tmp]
    resolved = str(Path(path).resolve())
    return any(resolved.startswith(str(Path(r).resolve())) for r in roots)


@pytest.mark.parametrize(("build", "status", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_the_right_4xx(
    secured: TestClient, build: Callable[[], dict[str, Any]], status: int, field: str | None
) -> None:
    global _recording
    kwargs = build()
    kwargs["headers"] = {**kwargs.get("headers", {}), **AUTH}
    cwd_before = set(Path.cwd().iterdir())
    _opened.clear()
    _recording = True
    try:
        response = secured.post("/v1/predict", **kwargs)
    finally:
        _recording = False
    assert response.status_code == status, response.text[:500]
    body = response.json()["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text and "site-packages" not in response.text
    if field is not None:
        fields = [p.get("field") for p in body.get("problems", [])]
        assert field in fields, body
    private_tmp = tempfile.gettempdir()  # the server's own, set by its lifespan
    assert "polyfuse-serve-" in private_tmp
    outside = [p for p in _opened if not _allowed(p, private_tmp)]
    assert outside == [], outside
    assert set(Path.cwd().iterdir()) == cwd_before  # nothing written next to us (e.g. ../../x.wav)
    assert secured.get("/healthz").status_code == 200


def test_server_still_answers_after_every_bad_input(secured: TestClient, served_table: Path) -> None:
    response = secured.post("/v1/predict", json={"rows": request_rows(served_table, 2)}, headers=AUTH)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2
    assert list(Path(tempfile.gettempdir()).iterdir()) == []  # spooled uploads were all removed
    metrics = secured.get("/metrics", headers=AUTH).text
    assert 'polyfuse_requests_total{route="/v1/predict",status="413"}' in metrics
    assert 'status="500"' not in metrics


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-key-0123456789"}, 403),
        ({"Authorization": f"Basic {KEY}"}, 403),
        ({"X-API-Key": KEY[:-1] + "g"}, 403),
        ({"X-API-Key": KEY}, 200),
        (AUTH, 200),
    ],
)
def test_keys_are_required_everywhere_but_health(
    secured: TestClient, headers: dict[str, str], status: int
) -> None:
    for path in ("/v1/model", "/metrics", "/openapi.json"):
        assert secured.get(path, headers=headers).status_code == status
    assert secured.post("/v1/predict", json={"rows": [{}]}, headers=headers).status_code == status
    for open_path in ("/healthz", "/readyz", "/"):
        assert secured.get(open_path, headers=headers).status_code == 200
    if status == 401:
        assert secured.get("/v1/model").headers["www-authenticate"] == "Bearer"


def test_wrong_method_and_unknown_paths(secured: TestClient) -> None:
    assert secured.get("/v1/predict", headers=AUTH).status_code == 405
    assert secured.post("/v1/nothing", headers=AUTH).status_code == 404
    assert secured.get("/nothing").status_code == 401  # closed before it is even routed
