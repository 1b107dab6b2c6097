#!/usr/bin/env python3
"""Idle WebSocket memory probe for opampd (driven by loadtest/ws-idle-memory.sh).

Standard library only: raw sockets speak HTTP/1.1 and WebSocket (RFC 6455), and the few
AgentToServer messages are encoded by hand. Against one running opampd (loopback only) it
measures the server's resident memory (/proc/PID/smaps_rollup) around these phases (--phases):

  bare        N WebSocket sessions, each exchanging one message the server answers without
              the store (an in-band BadRequest), then idle: the transport alone
  agents      N agents stored over HTTP POST (full status each): per-agent cost (store, cache)
  conn_alone  N WebSocket sessions, each sending one heartbeat of an agent stored above, then
              idle: per-connection cost with the agent already known and cached
  conn_agent  N more sessions, each sending the full status of a new agent, then idle: per
              connection together with its agent

after a warm-up (sessions opened, used and closed; HTTP posts) so one-time allocations (thread
heaps, lazy statics, the cache's structures) are not counted. Each phase runs in --rounds parts
and memory is read SETTLE seconds after each: `<phase>_kib` is the whole phase's growth over N,
`<phase>_marginal_kib` the growth after its first part over the rest (the first part also pays
the transient memory the phase's work needs, which the allocator keeps). Prints one JSON object
on stdout; progress on stderr.
"""

import argparse
import asyncio
import base64
import json
import os
import resource
import struct
import sys
import time

ACCEPTS_STATUS = 0x1

# AgentCapabilities: ReportsStatus | ReportsEffectiveConfig | ReportsHealth
CAPS = 0x1 | 0x4 | 0x800


def log(msg):
    print(f"[ws-probe {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- protobuf, by hand (only what the probe sends and reads) ----

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, n):
    return varint(num << 3) + varint(n)


def kv(key, value):
    any_value = field_bytes(1, value.encode())
    return field_bytes(1, key.encode()) + field_bytes(2, any_value)


def uid(space, i):
    """A UUIDv7-shaped, unique, non-zero 16-byte instance uid."""
    b = bytearray(struct.pack(">IIQ", 0x0190_0000 | space, i, 0x1234_5678_9ABC_DEF0 ^ i))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return bytes(b)


def heartbeat(instance_uid, seq):
    return field_bytes(1, instance_uid) + field_varint(2, seq) + field_varint(4, CAPS)


def full_status(instance_uid, seq, index):
    """About what the load generator's agents send first (description, health, a small config)."""
    host = f"probe-host-{index % 1000:04d}"
    desc = (
        field_bytes(1, kv("service.name", "probe-collector"))
        + field_bytes(1, kv("service.instance.id", instance_uid.hex()))
        + field_bytes(1, kv("service.version", "0.110.0"))
        + field_bytes(2, kv("host.name", host))
        + field_bytes(2, kv("os.type", "linux"))
        + field_bytes(2, kv("host.arch", "amd64"))
    )
    now = time.time_ns()
    health = (
        field_varint(1, 1)
        + varint(2 << 3 | 1) + struct.pack("<Q", now)
        + field_bytes(4, b"StatusOK")
        + varint(5 << 3 | 1) + struct.pack("<Q", now)
    )
    config = (
        "receivers:\n  otlp:\n    protocols:\n      grpc: {}\nexporters:\n  debug: {}\n"
        f"service:\n  telemetry:\n    resource:\n      host: {host}\n  pipelines:\n    traces:\n"
        "      receivers: [otlp]\n      exporters: [debug]\n"
    ).encode()
    config_file = field_bytes(1, config) + field_bytes(2, b"text/yaml")
    entry = field_bytes(1, b"") + field_bytes(2, config_file)
    effective = field_bytes(1, field_bytes(1, entry))
    return heartbeat(instance_uid, seq) + field_bytes(3, desc) + field_bytes(5, health) + field_bytes(6, effective)


def reply_fields(data):
    """(instance_uid, capabilities, has error_response) of a ServerToAgent."""
    pos, out_uid, caps, error = 0, b"", 0, False

    def read_varint():
        nonlocal pos
        shift = n = 0
        while True:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while pos < len(data):
        key = read_varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            v = read_varint()
            if num == 7:
                caps = v
        elif wire == 2:
            n = read_varint()
            v = data[pos:pos + n]
            pos += n
            if num == 1:
                out_uid = bytes(v)
            elif num == 2:
                error = True
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out_uid, caps, error


