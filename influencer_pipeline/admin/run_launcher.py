"""The local instance's run launcher: run workers forked from a process that has already loaded the code location.

Dagster's `DefaultRunLauncher` asks the code server to start each run, and the code server starts a fresh
interpreter that imports dagster and the code location again before the run can begin: seconds per launch on a
small machine, longer than a short job itself. `PreloadedRunLauncher` keeps, per code location, one *worker
server*: a single-threaded process that imported the location once (and built its definitions) and then only
forks. Each run worker is a fork of it that runs `dagster api execute_run`, the same command every Dagster
launcher's run worker runs (https://docs.dagster.io/deployment/execution/run-launchers), with nothing left to
import.

How it behaves:
- The first launch starts a worker server for every code location in the workspace, in the background; until a
  location's server has loaded, its runs are launched exactly as `DefaultRunLauncher` does (through the code
  server), so a launch never waits for a server and a server that cannot load changes nothing.
- A location's server is replaced when the code server's id changes (a reload in the UI, a restarted
  `dagster dev`), so runs use the code the code location has loaded, as the run's snapshot expects.
- The run worker's pid, host and process start time go into the run's `influencer_pipeline/run_worker` tag.
  `terminate` sends it SIGTERM, which `dagster api execute_run` turns into an interruption: its executor stops
  the step processes and the run ends CANCELED. `check_run_worker_health` lets run monitoring
  (https://docs.dagster.io/deployment/execution/run-monitoring) fail a run whose worker died.

Tradeoffs (docs/DEPLOYMENT.md): one extra process per code location, holding the imported code (no model: heavy
libraries are imported inside the steps that use them, so a fork shares no CUDA context); the worker server keeps
the environment variables of the process that started it (the daemon), as a code server does; code edited on disk
without a reload is not seen until the next reload. Run workers and the daemon must share a host: for containers
or Kubernetes use their launchers (resources/k8s/dagster.k8s.yaml).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.origin import RepositoryPythonOrigin
from dagster._serdes import ConfigurableClassData, deserialize_value, serialize_value

WORKER_TAG = "influencer_pipeline/run_worker"
READY = "ready"
FORK_REPLY_TIMEOUT_S = 30.0  # a fork answers in milliseconds; no answer means the server is broken
RETRY_FAILED_AFTER_S = 60.0  # a server that failed (import error, killed) is started again after this, or on reload


@dataclass(frozen=True)
class RunWorker:
    """Which process runs a run: pid, host, and the pid's start time, so a reused pid is not mistaken for it."""

    pid: int
    host: str
    started: str | None

    def tag(self) -> str:
        return json.dumps({"pid": self.pid, "host": self.host, "started": self.started})

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> RunWorker | None:
        raw = tags.get(WORKER_TAG)
        if not raw:
            return None
        value = json.loads(raw)
        return cls(int(value["pid"]), str(value["host"]), value.get("started"))

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """The same process (same pid and start time) still runs here and has not exited (a zombie has)."""
        state, started = process_state(self.pid)
        return state is not None and state != "Z" and (self.started is None or started == self.started)


