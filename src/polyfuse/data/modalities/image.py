"""Images: safe decoding to a fixed size and colour mode, normalisation, and train-time augmentation.

The pipeline for one cell is

    pixels = decode_image(source, cfg)      # uint8 (H, W, C), cfg.size and cfg.mode
    x = image_to_tensor(pixels, cfg)        # float32 (C, H, W), (x/255 - mean) / std
    x = augment_image(x, cfg.augment, generator, fill=normalised_black(cfg))   # training only

Decoding treats every file as hostile (see docs/research/serving-reliability.md, b.3 and c.2 I1-I7): only
the formats in `cfg.formats` are opened, the pixel count is checked from the header before any pixel is
decoded, truncated files fail instead of being padded, and every failure is a `MediaError` with a fix.
Pillow's global settings (MAX_IMAGE_PIXELS, LOAD_TRUNCATED_IMAGES) are never changed.
"""

from __future__ import annotations

import functools
import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from polyfuse.data.errors import MediaError
from polyfuse.data.media import MediaSource, describe_source, read_source_bytes

# ----------------------------------------------------------------------------------------------------
# Configs (saved as JSON beside the weights, so a model always gets the preprocessing it was trained with)


class ImageAugmentConfig(BaseModel):
    """Train-time augmentation: one random affine (resized crop + rotation + translation [+ flip]), then
    optionally random erasing (Zhong et al. 2017): a random rectangle painted black, so that the model
    learns to read an input with a part hidden (occlusions, stickers, a finger over the lens). Erasing is
    off by default: at 0.5 it left AV-Digits-N within seed noise (bench/results/fusion_noisy_10ms_hops.json)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True  # False makes augment_image the identity
    crop_scale: tuple[float, float] = (0.8, 1.0)  # fraction of the image area the random crop keeps
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio, relative to the image's own
    max_rotation_degrees: float = Field(default=10.0, ge=0.0, le=180.0)  # rotation drawn from ±this
    max_translate: float = Field(default=0.1, ge=0.0, lt=1.0)  # shift drawn from ±this fraction of W / H
    horizontal_flip: bool = False  # off by default: a mirrored digit or word is a different input
    erase_probability: float = Field(default=0.0, ge=0.0, le=1.0)  # chance of erasing one rectangle
    erase_scale: tuple[float, float] = (0.02, 0.2)  # fraction of the image area the rectangle covers
    erase_ratio: tuple[float, float] = (0.3, 3.3)  # rectangle aspect ratio (h / w, in pixels)

    @field_validator("crop_scale", "erase_scale")
    @classmethod
    def _check_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"an area fraction range must satisfy 0 < low <= high <= 1, got {value}")
        return value

    @field_validator("crop_ratio", "erase_ratio")
    @classmethod
    def _check_ratio(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low <= high:
            raise ValueError(f"an aspect ratio range must satisfy 0 < low <= high, got {value}")
        return value


ALL_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


class ImageConfig(BaseModel):
    """How an image cell becomes a (C, H, W) tensor."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["L", "RGB"] = "RGB"  # colour mode the model sees: L = 1 channel (grey), RGB = 3
    size: tuple[int, int] = (64, 64)  # (height, width) in pixels after resizing
    # squash: stretch to size (keeps all content, distorts aspect); center_crop: scale to cover, cut the
    # overhang; pad: scale to fit, fill the rest with black (keeps aspect and all content)
    resize: Literal["squash", "center_crop", "pad"] = "squash"
    mean: tuple[float, ...] = (0.5,)  # per-channel mean of x/255, or one value for every channel
    std: tuple[float, ...] = (0.5,)  # per-channel std (> 0); the defaults map [0, 255] to [-1, 1]
    # hard limit on width*height read from the header, checked before decoding. Pillow's own
    # MAX_IMAGE_PIXELS (89.5 M) still applies above it: raising this past that has no effect.
    max_pixels: int = Field(default=40_000_000, gt=0)
    max_file_bytes: int = Field(default=50_000_000, gt=0)  # encoded files larger than this are refused
    formats: list[str] = Field(default_factory=lambda: list(ALL_IMAGE_FORMATS))  # Pillow format allowlist
    augment: ImageAugmentConfig = Field(default_factory=ImageAugmentConfig)

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    def channel_mean(self) -> tuple[float, ...]:
        """`mean` with a single value broadcast to every channel."""
        return self.mean * self.channels if len(self.mean) == 1 else self.mean

    def channel_std(self) -> tuple[float, ...]:
        return self.std * self.channels if len(self.std) == 1 else self.std

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError(f"size is (height, width) in pixels, both >= 1; got {value}")
        return value

    @field_validator("formats")
    @classmethod
    def _check_formats(cls, value: list[str]) -> list[str]:
        Image.init()  # registers every plugin so Image.OPEN lists all readable formats
        formats = list(dict.fromkeys(f.upper() for f in value))
        unknown = [f for f in formats if f not in Image.OPEN]
        if not formats or unknown:
            readable = ", ".join(sorted(Image.OPEN))
            raise ValueError(f"unknown image format(s) {unknown or '[]'}; Pillow reads: {readable}")
        return formats

    @model_validator(mode="after")
    def _check_normalisation(self) -> ImageConfig:
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"{name} has {len(values)} values but mode '{self.mode}' has {self.channels} channel(s); "
                    f"give 1 value or {self.channels}"
                )
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite, got {values}")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        return self


