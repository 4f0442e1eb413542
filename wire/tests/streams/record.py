#!/usr/bin/env python3
"""Record real QEMU migration streams for the wire crate's tests.

Self-contained (python3 standard library only, no crossmig code): starts a
QEMU source and a QEMU destination of the same version, puts a small
recording TCP proxy between them, migrates (precopy or postcopy), and saves
the source->destination bytes as `qemu-<ver>-<mode>.bin` together with a
`.json` sidecar of facts read from the source while recording (QEMU version,
resolved machine type, RAMBlock list, digests of the final source RAM).

Usage:  python3 record.py [--out DIR] [--only 10.0] [--mode precopy]
        python3 record.py --multifd 2 [--compression zlib] [--machine pc-q35-7.2] [--only 10.0]
With --multifd N it records a precopy with the `multifd` capability and N
channels instead: every connection the source opens is saved separately as
`qemu-<ver>-multifd<N>[-<comp>][-<machine>].ch<k>.bin` (k = accept order) with
one `.json` sidecar naming each connection's role.
Re-recording overwrites the files; see README.md beside this script.
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib

PAGE = 4096
MEM_BYTES = 64 << 20
CACHE = "/var/cache/crossmig"

# How each QEMU version is invoked on this project's machines (the layout
# `crossmig qemu provision` creates; 10.0 is the host's package).
def qemu_prefix(ver):
    if ver == "10.0":
        return ["/usr/bin/qemu-system-x86_64"]
    root = f"{CACHE}/qemu-{ver}/root"
    binary = f"{root}/usr/bin/qemu-system-x86_64"
    if ver == "7.2":
        fw = [f"{root}/usr/share/seabios", f"{root}/usr/lib/ipxe/qemu", f"{root}/usr/share/qemu"]
        cmd = [binary]
    elif ver == "11.1":
        lib = f"{root}/usr/lib/x86_64-linux-gnu"
        cmd = [f"{lib}/ld-linux-x86-64.so.2", "--library-path", lib, binary]
        fw = [f"{root}/usr/share/seabios", f"{root}/usr/share/qemu"]
    else:
        raise SystemExit(f"unknown QEMU version {ver}")
    for d in fw:
        cmd += ["-L", d]
    return cmd


# Deterministic content written into the source's guest RAM (through its
# /dev/shm file) before migrating, so the streams carry real PAGE records of
# known data in mem0. Everything else in mem0 stays zero.
def pattern_pages():
    pages = {}
    pages[0x1000] = bytes(i % 251 for i in range(PAGE))
    pages[0x2000] = (b"crossmig wire test page\n" * (PAGE // 24 + 1))[:PAGE]
    one = bytearray(PAGE)
    one[0] = 0x7F
    pages[0x100000] = bytes(one)
    pages[MEM_BYTES - PAGE] = b"\xff" * PAGE
    return pages


class Qmp:
    """Minimal QMP client over a unix socket (events are collected)."""

    def __init__(self, path, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"QMP socket {path} did not come up")
                time.sleep(0.05)
        self.buf = b""
        self.events = []
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise RuntimeError(f"QMP {name} {args}: {r['error']}")
            return r.get("return")

    def close(self):
        self.sock.close()


class Proxy:
    """Accepts connections on 127.0.0.1, forwards each to `target`, and
    keeps the bytes each connection sent towards the target."""

    def __init__(self, target):
        self.target = target
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(4)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.recorded = []  # one bytearray per connection, in accept order
        self.socks = []
        self.threads = []
        self.stop = threading.Event()
        self.errors = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                d = socket.create_connection(self.target, timeout=10)
            except OSError as e:
                self.errors.append(f"proxy: connect to destination: {e}")
                c.close()
                continue
            rec = bytearray()
            self.recorded.append(rec)
            self.socks += [c, d]
            for a, b, r in ((c, d, rec), (d, c, None)):
                t = threading.Thread(target=self._pump, args=(a, b, r), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src, dst, rec):
        try:
            src.settimeout(None)
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if rec is not None:
                    rec += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.lsock.close()
        for t in self.threads:
            t.join(timeout=5)
        for s in self.socks:
            s.close()
        self.acceptor.join(timeout=5)


class Vm:
    def __init__(self, ver, workdir, tag, incoming, machine="q35"):
        self.shm = f"/dev/shm/crossmig-rec-{os.getpid()}-{ver}-{tag}"
        self.qmp_path = os.path.join(workdir, f"{tag}.qmp")
        self.log_path = os.path.join(workdir, f"{tag}.log")
        args = qemu_prefix(ver) + [
            "-accel", "tcg", "-machine", machine, "-m", "64M",
            "-object",
            f"memory-backend-file,id=mem0,size=64M,mem-path={self.shm},share=on",
            "-machine", "memory-backend=mem0", "-nodefaults", "-display", "none", "-S",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if incoming:
            args += ["-incoming", "defer"]
        self.args = args
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.qmp = Qmp(self.qmp_path)
        except Exception:
            self.kill()
            raise

    def log_tail(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def kill(self):
        if getattr(self, "qmp", None):
            self.qmp.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()
        for p in (self.shm, self.qmp_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def wait_status(vm, want, timeout, what):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        r = vm.qmp.cmd("query-migrate")
        st = r.get("status")
        if not seen or seen[-1] != st:
            seen.append(st)
        if st == want:
            return r, seen
        if st in ("failed", "cancelled"):
            raise RuntimeError(f"{what}: migration {st}: {r}\n{vm.log_tail()}")
        if vm.proc.poll() is not None:
            raise RuntimeError(f"{what}: QEMU exited ({vm.proc.returncode})\n{vm.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: no '{want}' after {timeout}s (seen {seen})")
        time.sleep(0.02)


def ramblocks(vm):
    """The source's RAMBlocks (name, used length) from HMP `info ramblock`."""
    out = vm.qmp.cmd("human-monitor-command", **{"command-line": "info ramblock"})
    blocks = []
    for line in out.splitlines()[1:]:
        toks = line.split()
        hexes = [t for t in toks if t.startswith("0x")]
        if toks and len(hexes) >= 3:
            blocks.append({"name": toks[0], "used_length": int(hexes[1], 16)})
    return blocks


def machine_name(vm):
    for m in vm.qmp.cmd("query-machines"):
        if m.get("alias") == "q35":
            return m["name"]
    raise RuntimeError("no machine has the alias q35")


def record(ver, mode, outdir):
    workdir = tempfile.mkdtemp(prefix=f"crossmig-rec-{ver}-{mode}-")
    src = dst = proxy = None
    try:
        version_line = subprocess.run(qemu_prefix(ver) + ["--version"], capture_output=True,
                                      text=True, timeout=30, check=True).stdout.splitlines()[0]
        src = Vm(ver, workdir, "src", incoming=False)
        dst = Vm(ver, workdir, "dst", incoming=True)
        with open(src.shm, "r+b") as f:
            for addr, data in pattern_pages().items():
                f.seek(addr)
                f.write(data)
        caps = [{"capability": "events", "state": True}]
        if mode == "postcopy":
            caps.append({"capability": "postcopy-ram", "state": True})
        src.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        dst.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        if mode == "postcopy":
            # Slow precopy and a 1 ms downtime limit: precopy cannot finish
            # by itself, so migrate-start-postcopy always takes effect.
            src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 256 << 10,
                                                     "downtime-limit": 1,
                                                     "max-postcopy-bandwidth": 0})
        else:
            src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        dport = probe.getsockname()[1]
        probe.close()
        dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{dport}")
        proxy = Proxy(("127.0.0.1", dport))
        blocks = ramblocks(src)
        machine = machine_name(src)
        src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
        if mode == "postcopy":
            src.qmp.cmd("migrate-start-postcopy")
        src_info, src_seen = wait_status(src, "completed", 120, "source")
        _, dst_seen = wait_status(dst, "completed", 120, "destination")
        src_events = [e["data"]["status"] for e in src.qmp.events if e["event"] == "MIGRATION"]
        if mode == "postcopy" and "postcopy-active" not in src_events + src_seen:
            raise RuntimeError(f"postcopy never became active on the source: {src_events}")
        # The destination reports completed once it has loaded everything;
        # let the source close its end before reading the recording.
        deadline = time.monotonic() + 20
        while any(t.is_alive() for t in proxy.threads) and time.monotonic() < deadline:
            src.qmp.cmd("query-status")
            time.sleep(0.05)
        if proxy.errors:
            raise RuntimeError("; ".join(proxy.errors))
        if len(proxy.recorded) != 1:
            raise RuntimeError(f"expected one migration connection, got {len(proxy.recorded)}")
        stream = bytes(proxy.recorded[0])
        # pc.bios is mapped just below 4 GiB: read it back from the source.
        bios = next(b for b in blocks if b["name"] == "pc.bios")
        bios_path = os.path.join(workdir, "bios.bin")
        src.qmp.cmd("pmemsave", val=(1 << 32) - bios["used_length"],
                    size=bios["used_length"], filename=bios_path)
        with open(bios_path, "rb") as f:
            bios_data = f.read()
        with open(src.shm, "rb") as f:
            ram = f.read()
        nonzero = {}
        for off in range(0, len(ram), PAGE):
            p = ram[off:off + PAGE]
            if p.count(0) != PAGE:
                nonzero[f"{off:#x}"] = f"{zlib.crc32(p):08x}"
        base = f"qemu-{ver}-{mode}"
        with open(os.path.join(outdir, base + ".bin"), "wb") as f:
            f.write(stream)
        facts = {
            "qemu_version": version_line,
            "machine": machine,
            "mode": mode,
            "ram_bytes": MEM_BYTES,
            "capabilities": [c["capability"] for c in caps],
            "stream_bytes": len(stream),
            "stream_sha256": hashlib.sha256(stream).hexdigest(),
            "ramblocks": blocks,
            "mem0_sha256": hashlib.sha256(ram).hexdigest(),
            "mem0_nonzero_pages_crc32": nonzero,
            "pc_bios_crc32": f"{zlib.crc32(bios_data):08x}",
            "source_status_seen": src_seen,
            "source_events": src_events,
            "destination_status_seen": dst_seen,
            "source_ram_stats": {k: src_info.get("ram", {}).get(k) for k in
                                 ("transferred", "normal", "duplicate", "postcopy-requests")},
        }
        with open(os.path.join(outdir, base + ".json"), "w") as f:
            json.dump(facts, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"{base}.bin: {len(stream)} bytes ({version_line}; {machine}; "
              f"source saw {src_seen}, events {src_events})")
    except Exception:
        for vm in (src, dst):
            if vm is not None:
                sys.stderr.write(f"--- {vm.log_path}\n{vm.log_tail()}\n")
        raise
    finally:
        if proxy is not None:
            proxy.close()
        for vm in (dst, src):
            if vm is not None:
                vm.kill()
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)


