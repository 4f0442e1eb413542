#!/usr/bin/env python3
"""Drive a migration destination with QEMU's own Python QMP library
(`qemu.qmp`, as QEMU's iotests and functional tests do) and print a
transcript of what the destination answered: for every command the reply's
shape (JSON types and member names, values aside) or its error class, and
the destination's events in order (names and data shapes; the MIGRATION
status values and the run states are kept, since they are the behaviour).

Usage: qmp_transcript.py MODE QEMU DEST IMAGE [DEST-ARGS...]
  MODE  precopy | postcopy | recover (postcopy with one pause and recovery)
  QEMU  the QEMU binary for the source
  DEST  the destination binary (QEMU or rust-dest), started with the same
        command line, to which DEST-ARGS are appended.
  IMAGE the source's boot disk: the harness's sweep guest, which keeps
        rewriting ~99 MiB, so precopy never converges and postcopy lasts.
The transcript is printed as one JSON document on stdout. Every process and
socket is removed at the end.
"""

import asyncio
import json
import re
import os
import shutil
import socket
import subprocess
import sys
import tempfile

from qemu.qmp import ExecuteError, QMPClient

TIMEOUT = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shape(v):
    """JSON types and member names; rust-dest's own `x-crossmig` members aside."""
    if isinstance(v, dict):
        return {k: shape(x) for k, x in sorted(v.items()) if not k.startswith("x-crossmig")}
    if isinstance(v, list):
        # A list's shape is the set of its elements' shapes.
        shapes = []
        for x in v:
            s = shape(x)
            if s not in shapes:
                shapes.append(s)
        return sorted(shapes, key=json.dumps)
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if v is None:
        return "null"
    return "str"


