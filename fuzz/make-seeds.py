#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, generated from what the repository
already holds (nothing large is committed twice): the streams recorded from
real QEMU 7.2, 10.0 and 11.1 in wire/tests/streams/, the scenario files in
scenarios/, and a few hand-made records in the formats of docs/wire-format.md.

Usage: fuzz/make-seeds.py [OUT]   (default: fuzz/corpus; one folder per target)
"""
import glob
import json
import os
import struct
import sys

from seedstream import device_state, thin

# Device sections kept in the "small" seeds (the vmdesc cut to match):
# plain fields, subsections (fw_cfg), two instances of one device (dma),
# and globalstate, which decides the run state after the migration.
SMALL_DEVICES = {
    ("timer", 0), ("cpu_common", 0), ("fw_cfg", 0), ("dma", 0), ("dma", 1),
    ("pcspk", 0), ("globalstate", 0),
}
# The "cpu" seeds add the largest device with the most subsections.
CPU_DEVICES = SMALL_DEVICES | {("cpu", 0), ("apic", 0)}

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STREAMS = os.path.join(ROOT, "wire", "tests", "streams")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(p):
    with open(p, "rb") as f:
        return f.read()


def ram_body(b):
    """The RAM records of the first `ram` START section (after its header)."""
    i = b.find(b"\x03ram")
    return b[i + 4 + 8:] if i >= 0 else b""


def cmd(code, payload=b""):
    return struct.pack(">HH", code, len(payload)) + payload


def rp(code, payload=b""):
    return struct.pack(">HH", code, len(payload)) + payload


def main():
    for p in sorted(glob.glob(os.path.join(STREAMS, "qemu-*.bin"))):
        name = os.path.basename(p)[:-4]
        b = read(p)
        v72 = name.startswith("qemu-7.2")
        if "multifd" in name and not name.endswith(".ch0"):
            # Channels 1..N: the initial packet, then RAM packets (layout
            # up to 8.2 for 7.2, from 9.0 otherwise).
            put("multifd", name, bytes([0x02 | (1 if v72 else 0)]) + b)
            put("multifd", name + "-packets", bytes([1 if v72 else 0]) + b[64:])
            continue
        put("ramrec", name, b"\x00" + ram_body(b)[:65536])
        put("command", name, b"\x00\x00" + b[:4096])
        # The stream targets get the streams cut down (seedstream.py): a
        # few pages per RAM section, with a few devices ("-small", "-cpu")
        # and, for the walker, every device ("-thin"). The whole 450 KB
        # stream made each run read 16,000 zero pages and a 44 KB vmdesc.
        for kind, keep in (("thin", None), ("small", SMALL_DEVICES), ("cpu", CPU_DEVICES)):
            s = thin(b, keep)
            seed = f"{name}-{kind}"
            put("walk", seed, b"\x00" + s)
            put("walk", seed + "-4k", b"\x40" + s)
            if keep is None:
                continue
            if "postcopy" in name:
                put("load_postcopy", seed, s)
            elif "precopy" in name or name.endswith(".ch0"):
                put("load_precopy", seed, s)
            js, devs = device_state(b, keep)
            if js is not None and "precopy" in name:
                put("vmdesc", seed, struct.pack(">H", min(len(js), 65535)) + js[:65535] + devs)
                put("vmdesc", seed + "-tail", s[-(len(js) + 4096):])
    # MIG_CMD_* payloads as the command target reads them: be16 cmd, payload.
    cmds = {
        "open-rp": cmd(1)[:2], "ping": struct.pack(">HI", 3, 7),
        "advise": struct.pack(">HQQ", 5, 0x1000, 0x1000),
        "discard": struct.pack(">HB", 6, 0) + b"\x06pc.ram" + struct.pack(">QQ", 0, 0x1000),
        "packaged": struct.pack(">HI", 7, 0xFFFFFFFF), "listen": struct.pack(">H", 8),
        "run": struct.pack(">H", 9), "recv-bitmap": struct.pack(">H", 11) + b"\x06pc.ram",
        "resume": struct.pack(">H", 12), "switchover-start": struct.pack(">H", 13),
    }
    for k, v in cmds.items():
        put("command", k, v)
    msgs = [
        rp(1, struct.pack(">I", 0)), rp(2, struct.pack(">I", 7)),
        rp(3, struct.pack(">QI", 0, 4096) + b"\x06pc.ram"), rp(4, struct.pack(">QI", 4096, 4096)),
        rp(5, b"\x06pc.ram"), rp(6, struct.pack(">I", 1)), rp(7),
    ]
    put("rp", "all", b"".join(msgs))
    bitmap = struct.pack(">Q", 8) + b"\xff" * 8 + struct.pack(">Q", 0x000000003E1F3D1F)
    put("rp", "recv-bitmap-data", bitmap)
    qmp = [
        b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}\r\n'
        b'{"execute": "query-migrate", "id": 1}\r\n{"exec-oob": "migrate-pause"}\r\n',
        b'{"execute": "migrate-incoming", "arguments": {"uri": "tcp:127.0.0.1:4444"}}\n',
        b'{"execute": "query-status"} {"execute": 3} [1, 2] "x"\n{bad\n{"execute": "quit"}\n',
        b'{"execute":"migrate-set-capabilities","arguments":{"capabilities":'
        b'[{"capability":"postcopy-ram","state":true}]}}\n',
    ]
    for i, q in enumerate(qmp):
        put("qmp_input", f"q{i}", b"\x05" + q)
    for p in sorted(glob.glob(os.path.join(ROOT, "scenarios", "*.toml"))):
        put("scenario", os.path.basename(p), read(p))


if __name__ == "__main__":
    main()
    print(f"seeds written under {OUT}")
