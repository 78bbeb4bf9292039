"""Images for the model: decoded once, checked, and scaled to what the model uses (Pillow).

Anthropic's vision guidance: an image whose long edge is over 1,568 px, or that would cost more
than about 1,600 tokens (width x height / 750), is scaled down by the API before the model sees
it, which only adds latency; the recommended size is at most 1.15 megapixels within 1,568 px on
both edges. Images over 8,000 px on an edge are refused, and over 2,000 px in a request with more
than 20 images; an image's base64 form may be at most 5 MB. `prepare_image` therefore sends
nothing larger than the model uses: the stored bytes are the scaled ones, so every later request
sends the very same bytes (cached). An image already within the limits keeps its original bytes.

Formats: PNG stays PNG, JPEG stays JPEG (quality 85, its EXIF orientation applied since the
re-encoded file carries no EXIF), WebP stays WebP (quality 90), a GIF that must be re-encoded and
any animated image (GIF, WebP, APNG) become the first frame as PNG. Colour profiles are kept.
A damaged file or a decompression bomb (more than `MAX_DECODE_PIXELS` pixels) raises
`ImageUnreadable` with a reason for the transcript.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

# What the model uses (Anthropic's vision guidance): long edge and area.
MAX_LONG_EDGE = 1568
MAX_PIXELS = 1_150_000
# The Messages API refuses an image whose base64 form is over 5 MB.
MAX_IMAGE_BASE64 = 5 * 1024 * 1024
# An image is decoded (to check it, and to scale it) only up to this many pixels: a 50-megapixel
# photo decodes to at most 200 MB (RGBA); anything larger is refused as a decompression bomb.
MAX_DECODE_PIXELS = 50_000_000
# Pillow's own guard, for any other decode path: it refuses over twice this at open (we cannot
# say the size then); between once and twice it only warns, and `_prepare` refuses with the size.
Image.MAX_IMAGE_PIXELS = MAX_DECODE_PIXELS
warnings.simplefilter("ignore", Image.DecompressionBombWarning)
# Images too large in bytes are scaled down in steps of this factor, never below this long edge.
SHRINK_STEP = 0.8
MIN_LONG_EDGE = 200
JPEG_QUALITY = 85
WEBP_QUALITY = 90

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}
# At most this many images decode at once in a process (their memory, with 16 worker threads).
_DECODING = threading.BoundedSemaphore(2)


class ImageUnreadable(ValueError):
    """An image that cannot be sent; the message says why (for the transcript and the answer)."""


@dataclass(frozen=True)
class ReadyImage:
    """An image as it goes to the model: its bytes, media type and size in pixels."""

    media_type: str
    width: int
    height: int
    content: bytes
    reencoded: bool  # False: the original bytes, already within every limit


def base64_size(n: int) -> int:
    """The length of the base64 form of `n` bytes."""
    return (n + 2) // 3 * 4


def target_size(width: int, height: int) -> tuple[int, int]:
    """The size the model uses for an image of `width` x `height`: the long edge at most
    MAX_LONG_EDGE and the area at most MAX_PIXELS, aspect ratio kept (never enlarged)."""
    factor = min(
        1.0,
        MAX_LONG_EDGE / max(width, height, 1),
        math.sqrt(MAX_PIXELS / max(width * height, 1)),
    )
    if factor >= 1.0:
        return width, height
    return max(1, int(width * factor)), max(1, int(height * factor))


def image_size(content: bytes) -> tuple[int, int]:
    """The width and height of an image, from its header (nothing decoded)."""
    with Image.open(io.BytesIO(content)) as im:
        return im.size


def prepare_image(content: bytes) -> ReadyImage:
    """`content` checked (fully decoded) and, where needed, scaled and re-encoded.

    Raises ImageUnreadable for anything but a readable PNG, JPEG, GIF or WebP image within
    MAX_DECODE_PIXELS, and for one still over 5 MB (base64) at MIN_LONG_EDGE.
    """
    with _DECODING:
        try:
            return _prepare(content)
        except ImageUnreadable:
            raise
        except Image.DecompressionBombError:
            raise ImageUnreadable(_bomb(None)) from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, MemoryError) as exc:
            raise ImageUnreadable(f"the image is damaged ({type(exc).__name__})") from None


def _bomb(size: tuple[int, int] | None) -> str:
    limit = f"{MAX_DECODE_PIXELS // 1_000_000} megapixels"
    if size is None:  # refused by Pillow itself (over twice its limit), before we see the size
        return f"more pixels than the bot decodes ({limit})"
    return f"{size[0]}×{size[1]} pixels, more than the bot decodes ({limit})"


def _prepare(content: bytes) -> ReadyImage:
    try:
        im = Image.open(io.BytesIO(content))
    except Image.UnidentifiedImageError:
        raise ImageUnreadable("not a PNG, JPEG, GIF or WebP image") from None
    with im:
        fmt = im.format or ""
        if fmt not in FORMATS:
            raise ImageUnreadable("not a PNG, JPEG, GIF or WebP image")
        width, height = im.size
        if width < 1 or height < 1 or width * height > MAX_DECODE_PIXELS:
            raise ImageUnreadable(_bomb((width, height)))
        size = target_size(width, height)
        animated = bool(getattr(im, "is_animated", False))
        if fmt == "JPEG" and size != (width, height):
            im.draft(None, size)  # decode at a reduced scale (at least `size`): less memory
        im.load()  # the whole first frame: a damaged file fails here, not at the model
        fits = base64_size(len(content)) <= MAX_IMAGE_BASE64
        if size == (width, height) and not animated and fits:
            return ReadyImage(FORMATS[fmt], width, height, content, False)
        return _reencode(im, fmt, size, animated)


def _reencode(im: Image.Image, fmt: str, size: tuple[int, int], animated: bool) -> ReadyImage:
    """The first frame of `im` at `size` (smaller while over 5 MB), in its format or PNG."""
    icc = im.info.get("icc_profile")
    frame = ImageOps.exif_transpose(im) if fmt == "JPEG" else im.copy()
    if frame.size != im.size:  # rotated by 90°: the target turns with it
        size = (size[1], size[0])
    out = "PNG" if animated or fmt == "GIF" else fmt
    frame = _resizable(frame, out)
    while True:
        scaled = frame if frame.size == size else frame.resize(size, Image.Resampling.LANCZOS)
        data = _encode(scaled, out, icc)
        if base64_size(len(data)) <= MAX_IMAGE_BASE64:
            return ReadyImage(FORMATS[out], size[0], size[1], data, True)
        if max(size) <= MIN_LONG_EDGE:
            raise ImageUnreadable("larger than the model accepts (5 MB) even scaled down")
        size = (max(1, int(size[0] * SHRINK_STEP)), max(1, int(size[1] * SHRINK_STEP)))


def _resizable(im: Image.Image, out: str) -> Image.Image:
    """`im` in a mode that resamples well and that format `out` can store."""
    mode = im.mode
    if mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I") or mode == "F":  # 16-bit or 32-bit grey: to 8 bits
        grey = im.convert("I")
        high = grey.getextrema()[1]
        scale = 1 / 257 if isinstance(high, int | float) and high > 255 else 1.0
        return grey.point(lambda v: v * scale).convert("L")
    if mode in ("PA", "La", "LA") and out == "JPEG":
        return im.convert("L")
    if mode not in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return im.convert("RGBA" if "A" in mode else "RGB")
    if mode == "CMYK" and out != "JPEG":
        return im.convert("RGB")
    if out == "WEBP" and mode not in ("RGB", "RGBA"):
        return im.convert("RGBA" if "A" in mode else "RGB")
    return im


def _encode(im: Image.Image, out: str, icc: bytes | None) -> bytes:
    buf = io.BytesIO()
    extra = {"icc_profile": icc} if icc else {}
    if out == "JPEG":
        im.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True, **extra)
    elif out == "WEBP":
        im.save(buf, "WEBP", quality=WEBP_QUALITY, method=4, **extra)
    else:
        im.save(buf, "PNG", **extra)  # zlib level 6: level 9 takes twice as long for ~1 % less
    return buf.getvalue()
