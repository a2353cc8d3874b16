"""A TCP proxy between one local machine's fleetd and etcd, to cut that machine off.

`python -m fleetd.localcluster.proxy LISTEN_PORT TARGET_HOST:PORT` forwards connections;
SIGUSR1 cuts the machine off (drops every connection, refuses new ones), SIGUSR2 heals it.
The machine and its units keep running meanwhile: a network partition, not a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys


class PartitionProxy:
    def __init__(self, listen_port: int, target_host: str, target_port: int) -> None:
        self.listen_port = listen_port
        self.target = (target_host, target_port)
        self.cut = False
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if self.cut:
                    break
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    def partition(self) -> None:
        self.cut = True
        for w in list(self.writers):
            w.close()
        self.writers.clear()

    def heal(self) -> None:
        self.cut = False

    async def serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.partition)
        loop.add_signal_handler(signal.SIGUSR2, self.heal)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            print("ready", flush=True)
            await stop.wait()


def main() -> None:
    host, _, port = sys.argv[2].rpartition(":")
    asyncio.run(PartitionProxy(int(sys.argv[1]), host, int(port)).serve())


if __name__ == "__main__":
    main()
