"""The bad-input corpus: every image (good, odd and hostile) the hardening tests send, made here.

Nothing is downloaded: each item is generated from the drawn face in service_fixtures (or, for the
many-faces mosaic, from ../shared/data when it is there). An item says what the service must answer:
a status, and for refusals the error's reason; for 200, what the result must show.
`cd tests && ../.venv/bin/python corpus.py` prints the table that docs/reliability.md records.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from service.imaging import FORMATS
from service_fixtures import SHARED_DATA, encode, gradient, png_bomb, synthetic_face

ORIENTATION = 0x0112  # the EXIF tag


@dataclass(frozen=True)
class Item:
    name: str  # a file name, its suffix the format's usual one
    data: bytes
    content_type: str
    status: int
    reason: str | None = None  # the error's reason, for a refusal
    face: bool | None = None  # for 200: a face must be found (True), must not be (False), or either (None)
    note: str = ""
    tags: frozenset[str] = field(default_factory=frozenset)


def marked(image: Image.Image) -> Image.Image:
    """`image` with a small colour ramp in its corner: a picture, where one flat colour is refused as blank."""
    image.paste(gradient(64, 64), (0, 0))
    return image


def save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def face_on_canvas(width: int = 480, height: int = 256, left: int = 0) -> Image.Image:
    """The drawn face (256 px) at x = left on a wider plain canvas: not square, so a rotation shows."""
    canvas = Image.new("RGB", (width, height), (70, 90, 120))
    canvas.paste(synthetic_face(), (left, 0))
    return canvas


def exif_rotated(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG whose pixels are stored turned, tagged so that applying the EXIF orientation gives `upright`.

    Orientation 6 is shown by turning the stored pixels 90 degrees clockwise, so they are stored turned
    90 degrees counter-clockwise; 8 the other way round."""
    stored = upright.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return save(stored, "JPEG", quality=95, exif=exif.tobytes())


def sixteen_bit_png(image: Image.Image) -> bytes:
    gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257  # the full 16-bit range
    return save(Image.fromarray(gray), "PNG")  # mode I;16


def palette_png(image: Image.Image, transparent: bool) -> bytes:
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    return save(palette, "PNG", **({"transparency": 0} if transparent else {}))


def rgba_png(image: Image.Image) -> bytes:
    rgba = image.convert("RGBA")
    alpha = np.full((image.height, image.width), 255, np.uint8)
    alpha[:, : image.width // 8] = 0  # a transparent strip, away from the face
    rgba.putalpha(Image.fromarray(alpha))
    return save(rgba, "PNG")


def animated_gif(frames: list[Image.Image]) -> bytes:
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def tiff_bomb(side: int = 100_000) -> bytes:
    """A little-endian TIFF whose header says side x side 8-bit pixels, with 16 bytes of data."""
    tags = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 4, side), (279, 4, 16)]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(tags) + 4
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, data_offset if tag == 273 else value) for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(tags)) + entries + b"\0\0\0\0" + b"\x80" * 16


def gif_bomb(side: int = 65535) -> bytes:
    """A 1x1 GIF whose logical screen and image descriptor both say side x side."""
    data = bytearray(save(Image.new("L", (1, 1)), "GIF"))
    struct.pack_into("<HH", data, 6, side, side)
    descriptor = data.index(b"\x2c")  # the image separator
    struct.pack_into("<HH", data, descriptor + 5, side, side)
    return bytes(data)


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """`data` (a baseline JPEG) with its frame header claiming width x height."""
    out = bytearray(data)
    sof = out.index(b"\xff\xc0")
    struct.pack_into(">HH", out, sof + 5, height, width)
    return bytes(out)


def png_with_bad_crc(data: bytes) -> bytes:
    out = bytearray(data)
    idat = out.index(b"IDAT")
    length = struct.unpack(">I", out[idat - 4: idat])[0]
    out[idat + 4 + length] ^= 0xFF  # the first byte of IDAT's CRC
    return bytes(out)


def png_with_broken_data(data: bytes) -> bytes:
    out = bytearray(data)
    start = out.index(b"IDAT") + 4 + 200
    out[start: start + 64] = b"\xff" * 64  # inside the deflate stream
    return bytes(out)


