"""Video containers read without FFmpeg: is this a video, and how large are its frames (from the header)?

A video claiming 16000x16000 frames makes FFmpeg allocate gigabytes as soon as it probes the stream, so an
upload is checked here first: MP4/MOV (``tkhd`` boxes), Matroska/WebM (``PixelWidth``/``PixelHeight``)
and AVI (``avih``), reading only box/element headers and seeking past everything else.

The header can lie (an AVI saying 320x240 whose MJPEG frames are 16000x16000): :func:`coded_frame_size` then
reads the size the decoder will use from the codec's own headers (FFmpeg's probe; an MJPEG packet's SOF),
decoding nothing beyond what FFmpeg's probe decodes (at most the first frame).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from ..imageio import header_size

#: Container kinds :func:`sniff` knows.
KINDS = ("mp4", "matroska", "avi")


def sniff(head: bytes) -> str | None:
    """The container of a file from its first 16 bytes: ``mp4`` (MP4/MOV/M4V), ``matroska`` (MKV/WebM),
    ``avi``, or ``None``."""
    if head[4:8] == b"ftyp" or head[4:8] in (b"moov", b"mdat", b"wide", b"free"):
        return "mp4"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    return None


def frame_size(path: str | Path) -> tuple[int, int] | None:
    """Largest ``(width, height)`` of the video tracks declared in the file's header, or ``None`` when the
    container is unknown or declares none. Reads a few KB; never decodes."""
    with open(path, "rb") as f:
        kind = sniff(f.read(16))
        f.seek(0)
        sizes = {"mp4": _mp4_sizes, "matroska": _mkv_sizes, "avi": _avi_sizes}[kind](f) if kind else []
    sizes = [(w, h) for w, h in sizes if w > 0 and h > 0]
    return max(sizes, key=lambda s: s[0] * s[1]) if sizes else None


def coded_frame_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` of the first video stream as its decoder will see it: the larger of what FFmpeg's
    probe (``av.open``, which reads the codec's own headers, e.g. H.264's SPS) reports and, for codecs whose
    packets are images (MJPEG), the size in the first packet's own header. Nothing beyond the probe is decoded.
    ``None`` when there is no video stream or no size; ``ValueError`` when FFmpeg cannot open the file."""
    import av

    sizes = []
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                return None
            stream = c.streams.video[0]
            if stream.codec_context.width and stream.codec_context.height:
                sizes.append((stream.codec_context.width, stream.codec_context.height))
            for packet in c.demux(stream):
                if packet.size:
                    sizes += [s for s in [header_size(bytes(packet))] if s]
                    break
    except av.error.FFmpegError as e:
        raise ValueError(f"not a readable video ({e})") from None
    return max(sizes, key=lambda s: s[0] * s[1]) if sizes else None


# -- MP4 / QuickTime: boxes of (32-bit size, type), size 1 -> 64-bit size follows, 0 -> to the end -------------
_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def _mp4_boxes(f: BinaryIO, end: int, cut_ok: bool = False):
    """``(start, size, header, kind)`` of each MP4 box from the file position up to ``end``; stops at a damaged
    box (what was found before it stands), or, with ``cut_ok``, yields a box that runs past ``end`` (a file cut
    short) with the size that is there. The caller may read inside a box: the walk seeks past it."""
    while f.tell() + 8 <= end:
        start = f.tell()
        size, kind = struct.unpack(">I4s", f.read(8))
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", f.read(8))[0], 16
        elif size == 0:
            size = end - start
        if cut_ok and start + size > end >= start + header:
            size = end - start
        if size < header or start + size > end:
            return
        yield start, size, header, kind
        f.seek(start + size)


def _file_end(f: BinaryIO) -> int:
    f.seek(0, 2)
    end = f.tell()
    f.seek(0)
    return end


def _mp4_sizes(f: BinaryIO, end: int | None = None, depth: int = 0) -> list[tuple[int, int]]:
    end = _file_end(f) if end is None else end
    out: list[tuple[int, int]] = []
    if depth >= 8:
        return out
    for start, size, header, kind in _mp4_boxes(f, end):
        if kind in _MP4_CONTAINERS:
            out += _mp4_sizes(f, start + size, depth + 1)
        elif kind == b"tkhd":
            body = f.read(min(size - header, 120))
            at = 88 if body[:1] == b"\x01" else 76  # version 1 has 64-bit times; then 16.16 width, height
            if len(body) >= at + 8:
                w, h = struct.unpack(">II", body[at : at + 8])
                out.append((w >> 16, h >> 16))
    return out


def fragmented_mp4(path: str | Path) -> bool:
    """Whether ``path`` is a fragmented MP4 (``moov`` holds an ``mvex`` box: the frames are indexed fragment by
    fragment, as emolens writes them). Its frame count covers only the fragments in the file, so for a file cut
    short it is not the length of the whole video."""
    with open(path, "rb") as f:
        if sniff(f.read(16)) != "mp4":
            return False
        end = _file_end(f)
        for start, size, _, kind in _mp4_boxes(f, end, cut_ok=True):
            if kind == b"moov":
                return any(k == b"mvex" for *_, k in _mp4_boxes(f, start + size, cut_ok=True))
        return False


# -- Matroska / WebM: EBML elements of (variable-length ID, variable-length size) ---------------------------
_SEGMENT, _TRACKS, _TRACK_ENTRY, _VIDEO = 0x18538067, 0x1654AE6B, 0xAE, 0xE0
_PIXEL_W, _PIXEL_H, _CLUSTER = 0xB0, 0xBA, 0x1F43B675


def _vint(f: BinaryIO, keep_marker: bool) -> tuple[int, int] | None:
    first = f.read(1)
    if not first:
        return None
    b = first[0]
    length = next((i + 1 for i in range(8) if b & (0x80 >> i)), 0)
    if not length:
        return None
    value = b if keep_marker else b & (0xFF >> length)
    for c in f.read(length - 1):
        value = (value << 8) | c
    return value, length


def _mkv_sizes(f: BinaryIO, end: int | None = None, depth: int = 0) -> list[tuple[int, int]]:
    if end is None:
        f.seek(0, 2)
        end = f.tell()
        f.seek(0)
    out: list[tuple[int, int]] = []
    w = h = 0
    while f.tell() < end and depth < 6:
        ident = _vint(f, keep_marker=True)
        size = _vint(f, keep_marker=False)
        if ident is None or size is None:
            break
        start, n = f.tell(), size[0]
        if n == (1 << (7 * size[1])) - 1:  # "unknown size" (live streams): runs to the parent's end
            n = end - start
        if ident[0] == _CLUSTER:
            break  # frames begin: the tracks were declared before them
        if ident[0] in (_SEGMENT, _TRACKS, _TRACK_ENTRY, _VIDEO):
            out += _mkv_sizes(f, min(start + n, end), depth + 1)
        elif ident[0] in (_PIXEL_W, _PIXEL_H) and n <= 8:
            v = int.from_bytes(f.read(n), "big")
            w, h = (v, h) if ident[0] == _PIXEL_W else (w, v)
        f.seek(start + n)
    if w or h:
        out.append((w, h))
    return out


# -- AVI: RIFF 'AVI ' > LIST 'hdrl' > 'avih' (MainAVIHeader: width and height at bytes 32 and 36) ------------
def _avi_sizes(f: BinaryIO) -> list[tuple[int, int]]:
    head = f.read(12 + 12 + 8 + 40)
    if head[12:16] != b"LIST" or head[20:24] != b"hdrl" or head[24:28] != b"avih":
        return []
    w, h = struct.unpack("<II", head[32 + 32 : 32 + 40])
    return [(w, h)]