# ----------------------------------------------------------------------------------------------------
# Decoding

# Errors Pillow and its plugins raise on bad input. Anything else is a bug in polyfuse and propagates.
_DECODE_ERRORS = (OSError, EOFError, SyntaxError, ValueError, struct.error)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# Magic bytes -> format name, used only to explain why Pillow refused a file (it never decides anything).
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (8, b"WEBP", "WEBP"),
    (8, b"WAVE", "WAV (audio)"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"BM", "BMP"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"%PDF", "PDF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00", "CUR"),
    (0, b"icns", "ICNS"),
    (0, b"8BPS", "PSD"),
    (0, b"SIMPLE  =", "FITS"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (0, b"\xffO\xffQ", "JPEG2000"),
    (0, b"BLP1", "BLP"),
    (0, b"BLP2", "BLP"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML/SVG"),
    (0, b"PK\x03\x04", "ZIP"),
    (0, b"fLaC", "FLAC (audio)"),
    (0, b"OggS", "OGG (audio)"),
    (0, b"ID3", "MP3 (audio)"),
)


def decode_image(source: MediaSource, cfg: ImageConfig, *, resize: bool = True) -> npt.NDArray[np.uint8]:
    """Decode an encoded image to uint8 pixels (H, W, C) at `cfg.size` in `cfg.mode` (at its own size with
    resize=False: a pretrained encoder's image processor resizes and crops it its own way).

    Only the first frame of animated or multi-page files is used; EXIF orientation is applied; alpha is
    composited on white. Raises MediaError for anything that cannot be used.
    """
    data = read_source_bytes(source, cfg.max_file_bytes)
    name = describe_source(source)
    with warnings.catch_warnings():
        # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; make it an error here, locally.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        opened = _open(data, cfg, name)
        with opened:
            _check_header(opened, cfg, name)
            try:
                opened.load()  # decodes frame 0 only; a truncated file fails here, not later
                image = ImageOps.exif_transpose(opened)  # a new image, upright (orientation 6/8 swap W/H)
                image = _to_mode(image, cfg.mode)
                if resize:
                    image = _resize(image, cfg)
                pixels = np.array(image, dtype=np.uint8)  # (H, W) for L, (H, W, 3) for RGB; a writable copy
            except MediaError:
                raise
            except _BOMB_ERRORS as e:
                raise _too_large(e, cfg) from None
            except _DECODE_ERRORS as e:
                raise MediaError(
                    f"{name}: file is truncated or corrupt ({type(e).__name__}: {e})",
                    "re-export the image from an image editor, or drop the row",
                ) from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # (H, W, 1)
    return pixels


def _open(data: bytes, cfg: ImageConfig, name: str) -> ImageFile.ImageFile:
    """Image.open restricted to the allowlist. Lazy: reads the header, decodes no pixels."""
    try:
        return Image.open(BytesIO(data), formats=cfg.formats)
    except _BOMB_ERRORS as e:
        raise _too_large(e, cfg) from None
    except UnidentifiedImageError:
        raise _unidentified(data, cfg, name) from None
    except _DECODE_ERRORS as e:
        raise MediaError(
            f"{name}: cannot read the image header ({type(e).__name__}: {e})",
            "re-export the image from an image editor, or drop the row",
        ) from None


def _unidentified(data: bytes, cfg: ImageConfig, name: str) -> MediaError:
    """Explain a file none of the allowed plugins accepted: a disallowed format, or a broken allowed one."""
    allowed = ", ".join(cfg.formats)
    sniffed = next((fmt for at, magic, fmt in _SIGNATURES if data[at : at + len(magic)] == magic), None)
    if sniffed is None:
        return MediaError(
            f"{name}: not a recognised image (first bytes {data[:8]!r})",
            f"give a file in one of the allowed formats: {allowed}",
            "unsupported",
        )
    if sniffed in cfg.formats:
        return MediaError(
            f"{name}: looks like {sniffed} but its header is invalid (e.g. zero width or height) "
            "or the file is truncated or corrupt",
            "re-export the image from an image editor, or drop the row",
        )
    return MediaError(
        f"{name}: format '{sniffed}' not allowed; allowed: {allowed}",
        "convert the file to an allowed format, or add the format to image.formats if you trust it",
        "unsupported",
    )


def _too_large(error: Exception, cfg: ImageConfig) -> MediaError:
    return MediaError(
        f"image is too large to decode safely: {error} (limit image.max_pixels = {cfg.max_pixels}; "
        f"Pillow's own limit is {Image.MAX_IMAGE_PIXELS})",
        "shrink the image",
        "too_large",
    )


def _check_header(image: Image.Image, cfg: ImageConfig, name: str) -> None:
    """Refuse empty and oversized images using the size the header claims, before decoding."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise MediaError(f"{name}: image has zero width or height ({width}x{height})", "drop the row")
    if width * height > cfg.max_pixels:
        raise MediaError(
            f"{name}: image claims {width}x{height} pixels, over the limit of {cfg.max_pixels} pixels",
            "raise image.max_pixels or shrink the image",
            "too_large",
        )


# 16-bit and 32-bit integer grey modes. Pillow's convert("L") clips these at 255 instead of scaling.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Any Pillow mode -> 'L' or 'RGB'.

    Wide grey (16-bit, 'I') is scaled from 0..65535 and float grey ('F') from 0..1 to 0..255; transparent
    pixels (RGBA, LA, P or RGB with a transparency key) are composited on white; 1-bit, palette, CMYK and
    YCbCr go through Pillow's convert.
    """
    if image.mode in _WIDE_GREY_MODES:
        grey = np.asarray(image).astype(np.float64)  # (H, W), any byte order
        image = Image.fromarray(np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8))  # 65535 / 255 = 257
    elif image.mode == "F":
        grey = np.asarray(image).astype(np.float64)  # (H, W)
        grey = np.nan_to_num(grey, nan=0.0, posinf=1.0, neginf=0.0)
        image = Image.fromarray(np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8))
    try:
        if image.has_transparency_data:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        if image.mode != mode:
            image = image.convert(mode)  # L -> RGB repeats the channel; RGB -> L uses ITU-R 601-2 luma
    except ValueError as e:
        raise MediaError(
            f"cannot convert colour mode '{image.mode}' to '{mode}' ({e})", "save the image as RGB or grey"
        ) from None
    return image