MULTIFD_MAGIC = b"\x11\x22\x33\x44"


def mem_facts(src, blocks, workdir):
    """Digests of the source's mem0 file and pc.bios (as the sidecars hold)."""
    bios = next(b for b in blocks if b["name"] == "pc.bios")
    bios_path = os.path.join(workdir, "bios.bin")
    src.qmp.cmd("pmemsave", val=(1 << 32) - bios["used_length"],
                size=bios["used_length"], filename=bios_path)
    with open(bios_path, "rb") as f:
        bios_data = f.read()
    with open(src.shm, "rb") as f:
        ram = f.read()
    nonzero = {}
    for off in range(0, len(ram), PAGE):
        p = ram[off:off + PAGE]
        if p.count(0) != PAGE:
            nonzero[f"{off:#x}"] = f"{zlib.crc32(p):08x}"
    return {
        "mem0_sha256": hashlib.sha256(ram).hexdigest(),
        "mem0_nonzero_pages_crc32": nonzero,
        "pc_bios_crc32": f"{zlib.crc32(bios_data):08x}",
    }


def record_multifd(ver, channels, comp, machine, outdir):
    """Precopy with multifd: main channel + `channels` multifd channels, each
    connection recorded on its own."""
    tag = f"multifd{channels}" + (f"-{comp}" if comp != "none" else "") + \
        (f"-{machine}" if machine else "")
    workdir = tempfile.mkdtemp(prefix=f"crossmig-rec-{ver}-{tag}-")
    src = dst = proxy = None
    try:
        version_line = subprocess.run(qemu_prefix(ver) + ["--version"], capture_output=True,
                                      text=True, timeout=30, check=True).stdout.splitlines()[0]
        src = Vm(ver, workdir, "src", incoming=False, machine=machine or "q35")
        dst = Vm(ver, workdir, "dst", incoming=True, machine=machine or "q35")
        with open(src.shm, "r+b") as f:
            for addr, data in pattern_pages().items():
                f.seek(addr)
                f.write(data)
        caps = [{"capability": "events", "state": True},
                {"capability": "multifd", "state": True}]
        params = {"multifd-channels": channels, "multifd-compression": comp}
        for vm in (src, dst):
            vm.qmp.cmd("migrate-set-capabilities", capabilities=caps)
            vm.qmp.cmd("migrate-set-parameters", **params)
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        src_params = src.qmp.cmd("query-migrate-parameters")
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        dport = probe.getsockname()[1]
        probe.close()
        dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{dport}")
        proxy = Proxy(("127.0.0.1", dport))
        blocks = ramblocks(src)
        resolved = machine or machine_name(src)
        uuid = src.qmp.cmd("query-uuid")["UUID"]
        src.qmp.cmd("migrate", uri=f"tcp:127.0.0.1:{proxy.port}")
        src_info, src_seen = wait_status(src, "completed", 120, "source")
        _, dst_seen = wait_status(dst, "completed", 120, "destination")
        src_events = [e["data"]["status"] for e in src.qmp.events if e["event"] == "MIGRATION"]
        deadline = time.monotonic() + 20
        while any(t.is_alive() for t in proxy.threads) and time.monotonic() < deadline:
            src.qmp.cmd("query-status")
            time.sleep(0.05)
        if proxy.errors:
            raise RuntimeError("; ".join(proxy.errors))
        if len(proxy.recorded) != channels + 1:
            raise RuntimeError(f"expected {channels + 1} connections, got {len(proxy.recorded)}")
        conns = []
        for k, rec in enumerate(proxy.recorded):
            data = bytes(rec)
            info = {"connection": k, "file": f"qemu-{ver}-{tag}.ch{k}.bin",
                    "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if data[:4] == b"QEVM":
                info["role"] = "main"
            elif data[:4] == MULTIFD_MAGIC and len(data) >= 64:
                info["role"] = "multifd"
                info["multifd_id"] = data[24]
            else:
                raise RuntimeError(f"connection {k} starts with {data[:4].hex()}")
            conns.append((info, data))
        roles = sorted((i["role"], i.get("multifd_id", -1)) for i, _ in conns)
        want = [("main", -1)] + [("multifd", i) for i in range(channels)]
        if roles != sorted(want):
            raise RuntimeError(f"connections {roles}, expected {want}")
        for info, data in conns:
            with open(os.path.join(outdir, info["file"]), "wb") as f:
                f.write(data)
        facts = {
            "qemu_version": version_line,
            "machine": resolved,
            "mode": "precopy",
            "ram_bytes": MEM_BYTES,
            "capabilities": [c["capability"] for c in caps],
            "parameters": {k: src_params.get(k) for k in
                           ("multifd-channels", "multifd-compression", "multifd-zlib-level",
                            "multifd-zstd-level", "zero-page-detection")
                           if k in src_params},
            "uuid": uuid,
            "channels": [i for i, _ in conns],
            "ramblocks": blocks,
            **mem_facts(src, blocks, workdir),
            "source_status_seen": src_seen,
            "source_events": src_events,
            "destination_status_seen": dst_seen,
            "source_ram_stats": {k: src_info.get("ram", {}).get(k) for k in
                                 ("transferred", "normal", "duplicate", "multifd-bytes")},
        }
        with open(os.path.join(outdir, f"qemu-{ver}-{tag}.json"), "w") as f:
            json.dump(facts, f, indent=1, sort_keys=True)
            f.write("\n")
        sizes = ", ".join(f"ch{i['connection']} {i['role']}"
                          f"{i.get('multifd_id', '')} {i['bytes']}" for i, _ in conns)
        print(f"qemu-{ver}-{tag}: {sizes} ({version_line}; {resolved}; "
              f"zero-page-detection {src_params.get('zero-page-detection')})")
    except Exception:
        for vm in (src, dst):
            if vm is not None:
                sys.stderr.write(f"--- {vm.log_path}\n{vm.log_tail()}\n")
        raise
    finally:
        if proxy is not None:
            proxy.close()
        for vm in (dst, src):
            if vm is not None:
                vm.kill()
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)


