"""A fast path for pydicom's ``dcmread`` on the files a scanner writes: Part 10, uncompressed little endian.

pydicom parses a file element by element through a generator with a ``read()``, a ``tell()`` and several
checks per element, and builds three datasets around the result: ~0.5 ms for a 50-element CT slice header,
half of the pixel decode floor and the largest single cost of a folder's check once the pixels are read
straight into the volume. This scanner reads the head of the file in one call and walks the same elements with
``struct.unpack_from`` over that buffer, producing the very objects pydicom would: ``RawDataElement``s
(converted lazily by pydicom as before) in a pydicom ``FileDataset`` with its file meta, encodings, file name
and time stamp, pixel data larger than the defer size left in the file (``value`` None at ``value_tell``).
Undefined-length sequences are parsed by pydicom's own ``read_sequence`` over the same buffer.

Anything outside that common case returns ``None`` and the caller falls back to ``dcmread``: no preamble, a
transfer syntax other than implicit / explicit VR little endian (compressed pixels, big endian, deflate), a VR
that does not match the transfer syntax (pydicom's heuristics decide), a command group, an undefined-length
element that is not a sequence, a file that ends inside an element (pydicom's error is the coded one). The
parity with ``dcmread`` is tested on pydicom's own test files (``tests/io/test_dicom_scan.py``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from struct import Struct

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

#: First read: a CT or MR slice header is 1-6 KB; a longer one (a Siemens CSA header) grows the buffer.
HEAD_BYTES = 16 * 1024
#: PixelData, FloatPixelData, DoubleFloatPixelData.
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_UNDEFINED = 0xFFFFFFFF
_CHARSET = 0x00080005
_SEQ_DELIMITER = 0xFFFEE0DD
_ITEM_DELIMITER = 0xFFFEE00D
_TAG_VR = Struct("<HH2s")
_U16 = Struct("<H")
_U32 = Struct("<L")
_IMPLICIT = Struct("<HHL")
#: VRs as encoded: one bytes -> str table lookup per element instead of a decode.
_VRS = {vr.value.encode(): vr.value for vr in VR}
_LONG = frozenset(EXPLICIT_VR_LENGTH_32)
_EMPTY = {vr: empty_value_for_VR(vr, raw=True) for vr in (*_VRS.values(), None)}


class _Fallback(Exception):
    """Not the common case: let pydicom read the file."""


class _Reader:
    """The file's bytes from offset ``base``, read on demand; ``buf[i - base]`` is byte ``i`` of the file."""

    def __init__(self, f: io.BufferedReader | io.FileIO) -> None:
        self.f = f
        self.buf = f.read(HEAD_BYTES)
        self.base = 0
        self.eof = len(self.buf) < HEAD_BYTES

    def need(self, end: int) -> bool:
        """Make bytes up to ``end`` (exclusive) available; False when the file ends first."""
        while end - self.base > len(self.buf):
            if self.eof:
                return False
            want = max(end - self.base - len(self.buf), HEAD_BYTES)
            more = self.f.read(want)
            self.eof = len(more) < want
            self.buf += more
            if not more:
                return False
        return True

    def skip_to(self, pos: int) -> None:
        """Continue at file offset ``pos`` (past a deferred value), dropping what is before it."""
        if pos - self.base <= len(self.buf):
            return
        self.f.seek(pos)
        self.buf, self.base = self.f.read(HEAD_BYTES), pos
        self.eof = len(self.buf) < HEAD_BYTES


def _file_meta(r: _Reader) -> tuple[dict, int]:
    """Group 0002 (always explicit VR little endian) from offset 132; (raw elements, where the dataset starts)."""
    meta: dict = {}
    pos = 132
    while r.need(pos + 8):
        group, elem, vrb = _TAG_VR.unpack_from(r.buf, pos)
        if group != 2:
            break
        vr = _VRS.get(vrb)
        if vr is None:
            raise _Fallback  # an implicit VR meta group (a writer's bug): pydicom's retry handles it
        if vr in _LONG:
            if not r.need(pos + 12):
                raise _Fallback
            length, vpos = _U32.unpack_from(r.buf, pos + 8)[0], pos + 12
        else:
            length, vpos = _U16.unpack_from(r.buf, pos + 6)[0], pos + 8
        if length == _UNDEFINED or not r.need(vpos + length):
            raise _Fallback
        tag = BaseTag(group << 16 | elem)
        value = r.buf[vpos:vpos + length] if length else _EMPTY[vr]
        meta[tag] = RawDataElement(tag, vr, length, value, vpos, False, True)
        pos = vpos + length
    return meta, pos


