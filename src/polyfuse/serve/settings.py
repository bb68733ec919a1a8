"""Server settings: limits on what a request may hold, micro-batching, and where to listen.

Every limit has a safe default and is checked before the work it guards (body size before the body is
buffered, pixel count and audio duration from the header before decoding). Limits apply on top of the
model's own preprocessing limits: the tighter of the two wins.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from polyfuse.data.modalities.image import ALL_IMAGE_FORMATS


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(default=20_000_000, gt=0)  # whole request body; 413 before it is buffered
    max_file_bytes: int = Field(default=10_000_000, gt=0)  # one image or audio file, decoded from base64
    max_rows: int = Field(default=256, gt=0)  # rows per request
    max_text_chars: int = Field(default=20_000, gt=0)  # characters per text cell
    max_pixels: int = Field(default=16_000_000, gt=0)  # width * height from the image header
    image_formats: list[str] = Field(default_factory=lambda: ["PNG", "JPEG", "WEBP", "BMP"])  # allowlist
    max_audio_seconds: float = Field(default=60.0, gt=0)  # duration from the header, then from the samples
    audio_sample_rates: tuple[int, int] = (4_000, 96_000)  # Hz, allowed range
    max_audio_channels: int = Field(default=2, gt=0)
    max_form_parts: int = Field(default=200, gt=0)  # multipart parts per request

    @field_validator("image_formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        formats = [f.upper() for f in value]
        unknown = sorted(set(formats) - set(ALL_IMAGE_FORMATS))
        if unknown or not formats:
            raise ValueError(f"image_formats {unknown or '[]'} not among {list(ALL_IMAGE_FORMATS)}")
        return formats


class Batching(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True  # False: every request runs alone (still one at a time through the model)
    max_batch_rows: int = Field(default=32, gt=0)  # rows the model sees at once, across requests
    max_wait_ms: float = Field(default=5.0, ge=0)  # how long the first request waits for company
    max_pending: int = Field(default=64, gt=0)  # requests admitted and not answered; more get 503
    request_timeout_s: float = Field(default=30.0, gt=0)  # an admitted request not answered by then: 504
    retry_after_s: int = Field(default=1, ge=0)  # the Retry-After header on 503


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)
    # sha256 hex digests of the accepted API keys (never the keys themselves); empty = no auth
    api_key_hashes: list[str] = Field(default_factory=list)
    insecure_no_auth: bool = False  # allow a non-loopback address without keys (behind your own gateway)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)  # SIGTERM: in-flight requests get this long
    index_dir: Path | None = None  # an index built by `polyfuse index build` with this model: /v1/search