class Transcript:
    def __init__(self, dest):
        self.dest = dest
        self.lines = []
        self.events = []

    async def run(self, name, args=None, keep=False, oob=False):
        """One command on the destination, recorded."""
        try:
            r = await self.dest.execute(name, args, oob=oob)
            entry = {"cmd": name, "return": r if keep else shape(r)}
        except ExecuteError as e:
            entry = {"cmd": name, "error": e.error_class}
            r = None
        if args:
            # Ports are values: keep the shape of the URI only.
            entry["args"] = json.loads(re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", json.dumps(args)))
        self.lines.append(entry)
        return r


async def events_until(client, sink, pred):
    """Collect `client`'s events into `sink` until `pred(event)` holds."""
    async def go():
        async for ev in client.events:
            sink.append(ev)
            if pred(ev):
                return ev
    return await asyncio.wait_for(go(), TIMEOUT)


def is_status(*sts):
    return lambda ev: ev["event"] == "MIGRATION" and ev["data"]["status"] in sts


async def main():
    mode, qemu, dest_bin, image = sys.argv[1:5]
    dest_args = sys.argv[5:]
    tmp = tempfile.mkdtemp(prefix="crossmig-transcript-")
    procs = []
    try:
        common = ["-accel", "tcg", "-machine", "pc-q35-10.0", "-m", "128M", "-nodefaults",
                  "-display", "none", "-name", "guest=transcript,debug-threads=on",
                  "-uuid", "c7a5fdbd-cdaf-9455-926a-d65c16db1809", "-smp", "2"]
        ssock, dsock = os.path.join(tmp, "src.qmp"), os.path.join(tmp, "dst.qmp")
        serial = os.path.join(tmp, "src.serial")
        log = open(os.path.join(tmp, "log"), "w")
        procs.append(subprocess.Popen(
            [qemu] + common + ["-qmp", f"unix:{ssock},server=on,wait=off",
                               "-drive", f"file={image},format=raw,if=ide,snapshot=on",
                               "-serial", f"file:{serial}"],
            stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            [dest_bin] + common + ["-chardev", f"socket,id=mon,path={dsock},server=on,wait=off",
                                   "-mon", "chardev=mon,mode=control", "-serial", "null",
                                   "-incoming", "defer", "-S"]
            + dest_args, stdout=log, stderr=log))
        src, dst = QMPClient("src"), QMPClient("dst")
        for c, p in ((src, ssock), (dst, dsock)):
            for _ in range(300):
                try:
                    await c.connect(p)
                    break
                except Exception:
                    await asyncio.sleep(0.02)
            else:
                raise RuntimeError(f"cannot connect to {p}")
        # The guest prints 'B' once it has swept its memory 64 times.
        for _ in range(3000):
            if os.path.exists(serial) and "B" in open(serial).read():
                break
            await asyncio.sleep(0.02)
        else:
            raise RuntimeError("the source's guest did not start")
        t = Transcript(dst)
        t.lines.append({"greeting": shape(dict(dst.greeting._raw))})
        events = []

        # --- what a management stack asks before it starts -----------------
        for q in ["query-version", "query-kvm", "query-cpus-fast", "query-machines",
                  "query-target", "query-migrate", "query-migrate-capabilities",
                  "query-migrate-parameters"]:
            await t.run(q)
        for q in ["query-status", "query-name", "query-uuid"]:
            await t.run(q, keep=True)
        for h in ["info status", "info migrate_capabilities", "info migrate_parameters",
                  "info no-such-info"]:
            await t.run("human-monitor-command", {"command-line": h}, keep=True)
        await t.run("no-such-command")
        await t.run("migrate-set-parameters", {"max-bandwidth": "x"})
        await t.run("migrate-set-parameters", {"no-such-parameter": 1})
        await t.run("migrate-set-parameters", {"downtime-limit": 3000000})
        await t.run("migrate-set-parameters", {"max-bandwidth": -1})
        await t.run("migrate-set-capabilities",
                    {"capabilities": [{"capability": "no-such-cap", "state": True}]})
        await t.run("migrate-recover", {"uri": "tcp:127.0.0.1:1"})
        await t.run("migrate-pause")
        await t.run("migrate-incoming")

        # --- the migration ------------------------------------------------
        caps = [{"capability": "events", "state": True}]
        if mode != "precopy":
            caps.append({"capability": "postcopy-ram", "state": True})
        await src.execute("migrate-set-capabilities", {"capabilities": caps})
        await t.run("migrate-set-capabilities", {"capabilities": caps})
        if mode == "precopy":
            # The sweeping guest never converges: migrate it stopped.
            await src.execute("stop")
            await src.execute("migrate-set-parameters", {"max-bandwidth": 10 << 30})
        else:
            # Like libvirt: the destination runs as soon as postcopy starts.
            await t.run("cont")
            # Never converge in precopy; keep postcopy long enough to cut.
            await src.execute("migrate-set-parameters",
                              {"max-bandwidth": 64 << 20, "downtime-limit": 1,
                               "max-postcopy-bandwidth": 16 << 20})
        port = free_port()
        await t.run("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
        await events_until(dst, events, is_status("setup"))
        await t.run("migrate-incoming", {"uri": f"tcp:127.0.0.1:{free_port()}"})
        await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        if mode == "precopy":
            await events_until(dst, events, is_status("completed", "failed"))
        else:
            await events_until(dst, events, is_status("active"))
            await src.execute("migrate-start-postcopy")
            await events_until(dst, events, is_status("postcopy-active", "failed"))
            if mode == "recover":
                # The destination resumes once it processes RUN; pause after
                # that, so the event order does not depend on timing.
                await events_until(dst, events, lambda ev: ev["event"] == "RESUME")
                await src.execute("migrate-pause")
                await events_until(dst, events, is_status("postcopy-paused"))
                await t.run("query-status", keep=True)
                await t.run("migrate-pause")
                rport = free_port()
                await t.run("migrate-recover", {"uri": f"tcp:127.0.0.1:{rport}"}, oob=True)
                # The source may still be noticing the cut.
                for _ in range(500):
                    st = (await src.execute("query-migrate"))["status"]
                    if st == "postcopy-paused":
                        break
                    await asyncio.sleep(0.01)
                await src.execute("migrate", {"uri": f"tcp:127.0.0.1:{rport}", "resume": True})
                await events_until(dst, events, is_status("postcopy-active", "failed"))
            await events_until(dst, events, is_status("completed", "failed"))
        # Let trailing events (RESUME) arrive.
        await asyncio.sleep(0.5)
        while True:
            try:
                events.append(await asyncio.wait_for(dst.events.get(), 0.2))
            except asyncio.TimeoutError:
                break
        await t.run("query-status", keep=True)
        await t.run("query-migrate")
        await t.run("human-monitor-command", {"command-line": "info status"}, keep=True)
        if mode == "precopy":
            await t.run("cont")
            await events_until(dst, events, lambda ev: ev["event"] == "RESUME")
            await t.run("query-status", keep=True)
        await t.run("stop")
        await events_until(dst, events, lambda ev: ev["event"] == "STOP")
        await t.run("query-status", keep=True)

        out = {
            "commands": t.lines,
            "events": [
                {"event": e["event"],
                 "data": e["data"] if e["event"] == "MIGRATION" else shape(e.get("data"))}
                for e in events
            ],
        }
        print(json.dumps(out, indent=1, sort_keys=True))
        for c in (src, dst):
            await c.execute("quit")
            try:
                await c.disconnect()
            except EOFError:
                pass  # the process closed the socket as it exited
    finally:
        for p in procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


asyncio.run(main())
