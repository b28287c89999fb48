"""Content-addressed image files under one run directory.

Graph state never holds pixels or base64: it holds ``ImageRef`` dicts (paths relative to the run
directory, the code grid and a content hash). PNGs live in ``images/<sha256>.png`` and VQ codes in
``codes/<sha256>.safetensors`` (a plain tensor file, no pickles), so every checkpoint stays a few
hundred bytes per image and writing the same image twice is free.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Optional

from .durable import write_atomic
from .state import ImageRef

__all__ = ["ArtifactStore", "image_ref"]


def image_ref(*, png: Optional[str], codes: Optional[str], h: int, w: int, width: int, height: int,
              origin: str, sha256: str) -> ImageRef:
    return ImageRef(sha256=sha256, png=png, codes=codes, h=h, w=w, width=width, height=height, origin=origin)


class ArtifactStore:
    """Reads and writes image artifacts inside ``root``; refuses any path that leaves it."""

    def __init__(self, root: os.PathLike | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, rel: str) -> Path:
        """Absolute path of a run-relative path; ValueError when it would leave the run directory."""
        if not isinstance(rel, str) or not rel:
            raise ValueError(f"artifact path {rel!r}: expected a non-empty relative path")
        p = (self.root / rel).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"artifact path {rel!r} leaves the run directory {self.root}")
        return p

    def _write(self, rel: str, data: bytes) -> None:
        p = self.path(rel)
        if p.exists():
            return
        write_atomic(p, data)

    @staticmethod
    def _png_bytes(image: Any) -> bytes:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()

    def put(self, *, image: Any = None, codes: Any = None, h: int = 0, w: int = 0, origin: str) -> ImageRef:
        """Store a PIL image and/or raw codes ``(h*w,)``; returns the reference. At least one is needed."""
        import torch

        if image is None and (codes is None or int(torch.as_tensor(codes).numel()) == 0):
            raise ValueError("nothing to store: neither pixels nor codes")
        png_rel = codes_rel = None
        digest = hashlib.sha256()
        width = height = 0
        if image is not None:
            data = self._png_bytes(image)
            sha = hashlib.sha256(data).hexdigest()
            png_rel = f"images/{sha}.png"
            self._write(png_rel, data)
            digest.update(sha.encode())
            width, height = image.size
        if codes is not None and int(torch.as_tensor(codes).numel()) > 0:
            from safetensors.torch import save as st_save

            c = torch.as_tensor(codes).detach().to("cpu", torch.int64).contiguous()
            if c.dim() != 1 or c.numel() != h * w:
                raise ValueError(f"{c.numel()} codes for a {h}x{w} grid")
            data = st_save({"codes": c}, metadata={"h": str(h), "w": str(w)})
            sha = hashlib.sha256(c.numpy().tobytes() + f"{h}x{w}".encode()).hexdigest()
            codes_rel = f"codes/{sha}.safetensors"
            self._write(codes_rel, data)
            digest.update(sha.encode())
        else:
            h = w = 0
        return image_ref(png=png_rel, codes=codes_rel, h=h, w=w, width=width, height=height, origin=origin,
                         sha256=digest.hexdigest())

    def put_file(self, path: os.PathLike | str, origin: str = "input") -> ImageRef:
        """Copy a user's image file into the run directory (as PNG)."""
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return self.put(image=im, origin=origin)

    def load_image(self, ref: ImageRef):
        from PIL import Image

        if not ref.get("png"):
            raise ValueError(f"image {ref.get('sha256', '?')[:12]} has no pixels stored")
        with Image.open(self.path(ref["png"])) as im:
            im.load()
            return im.convert("RGB")

    def load_codes(self, ref: ImageRef):
        """-> model_core.ImageCodes for a reference that has codes."""
        from safetensors.torch import load as st_load

        from lladauni.model_core.generation.prompts import ImageCodes

        if not ref.get("codes"):
            raise ValueError(f"image {ref.get('sha256', '?')[:12]} has no codes stored")
        t = st_load(self.path(ref["codes"]).read_bytes())["codes"]
        return ImageCodes(t, int(ref["h"]), int(ref["w"]))
