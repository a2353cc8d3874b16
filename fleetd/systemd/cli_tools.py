"""systemd's command-line tools for what D-Bus does not offer: `systemctl status` text and the
journal (`journalctl`), run as asyncio subprocesses on this machine for the API to serve.

The only code outside the D-Bus adapter that runs systemd programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

JOURNAL_FORMATS = ("short", "short-iso", "short-iso-precise", "short-precise", "short-monotonic",
                   "short-unix", "short-full", "verbose", "export", "json", "json-pretty",
                   "json-sse", "json-seq", "cat", "with-unit")
STATUS_TIMEOUT_S = 10.0
CHUNK_BYTES = 64 * 1024


class ToolError(Exception):
    """A systemd tool could not be run or was given a bad argument."""


@dataclass(frozen=True)
class SystemdTools:
    """Runs systemctl/journalctl against the manager fleetd drives (system or user)."""

    user: bool = False
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment (bus address)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", **self.env}

    def status_argv(self, unit: str, lines: int = 0) -> list[str]:
        argv = ["systemctl"] + (["--user"] if self.user else [])
        argv += ["status", "--no-pager", "--full"]
        if lines > 0:
            argv += ["--lines", str(lines)]
        return [*argv, "--", unit]

    def journal_argv(self, unit: str, lines: int = 10, output: str = "short",
                     follow: bool = False) -> list[str]:
        if output not in JOURNAL_FORMATS:
            raise ToolError(f"invalid journal output format {output!r}; valid: "
                            + ", ".join(JOURNAL_FORMATS))
        argv = ["journalctl", "--no-pager", "--quiet",
                "--user-unit" if self.user else "--unit", unit]
        argv += ["-n", str(lines if lines > 0 else 10), "-o", output]
        if follow:
            argv.append("-f")
        return argv

    async def status(self, unit: str, lines: int = 0) -> tuple[str, int]:
        """(`systemctl status` output, its exit code)."""
        return await self._run(self.status_argv(unit, lines), f"systemctl status {unit}")

    async def restart(self, unit: str) -> tuple[str, int]:
        """(`systemctl restart` output, its exit code)."""
        argv = ["systemctl"] + (["--user"] if self.user else []) + ["restart", "--", unit]
        return await self._run(argv, f"systemctl restart {unit}")

    async def _run(self, argv: list[str], what: str) -> tuple[str, int]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=self._env())
        except OSError as e:
            raise ToolError(f"cannot run {argv[0]}: {e.strerror}") from None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), STATUS_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ToolError(f"{what} timed out") from None
        return out.decode("utf-8", "replace"), int(proc.returncode or 0)

    async def journal(self, unit: str, lines: int = 10, output: str = "short",
                      follow: bool = False) -> AsyncIterator[bytes]:
        """journalctl's output in chunks; when followed, until the consumer stops iterating."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.journal_argv(unit, lines, output, follow),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self._env())
        except OSError as e:
            raise ToolError(f"cannot run journalctl: {e.strerror}") from None
        assert proc.stdout is not None and proc.stderr is not None
        try:
            while True:
                chunk = await proc.stdout.read(CHUNK_BYTES)
                if not chunk:
                    break
                yield chunk
            err = await proc.stderr.read()
            rc = await proc.wait()
            if rc != 0:
                raise ToolError(f"journalctl failed ({rc}): "
                                + err.decode("utf-8", "replace").strip())
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
