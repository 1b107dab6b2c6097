#!/usr/bin/env python3
"""Transport floor probe (driven by loadtest/transport-floor.sh): paced HTTP/1.1 keep-alive
requests against one server process on loopback, and that process's CPU per request.

Every connection sends one request at a time on a fixed schedule (the rate spread evenly over
the connections, as a load balancer's upstream connections carry an instance's share), reads
the whole answer, and counts it. The server's user and system CPU (/proc/PID/stat) is read
after a one-second settling period and at the end; the result is one JSON line on stdout.
Standard library only.
"""

import argparse
import asyncio
import json
import os
import sys
import time


def cpu_seconds(pid):
    """(user, system) CPU seconds of PID."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def read_answer(reader):
    """Reads one answer (headers and a Content-Length body); returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def run(args):
    if args.method == "POST":
        request = (
            f"POST {args.path} HTTP/1.1\r\nHost: probe\r\n"
            f"Content-Type: {args.content_type}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    else:
        request = f"GET {args.path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode()
    counts = {"done": 0, "statuses": {}}
    start = time.monotonic() + 1.0
    end = start + args.seconds
    period = args.connections / args.rate

    async def connection(i):
        reader, writer = await asyncio.open_connection(args.host, args.port)
        due = start + i * period / args.connections
        try:
            while due < end:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write(request)
                await writer.drain()
                status = await read_answer(reader)
                counts["statuses"][status] = counts["statuses"].get(status, 0) + 1
                counts["done"] += 1
                due += period
        finally:
            writer.close()

    first = {}

    async def settle():
        await asyncio.sleep(max(0.0, start - time.monotonic()) + 1.0)
        first["cpu"], first["done"], first["at"] = cpu_seconds(args.pid), counts["done"], time.monotonic()

    settler = asyncio.create_task(settle())
    await asyncio.gather(*(connection(i) for i in range(args.connections)))
    await settler
    user1, sys1 = cpu_seconds(args.pid)
    elapsed = time.monotonic() - first["at"]
    n = counts["done"] - first["done"]
    user, system = user1 - first["cpu"][0], sys1 - first["cpu"][1]
    return {
        "requests": n,
        "seconds": round(elapsed, 3),
        "rate": round(n / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(counts["statuses"].items())},
        "cpu_user_s": round(user, 3),
        "cpu_sys_s": round(system, 3),
        "us_per_request": round(1e6 * (user + system) / n, 1),
        "user_us_per_request": round(1e6 * user / n, 1),
        "sys_us_per_request": round(1e6 * system / n, 1),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--method", choices=["GET", "POST"], default="GET")
    p.add_argument("--content-type", default="application/x-protobuf")
    p.add_argument("--rate", type=float, required=True, help="requests per second, all connections")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds (<= 600)")
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--pid", type=int, required=True, help="the server process to measure")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost") and not args.host.startswith("127."):
        sys.exit("loopback targets only")
    if not 0 < args.seconds <= 600 or not 0 < args.rate <= 100_000 or not 0 < args.connections <= 5_000:
        sys.exit("--seconds (0, 600], --rate (0, 100000], --connections (0, 5000]")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