def check_reply(payload, want_uid):
    """A reply to `want_uid`; a uid of the wrong length must get an error_response."""
    got_uid, caps, error = reply_fields(payload)
    if len(want_uid) != 16:
        if not error or got_uid != want_uid:
            raise RuntimeError("expected an error_response")
        return
    if error:
        raise RuntimeError("server answered with an error_response")
    if got_uid != want_uid or not caps & ACCEPTS_STATUS:
        raise RuntimeError("unexpected reply")


# ---- WebSocket over asyncio streams ----

async def ws_open(host, port):
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/opamp HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        raise RuntimeError(f"upgrade refused: {status}")
    return reader, writer


def ws_frame(payload):
    """A masked binary client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x82, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x82, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


async def ws_read_binary(reader):
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await reader.readexactly(8))
        payload = await reader.readexactly(n)
        opcode = b0 & 0x0F
        if opcode == 0x2:
            return payload
        if opcode == 0x8:
            raise RuntimeError(f"server closed the session: {payload[:2].hex()} {payload[2:]!r}")
        # ping/pong: ignore (the server sends none)


async def ws_exchange(reader, writer, message, want_uid, timeout):
    writer.write(ws_frame(b"\x00" + message))
    await writer.drain()
    payload = await asyncio.wait_for(ws_read_binary(reader), timeout)
    if not payload or payload[0] != 0:
        raise RuntimeError("reply without the 0x00 frame header")
    check_reply(payload[1:], want_uid)


async def ws_close(writer):
    try:
        mask = os.urandom(4)
        body = struct.pack(">H", 1000)
        writer.write(bytes([0x88, 0x80 | len(body)]) + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(body)))
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    writer.close()


async def open_sessions(host, port, messages, parallel, timeout):
    """Opens one session per (message, uid), exchanges it, keeps the session; returns them."""
    sessions = [None] * len(messages)
    sem = asyncio.Semaphore(parallel)

    async def one(i, message, want_uid):
        async with sem:
            reader, writer = await asyncio.wait_for(ws_open(host, port), timeout)
            await ws_exchange(reader, writer, message, want_uid, timeout)
            sessions[i] = (reader, writer)

    await asyncio.gather(*(one(i, m, u) for i, (m, u) in enumerate(messages)))
    return sessions


# ---- HTTP POST ----

async def http_post_all(host, port, messages, connections, timeout):
    queue = list(enumerate(messages))
    queue.reverse()

    async def worker():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                _, (body, want_uid) = queue.pop()
                writer.write(
                    (
                        f"POST /v1/opamp HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"Content-Type: application/x-protobuf\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode()
                    + body
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                status = head.split(b"\r\n", 1)[0]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                payload = await reader.readexactly(length)
                if b" 200 " not in status + b" ":
                    raise RuntimeError(f"POST answered {status.decode(errors='replace')}")
                check_reply(payload, want_uid)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))


# ---- server memory ----

def memory(pid):
    """smaps_rollup fields of the server in KiB (Rss, Anonymous, ...)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def memory_status(pid):
    """VmRSS, VmHWM, ... of /proc/PID/status in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def sessions_open(admin):
    """opampd_ws_sessions from /metrics (None when unreadable)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("opampd_ws_sessions"):
                    return int(float(line.split()[-1]))
    except OSError:
        return None
    return None


