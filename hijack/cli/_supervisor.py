"""``--workers N``: one supervisor process, N worker processes, one socket.

The supervisor binds (or inherits from systemd) the listening sockets and
starts N copies of the same command with the sockets passed as fds
(``HIJACK_WORKER_FDS``). Every worker accepts on the same kernel socket.

Why one inherited socket and not ``SO_REUSEPORT`` (measured with
``bench/workers_spread.py``, see the README "Deploying" section): both spread
fresh connections evenly enough over 2 workers, but with ``SO_REUSEPORT``
each worker owns an accept queue, and a retiring worker that closes its
socket resets every connection still queued there, so a rolling restart
refuses connections. With one shared socket the queue outlives every worker:
the supervisor holds it open, a new worker accepts from it before the old
one stops, and nothing queued is lost. It is also what systemd hands over.

Signals (to the supervisor; workers run in their own session, so a Ctrl-C
in a terminal reaches the supervisor only):

- SIGTERM / SIGINT: ``STOPPING=1``, readiness off, SIGTERM to every worker
  (each drains within its grace), SIGKILL to any still there after the grace
  plus a margin. A second signal kills them at once.
- SIGHUP: replace the workers one by one: start a new one, wait until it
  serves, then SIGTERM the old one, which drains in the background. The new
  worker re-reads the command line and ``--config`` file: policy, users and
  certificates are reloaded that way.
- A worker that exits by itself is restarted (after a 1 s pause if it lived
  less than a second, so a crash loop does not spin).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from .._systemd import notify
from ._command import StartupError

__all__ = [
    "WORKER_FDS_ENV",
    "WORKER_READY_ENV",
    "Supervisor",
    "WorkerStartError",
    "signal_ready",
    "worker_command",
]

logger = logging.getLogger("hijack.supervisor")

WORKER_FDS_ENV = "HIJACK_WORKER_FDS"
WORKER_READY_ENV = "HIJACK_WORKER_READY_FD"
WORKER_LIFELINE_ENV = "HIJACK_WORKER_LIFELINE_FD"
#: How long a new worker may take to import, build its handler and serve.
START_TIMEOUT = 30.0
#: Past the workers' own grace, before SIGKILL.
KILL_MARGIN = 2.0
#: A worker that lived less than this is crash-looping: pause before restart.
MIN_UPTIME = 1.0


async def watch_lifeline() -> None:
    """In a worker: when the supervisor is gone (killed, even by SIGKILL),
    the lifeline pipe reads EOF; drain and exit as on SIGTERM rather than
    serve on unsupervised."""
    fd_text = os.environ.pop(WORKER_LIFELINE_ENV, "")
    if not fd_text:
        return
    async with trio.lowlevel.FdStream(int(fd_text)) as lifeline:
        while await lifeline.receive_some(1):
            pass
    logger.warning("the supervisor is gone: shutting down")
    os.kill(os.getpid(), signal.SIGTERM)


def signal_ready() -> None:
    """In a worker: tell the supervisor this worker serves now."""
    fd_text = os.environ.pop(WORKER_READY_ENV, "")
    if fd_text:
        try:
            os.write(int(fd_text), b"1")
        finally:
            os.close(int(fd_text))


class WorkerStartError(StartupError):
    """A worker exited or hung before it served."""


@dataclass(eq=False)
class _Worker:
    process: trio.Process
    started: float
    retiring: bool = False
    exited: trio.Event = field(default_factory=trio.Event)


class Supervisor:
    """Runs and watches ``count`` workers serving ``listen_fds``.

    ``command`` is the argv that starts one worker (the same ``hijack``
    command line). ``on_readiness(ready)`` is told when the service becomes
    ready (all workers serve) and when it stops being ready (shutdown).
    ``check_reload()`` runs on SIGHUP before any worker is replaced: a
    StartupError from it is logged and the running workers stay.
    ``new_session``: start workers in their own session, so a terminal's
    Ctrl-C reaches the supervisor only (a benchmark turns it off to count
    the workers' CPU with the supervisor's process group).
    """

    def __init__(
        self,
        command: Sequence[str],
        listen_fds: Sequence[int],
        count: int,
        *,
        grace: float,
        env: dict[str, str] | None = None,
        on_readiness: Callable[[bool], None] = lambda ready: None,
        on_worker_exit: Callable[[int], None] = lambda pid: None,
        check_reload: Callable[[], None] = lambda: None,
        new_session: bool = True,
        pass_fds: Sequence[int] = (),
    ) -> None:
        if count < 1:
            raise ValueError("workers must be >= 1")
        self.command = list(command)
        self.listen_fds = list(listen_fds)
        self.count = count
        self.grace = grace
        self.env = dict(os.environ if env is None else env)
        self.env[WORKER_FDS_ENV] = ",".join(map(str, self.listen_fds))
        self.env.pop("NOTIFY_SOCKET", None)  # the supervisor speaks for all
        self.on_readiness = on_readiness
        self.on_worker_exit = on_worker_exit
        self.check_reload = check_reload
        self.new_session = new_session
        self.pass_fds = tuple(pass_fds)  # more fds every worker inherits
        self.workers: list[_Worker] = []  # the current generation, in slots
        self.stopping = False
        self.restarts = 0
        self._reloading = False
        self._alive: set[_Worker] = set()  # current and retiring ones
        # Workers hold the read end; ours closes when we exit, however.
        self._lifeline_read, self._lifeline_write = os.pipe()
        self.env[WORKER_LIFELINE_ENV] = str(self._lifeline_read)
        self._nursery: trio.Nursery | None = None

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers]

    async def run(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the workers, then handle signals until they all stopped."""
        try:
            await self._run(task_status)
        finally:
            self._kill_all()  # only if something failed: else all are gone
            with trio.CancelScope(shield=True):  # reap them: no zombie left
                for worker in list(self._alive):
                    await worker.process.wait()
            os.close(self._lifeline_read)
            os.close(self._lifeline_write)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(
            signal.SIGTERM, signal.SIGINT, signal.SIGHUP
        ) as signals:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._start_first_workers()
                self.on_readiness(True)
                notify("READY=1")
                task_status.started()
                async for signum in signals:
                    if signum == signal.SIGHUP and not self.stopping:
                        if self._reloading:
                            logger.warning("SIGHUP during a reload: ignored")
                        else:
                            nursery.start_soon(self._replace_all)
                    elif signum != signal.SIGHUP:
                        if self.stopping:
                            self._kill_all()  # second Ctrl-C: stop now
                        else:
                            nursery.start_soon(self._stop)

    async def _start_first_workers(self) -> None:
        """All at once: each spends most of its start importing, in parallel."""
        started: list[_Worker | None] = [None] * self.count

        async def start(slot: int) -> None:
            started[slot] = await self._start_worker()

        async with trio.open_nursery() as nursery:
            for slot in range(self.count):
                nursery.start_soon(start, slot)
        self.workers = [worker for worker in started if worker is not None]

    async def _start_worker(self) -> _Worker:
        """Spawn one worker and wait until it serves (or fail loudly)."""
        read_fd, write_fd = os.pipe()
        env = dict(self.env, **{WORKER_READY_ENV: str(write_fd)})
        try:
            process = await trio.lowlevel.open_process(
                self.command,
                env=env,
                pass_fds=(
                    *self.listen_fds,
                    write_fd,
                    self._lifeline_read,
                    *self.pass_fds,
                ),
                start_new_session=self.new_session,
            )
        finally:
            os.close(write_fd)
        worker = _Worker(process, trio.current_time())
        self._alive.add(worker)
        assert self._nursery is not None
        self._nursery.start_soon(self._watch, worker)
        ready = trio.lowlevel.FdStream(read_fd)
        async with ready:
            with trio.move_on_after(START_TIMEOUT):
                if await ready.receive_some(1):
                    logger.info("worker %d serving", process.pid)
                    return worker
        worker.retiring = True
        _signal(worker, signal.SIGKILL)
        raise WorkerStartError(
            f"worker {process.pid} did not start; see its error above"
        )

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.process.wait()
        self._alive.discard(worker)
        worker.exited.set()
        self.on_worker_exit(worker.process.pid)
        if worker.retiring or self.stopping:
            logger.info("worker %d exited (%s)", worker.process.pid, _describe(code))
            return
        logger.error(
            "worker %d exited unexpectedly (%s); restarting",
            worker.process.pid,
            _describe(code),
        )
        if trio.current_time() - worker.started < MIN_UPTIME:
            await trio.sleep(MIN_UPTIME)
        while True:
            if self.stopping or worker not in self.workers:
                return
            try:
                replacement = await self._start_worker()
                break
            except WorkerStartError as exc:
                logger.error("%s; trying again in %.0fs", exc, MIN_UPTIME)
                await trio.sleep(MIN_UPTIME)
        slot = self.workers.index(worker)
        self.restarts += 1
        if self.stopping:
            replacement.retiring = True
            replacement.process.send_signal(signal.SIGTERM)
        self.workers[slot] = replacement

    async def _replace_all(self) -> None:
        """SIGHUP: new worker first, then retire the old one; slot by slot."""
        self._reloading = True
        try:
            await self._replace_each()
        finally:
            self._reloading = False

    async def _replace_each(self) -> None:
        try:
            self.check_reload()
        except StartupError as exc:
            logger.error("reload failed, keeping the running workers: %s", exc)
            return
        logger.info("reloading: replacing %d workers one by one", len(self.workers))
        for slot, old in enumerate(list(self.workers)):
            if self.stopping:
                return
            try:
                new = await self._start_worker()
            except WorkerStartError as exc:
                logger.error("reload failed, keeping the running workers: %s", exc)
                return
            self.workers[slot] = new
            old.retiring = True
            _signal(old, signal.SIGTERM)
        logger.info("reload done: workers %s", self.pids)

    async def _stop(self) -> None:
        self.stopping = True
        self.on_readiness(False)
        notify("STOPPING=1")
        for worker in list(self._alive):
            _signal(worker, signal.SIGTERM)
        with trio.move_on_after(self.grace + KILL_MARGIN):
            for worker in list(self._alive):
                await worker.exited.wait()
        self._kill_all()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _kill_all(self) -> None:
        for worker in list(self._alive):
            _signal(worker, signal.SIGKILL)


def _signal(worker: _Worker, signum: int) -> None:
    if worker.process.returncode is None:
        worker.process.send_signal(signum)


def _describe(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def worker_command(argv: Sequence[str]) -> list[str]:
    """The argv of one worker: this same command, run by this interpreter.

    ``-P``: the current directory is not put on ``sys.path``, so a
    ``hijack.py`` or ``hijack/`` there cannot stand in for the installed
    package the supervisor runs (``PYTHONPATH`` and site-packages, which
    the supervisor used too, still count)."""
    return [sys.executable, "-P", "-m", "hijack", *argv]