def process_state(pid: int) -> tuple[str | None, str | None]:
    """(state letter, start time in clock ticks since boot) of a process, from /proc (proc(5)); (None, None) if gone.

    Without /proc (not Linux) only whether the pid exists is known.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
        return fields[0], fields[19]  # field 3 is the state, field 22 the start time
    except FileNotFoundError:
        return None, None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None, None
        except PermissionError:
            pass
        return "?", None


class WorkerServer:
    """One worker server process for one repository origin, seen from the launcher: start, readiness, fork, stop."""

    def __init__(self, origin: RepositoryPythonOrigin, instance_ref: Any) -> None:
        self.origin = origin
        reply_r, reply_w = os.pipe()
        command = [origin.executable_path or sys.executable, "-m", __name__, str(reply_w)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=(reply_w,), text=True)
        os.close(reply_w)
        self._replies = reply_r
        self._buffer = b""
        self._lock = threading.Lock()
        self.ready = False
        self.failed_at: float | None = None  # time.monotonic() when it failed
        assert self.process.stdin is not None
        self.process.stdin.write(serialize_value(origin) + "\n" + serialize_value(instance_ref) + "\n")
        self.process.stdin.flush()

    def _line(self, timeout: float) -> str | None:
        """The server's next reply line, or None if none came in `timeout` seconds; EOF raises EOFError."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = max(deadline - time.monotonic(), 0)
            if not select.select([self._replies], [], [], remaining)[0]:
                return None
            chunk = os.read(self._replies, 4096)
            if not chunk:
                raise EOFError("the worker server exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def poll_ready(self) -> bool:
        """Whether the server has loaded the code; never blocks."""
        with self._lock:
            if not self.ready and self.failed_at is None:
                try:
                    line = self._line(0)
                except EOFError:
                    line = None
                    self.fail()
                self.ready = line == READY
            if self.ready and self.process.poll() is not None:  # killed since
                self.fail()
            return self.ready and self.failed_at is None

    def fork(self, execute_run_args: str) -> int:
        """Ask the server to fork a run worker for these `ExecuteRunArgs`; its pid."""
        with self._lock:
            assert self.process.stdin is not None
            self.process.stdin.write(execute_run_args + "\n")
            self.process.stdin.flush()
            line = self._line(FORK_REPLY_TIMEOUT_S)
            if line is None:
                raise TimeoutError(f"the worker server (pid {self.process.pid}) did not answer a fork request")
            return int(line)

    def fail(self) -> None:
        self.failed_at = self.failed_at or time.monotonic()

    def retry_due(self) -> bool:
        return self.failed_at is not None and time.monotonic() - self.failed_at > RETRY_FAILED_AFTER_S

    def stop(self) -> None:
        """Closing its stdin ends the server; run workers it forked run on to their end."""
        self.fail()
        with suppress(OSError):  # already gone: its pipe is broken
            self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._replies)


