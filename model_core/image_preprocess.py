"""Image preprocessing for the SigLIP-VQ tokenizer (MODEL_SPEC §2, §12).

Three steps, each a plain function so callers and tests can use them alone:

1. ``load_image``: PIL image, file path, encoded bytes or numpy array -> a new RGB PIL image.
   Transparency (RGBA, LA, PA, P with a transparent index) is composited on white; 16-bit and
   32-bit grey images are scaled to 8 bits (PIL's own conversion clips them to white); CMYK,
   palette, 1-bit and grey images are converted to RGB. Animated files give their first frame.
   EXIF orientation is not applied, as in the official code. The caller's object is never
   modified. Every problem (unreadable, truncated, non-image bytes, zero-sized, too small, over
   the pixel cap, unsupported mode) raises ``ValueError`` naming it. Encoded bytes and files are
   decoded only in the formats of ``IMAGE_FORMATS`` (PNG, JPEG, GIF, WebP, BMP, TIFF, AVIF), and
   a JPEG with more than ``MAX_JPEG_SCANS`` scans is refused before decoding (each scan is a
   pass over the whole image, so a small file of many scans would take minutes): with the pixel
   cap, decoding time and memory are bounded.
2. A resize policy per purpose:
   - ``understand``: Qwen2.5-VL smart resize with factor 32 (one image: 128²..800² pixels;
     several images: 128²..448² each), bicubic, then a centred 32-aligned crop.
   - ``edit``: the closest-aspect candidate of the ~512² crop list (aspect <= 4). By default the
     image is resized to cover the candidate (bicubic) and centre-cropped. ``legacy_crop=True``
     reproduces the official ``var_center_crop`` pixel for pixel: it cuts the candidate box out of
     the unscaled image at offsets ``max(0, (W - cw) // 2)``, ``max(0, (H - ch) // 2)`` (a 1024²
     source becomes its central 512² crop; a side shorter than the box stays at the top / left and
     is padded with black on the right / bottom).
   - ``none``: no resizing; both sides must already be multiples of the patch size.
   For ``understand`` and ``edit``, whose output goes into prompts, every grid side produced must
   be one the size tokens ``<|reserved_token_N|>`` can express: even and in 8..34, or any side in
   36..255 (``check_grid``). ``none`` accepts any grid, as the official encoder does; the size-token
   rule is then enforced where a prompt is built (``PromptBuilder.header``).
   These are the published model's policies and the default. A preprocessor config with
   ``fixed_size = [height, width]`` replaces them: ``understand`` and ``edit`` (one image or
   several; ``legacy_crop`` is ignored) scale the image bicubically, aspect kept, to cover that
   size and centre-crop it to exactly [height, width] (an image already of that size is left
   untouched, ``fixed_resize``); ``none`` still does no resizing. With ``fixed_size`` set,
   ``check_grid`` is not applied to any purpose: the checkpoint's own text tokenizer decides
   which grid sides have size tokens (it raises for a side it has no token for).
3. ``to_pixel_values``: float32 rescale (x * 1/255) then normalise ((x - mean) / std), in that
   order, then Qwen2-VL patch rows: (gh * gw, C * p * p) in raster order, each row (C, p, p).
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .image_config import PreprocessorConfig

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_FORMATS",
    "MAX_JPEG_SCANS",
    "MIN_IMAGE_SIDE",
    "PURPOSES",
    "ImageInput",
    "check_grid",
    "edit_crop",
    "edit_crop_sizes",
    "fixed_resize",
    "grid_side_ok",
    "load_image",
    "pick_edit_size",
    "prepare_image",
    "resize_and_center_crop",
    "smart_resize",
    "smart_resize_size",
    "to_pixel_values",
]

ImageInput = Union[Image.Image, str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]

PURPOSES = ("understand", "edit", "none")
#: Default cap on decoded pixels (width * height): a defence against decompression bombs.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
#: Sources with a side below this many pixels are rejected as too small to tokenize.
MIN_IMAGE_SIDE = 8
#: The PIL formats encoded bytes and files may be in (JPEG includes MPO, a camera JPEG of several pictures).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
#: Most scans (SOS markers) a JPEG may have; encoders write 1 to about 20.
MAX_JPEG_SCANS = 128

FACTOR = 32  # patch 16 x merge 2 of the official resizers (even grid sides)
SINGLE_PIXELS = (128 * 128, 800 * 800)
MULTI_PIXELS = (128 * 128, 448 * 448)
EDIT_NUM_PATCHES = (512 // FACTOR) ** 2
EDIT_MAX_RATIO = 4.0

_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


# ----------------------------------------------------------------------------- loading
def load_image(
    image: ImageInput, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, min_side: int = MIN_IMAGE_SIDE
) -> Image.Image:
    """Any accepted input -> a new, fully loaded RGB image (see the module docstring)."""
    if isinstance(image, Image.Image):
        _check_size(image.size, max_pixels, min_side, "image")
        return _to_rgb(_loaded(image, "image"))
    if isinstance(image, np.ndarray):
        return _from_array(image, max_pixels, min_side)
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise ValueError("image bytes are empty")
        return _open_and_convert(io.BytesIO(data), "image bytes", max_pixels, min_side)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        _check_regular_file(path)
        try:
            with open(path, "rb") as fh:
                return _open_and_convert(fh, f"image file {_shown(path)}", max_pixels, min_side)
        except OSError as exc:  # unreadable (permissions, I/O error)
            raise ValueError(f"image file {_shown(path)}: cannot be read ({exc.strerror or exc})") from None
    raise TypeError(
        f"unsupported image input of type {type(image).__name__}; pass a PIL image, a file path, "
        f"encoded bytes or a numpy array"
    )


def _shown(text: Any) -> str:
    """``str(text)`` for a message: lone surrogates and other unencodable characters escaped."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _check_regular_file(path: Path) -> None:
    """ValueError unless ``path`` names a regular file (not a directory, FIFO or device, not a
    loop of links, not a name the OS refuses)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"image file not found: {_shown(path)}") from None
    except (OSError, ValueError) as exc:  # ELOOP, ENAMETOOLONG, a NUL or lone surrogate in the name
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _shown(exc)
        raise ValueError(f"image file {_shown(path)[:300]}: cannot be opened ({reason})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"not a file: {_shown(path)}")


def _check_size(size: tuple[int, int], max_pixels: int, min_side: int, what: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"{what} is zero-sized ({w}x{h} pixels)")
    if w * h > max_pixels:
        raise ValueError(
            f"{what} has {w}x{h} = {w * h:,} pixels, over the cap of {max_pixels:,} "
            f"(a guard against decompression bombs; raise max_image_pixels to allow it)"
        )
    if min(w, h) < min_side:
        raise ValueError(f"{what} is too small ({w}x{h} pixels; each side must be >= {min_side})")


def _open_and_convert(fh: Any, what: str, max_pixels: int, min_side: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own cap decides; PIL's warning threshold is a fixed global.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fh, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{what}: refused by PIL as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ValueError(
            f"{what}: not an image PIL can read (unknown or corrupt format; accepted: {', '.join(IMAGE_FORMATS)})"
        ) from None
    except Exception as exc:  # a parser on hostile bytes raises more than OSError (struct.error, ...)
        raise ValueError(f"{what}: corrupt image header ({type(exc).__name__}: {exc})") from None
    with img:
        _check_size(img.size, max_pixels, min_side, what)
        if img.format in ("JPEG", "MPO"):
            _check_jpeg_scans(fh, what)
        return _to_rgb(_loaded(img, what))


def _check_jpeg_scans(fh: Any, what: str, chunk: int = 1 << 20) -> None:
    """Refuse a JPEG with more than MAX_JPEG_SCANS start-of-scan markers (FF DA). Entropy-coded
    data never holds FF DA (an FF there is followed by 00 or a restart marker), so the count is
    exact but for markers inside metadata (an embedded thumbnail), which only over-counts."""
    pos = fh.tell()
    fh.seek(0)
    count, prev = 0, b""
    while count <= MAX_JPEG_SCANS:
        block = fh.read(chunk)
        if not block:
            break
        count += (prev + block).count(b"\xff\xda")
        prev = block[-1:] if block[-1:] == b"\xff" else b""
    fh.seek(pos)
    if count > MAX_JPEG_SCANS:
        raise ValueError(
            f"{what}: a JPEG with more than {MAX_JPEG_SCANS} scans (each is a pass over the whole image); "
            f"re-encode it (encoders write at most about 20)"
        )


def _loaded(img: Image.Image, what: str) -> Image.Image:
    """Decode lazily opened pixel data, turning decoder errors into ValueError."""
    try:
        img.load()
    except Exception as exc:  # decoders on hostile data raise OSError, EOFError, struct.error, ...
        raise ValueError(f"{what}: corrupt or truncated image data ({type(exc).__name__}: {exc})") from None
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """A new RGB image; the input is not modified."""
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in _TRANSPARENT_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _WIDE_GREY_MODES or mode == "F":
        return _grey_array_to_rgb(np.asarray(img), f"{mode} image")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"image mode {mode!r} cannot be converted to RGB ({exc})") from None


def _grey_array_to_rgb(arr: np.ndarray, what: str) -> Image.Image:
    return Image.fromarray(np.repeat(_to_uint8(arr, what)[..., None], 3, axis=-1), "RGB")


def _to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """uint8 as is; 16-bit (and PIL's 32-bit 'I' grey) scaled by 255/65535 with rounding;
    floats must lie in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"{what}: integer values must lie in 0..65535 (16-bit), got {lo}..{hi}")
        return np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{what}: float values must lie in [0, 1], got {lo:g}..{hi:g}")
        return np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    raise ValueError(f"{what}: unsupported dtype {arr.dtype}")


