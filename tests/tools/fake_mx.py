"""A scriptable SMTP receiver for relay tests (asyncio; nothing shared with mailstack).

    python fake_mx.py HOST PORT OUTDIR [--tempfail N] [--rcpt-code CODE] [--tls CERT KEY] [--auth USER:PASS]

Accepted messages are written to OUTDIR as <n>.eml with <n>.json (envelope, TLS, AUTH).
--tempfail N answers 451 to the end of the first N messages; --rcpt-code answers every RCPT
with that code (e.g. 550); --tls offers STARTTLS; --auth requires AUTH PLAIN first.
Prints "ready" once listening.
"""

import argparse
import asyncio
import base64
import json
import os
import ssl

p = argparse.ArgumentParser()
p.add_argument("host")
p.add_argument("port", type=int)
p.add_argument("outdir")
p.add_argument("--tempfail", type=int, default=0)
p.add_argument("--rcpt-code", type=int, default=250)
p.add_argument("--tls", nargs=2)
p.add_argument("--auth")
args = p.parse_args()
os.makedirs(args.outdir, exist_ok=True)
state = {"messages": 0, "ends": 0}
tls_context = None
if args.tls:
    tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_context.load_cert_chain(*args.tls)


async def session(reader, writer):
    async def send(line):
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    tls = authed = False
    sender, rcpts = None, []
    await send("220 fake.remote.test ESMTP")
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = line.decode("utf-8", "replace").rstrip("\r\n")
        verb = cmd.split(" ", 1)[0].upper()
        if verb in ("EHLO", "HELO"):
            caps = ["fake.remote.test", "PIPELINING", "8BITMIME"]
            if tls_context and not tls:
                caps.append("STARTTLS")
            if args.auth:
                caps.append("AUTH PLAIN")
            for c in caps[:-1]:
                writer.write(f"250-{c}\r\n".encode())
            await send(f"250 {caps[-1]}")
        elif verb == "STARTTLS" and tls_context and not tls:
            await send("220 go ahead")
            await writer.start_tls(tls_context)
            tls = True
        elif verb == "AUTH" and args.auth:
            parts = base64.b64decode(cmd.split(" ", 2)[2]).split(b"\0")
            if f"{parts[1].decode()}:{parts[2].decode()}" == args.auth:
                authed = True
                await send("235 ok")
            else:
                await send("535 bad credentials")
        elif verb == "MAIL":
            if args.auth and not authed:
                await send("530 auth first")
                continue
            sender, rcpts = cmd.split(":", 1)[1].strip().split(" ")[0].strip("<>"), []
            await send("250 ok")
        elif verb == "RCPT":
            addr = cmd.split(":", 1)[1].strip().strip("<>")
            if args.rcpt_code == 250:
                rcpts.append(addr)
                await send("250 ok")
            else:
                await send(f"{args.rcpt_code} {args.rcpt_code // 100}.1.1 <{addr}> rejected by fake")
        elif verb == "DATA":
            await send("354 go")
            data = b""
            while True:
                chunk = await reader.readline()
                if chunk == b".\r\n":
                    break
                data += chunk[1:] if chunk.startswith(b"..") else chunk
            state["ends"] += 1
            if state["ends"] <= args.tempfail:
                await send("451 4.3.0 try again later (fake)")
                continue
            state["messages"] += 1
            n = state["messages"]
            with open(os.path.join(args.outdir, f"{n}.eml"), "wb") as f:
                f.write(data)
            with open(os.path.join(args.outdir, f"{n}.json"), "w") as f:
                json.dump({"sender": sender, "recipients": rcpts, "tls": tls, "auth": authed}, f)
            await send("250 2.0.0 accepted")
        elif verb == "RSET":
            sender, rcpts = None, []
            await send("250 ok")
        elif verb == "QUIT":
            await send("221 bye")
            writer.close()
            return
        else:
            await send("250 ok")


async def main():
    srv = await asyncio.start_server(session, args.host, args.port)
    print("ready", flush=True)
    async with srv:
        await srv.serve_forever()


asyncio.run(main())