def _sequence(r: _Reader, vpos: int, implicit: bool, encoding: list[str] | str) -> tuple[Sequence, int]:
    """An undefined-length sequence from file offset ``vpos``, by pydicom's ``read_sequence`` over the buffer
    (grown until the sequence ends inside it); (the sequence, the offset after its delimiter)."""
    if r.base:
        raise _Fallback  # item offsets would be the buffer's: rare (a sequence after the pixel data)
    while True:
        fp = io.BytesIO(r.buf)  # shares the bytes; its offsets are the file's
        fp.seek(vpos)
        try:
            seq = read_sequence(fp, implicit, True, _UNDEFINED, encoding)
            if fp.tell() < len(r.buf):  # ended inside the buffer: not cut short by its end
                return seq, fp.tell()
        except Exception:  # malformed, or cut by the buffer's end: more bytes, else pydicom's verdict
            pass
        if r.eof or not r.need(len(r.buf) + HEAD_BYTES):
            raise _Fallback


def _dataset(r: _Reader, pos: int, implicit: bool, defer_size: int) -> tuple[dict, list[str] | str]:
    """The top-level data elements from ``pos`` to the end of the file; (raw elements, character encoding)."""
    elems: dict = {}
    encoding: list[str] | str = default_encoding
    first = True
    while True:
        if not r.need(pos + 8):
            break  # the end (or < 8 stray bytes, where pydicom stops too)
        buf, base = r.buf, r.base
        i = pos - base
        if implicit:
            group, elem, length = _IMPLICIT.unpack_from(buf, i)
            vr = None
            if first and _VRS.get(buf[i + 4:i + 6]) is not None:
                raise _Fallback  # explicit VR under an implicit syntax: pydicom's heuristic decides
            vpos = pos + 8
        else:
            group, elem, vrb = _TAG_VR.unpack_from(buf, i)
            vr = _VRS.get(vrb)
            if vr is None:
                raise _Fallback  # not a VR: implicit encoding, or a VR pydicom guesses at
            if vr in _LONG:
                if not r.need(pos + 12):
                    raise _Fallback
                buf = r.buf
                length, vpos = _U32.unpack_from(buf, i + 8)[0], pos + 12
            else:
                length, vpos = _U16.unpack_from(buf, i + 6)[0], pos + 8
        first = False
        tag = group << 16 | elem
        if group == 0 or tag == _ITEM_DELIMITER or tag == _SEQ_DELIMITER:
            raise _Fallback  # a command set, or a delimiter at the top level: pydicom's rules
        btag = BaseTag(tag)
        if length == _UNDEFINED:
            if vr is None:
                try:
                    vr = dictionary_VR(btag)
                except KeyError:
                    raise _Fallback from None
            if vr != "SQ":
                raise _Fallback  # encapsulated pixel data, undefined-length UN / private values
            seq, pos = _sequence(r, vpos, implicit, encoding)
            elems[btag] = DataElement(btag, vr, seq, vpos, is_undefined_length=True)
            continue
        end = vpos + length
        if length > defer_size and tag in PIXEL_TAGS:
            elems[btag] = RawDataElement(btag, vr, length, None, vpos, implicit, True)
            r.skip_to(end)
            pos = end
            continue
        if not r.need(end):
            raise _Fallback  # the file ends inside this value: pydicom's error
        value = r.buf[vpos - r.base:end - r.base] if length else _EMPTY[vr]
        if tag == _CHARSET:
            encoding = convert_encodings(convert_string(value or b"", True))
        elems[btag] = RawDataElement(btag, vr, length, value, vpos, implicit, True)
        pos = end
    return elems, encoding


def scan_file(path: str | Path, defer_size: int) -> FileDataset | None:
    """``pydicom.dcmread(path, defer_size=defer_size)`` for the common case, else None (see the module): any
    file it cannot parse is pydicom's to diagnose. Raises only what opening the file raises."""
    name = os.fspath(path)
    with open(name, "rb", buffering=0) as f:  # one read call: no buffer of its own
        r = _Reader(f)
        if len(r.buf) < 132 or r.buf[128:132] != b"DICM":
            return None
        try:
            meta, pos = _file_meta(r)
            ts_elem = meta.get(0x00020010)
            if ts_elem is None or not ts_elem.value:
                return None
            ts = ts_elem.value.rstrip(b"\0 ").decode("ascii", "replace")
            if ts == ExplicitVRLittleEndian:
                implicit = False
            elif ts == ImplicitVRLittleEndian:
                implicit = True
            else:
                return None
            preamble = r.buf[:128]
            elems, encoding = _dataset(r, pos, implicit, defer_size)
            file_meta = FileMetaDataset(meta)
            file_meta.set_original_encoding(False, True, default_encoding)
            # The element dict straight into the FileDataset (dcmread makes a Dataset first, then discards it).
            fds = FileDataset(name, elems, preamble, file_meta, implicit, True)
            fds.set_original_encoding(implicit, True, encoding)
            return fds
        except Exception:  # _Fallback, or a value pydicom's helpers reject (a corrupted character set)
            return None