def jpeg_with_zeroed_scan(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2: len(out) // 2 + 64] = b"\0" * 64  # inside the entropy-coded scan
    return bytes(out)


def zero_width_png() -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", 0, 16, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bad_exif_jpeg(image: Image.Image) -> bytes:
    """A JPEG whose EXIF orientation is out of range (9) and whose EXIF block ends early."""
    exif = Image.Exif()
    exif[ORIENTATION] = 9
    block = exif.tobytes()
    return save(image, "JPEG", quality=90, exif=block[: len(block) - 2])


def face_mosaic(faces: list[Image.Image], columns: int, tile: int) -> Image.Image:
    """Faces in a grid of columns x rows tiles, touching: a crowd photo."""
    rows = (len(faces) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * tile, rows * tile), (128, 128, 128))
    for index, face in enumerate(faces):
        canvas.paste(face.convert("RGB").resize((tile, tile)), ((index % columns) * tile, (index // columns) * tile))
    return canvas


def shared_faces(count: int) -> list[Path]:
    """`count` real photos of one face each from ../shared/data (tpdne128 first), or [] when absent."""
    files = sorted((SHARED_DATA / "tpdne128" / "real").glob("*.jpg")) + sorted((SHARED_DATA / "tpdne128" / "fake").glob("*.jpg"))
    return files[:count] if len(files) >= count else []


SKINS = ((224, 182, 150), (190, 140, 110), (240, 200, 170), (160, 110, 80))


def synthetic_crowd(columns: int = 4, rows: int = 3, tile: int = 160) -> bytes:
    """A columns x rows mosaic of drawn faces (12 by default), each found by MTCNN with a score above 0.99."""
    faces = [synthetic_face(seed=index, skin=SKINS[index % len(SKINS)]) for index in range(columns * rows)]
    return encode(face_mosaic(faces, columns, tile))


def crowd(columns: int = 6, rows: int = 5, tile: int = 128) -> bytes | None:
    """A columns x rows mosaic of real faces (30 by default), or None without the shared data set."""
    files = shared_faces(columns * rows)
    if not files:
        return None
    return encode(face_mosaic([Image.open(path) for path in files], columns, tile))


def corpus(max_bytes: int) -> list[Item]:
    """Every item but the crowd (which needs the shared data set), in a fixed order."""
    face = synthetic_face(seed=21)
    jpeg = encode(face)
    png = encode(face, "PNG")
    good = [
        Item("rgb.jpg", jpeg, "image/jpeg", 200, face=True, note="baseline: 8-bit RGB JPEG"),
        Item("gray16.png", sixteen_bit_png(face), "image/png", 200, face=True, note="16-bit grayscale PNG (mode I;16)"),
        Item("cmyk.jpg", save(face.convert("CMYK"), "JPEG", quality=95), "image/jpeg", 200, face=True, note="CMYK JPEG (Adobe)"),
        Item("palette.png", palette_png(face, False), "image/png", 200, face=True, note="palette PNG"),
        Item("palette-alpha.png", palette_png(face, True), "image/png", 200, face=True, note="palette PNG with a transparent index"),
        Item("rgba.png", rgba_png(face), "image/png", 200, face=True, note="RGBA PNG, partly transparent"),
        Item("gray.jpg", encode(face.convert("L")), "image/jpeg", 200, face=True, note="8-bit grayscale JPEG"),
        Item("bilevel.png", save(face.convert("1"), "PNG"), "image/png", 200, face=None, note="1-bit PNG"),
        Item("animated.gif", animated_gif([face, gradient(256, 256), gradient(256, 256).rotate(90)]), "image/gif", 200, face=True,
             note="animated GIF, 3 frames, the face only in the first (the first frame is used)"),
        Item("animated-face-second.gif", animated_gif([gradient(256, 256), face]), "image/gif", 200, face=False,
             note="animated GIF with the face only in its second frame: no face (the first frame is used)"),
        Item("crowd-drawn.jpg", synthetic_crowd(), "image/jpeg", 200, face=True,
             note="12 drawn faces in a 4x3 mosaic, more than the test server's FACECHECK_MAX_FACES=8", tags=frozenset({"crowd"})),
        Item("rotated-6.jpg", exif_rotated(face_on_canvas(), 6), "image/jpeg", 200, face=True,
             note="EXIF orientation 6: stored turned, the face box comes back in the upright frame", tags=frozenset({"exif"})),
        Item("rotated-8.jpg", exif_rotated(face_on_canvas(), 8), "image/jpeg", 200, face=True,
             note="EXIF orientation 8", tags=frozenset({"exif"})),
        Item("bad-exif.jpg", bad_exif_jpeg(face), "image/jpeg", 200, face=True, note="EXIF orientation 9 (invalid) in a cut EXIF block: ignored"),
        Item("face.webp", save(face, "WEBP", quality=90), "image/webp", 200, face=True, note="WebP (lossy)"),
        *([Item("face.avif", save(face, "AVIF", quality=70), "image/avif", 200, face=True, note="AVIF (lossy)")] if "AVIF" in FORMATS else []),
        Item("face.heic", save(face, "HEIF", quality=80), "image/heic", 200, face=True, note="HEIC, as iPhones save photos"),
        Item("face.bmp", save(face, "BMP"), "image/bmp", 200, face=True, note="BMP"),
        Item("face.tiff", save(face, "TIFF", compression="tiff_deflate"), "image/tiff", 200, face=True, note="TIFF, deflate"),
        Item("trailing-junk.jpg", jpeg + b"\0junk after the end of the image" * 10, "image/jpeg", 200, face=True,
             note="valid JPEG followed by junk bytes"),
        Item("bad-crc.png", png_with_bad_crc(png), "image/png", 200, face=True,
             note="PNG with a wrong IDAT checksum but intact data: Pillow does not check it, the pixels are right"),
        Item("zeroed-scan.jpg", jpeg_with_zeroed_scan(jpeg), "image/jpeg", 200, face=None,
             note="JPEG with 64 zero bytes inside its scan: decodes, with damaged pixels"),
        Item("wide.png", save(gradient(20_000, 2), "PNG"), "image/png", 200, face=False,
             note="20000x2: extreme aspect ratio"),
        Item("big.jpg", encode(marked(Image.new("RGB", (6000, 6000), (90, 120, 150)))), "image/jpeg", 200, face=False,
             note="6000x6000 (36 Mpx), just under the pixel limit"),
    ]
    bad = [
        Item("empty.jpg", b"", "image/jpeg", 400, "empty", note="no bytes"),
        Item("noise.jpg", np.random.default_rng(3).bytes(4096), "image/jpeg", 400, "not_an_image", note="random bytes"),
        Item("text.jpg", b"not a photo, only text\n" * 20, "image/jpeg", 400, "not_an_image", note="text named .jpg"),
        Item("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg", 400, "corrupt", note="JPEG cut in half"),
        Item("cut.png", png[: len(png) // 2], "image/png", 400, "corrupt", note="PNG cut in half"),
        Item("cut.heic", (heic := save(face, "HEIF", quality=80))[: len(heic) // 2], "image/heic", 400, "corrupt", note="HEIC cut in half"),
        Item("broken-deflate.png", png_with_broken_data(png), "image/png", 400, "corrupt", note="PNG with 64 bytes of its deflate stream overwritten"),
        Item("zero-width.png", zero_width_png(), "image/png", 400, "not_an_image", note="PNG header with width 0"),
        Item("fake.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\nshowpage\n", "image/jpeg", 400, "not_an_image",
             note="PostScript (a format the service does not open)"),
        Item("bomb.png", png_bomb(30000), "image/png", 413, "too_many_pixels", note="PNG bomb: 30000x30000 in ~110 kB"),
        Item("bomb.tiff", tiff_bomb(), "image/tiff", 413, "too_many_pixels", note="TIFF header claiming 100000x100000"),
        Item("bomb.gif", gif_bomb(), "image/gif", 413, "too_many_pixels", note="GIF claiming 65535x65535"),
        Item("bomb.jpg", jpeg_with_size(jpeg, 65000, 65000), "image/jpeg", 413, "too_many_pixels", note="JPEG frame header claiming 65000x65000"),
        Item("black.png", save(Image.new("RGB", (400, 300)), "PNG"), "image/png", 422, "blank", note="all black: nothing to judge"),
        Item("grey.jpg", encode(Image.new("RGB", (400, 300), (128, 128, 128))), "image/jpeg", 422, "blank", note="one flat grey, as JPEG"),
        Item("one-pixel.png", save(Image.new("RGB", (1, 1), (200, 120, 90)), "PNG"), "image/png", 422, "blank", note="1x1"),
        Item("oversized.jpg", jpeg + b"\0" * (max_bytes + 1 - len(jpeg)), "image/jpeg", 413, "too_many_bytes",
             note="one byte over the byte limit"),
    ]
    return good + bad


if __name__ == "__main__":  # the table of docs/reliability.md, at the test server's 2 MB byte limit
    print("| file | what | bytes | answer |\n|---|---|---:|---|")
    for item in corpus(2_000_000):
        answer = f"{item.status} `{item.reason}`" if item.reason else {True: "200, face found", False: "200, no face", None: "200"}[item.face]
        print(f"| `{item.name}` | {item.note} | {len(item.data):,} | {answer} |")