async def snapshot(args, name, settle):
    await asyncio.sleep(settle)
    mem = memory(args.pid)
    mem["ws_sessions"] = sessions_open(args.admin)
    log(f"{name}: Rss {mem.get('Rss')} KiB, Anonymous {mem.get('Anonymous')} KiB, ws sessions {mem['ws_sessions']}")
    return mem


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pid", type=int, required=True, help="opampd's pid (memory is read from /proc)")
    p.add_argument("--target", default="127.0.0.1:4350", help="host:port of the OpAMP listener")
    p.add_argument("--admin", default="127.0.0.1:4351", help="host:port of the admin listener")
    p.add_argument("--connections", type=int, default=10000, help="N, per phase")
    p.add_argument("--warmup", type=int, default=500, help="sessions (and posts) of the warm-up")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to wait before each reading")
    p.add_argument("--parallel", type=int, default=200, help="handshakes in flight at once")
    p.add_argument("--timeout", type=float, default=30.0, help="per handshake / message")
    p.add_argument(
        "--phases", default="agents,conn_alone,conn_agent",
        help="comma-separated, in order: bare, agents, conn_alone (needs agents), conn_agent",
    )
    p.add_argument("--rounds", type=int, default=4, help="parts each phase is run in, memory read after each")
    p.add_argument("--space", type=int, default=0, help="uid space (distinct runs on one store)")
    args = p.parse_args()
    host, port = args.target.rsplit(":", 1)
    port = int(port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("ws_idle_probe: loopback targets only")
    phases = args.phases.split(",")
    unknown = set(phases) - {"bare", "agents", "conn_alone", "conn_agent"}
    if unknown or "conn_alone" in phases and "agents" not in phases:
        sys.exit(f"ws_idle_probe: bad --phases {args.phases}")
    want = len({"bare", "conn_alone", "conn_agent"} & set(phases)) * args.connections + args.warmup + 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    n, space = args.connections, args.space << 8
    warm_uids = [uid(space | 1, i) for i in range(args.warmup)]
    a_uids = [uid(space | 2, i) for i in range(n)]
    b_uids = [uid(space | 3, i) for i in range(n)]

    log(f"warm-up: {args.warmup} posts, {args.warmup} sessions opened, used and closed")
    await http_post_all(host, port, [(full_status(u, 0, i), u) for i, u in enumerate(warm_uids)], 32, args.timeout)
    warm = await open_sessions(host, port, [(heartbeat(u, 1), u) for u in warm_uids], args.parallel, args.timeout)
    for _, writer in warm:
        await ws_close(writer)
    del warm
    readings = {"baseline": await snapshot(args, "baseline", args.settle * 2)}
    kept = []

    async def phase(name, what, items, run):
        """Runs `run` on `items` in --rounds equal parts, reading memory after each."""
        started = time.monotonic()
        size = -(-len(items) // args.rounds)
        rounds = []
        for r in range(args.rounds):
            part = items[r * size:(r + 1) * size]
            if part:
                await run(part)
                rounds.append(await snapshot(args, f"{name} {r + 1}/{args.rounds}", args.settle))
        log(f"{name}: {len(items)} {what} in {time.monotonic() - started:.1f} s")
        readings[name] = rounds

    async def post(part):
        await http_post_all(host, port, part, 64, args.timeout)

    async def sessions(part):
        kept.extend(await open_sessions(host, port, part, args.parallel, args.timeout))

    work = {
        # one message each, answered in-band (BadRequest: a 3-byte instance_uid) without the store
        "bare": ("sessions, one store-less exchange each", [(heartbeat(struct.pack(">I", i)[1:], 1), struct.pack(">I", i)[1:]) for i in range(n)], sessions),
        "agents": ("agents stored over HTTP", [(full_status(u, 0, i), u) for i, u in enumerate(a_uids)], post),
        "conn_alone": ("sessions of known agents", [(heartbeat(u, 1), u) for u in a_uids], sessions),
        "conn_agent": ("sessions of new agents", [(full_status(u, 0, i), u) for i, u in enumerate(b_uids)], sessions),
    }
    for name in phases:
        what, items, run = work[name]
        await phase(name, what, items, run)
    hwm = memory_status(args.pid)
    for _, writer in kept:
        writer.close()

    result = {"connections": n, "rounds": args.rounds, "VmHWM_kib": hwm.get("VmHWM")}
    before, previous = {}, readings["baseline"]
    for name in phases:
        before[name], previous = previous, readings[name][-1]
    first = n // args.rounds if n >= args.rounds else n
    for field in ("Rss", "Anonymous"):
        out = {}
        for name in phases:
            rounds = readings[name]
            # overall: the whole phase over N; marginal: after its first round, over the rest
            # (the first round also pays whatever transient memory the phase's work needs)
            out[f"{name}_kib"] = round((rounds[-1][field] - before[name][field]) / n, 2)
            if len(rounds) > 1 and n > first:
                out[f"{name}_marginal_kib"] = round((rounds[-1][field] - rounds[0][field]) / (n - first), 2)
        result[field] = out
    result["readings_kib"] = readings
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