class PreloadedRunLauncher(dg.DefaultRunLauncher):
    """`DefaultRunLauncher` whose runs, once a location's worker server has loaded, are forked from it."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(inst_data=inst_data)
        self._servers: dict[str, tuple[str | None, WorkerServer]] = {}  # origin -> (code server id, server)
        self._servers_lock = threading.Lock()

    # --- launching ---------------------------------------------------------------------------------------------

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        server = self._ready_server(context)
        if server is None:
            super().launch_run(context)  # through the code server, as Dagster does by default
            return
        from dagster._grpc.types import ExecuteRunArgs

        args = ExecuteRunArgs(job_origin=run.job_code_origin, run_id=run.run_id, instance_ref=self._instance.get_ref())
        try:
            pid = server.fork(serialize_value(args))
        except (OSError, TimeoutError, EOFError, ValueError) as err:
            # The request may have reached the server: launching again could run the run twice.
            server.fail()
            raise DagsterLaunchFailedError(f"worker server for {run.job_name} failed while forking: {err}") from err
        worker = RunWorker(pid, socket.gethostname(), process_state(pid)[1])
        self._instance.add_run_tags(run.run_id, {WORKER_TAG: worker.tag()})

    def _ready_server(self, context: LaunchRunContext) -> WorkerServer | None:
        """This run's location's worker server if it has loaded; first (re)starts the servers the workspace lacks."""
        run = context.dagster_run
        if context.workspace is None or run.job_code_origin is None:
            return None
        wanted = self._origins(context.workspace)
        with self._servers_lock:
            for key in [key for key in self._servers if key not in wanted]:  # location removed from the workspace
                self._servers.pop(key)[1].stop()
            for key, (server_id, origin) in wanted.items():
                current = self._servers.get(key)
                if current is None or current[0] != server_id or current[1].retry_due():  # new, reloaded, broken
                    if current is not None:
                        current[1].stop()
                    self._servers[key] = (server_id, WorkerServer(origin, self._instance.get_ref()))
            entry = self._servers.get(serialize_value(run.job_code_origin.repository_origin))
        return entry[1] if entry is not None and entry[1].poll_ready() else None

    @staticmethod
    def _origins(workspace: Any) -> dict[str, tuple[str | None, RepositoryPythonOrigin]]:
        """Every repository of every loaded code location that runs on this host: origin -> (code server id, it)."""
        from dagster._core.remote_representation.code_location import GrpcServerCodeLocation

        origins = {}
        for entry in workspace.get_code_location_entries().values():
            location = entry.code_location
            if not isinstance(location, GrpcServerCodeLocation):
                continue
            for repository in location.get_repositories().values():
                origin = repository.get_python_origin()
                if origin.container_image is None:
                    origins[serialize_value(origin)] = (location.server_id, origin)
        return origins

    def dispose(self) -> None:
        with self._servers_lock:
            for _, server in self._servers.values():
                server.stop()
            self._servers.clear()
        super().dispose()

    # --- terminating and monitoring ------------------------------------------------------------------------------

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id) if self.has_instance else None
        worker = RunWorker.from_tags(run.tags) if run else None
        if run is None or worker is None:
            return super().terminate(run_id)  # launched through the code server
        if run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        if not worker.local or not worker.alive():
            where = f"pid {worker.pid} on {worker.host}"
            self._instance.report_engine_event(
                f"Run worker ({where}) is not a running process on this host: nothing to terminate.", run
            )
            return False
        os.kill(worker.pid, signal.SIGTERM)  # `dagster api execute_run` maps SIGTERM to an interruption
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        worker = RunWorker.from_tags(run.tags)
        if worker is None:
            # Launched through the code server, whose worker this launcher cannot see (DefaultRunLauncher does not
            # check it either): run monitoring keeps its start and cancel timeouts for it.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker started by the code server: not checked")
        if not worker.local:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"run worker runs on {worker.host}, not this host")
        if worker.alive():
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND, f"run worker (pid {worker.pid}) is no longer running")


# --- the worker server process -------------------------------------------------------------------------------------


def serve(reply_fd: int) -> None:
    """Load the code location named on stdin, say READY, then fork one run worker per `ExecuteRunArgs` line.

    Single-threaded on purpose: forking a process with threads can copy a lock another thread holds
    (https://docs.python.org/3/library/os.html#os.fork).
    """
    from dagster._core.instance.ref import InstanceRef
    from dagster._utils.hosted_user_process import recon_repository_from_origin

    replies = os.fdopen(reply_fd, "w", buffering=1)
    origin = deserialize_value(sys.stdin.readline(), RepositoryPythonOrigin)
    instance_ref = deserialize_value(sys.stdin.readline(), InstanceRef)
    recon_repository_from_origin(origin).get_definition()  # imports the code, builds its definitions
    with dg.DagsterInstance.from_ref(instance_ref):  # imports the storage modules; no connection is kept
        pass
    import dagster._cli  # noqa: F401  # the `dagster api execute_run` command the workers run

    if threading.active_count() > 1:  # the launcher then keeps launching through the code server
        names = ", ".join(thread.name for thread in threading.enumerate())
        sys.exit(f"worker server: loading the code location started threads ({names}); forking is unsafe, exiting")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a forked child cannot use a CUDA context it inherits
        sys.exit("worker server: loading the code location initialised CUDA; forking is unsafe, exiting")
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps exited workers (waitpid(2))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of `dagster dev` is for its workers; it ends on stdin's EOF
    replies.write(READY + "\n")
    for line in sys.stdin:  # until the launcher closes the pipe
        pid = os.fork()
        if pid == 0:
            run_worker(line.strip(), reply_fd)
        replies.write(f"{pid}\n")


def run_worker(execute_run_args: str, reply_fd: int) -> None:
    """In the forked child: `dagster api execute_run <args>`, then exit without the server's clean-up."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the worker waits for its own step processes
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.close(reply_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        from dagster._cli import main

        sys.argv = ["dagster", "api", "execute_run", execute_run_args]
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
