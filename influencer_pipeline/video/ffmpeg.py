"""The ffmpeg binary that imageio-ffmpeg ships, and running it with errors a person can act on.

Why the PyPI binary and never a system ffmpeg: a user's machine may have none, or one built without libass or
libx264; the wheel's static build (ffmpeg 9 with libass, libx264, fontconfig) is the same on every machine, so a
reel renders and the tests behave identically everywhere. `IMAGEIO_FFMPEG_EXE` still wins when a user sets it,
because that is an explicit choice (imageio-ffmpeg's own documented override).

Failures raise `FFmpegError` with the step that failed, the exit status and the tail of ffmpeg's stderr, which is
where ffmpeg says what went wrong; a bare "exit status 1" helps nobody. Long renders report progress parsed from
`-progress pipe:1` (key=value blocks on stdout) while stderr is drained on a thread, so neither pipe can fill up
and stall ffmpeg.
"""

from __future__ import annotations

import functools
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

STDERR_TAIL_LINES = 25
_REINSTALL = "pip install --force-reinstall 'imageio-ffmpeg~=0.8.1' (the platform wheel ships the binary)"


class FFmpegNotFoundError(RuntimeError):
    """The bundled ffmpeg binary is not installed: the message says how to install it."""


class FFmpegError(RuntimeError):
    """ffmpeg exited non-zero. `stderr` holds its full log; the message holds the step, the tail and the command."""

    def __init__(self, what: str, returncode: int, stderr: str, args: Sequence[str]) -> None:
        self.what = what
        self.returncode = returncode
        self.stderr = stderr
        self.args_list = list(args)
        tail = "\n".join(stderr.strip().splitlines()[-STDERR_TAIL_LINES:]) or "(ffmpeg printed nothing)"
        super().__init__(
            f"ffmpeg failed while {what} (exit status {returncode}).\n"
            f"--- last lines of ffmpeg's output ---\n{tail}\n"
            f"--- command ---\n{_shorten(' '.join(args))}"
        )


def _shorten(text: str, limit: int = 2000) -> str:
    """Commands with long filter graphs would drown the stderr tail; keep both ends."""
    return text if len(text) <= limit else f"{text[: limit // 2]} … {text[-limit // 2 :]}"


@functools.cache
def ffmpeg_exe() -> str:
    """Path of imageio-ffmpeg's bundled binary (or `IMAGEIO_FFMPEG_EXE`); never a system ffmpeg found on PATH."""
    try:
        import imageio_ffmpeg
    except ImportError as error:
        raise FFmpegNotFoundError(f"imageio-ffmpeg is not installed. Fix: {_REINSTALL}") from error
    override = os.environ.get("IMAGEIO_FFMPEG_EXE")
    if override:
        return override
    try:
        exe = Path(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as error:
        raise FFmpegNotFoundError(f"imageio-ffmpeg has no ffmpeg binary. Fix: {_REINSTALL}") from error
    bundled = (Path(imageio_ffmpeg.__file__).parent / "binaries").resolve()
    if not exe.resolve().is_relative_to(bundled):
        raise FFmpegNotFoundError(
            f"imageio-ffmpeg's own binary is missing (it fell back to {exe}, which may lack libass or libx264). "
            f"Fix: {_REINSTALL}"
        )
    return str(exe)


def run(
    args: Sequence[str],
    *,
    what: str,
    progress: Callable[[str], None] | None = None,
    duration_s: float | None = None,
) -> str:
    """Run ffmpeg with `args` (everything after the binary) and return its stderr log.

    `what` names the step for the error message ("encoding the reel"). With `progress` and `duration_s`, the
    callback gets a line at every tenth of the way, parsed from `-progress pipe:1`.
    """
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y"]
    if progress is not None and duration_s:
        command += ["-progress", "pipe:1", "-nostats"]
    command += list(args)
    try:
        if progress is not None and duration_s:
            returncode, stderr = _run_with_progress(command, ProgressParser(what, duration_s, progress))
        else:
            completed = subprocess.run(command, capture_output=True, check=False)
            returncode, stderr = completed.returncode, completed.stderr.decode("utf-8", "replace")
    except OSError as error:  # e.g. the binary lost its exec bit
        raise FFmpegNotFoundError(f"cannot start {command[0]}: {error}. Fix: {_REINSTALL}") from error
    if returncode != 0:
        raise FFmpegError(what, returncode, stderr, command)
    return stderr


def _run_with_progress(command: list[str], parser: ProgressParser) -> tuple[int, str]:
    """Stream stdout into the parser while a thread collects stderr (both pipes drained, so none blocks)."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.extend(process.stderr), daemon=True)
        reader.start()
        for raw in process.stdout:
            parser.feed(raw.decode("utf-8", "replace"))
        returncode = process.wait()
        reader.join()
    return returncode, b"".join(chunks).decode("utf-8", "replace")


class ProgressParser:
    """Turns ffmpeg's `-progress` key=value blocks into a few human lines ("encoding the reel: 40% (6.0/15.0 s)").

    ffmpeg writes a block about twice a second; reporting every block would flood a Dagster log, so a line is
    emitted only when another `step` of the work is done, and once at the end.
    """

    def __init__(self, what: str, duration_s: float, report: Callable[[str], None], step: float = 0.1) -> None:
        self.what = what
        self.duration_s = duration_s
        self.report = report
        self.step = step
        self._block: dict[str, str] = {}
        self._reported = 0.0

    def feed(self, line: str) -> None:
        key, _, value = line.strip().partition("=")
        if not key:
            return
        self._block[key] = value.strip()
        if key == "progress":
            self._emit(self._block, finished=value.strip() == "end")
            self._block = {}

    def _emit(self, block: dict[str, str], finished: bool) -> None:
        done_s = _out_time_s(block)
        if done_s is None:
            return
        fraction = 1.0 if finished else min(done_s / self.duration_s, 1.0)
        if not finished and fraction < self._reported + self.step:
            return
        self._reported = fraction
        speed = block.get("speed", "").strip()
        speed_text = f", speed {speed}" if speed and speed != "N/A" else ""
        self.report(
            f"{self.what}: {fraction:.0%} ({min(done_s, self.duration_s):.1f}/{self.duration_s:.1f} s{speed_text})"
        )


def _out_time_s(block: dict[str, str]) -> float | None:
    """Seconds encoded so far. `out_time_ms` is, despite its name, microseconds (as is `out_time_us`)."""
    for key in ("out_time_us", "out_time_ms"):
        value = block.get(key, "")
        if value.lstrip("-").isdigit():
            return max(int(value), 0) / 1e6
    return None
