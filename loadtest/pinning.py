"""CPU pinning for benchmarks on a small host: the engine on its own core, HTTP on the other.

vLLM-CPU binds its engine worker's OpenMP thread to one core (VLLM_CPU_OMP_THREADS_BIND;
`auto` takes core 0 on a 2-core host) and that thread spins while it computes. Everything
else floats: when the process that turns engine output into SSE (vLLM's API server, a
replica's data plane, the router, HAProxy, the benchmark client) is scheduled on the
engine's core it waits until the whole answer is generated, and the same c1 request's
TTFT flips between ~15 ms and ~80 ms from one round to the next, for every stack.

Pinned, every stack gets the same layout: the engine processes (vLLM's EngineCore and
Worker, recognised by the process titles vLLM gives them) on the engine cores, every other
process of the stack's tree (HTTP servers, Ray's own processes, Redis, HAProxy) and the
benchmark client on the rest. Unpinned restores what each thread had before.

On the shared HTTP core the client also takes the niceness of the stack's HTTP side
(`http_nice`): Ray starts its workers (router, replicas, their engines) at nice 15, vLLM's
own server runs at 0, and a client at 0 beside servers at 15 would take ~97% of the core
whenever both are runnable, which would measure the client's priority, not the stack.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: vLLM's engine processes set these titles (vllm.utils.system_utils.set_process_title);
#: "VLLM" is the default VLLM_PROCESS_NAME_PREFIX.
ENGINE_TITLES = ("VLLM::EngineCore", "VLLM::Worker")


@dataclass(frozen=True)
class PinLayout:
    """Which cores the engines get and which the HTTP side (everything else) gets."""

    engine: frozenset[int]
    http: frozenset[int]

    def __post_init__(self) -> None:
        if not self.engine or not self.http or self.engine & self.http:
            raise ValueError(f"engine {sorted(self.engine)} and HTTP {sorted(self.http)} cores "
                             "must both be non-empty and disjoint")

    @property
    def omp_threads_bind(self) -> str:
        """The engine cores as VLLM_CPU_OMP_THREADS_BIND (and spec `engine.cpu_omp_threads_bind`)."""
        return ",".join(str(c) for c in sorted(self.engine))


def default_layout(cpus: Sequence[int]) -> PinLayout:
    """The engine on the first usable core, the HTTP side on all the others.

    The first core is the one vLLM's `auto` binding picks on a one-NUMA-node host, so the
    pinned layout moves only the HTTP side, never the engine."""
    ordered = sorted(cpus)
    if len(ordered) < 2:
        raise ValueError(f"pinning needs at least 2 usable cores, this process has {ordered}")
    return PinLayout(frozenset(ordered[:1]), frozenset(ordered[1:]))


def is_engine_process(cmdline: Sequence[str]) -> bool:
    """Whether a process is one of vLLM's engine processes (by the title vLLM sets)."""
    return bool(cmdline) and cmdline[0].startswith(ENGINE_TITLES)


def plan(processes: Iterable[tuple[int, Sequence[str]]], layout: PinLayout) -> dict[int, frozenset[int]]:
    """Cores for each process (pid, cmdline): engines on the engine cores, the rest on HTTP's."""
    return {pid: layout.engine if is_engine_process(cmd) else layout.http for pid, cmd in processes}


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


@dataclass
class TreePinner:
    """Pins a stack's whole process tree (every thread of every process) and undoes it.

    Threads are set one by one: os.sched_setaffinity on a pid moves only that thread,
    and the worker's OpenMP thread and Ray's or uvicorn's helper threads are threads."""

    root_pid: int
    layout: PinLayout
    _saved: dict[int, set[int]] = field(default_factory=dict)

    def _processes(self) -> list[tuple[int, list[str]]]:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        out = []
        for p in procs:
            try:
                out.append((p.pid, p.cmdline()))
            except psutil.Error:
                pass
        return out

    def http_nice(self) -> int:
        """The highest niceness among the stack's non-engine processes (15 where Ray runs the
        HTTP servers, 0 for vLLM's own API server)."""
        nice = 0
        for pid, cmd in self._processes():
            if not is_engine_process(cmd):
                try:
                    nice = max(nice, os.getpriority(os.PRIO_PROCESS, pid))
                except OSError:
                    pass
        return nice

    def pin(self) -> dict[str, int]:
        """Apply the layout; returns how many threads went to each side (for the log)."""
        counts = {"engine": 0, "http": 0}
        for pid, cores in plan(self._processes(), self.layout).items():
            side = "engine" if cores == self.layout.engine else "http"
            for tid in _threads(pid):
                try:
                    self._saved.setdefault(tid, os.sched_getaffinity(tid))
                    os.sched_setaffinity(tid, cores)
                    counts[side] += 1
                except OSError:  # the thread ended meanwhile
                    pass
        return counts

    def unpin(self) -> None:
        """Give every thread the cores it had before `pin` (new ones: all of the host's)."""
        every = set(range(os.cpu_count() or 1))
        for pid, _ in self._processes():
            for tid in _threads(pid):
                try:
                    os.sched_setaffinity(tid, self._saved.get(tid, every))
                except OSError:
                    pass


def pin_threads(pid: int, cores: frozenset[int], nice: int | None = None) -> dict[int, tuple[set[int], int]]:
    """Every thread of one process (not its children) on `cores`, and at `nice` if given
    (niceness is per thread on Linux); returns what they had."""
    saved = {}
    for tid in _threads(pid):
        try:
            saved[tid] = (os.sched_getaffinity(tid), os.getpriority(os.PRIO_PROCESS, tid))
            os.sched_setaffinity(tid, cores)
            if nice is not None:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass
    return saved


def restore_threads(saved: dict[int, tuple[set[int], int]]) -> None:
    """Undo `pin_threads` (lowering niceness back needs CAP_SYS_NICE; without it, it stays)."""
    for tid, (cores, nice) in saved.items():
        try:
            os.sched_setaffinity(tid, cores)
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass
