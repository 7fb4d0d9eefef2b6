#!/usr/bin/env python3
"""A TLS terminator on loopback, with ALPN, in front of a plaintext port.

    tls_proxy.py --cert C --key K --target PORT [--client-ca CA] [--alpn h2,http/1.1]

Prints `ready port=N` once listening. Each TLS connection is forwarded
byte for byte to 127.0.0.1:PORT. socat (tests/support/tls.rs) cannot
negotiate ALPN, which gRPC over TLS needs (`h2`); this one can. With
--client-ca, a client without a certificate that CA signed is refused in
the handshake. Used by tests/http_tls.rs and scripts/bench-sinks-http.
"""
import argparse
import asyncio
import ssl
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--target", type=int, required=True)
    ap.add_argument("--client-ca")
    ap.add_argument("--alpn", default="")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    if a.client_ca:
        ctx.load_verify_locations(a.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if a.alpn:
        ctx.set_alpn_protocols(a.alpn.split(","))

    async def handle(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", a.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", a.port, ssl=ctx, backlog=256)
    port = server.sockets[0].getsockname()[1]
    print(f"ready port={port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
