"""A minimal SMTP sink for the campaign benchmark: accepts every mail, counts mails per
recipient, and on SIGTERM prints {"mails", "distinct", "duplicates", "cpu"} as JSON (cpu:
the sink's own CPU seconds, so a benchmark can tell how much of the machine it took).

aiosmtpd (the tests' sink) spends ~4 ms per mail; this one answers the few commands
Django's SMTP backend and smtplib send, so the sink is not what the benchmark measures.

    python bench/campaign_sink.py PORT
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sys
from collections import Counter

counts: Counter[bytes] = Counter()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 sink ESMTP\r\n")
    recipients: list[bytes] = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            command = line[:4].upper()
            if command == b"EHLO":
                writer.write(b"250-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 100000000\r\n")
            elif command in (b"MAIL", b"RSET"):
                recipients = []
                writer.write(b"250 OK\r\n")
            elif command == b"RCPT":
                recipients.append(line[8:].strip().strip(b"<>").lower())
                writer.write(b"250 OK\r\n")
            elif command == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await reader.readuntil(b"\r\n.\r\n")
                counts.update(recipients)
                recipients = []
                writer.write(b"250 OK queued\r\n")
            elif command == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 OK\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 22)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    mails = sum(counts.values())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "mails": mails,
                "distinct": len(counts),
                "duplicates": sum(1 for c in counts.values() if c > 1),
                "cpu": usage.ru_utime + usage.ru_stime,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
