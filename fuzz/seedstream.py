"""Recorded streams cut down to fuzz seeds (used by make-seeds.py).

A recorded stream is about 450 KB: 64 MiB of guest RAM as some 16,000 ZERO
records and 50 PAGE records, the device state and the vmdesc. A fuzzer
executes an input in time proportional to its length and mutates it at
random places, so most of its time would go into re-reading zero pages.
`thin()` keeps the stream's structure (header, configuration, commands,
every RAM section with its MEM_SIZE list and EOS, the PACKAGED blob, the
device sections, EOF, the vmdesc) and keeps only a few PAGE and ZERO
records per RAM section; given a set of devices it also keeps only those
device sections, in the stream and in the vmdesc JSON. The result is still
a complete migration that rust-dest (and QEMU) loads. Record formats:
docs/wire-format.md.
"""
import json
import struct

ZERO, MEM_SIZE, PAGE, EOS, CONT, XBZRLE, COMP, FLUSH = (
    0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x100, 0x200)
PAGE_SIZE = 4096
EOF, START, PART, END, FULL, VMDESC, COMMAND, FOOTER = 0x00, 0x01, 0x02, 0x03, 0x04, 0x06, 0x08, 0x7E
PACKAGED = 7


class Bad(Exception):
    """The stream is not in the shape this cutter knows."""


def footer(sid):
    return bytes([FOOTER]) + struct.pack(">I", sid)


def ram_body(b, i, keep_pages, keep_zero, state):
    """RAM records from i through EOS: (end, the records kept)."""
    out = bytearray()
    npage = nzero = 0
    # The first record kept in a section names its block.
    state["out"] = None
    while True:
        (hdr,) = struct.unpack(">Q", b[i:i + 8])
        flags, addr = hdr & 0xFFF, hdr & ~0xFFF
        j = i + 8
        if flags & MEM_SIZE:
            left = addr
            while left > 0:
                n = b[j]
                (ln,) = struct.unpack(">Q", b[j + 1 + n:j + 9 + n])
                j += 9 + n
                left -= ln
            out += b[i:j]
            i = j
            continue
        if flags & EOS:
            return i + 8, bytes(out + b[i:i + 8])
        if flags & FLUSH and not flags & (ZERO | PAGE | XBZRLE | COMP):
            out += b[i:j]
            i = j
            continue
        if not flags & CONT:
            n = b[j]
            state["block"] = b[j + 1:j + 1 + n]
            j += 1 + n
        body = j
        if flags & ZERO:
            j += 1
            keep, nzero = nzero < keep_zero, nzero + 1
        elif flags & PAGE:
            j += PAGE_SIZE
            keep, npage = npage < keep_pages, npage + 1
        elif flags & XBZRLE:
            (ln,) = struct.unpack(">H", b[j + 1:j + 3])
            j += 3 + ln
            keep = True
        elif flags & COMP:
            (ln,) = struct.unpack(">I", b[j:j + 4])
            j += 4 + ln
            keep = True
        else:
            raise Bad(f"RAM record flags {flags:#x} at byte offset {i}")
        if keep:
            blk = state["block"]
            if state["out"] == blk:
                out += struct.pack(">Q", hdr | CONT) + b[body:j]
            else:
                out += struct.pack(">Q", hdr & ~CONT) + bytes([len(blk)]) + blk + b[body:j]
                state["out"] = blk
        i = j


def device_end(b, i, sid):
    """End of a device section (after its footer), found by the footer."""
    j = b.find(footer(sid), i)
    while j >= 0:
        k = j + 5
        if k == len(b) or b[k] in (START, PART, END, FULL, COMMAND, EOF):
            return k
        j = b.find(footer(sid), j + 1)
    raise Bad(f"no footer for section {sid}")


def records(b, i, keep, keep_pages, keep_zero, state):
    """The records from i to the end of b, cut down."""
    out = bytearray()
    while i < len(b):
        t = b[i]
        if t in (START, FULL):
            (sid,) = struct.unpack(">I", b[i + 1:i + 5])
            n = b[i + 5]
            idstr = b[i + 6:i + 6 + n].decode()
            h = i + 6 + n + 8
            if idstr == "ram":
                state["ram"].add(sid)
                head = b[i:h]
                i, body = ram_body(b, h, keep_pages, keep_zero, state)
                out += head + body
                if b[i:i + 5] == footer(sid):
                    out += b[i:i + 5]
                    i += 5
            else:
                end = device_end(b, h, sid)
                (inst,) = struct.unpack(">I", b[h - 8:h - 4])
                if keep is None or (idstr, inst) in keep:
                    if t == FULL and state["dev_at"] is None and not state["in_package"]:
                        state["dev_at"] = state["base"] + len(out)
                    out += b[i:end]
                i = end
        elif t in (PART, END):
            (sid,) = struct.unpack(">I", b[i + 1:i + 5])
            if sid not in state["ram"]:
                raise Bad(f"PART/END of section {sid}, not RAM")
            end, body = ram_body(b, i + 5, keep_pages, keep_zero, state)
            out += b[i:i + 5] + body
            i = end
            if b[i:i + 5] == footer(sid):
                out += b[i:i + 5]
                i += 5
        elif t == COMMAND:
            cmd, ln = struct.unpack(">HH", b[i + 1:i + 5])
            end = i + 5 + ln
            if cmd == PACKAGED:
                (blen,) = struct.unpack(">I", b[i + 5:i + 9])
                state["in_package"] = True
                blob = records(b[end:end + blen], 0, keep, keep_pages, keep_zero, state)
                state["in_package"] = False
                out += b[i:i + 5] + struct.pack(">I", len(blob)) + blob
                i = end + blen
            else:
                out += b[i:end]
                i = end
        elif t == EOF:
            out += b[i:i + 1]
            i += 1
            if i < len(b) and b[i] == VMDESC:
                js = b[i + 5:]
                if keep is not None:
                    d = json.loads(js)
                    d["devices"] = [
                        x for x in d["devices"] if (x["name"], x["instance_id"]) in keep
                    ]
                    js = json.dumps(d).encode()
                out += bytes([VMDESC]) + struct.pack(">I", len(js)) + js
                i = len(b)
        else:
            raise Bad(f"record type {t:#x} at byte offset {i}")
    return bytes(out)


def device_state(b, keep=None):
    """(vmdesc JSON, the device sections up to EOF) of the precopy stream
    `thin(b, keep)`, or (None, None)."""
    s, st = _thin(b, keep, 1, 6)
    eof = s.rfind(b"\x00\x06")
    if st["dev_at"] is None or eof < 0:
        return None, None
    return s[eof + 6:], s[st["dev_at"]:eof]


def thin(b, keep=None, keep_pages=1, keep_zero=6):
    """The stream `b` with at most `keep_pages` PAGE and `keep_zero` ZERO
    records per RAM section and, when `keep` is a set of (idstr, instance),
    only those device sections (in the stream and in the vmdesc). Everything
    before the RAM section's START (header, configuration, commands) stays."""
    return _thin(b, keep, keep_pages, keep_zero)[0]


def _thin(b, keep, keep_pages, keep_zero):
    i = b.find(b"\x03ram\x00\x00\x00\x00\x00\x00\x00\x04")
    if i < 0:
        raise Bad("no RAM START section")
    i -= 5
    state = {"block": None, "out": None, "ram": set(), "dev_at": None, "in_package": False,
             "base": i}
    return b[:i] + records(b, i, keep, keep_pages, keep_zero, state), state