def record_mapped_ram(ver, outdir):
    """Save the source with `mapped-ram` to a file (`migrate file:`), then
    load it into a destination with the capability to prove it loads. The
    file is sparse (pages at fixed offsets) and stored gzip-compressed as
    `qemu-<ver>-mapped-ram.bin.gz`."""
    import gzip
    workdir = tempfile.mkdtemp(prefix=f"crossmig-rec-{ver}-mapped-ram-")
    src = dst = None
    path = os.path.join(workdir, "save.mig")
    try:
        src = Vm(ver, workdir, "src", incoming=False)
        with open(src.shm, "r+b") as f:
            for off, data in pattern_pages().items():
                f.seek(off)
                f.write(data)
        caps = [{"capability": "events", "state": True},
                {"capability": "mapped-ram", "state": True}]
        src.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        src.qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        src.qmp.cmd("migrate", uri=f"file:{path}")
        stats, src_seen = wait_status(src, "completed", 60, "source")
        blocks = ramblocks(src)
        facts = mem_facts(src, blocks, workdir)
        machine = machine_name(src)
        dst = Vm(ver, workdir, "dst", incoming=True)
        dst.qmp.cmd("migrate-set-capabilities", capabilities=caps)
        dst.qmp.cmd("migrate-incoming", uri=f"file:{path}")
        _, dst_seen = wait_status(dst, "completed", 60, "destination")
        with open(path, "rb") as f:
            data = f.read()
        name = f"qemu-{ver}-mapped-ram"
        with open(os.path.join(outdir, name + ".bin.gz"), "wb") as f:
            f.write(gzip.compress(data, compresslevel=9, mtime=0))
        side = {
            "qemu_version": subprocess.run(qemu_prefix(ver) + ["--version"], capture_output=True,
                                           text=True).stdout.splitlines()[0],
            "machine": machine,
            "mode": "mapped-ram",
            "capabilities": ["events", "mapped-ram"],
            "ram_bytes": MEM_BYTES,
            "ramblocks": blocks,
            "file_bytes": len(data),
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "source_status_seen": src_seen,
            "destination_status_seen": dst_seen,
            "source_ram_stats": {k: stats["ram"][k] for k in ("normal", "duplicate", "transferred")},
            **facts,
        }
        with open(os.path.join(outdir, name + ".json"), "w") as f:
            json.dump(side, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"{name}: {len(data)} bytes (sparse file), gzip written")
    finally:
        for vm in (src, dst):
            if vm:
                vm.kill()
        for p in os.listdir(workdir):
            os.unlink(os.path.join(workdir, p))
        os.rmdir(workdir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--only", action="append", help="QEMU version (7.2, 10.0, 11.1); repeatable")
    ap.add_argument("--mode", action="append", choices=["precopy", "postcopy"])
    ap.add_argument("--multifd", type=int, metavar="N",
                    help="record a multifd precopy with N channels instead of --mode")
    ap.add_argument("--compression", default="none", choices=["none", "zlib", "zstd"],
                    help="multifd-compression (with --multifd)")
    ap.add_argument("--machine", help="machine type instead of q35 (with --multifd)")
    ap.add_argument("--mapped-ram", action="store_true",
                    help="save to a file with the mapped-ram capability (qemu-<ver>-mapped-ram.bin.gz)")
    a = ap.parse_args()
    if a.mapped_ram:
        for ver in a.only or ["10.0"]:
            record_mapped_ram(ver, a.out)
        return
    if a.multifd:
        for ver in a.only or ["7.2", "10.0", "11.1"]:
            record_multifd(ver, a.multifd, a.compression, a.machine, a.out)
        return
    for ver in a.only or ["7.2", "10.0", "11.1"]:
        for mode in a.mode or ["precopy", "postcopy"]:
            record(ver, mode, a.out)


if __name__ == "__main__":
    main()