def _from_array(arr: np.ndarray, max_pixels: int, min_side: int) -> Image.Image:
    """(H, W) grey, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16, bool or float in [0, 1]."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ValueError(f"numpy image has shape {arr.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    _check_size((arr.shape[1], arr.shape[0]), max_pixels, min_side, "numpy image")
    u8 = np.ascontiguousarray(_to_uint8(arr, "numpy image"))
    mode = "L" if arr.ndim == 2 else ("RGB" if arr.shape[-1] == 3 else "RGBA")
    # _to_rgb always returns a new image, so nothing aliases the caller's array.
    return _to_rgb(Image.fromarray(u8, mode))


# ----------------------------------------------------------------------------- grid sides
def grid_side_ok(n: int) -> bool:
    """Whether ``<|reserved_token_n|>`` is a size token: n even in 8..34, or n in 36..255 (§12)."""
    return 8 <= n <= 255 and (n >= 36 or n % 2 == 0)


def check_grid(gh: int, gw: int, size: tuple[int, int] | None = None) -> None:
    """Raise ValueError unless both grid sides can be written as size tokens."""
    for name, n in (("height", gh), ("width", gw)):
        if not grid_side_ok(n):
            px = f" ({size[0]}x{size[1]} pixels)" if size else ""
            raise ValueError(
                f"image grid {gh}x{gw}{px}: {name} {n} cannot be written as a size token; grid sides must be "
                f"even and in 8..34, or in 36..255 (16-pixel patches)"
            )


# ----------------------------------------------------------------------------- understanding
def smart_resize_size(
    height: int, width: int, *, min_pixels: int, max_pixels: int, factor: int = FACTOR
) -> tuple[int, int]:
    """Target (height, width) of Qwen2.5-VL smart resize, as the official resizer computes it."""
    h_bar = max(round(height / factor) * factor, factor)
    w_bar = max(round(width / factor) * factor, factor)
    if h_bar * w_bar > max_pixels:
        scale = math.sqrt(max_pixels / (height * width))
        h_bar = max(math.floor(height * scale / factor) * factor, factor)
        w_bar = max(math.floor(width * scale / factor) * factor, factor)
    elif h_bar * w_bar < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * scale / factor) * factor
        w_bar = math.ceil(width * scale / factor) * factor
    return h_bar, w_bar


def resize_and_center_crop(img: Image.Image, target_h: int, target_w: int, factor: int = FACTOR) -> Image.Image:
    """Bicubic resize (aspect kept) to cover the target, then a centred crop to a factor-aligned
    size never smaller than the target."""
    width, height = img.size
    scale = max(target_h / height, target_w / width)
    new_h, new_w = int(round(height * scale)), int(round(width * scale))
    img = img.resize((new_w, new_h), resample=Image.BICUBIC)
    crop_h = max((new_h // factor) * factor, target_h)
    crop_w = max((new_w // factor) * factor, target_w)
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    return img.crop((left, top, left + crop_w, top + crop_h))


def smart_resize(img: Image.Image, *, multi_image: bool = False) -> Image.Image:
    """The understanding resize: 128²..800² pixels for one image, 128²..448² each for several."""
    lo, hi = MULTI_PIXELS if multi_image else SINGLE_PIXELS
    th, tw = smart_resize_size(img.height, img.width, min_pixels=lo, max_pixels=hi)
    return resize_and_center_crop(img, th, tw)


# ----------------------------------------------------------------------------- editing
def edit_crop_sizes(
    num_patches: int = EDIT_NUM_PATCHES, patch_size: int = FACTOR, max_ratio: float = EDIT_MAX_RATIO
) -> list[tuple[int, int]]:
    """Candidate (width, height) boxes of about num_patches * patch_size² pixels, aspect <= max_ratio,
    in the official order: from the widest (wp = num_patches, hp = 1) towards the tallest."""
    if num_patches <= 0 or patch_size <= 0 or max_ratio < 1.0:
        raise ValueError(f"num_patches={num_patches}, patch_size={patch_size}, max_ratio={max_ratio}: invalid")
    sizes = []
    wp, hp = num_patches, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_ratio:
            sizes.append((wp * patch_size, hp * patch_size))
        if (hp + 1) * wp <= num_patches:
            hp += 1
        else:
            wp -= 1
    return sizes


def pick_edit_size(width: int, height: int, sizes: list[tuple[int, int]] | None = None) -> tuple[int, int]:
    """The candidate whose aspect ratio is closest: the largest min(cw/w, ch/h) / max(cw/w, ch/h);
    ties go to the larger (cw, ch), as the official ``sorted(..., reverse=True)[0]`` does."""
    sizes = sizes if sizes is not None else edit_crop_sizes()
    scored = [(min(cw / width, ch / height) / max(cw / width, ch / height), (cw, ch)) for cw, ch in sizes]
    return max(scored)[1]


def edit_crop(img: Image.Image, *, legacy_crop: bool = False) -> Image.Image:
    """The editing crop (see the module docstring for ``legacy_crop``)."""
    cw, ch = pick_edit_size(img.width, img.height)
    if legacy_crop:
        # The official center_crop: offsets floor((W - cw) / 2) clamped at 0, on the unscaled image.
        # A side shorter than the box keeps the image at the top / left, and PIL fills the rest of
        # the box (right / bottom) with zeros, i.e. black. The official LANCZOS resize to (cw, ch)
        # that follows is a no-op: the crop already has that size.
        left, top = max(0, (img.width - cw) // 2), max(0, (img.height - ch) // 2)
        return img.crop((left, top, left + cw, top + ch))
    scale = max(cw / img.width, ch / img.height)
    new_w, new_h = max(cw, int(round(img.width * scale))), max(ch, int(round(img.height * scale)))
    img = img.resize((new_w, new_h), resample=Image.BICUBIC)
    left, top = (new_w - cw) // 2, (new_h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


# ----------------------------------------------------------------------------- fixed size
def fixed_resize(img: Image.Image, height: int, width: int) -> Image.Image:
    """Exactly ``height`` x ``width`` pixels: bicubic resize (aspect kept) to cover the target,
    then a centred crop. An image already of that size is returned as it is (no resampling)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"fixed size {height}x{width}: both sides must be > 0")
    if img.size == (width, height):
        return img
    scale = max(height / img.height, width / img.width)
    new_w, new_h = max(width, int(round(img.width * scale))), max(height, int(round(img.height * scale)))
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), resample=Image.BICUBIC)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return img.crop((left, top, left + width, top + height))