def _resize(image: Image.Image, cfg: ImageConfig) -> Image.Image:
    """Bring the image to cfg.size (height, width) with the cfg.resize policy."""
    out_h, out_w = cfg.size
    width, height = image.size
    # reducing_gap: shrink big images with a fast box filter first; indistinguishable at >= 3 (Pillow docs)
    resample, gap = Image.Resampling.BILINEAR, 3.0
    if cfg.resize == "squash":
        return image.resize((out_w, out_h), resample, reducing_gap=gap)
    if cfg.resize == "center_crop":
        scale = max(out_w / width, out_h / height)  # cover the target, then cut the overhang
        crop_w, crop_h = out_w / scale, out_h / scale  # the source region kept, in source pixels
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        box = (left, top, left + crop_w, top + crop_h)
        return image.resize((out_w, out_h), resample, box=box, reducing_gap=gap)
    scale = min(out_w / width, out_h / height)  # "pad": fit inside the target, fill the rest with black
    new_w, new_h = max(1, min(out_w, round(width * scale))), max(1, min(out_h, round(height * scale)))
    fitted = image.resize((new_w, new_h), resample, reducing_gap=gap)
    canvas = Image.new(image.mode, (out_w, out_h), 0)  # black; color=None would leave it uninitialised
    canvas.paste(fitted, ((out_w - new_w) // 2, (out_h - new_h) // 2))
    return canvas


# ----------------------------------------------------------------------------------------------------
# Tensor conversion


def image_to_tensor(pixels: npt.NDArray[np.uint8], cfg: ImageConfig) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W), each channel (x / 255 - mean) / std."""
    if pixels.ndim != 3:
        raise ValueError(f"expected pixels of shape (H, W, {cfg.channels}), got {pixels.shape}")
    return torch.from_numpy(np.ascontiguousarray(_normalised(pixels, cfg).transpose(2, 0, 1)))


def images_to_tensor(pixels: npt.NDArray[np.uint8], cfg: ImageConfig) -> torch.Tensor:
    """uint8 (B, H, W, C) -> float32 (B, C, H, W): each image exactly as `image_to_tensor` makes it."""
    if pixels.ndim != 4:
        raise ValueError(f"expected pixels of shape (B, H, W, {cfg.channels}), got {pixels.shape}")
    return torch.from_numpy(np.ascontiguousarray(_normalised(pixels, cfg).transpose(0, 3, 1, 2)))


def _normalised(pixels: npt.NDArray[np.uint8], cfg: ImageConfig) -> npt.NDArray[np.float32]:
    """(..., C) uint8 -> float32 (x / 255 - mean) / std per channel, in the same layout."""
    if pixels.shape[-1] != cfg.channels:
        raise ValueError(
            f"expected pixels with {cfg.channels} channel(s) last for mode '{cfg.mode}', got shape {pixels.shape}"
        )
    # (x / 255 - mean) / std as one multiply and one add, in numpy: a handful of torch ops cost more in
    # dispatch than the arithmetic on a small image
    scale, shift = _normalisation(cfg.channel_mean(), cfg.channel_std())
    normalised = np.multiply(pixels, scale, dtype=np.float32)
    normalised += shift
    return normalised


@functools.lru_cache(maxsize=64)
def _normalisation(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per-channel scale 1 / (255 std) and shift -mean / std, each (C,)."""
    std_array = np.asarray(std, dtype=np.float64)
    scale = (1.0 / (255.0 * std_array)).astype(np.float32)
    shift = (-np.asarray(mean, dtype=np.float64) / std_array).astype(np.float32)
    return scale, shift


def normalised_black(cfg: ImageConfig) -> tuple[float, ...]:
    """Per-channel value a black pixel has after image_to_tensor: the fill for augment_image.

    Black matches what resize="pad" adds, so augmentation and padding agree on "nothing here".
    """
    return tuple(-m / s for m, s in zip(cfg.channel_mean(), cfg.channel_std(), strict=True))


# ----------------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class ImageAugmentDraw:
    """One image's random augmentation, drawn apart from its application so that a batch of images is
    resampled at once (`apply_image_augment`): one affine grid and one bilinear pass instead of one each.
    """

    # 2 x 3 affine, row-major, mapping output to input coordinates in affine_grid's normalised space
    theta: tuple[float, float, float, float, float, float]
    erase: tuple[int, int, int, int] | None  # (top, left, height, width) painted with the fill, or None


def augment_image(
    image: torch.Tensor,
    cfg: ImageAugmentConfig,
    generator: torch.Generator,
    fill: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Random resized crop + rotation + translation (+ optional horizontal flip) of a (C, H, W) tensor,
    then, with probability cfg.erase_probability, one erased rectangle.

    The affine part is one resampling (bilinear), so the image is interpolated once. Pixels that come
    from outside the image, and erased pixels, get `fill` (per channel, or one value): pass
    normalised_black(image_cfg) so they look like black before normalisation. Deterministic given
    `generator` (CPU); the identity when cfg.enabled is False. With erase_probability 0 the generator is
    drawn exactly as before erasing existed, so earlier runs replay unchanged. A batch: draw each image's
    augmentation with `draw_image_augment`, then `apply_image_augment` to all of them.
    """
    if not cfg.enabled:
        return image
    _, height, width = image.shape
    draw = draw_image_augment(height, width, cfg, generator)
    return apply_image_augment(image.unsqueeze(0), [draw], fill)[0]


def draw_image_augment(
    height: int, width: int, cfg: ImageAugmentConfig, generator: torch.Generator
) -> ImageAugmentDraw:
    """The random part of `augment_image` for an H x W image: flip, rotation + shift, crop, then erasing,
    drawn from `generator` in that order (the order every earlier version drew them in)."""
    flip = _flip_matrix(cfg, generator)
    rotate_shift = _rotate_shift_matrix(height, width, cfg, generator)
    crop = _crop_matrix(cfg, generator)
    affine = _matmul3(_matmul3(crop, rotate_shift), flip)
    erase = None
    if cfg.erase_probability > 0.0 and _uniform(0.0, 1.0, generator) < cfg.erase_probability:
        erase = _erase_rectangle(height, width, cfg, generator)
    return ImageAugmentDraw(theta=(*affine[0], *affine[1]), erase=erase)


def apply_image_augment(
    images: torch.Tensor, draws: Sequence[ImageAugmentDraw], fill: float | Sequence[float] = 0.0
) -> torch.Tensor:
    """(B, C, H, W) images, one draw each -> (B, C, H, W) augmented (see `augment_image`)."""
    batch, channels, height, width = images.shape
    theta = torch.tensor([d.theta for d in draws], dtype=torch.float64).view(batch, 2, 3).to(images)
    grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)  # (B, H, W, 2)
    fill_value = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    fill_value = fill_value.reshape(-1, 1, 1)  # (C, 1, 1) or (1, 1, 1)
    # grid_sample pads with zeros: shift by the fill so that zero padding means `fill`.
    shifted = images - fill_value  # (B, C, H, W)
    out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out + fill_value
    for i, draw in enumerate(draws):
        if draw.erase is not None:
            top, left, erase_h, erase_w = draw.erase
            out[i, :, top : top + erase_h, left : left + erase_w] = fill_value
    return out


def _erase_rectangle(
    height: int, width: int, cfg: ImageAugmentConfig, generator: torch.Generator, attempts: int = 10
) -> tuple[int, int, int, int] | None:
    """One random rectangle (top, left, height, width) of an H x W image: area from erase_scale, aspect
    from erase_ratio, as torchvision's RandomErasing. None if no drawn rectangle fits in `attempts` tries
    (tiny images): the image stays as it is."""
    log_low, log_high = math.log(cfg.erase_ratio[0]), math.log(cfg.erase_ratio[1])
    for _ in range(attempts):
        area = _uniform(*cfg.erase_scale, generator) * height * width  # in pixels
        ratio = math.exp(_uniform(log_low, log_high, generator))
        erase_h, erase_w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < erase_h <= height and 0 < erase_w <= width:
            top = int(torch.randint(0, height - erase_h + 1, (), generator=generator))
            left = int(torch.randint(0, width - erase_w + 1, (), generator=generator))
            return top, left, erase_h, erase_w
    return None


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


# 3 x 3 affine maps in normalised coordinates, as rows of Python floats (float64): a handful per image,
# far cheaper than building and multiplying tensors.
Matrix3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]
_IDENTITY: Matrix3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _matmul3(a: Matrix3, b: Matrix3) -> Matrix3:
    def row(r: tuple[float, float, float]) -> tuple[float, float, float]:
        return (
            r[0] * b[0][0] + r[1] * b[1][0] + r[2] * b[2][0],
            r[0] * b[0][1] + r[1] * b[1][1] + r[2] * b[2][1],
            r[0] * b[0][2] + r[1] * b[1][2] + r[2] * b[2][2],
        )

    return (row(a[0]), row(a[1]), row(a[2]))


def _flip_matrix(cfg: ImageAugmentConfig, generator: torch.Generator) -> Matrix3:
    flip = cfg.horizontal_flip and _uniform(0.0, 1.0, generator) < 0.5
    return ((-1.0 if flip else 1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _rotate_shift_matrix(
    height: int, width: int, cfg: ImageAugmentConfig, generator: torch.Generator
) -> Matrix3:
    """Rotation about the centre plus a shift, in normalised coordinates.

    Normalised x and y have different pixel lengths when H != W, so the rotation is done in pixel-scaled
    coordinates: S^-1 R S with S = diag(W, H).
    """
    angle = math.radians(_uniform(-cfg.max_rotation_degrees, cfg.max_rotation_degrees, generator))
    shift_x = 2.0 * _uniform(-cfg.max_translate, cfg.max_translate, generator)  # the image spans 2 units
    shift_y = 2.0 * _uniform(-cfg.max_translate, cfg.max_translate, generator)
    cos, sin = math.cos(angle), math.sin(angle)
    return (
        (cos, -sin * height / width, shift_x),
        (sin * width / height, cos, shift_y),
        (0.0, 0.0, 1.0),
    )


def _crop_matrix(cfg: ImageAugmentConfig, generator: torch.Generator, attempts: int = 10) -> Matrix3:
    """A random crop (area fraction from crop_scale, aspect change from crop_ratio) stretched to the full
    output, in normalised coordinates. Like torchvision's RandomResizedCrop, but the ratio is
    relative to the image's own aspect, so non-square images crop as readily as square ones; after
    `attempts` crops that do not fit, the whole image is used."""
    log_low, log_high = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    for _ in range(attempts):
        area = _uniform(*cfg.crop_scale, generator)
        ratio = math.exp(_uniform(log_low, log_high, generator))
        crop_w, crop_h = math.sqrt(area * ratio), math.sqrt(area / ratio)  # fractions of W and H
        if crop_w <= 1.0 and crop_h <= 1.0:
            # centre anywhere that keeps the crop inside the image
            centre_x = _uniform(-1.0, 1.0, generator) * (1.0 - crop_w)
            centre_y = _uniform(-1.0, 1.0, generator) * (1.0 - crop_h)
            return ((crop_w, 0.0, centre_x), (0.0, crop_h, centre_y), (0.0, 0.0, 1.0))
    return _IDENTITY