# ----------------------------------------------------------------------------- pixels
def to_pixel_values(img: Image.Image, config: PreprocessorConfig) -> torch.Tensor:
    """RGB image (H, W multiples of the patch) -> (gh * gw, 3 * p * p) float32 patch rows, raster
    order, each row laid out (C, p, p) (Qwen2-VL with temporal patch 1 and merge 1)."""
    p = config.patch_size
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}")
    if img.width % p or img.height % p:
        raise ValueError(f"image size {img.width}x{img.height} is not a multiple of the {p}-pixel patch")
    x = np.asarray(img, dtype=np.float32)  # (H, W, C) in 0..255
    if config.do_rescale:
        x = x * np.float32(config.rescale_factor)
    if config.do_normalize:
        x = (x - np.asarray(config.image_mean, dtype=np.float32)) / np.asarray(config.image_std, dtype=np.float32)
    gh, gw = img.height // p, img.width // p
    x = x.transpose(2, 0, 1).reshape(3, gh, p, gw, p)  # (C, gh, p, gw, p)
    x = x.transpose(1, 3, 0, 2, 4).reshape(gh * gw, 3 * p * p)  # (gh*gw, C*p*p)
    return torch.from_numpy(np.ascontiguousarray(x))


def prepare_image(
    image: ImageInput,
    purpose: str,
    config: PreprocessorConfig,
    *,
    multi_image: bool = False,
    legacy_crop: bool = False,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    min_side: int = MIN_IMAGE_SIDE,
) -> tuple[Image.Image, torch.Tensor, tuple[int, int]]:
    """Load, resize for ``purpose`` and patchify one image.

    With ``config.fixed_size`` set, ``understand`` and ``edit`` resize to exactly that size
    (``multi_image`` and ``legacy_crop`` then change nothing) and the published grid-side rule is
    not checked (see the module docstring). ``none`` never checks it: any grid of whole patches
    can be encoded; prompt building refuses a grid without size tokens.

    Returns (the resized RGB image, pixel values (gh*gw, 3*p*p) float32, (gh, gw)).
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose={purpose!r}: choose one of {list(PURPOSES)}")
    img = load_image(image, max_pixels=max_pixels, min_side=min_side)
    fixed = config.fixed_size
    if fixed is not None and purpose in ("understand", "edit"):
        img = fixed_resize(img, fixed[0], fixed[1])
    elif purpose == "understand":
        img = smart_resize(img, multi_image=multi_image)
    elif purpose == "edit":
        img = edit_crop(img, legacy_crop=legacy_crop)
    p = config.patch_size
    if img.width % p or img.height % p:
        raise ValueError(
            f"image size {img.width}x{img.height} is not a multiple of the {p}-pixel patch; "
            f"purpose='none' does not resize (use 'understand' or 'edit')"
        )
    gh, gw = img.height // p, img.width // p
    if fixed is None and purpose != "none":
        check_grid(gh, gw, img.size)
    return img, to_pixel_values(img, config), (gh, gw)
