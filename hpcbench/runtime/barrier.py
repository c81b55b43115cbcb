"""Barriers that start and stop every rank's timed phase together.

Two kinds, chosen per run with ``--barrier``:

``shm``
    Ranks on one node. A small segment in ``/dev/shm`` holds an arrival counter, a release
    word and one slot per rank. A rank writes its slot, adds one to the counter with an atomic
    instruction executed by the kernel (``FUTEX_WAKE_OP``, which also orders the slot write
    before the counter), and the rank that sees the counter complete stores the generation in
    the release word and wakes every waiter with one ``FUTEX_WAKE``. Waiters spin briefly on
    the release word, then sleep in ``FUTEX_WAIT``, so no core is burnt while a slow rank is
    still warming up; when only one rank is missing they spin again for a bounded time (its
    arrival is often near), so they leave within microseconds instead of after the kernel's
    wake-up latency.
``file``
    Ranks on several nodes sharing the run directory. A rank creates its arrival file by
    writing a temporary file and renaming it (atomic on local filesystems and NFS, no lock
    service, no ``flock``), then polls the generation's directory with a short back-off until
    all ``world_size`` arrival files are listed. Listing the directory (``opendir``) makes an
    NFS client revalidate it, so stale attribute caches do not hide arrivals for long.

Both kinds: every wait has a timeout after which the rank raises :class:`BarrierTimeout`
naming the ranks that never arrived and marks the barrier aborted, so every other waiting rank
fails at once with the same names; state is named after the run id and the launch id (see
:func:`barrier_namespace`), so state left by a killed earlier launch is never mistaken for this
one; the same object serves the start and end barriers (generations 1, 2, ...); the last rank
to close removes the state, and a rank closing after an error removes it at once. Files and
segments are created owner-only (0600, directories 0700).

Every wait returns a :class:`BarrierEvent` with the rank's arrive and release times and a
``common_release_ns`` that is identical on every rank (the arrival time of the last rank), from
which ranks compute a shared deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import re
import shutil
import stat
import struct
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hpcbench.errors import BarrierAborted, BarrierTimeout, ConfigError, RunError

KINDS = ("shm", "file")
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "hpcbench-"
FILE_DIR = ".barriers"


@dataclass(frozen=True, slots=True)
class BarrierEvent:
    """One rank's passage through one barrier (times in ns since the epoch, CLOCK_REALTIME)."""

    name: str
    generation: int
    arrive_ns: int
    release_ns: int
    # The same on every rank: when the last rank arrived. Deadlines are computed from it.
    common_release_ns: int


def barrier_namespace(run_id: str, launch_id: str) -> str:
    """The name of one launch's barrier state (a /dev/shm segment or a directory).

    >>> barrier_namespace("20261128-1200-n1-ab12", "j77.0.1")
    'hpcbench-20261128-1200-n1-ab12-j77.0.1'
    >>> barrier_namespace("a/b c", "x")
    'hpcbench-a_b_c-x'
    """
    raw = f"{SHM_PREFIX}{run_id}-{launch_id}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)[:200]


class Barrier(ABC):
    """A reusable barrier among ``world_size`` ranks; use as a context manager or call close()."""

    kind: str

    def __init__(self, namespace: str, rank: int, world_size: int, timeout_s: float) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"barrier: rank {rank} is outside 0..{world_size - 1}")
        if timeout_s <= 0:
            raise ConfigError(f"barrier_timeout_s: must be positive, got {timeout_s}")
        self.namespace = namespace
        self.rank = rank
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.generation = 0
        self.events: list[BarrierEvent] = []
        self._aborted = False
        self._closed = False

    def wait(self, name: str) -> BarrierEvent:
        """Arrive, block until every rank arrived, return the times.

        Raises BarrierTimeout (naming the missing ranks) after ``timeout_s``, or BarrierAborted
        (naming the rank) when another rank aborted the barrier.
        """
        if self._closed:
            raise RunError(f"barrier {name!r}: already closed")
        self.generation += 1
        event = self._wait(name, self.generation)
        self.events.append(event)
        return event

    @abstractmethod
    def _wait(self, name: str, generation: int) -> BarrierEvent: ...

    def abort(self, reason: str) -> None:
        """Tell the other ranks this rank gave up (they fail at once instead of timing out)."""
        if self._closed or self._aborted:
            return
        self._aborted = True
        self._mark_aborted("error", reason)

    @abstractmethod
    def _mark_aborted(self, kind: str, reason: str) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Release this rank's handle; the last rank (or any rank after an abort) removes state."""

    def __enter__(self) -> Barrier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.abort(f"{type(exc).__name__}: {exc}")
        self.close()

    def _timeout_error(self, name: str, missing: list[int], by_rank: int | None) -> BarrierTimeout:
        who = f"ranks {missing}" if len(missing) != 1 else f"rank {missing[0]}"
        if not missing:
            who = "no rank was missing but the release was not seen;"
        noticed = "" if by_rank is None or by_rank == self.rank else f" (noticed by rank {by_rank})"
        return BarrierTimeout(
            f"barrier {name!r} ({self.kind}, {self.namespace}): {who} did not arrive within "
            f"{self.timeout_s:g} s{noticed}",
            culprits=tuple(missing),
        )


def open_barrier(
    kind: str,
    *,
    namespace: str,
    rank: int,
    world_size: int,
    timeout_s: float,
    run_dir: Path | None = None,
    spin_s: float | None = None,
    last_spin_s: float | None = None,
) -> Barrier:
    """Open (creating when first) the barrier ``namespace`` of kind "shm" or "file".

    ``spin_s`` and ``last_spin_s`` tune the shm barrier (see :class:`ShmBarrier`).
    """
    if kind == "shm":
        return ShmBarrier(
            namespace, rank, world_size, timeout_s, spin_s=spin_s, last_spin_s=last_spin_s
        )
    if kind == "file":
        if run_dir is None:
            raise ConfigError("barrier 'file' needs the run directory")
        return FileBarrier(namespace, rank, world_size, timeout_s, run_dir=Path(run_dir))
    raise ConfigError(f"barrier: unknown kind {kind!r} (valid: {', '.join(KINDS)})")


def remove_barrier_state(namespace: str, run_dir: Path | None = None) -> list[Path]:
    """Remove what any barrier of ``namespace`` left (launchers call this on exit and Ctrl-C).

    Returns the paths removed.
    """
    removed: list[Path] = []
    segment = SHM_DIR / namespace
    try:
        segment.unlink()
        removed.append(segment)
    except FileNotFoundError:
        pass
    if run_dir is not None:
        directory = Path(run_dir) / FILE_DIR / namespace
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
        parent = Path(run_dir) / FILE_DIR
        with contextlib.suppress(OSError):
            parent.rmdir()
    return removed


def sweep_stale_segments(min_age_s: float = 600.0, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Remove shm barrier segments of this user whose ranks are all dead (a killed launcher).

    A segment is stale when it is provably one of ours (:func:`segment_pids`: owner, magic,
    layout version, size, process ids in range), older than ``min_age_s``, and no process id
    recorded in its rank slots is alive on this host (segments are host-local, like the pids).
    Any other file, whatever its name, is left alone; nothing in it can make this fail.
    Returns the paths removed.
    """
    removed: list[Path] = []
    now = time.time()
    for path in shm_dir.glob(f"{SHM_PREFIX}*"):
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                continue
            if now - info.st_mtime < min_age_s or info.st_size > _MAX_SEGMENT_BYTES:
                continue
            pids = segment_pids(path.read_bytes())
        except OSError:
            continue
        if pids is None or any(pid and _alive(pid) for pid in pids):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


# The largest world a segment can serve (the planner's rank limit), in bytes.
_MAX_SEGMENT_BYTES = 512 + 64 * (1 << 16)


def segment_pids(data: bytes) -> list[int] | None:
    """The process ids in a barrier segment's rank slots, or None when ``data`` is not one.

    Ours means: our magic and layout version, a world size that gives exactly this size, and
    every process id within the kernel's range.

    >>> segment_pids(b"x" * 600) is None
    True
    """
    if len(data) < _HEADER_BYTES:
        return None
    magic, version, world_size = struct.unpack_from("=III", data, _MAGIC_OFFSET)
    if magic != _MAGIC or version != _LAYOUT_VERSION:
        return None
    if world_size < 1 or len(data) != _HEADER_BYTES + _SLOT_BYTES * world_size:
        return None
    pids = [
        struct.unpack_from("=I", data, _HEADER_BYTES + _SLOT_BYTES * r + 4)[0]
        for r in range(world_size)
    ]
    if any(pid > _pid_max() for pid in pids):
        return None
    return pids


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 1 << 22  # Linux's ceiling (PID_MAX_LIMIT on 64-bit)


def _reserve(fd: int, size: int, path: Path) -> None:
    """Give the segment ``size`` bytes of real memory now, or fail in one line.

    ``ftruncate`` only sets the size: on a full /dev/shm the first write through the mapping
    then kills the rank with SIGBUS. ``posix_fallocate`` allocates the pages (tmpfs supports
    it) and keeps what is there, so every rank may call it.
    """
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise RunError(
                f"barrier: {SHM_DIR} is full: cannot reserve {size} bytes for {path} "
                f"(see 'df -h {SHM_DIR}'; free space there or use --barrier file)"
            ) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise RunError(f"barrier: cannot size shared memory {path} ({exc})") from exc
        # A filesystem without fallocate: size it; a write may still find it full.
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


# ------------------------------------------------------------------------------- futexes
# SYS_futex by machine; the shm barrier needs Linux futexes.
_SYS_FUTEX = {
    "x86_64": 202,
    "aarch64": 98,
    "arm64": 98,
    "ppc64le": 221,
    "ppc64": 221,
    "s390x": 238,
    "riscv64": 98,
}
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_FUTEX_WAKE_OP = 5
_FUTEX_OP_ADD = 1
_INT_MAX = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Futex:
    """Raw futex calls through libc's ``syscall`` (ctypes releases the GIL while they block)."""

    def __init__(self) -> None:
        number = _SYS_FUTEX.get(platform.machine())
        if number is None or not hasattr(os, "sched_getaffinity"):
            raise ConfigError(
                f"barrier 'shm' needs Linux futexes, not available on {platform.machine()} / "
                f"{platform.system()}; use --barrier file"
            )
        self._number = ctypes.c_long(number)
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long

    def wait(self, address: int, expected: int, timeout_s: float) -> None:
        """Sleep while the u32 at ``address`` equals ``expected``, at most ``timeout_s``."""
        seconds = int(timeout_s)
        spec = _Timespec(seconds, int((timeout_s - seconds) * 1e9))
        # Returns early on a wake, EAGAIN (value already changed), EINTR or ETIMEDOUT: the caller
        # re-checks the state after every return, so the result itself is not needed.
        self._syscall(
            self._number,
            ctypes.c_void_p(address),
            ctypes.c_int(_FUTEX_WAIT),
            ctypes.c_uint32(expected),
            ctypes.byref(spec),
            ctypes.c_void_p(0),
            ctypes.c_uint32(0),
        )

    def wake_all(self, address: int) -> None:
        self._syscall(
            self._number,
            ctypes.c_void_p(address),
            ctypes.c_int(_FUTEX_WAKE),
            ctypes.c_uint32(_INT_MAX),
            ctypes.c_void_p(0),
            ctypes.c_void_p(0),
            ctypes.c_uint32(0),
        )

    def atomic_add(self, address: int, scratch: int, value: int) -> None:
        """Atomically add ``value`` (< 4096) to the u32 at ``address``.

        FUTEX_WAKE_OP applies the operation with a locked instruction in the kernel, a full
        memory barrier, so our earlier plain stores are visible before the new count. It wakes
        nobody here: both wake counts are 0 (``scratch`` is a dummy futex word).
        """
        op = (_FUTEX_OP_ADD << 28) | ((value & 0xFFF) << 12)
        result = self._syscall(
            self._number,
            ctypes.c_void_p(scratch),
            ctypes.c_int(_FUTEX_WAKE_OP),
            ctypes.c_uint32(0),
            ctypes.c_void_p(0),
            ctypes.c_void_p(address),
            ctypes.c_uint32(op),
        )
        if result < 0:
            errno = ctypes.get_errno()
            raise RunError(
                f"barrier: atomic add through FUTEX_WAKE_OP failed ({os.strerror(errno)})"
            )


# ----------------------------------------------------------------------------- shm barrier
# Segment layout (all zero when created, which is the valid initial state, so ranks never have
# to agree on who initialises it):
#   header (512 bytes): u32 release_gen @0 (futex word), u32 arrived @4, u32 abort_gen @8,
#       i32 abort_rank+1 @12, u32 closed @16, u32 scratch @20, u32 abort_kind @24
#       (1 timeout, 2 error), u32 magic @32, u32 layout version @36, u32 world_size @40
#       (every rank writes the same three on opening: they mark the segment as ours for the
#       stale-segment sweep), reason bytes @64..511
#   slot r (64 bytes @ 512 + 64 r): u32 arrive_gen @0, u32 pid @4, i64 arrive_ns[2] @8
#       (indexed by generation parity: a rank can be at most one barrier ahead of another)
_HEADER_BYTES = 512
_SLOT_BYTES = 64
_REASON_OFFSET = 64
_MAGIC_OFFSET = 32
_MAGIC = 0x48504342  # "HPCB"
_LAYOUT_VERSION = 1
_ABORT_TIMEOUT = 1
_ABORT_ERROR = 2


class ShmBarrier(Barrier):
    """Barrier among ranks of one node through a /dev/shm segment and futexes."""

    kind = "shm"
    # Spin after arriving, before sleeping in the kernel.
    DEFAULT_SPIN_S = 100e-6
    # Spin again once only one rank is missing: its arrival is then often close (ranks that
    # finish a timed phase at a shared deadline), and a spinning waiter leaves within
    # microseconds where a sleeping one needs the kernel's wake-up (~0.1-0.3 ms on a VM).
    DEFAULT_LAST_SPIN_S = 2e-3

    def __init__(
        self,
        namespace: str,
        rank: int,
        world_size: int,
        timeout_s: float,
        spin_s: float | None = None,
        last_spin_s: float | None = None,
    ) -> None:
        super().__init__(namespace, rank, world_size, timeout_s)
        import mmap

        self._futex = _Futex()
        self.spin_s = self.DEFAULT_SPIN_S if spin_s is None else spin_s
        if last_spin_s is None:
            # Spinning ranks would steal the CPU of the rank everybody waits for when ranks
            # outnumber the machine's CPUs.
            enough_cpus = world_size < (os.cpu_count() or 1)
            last_spin_s = self.DEFAULT_LAST_SPIN_S if enough_cpus else 0.0
        self.last_spin_s = last_spin_s
        self.path = SHM_DIR / namespace
        size = _HEADER_BYTES + _SLOT_BYTES * world_size
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise RunError(f"barrier: cannot open shared memory {self.path} ({exc})") from exc
        try:
            info = os.fstat(fd)
            if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
                raise RunError(
                    f"barrier: {self.path} exists but is not owner-only or not ours "
                    f"(uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); remove it"
                )
            _reserve(fd, size, self.path)
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        mm = self._mm
        self._release = ctypes.c_uint32.from_buffer(mm, 0)
        self._arrived = ctypes.c_uint32.from_buffer(mm, 4)
        self._abort_gen = ctypes.c_uint32.from_buffer(mm, 8)
        self._abort_rank = ctypes.c_int32.from_buffer(mm, 12)
        self._closed_count = ctypes.c_uint32.from_buffer(mm, 16)
        self._scratch = ctypes.c_uint32.from_buffer(mm, 20)
        self._abort_kind = ctypes.c_uint32.from_buffer(mm, 24)
        self._slot_gen = [
            ctypes.c_uint32.from_buffer(mm, _HEADER_BYTES + _SLOT_BYTES * r)
            for r in range(world_size)
        ]
        self._slot_pid = ctypes.c_uint32.from_buffer(mm, _HEADER_BYTES + _SLOT_BYTES * rank + 4)
        self._slot_ns = [
            (ctypes.c_int64 * 2).from_buffer(mm, _HEADER_BYTES + _SLOT_BYTES * r + 8)
            for r in range(world_size)
        ]
        self._addr_release = ctypes.addressof(self._release)
        self._addr_arrived = ctypes.addressof(self._arrived)
        self._addr_closed = ctypes.addressof(self._closed_count)
        self._addr_scratch = ctypes.addressof(self._scratch)
        self._slot_pid.value = os.getpid()
        struct.pack_into("=III", mm, _MAGIC_OFFSET, _MAGIC, _LAYOUT_VERSION, world_size)

    def _wait(self, name: str, generation: int) -> BarrierEvent:
        n = self.world_size
        target = (n * generation) & 0xFFFFFFFF
        start = time.monotonic()
        deadline = start + self.timeout_s
        arrive_ns = time.time_ns()
        self._slot_ns[self.rank][generation & 1] = arrive_ns
        self._slot_gen[self.rank].value = generation
        self._futex.atomic_add(self._addr_arrived, self._addr_scratch, 1)
        arrived = self._arrived
        # Unsigned distances: the counter wraps after 2**32 arrivals.
        missing = (target - arrived.value) & 0xFFFFFFFF
        if missing == 0 or missing >= 0x80000000:
            self._release_all(generation)
        spin_until = start + self.spin_s
        last_spin = self.last_spin_s > 0
        if last_spin and missing == 1:
            spin_until = max(spin_until, start + self.last_spin_s)
            last_spin = False
            if n > 2:
                self._futex.wake_all(self._addr_release)  # sleepers: start spinning
        release = self._release
        abort_gen = self._abort_gen
        while release.value < generation:
            if abort_gen.value >= generation and abort_gen.value:
                self._raise_aborted(name, generation)
            now = time.monotonic()
            if now < spin_until:
                continue
            if now >= deadline:
                self._time_out(name, generation)
            # Sleep until woken; the slice bounds the delay in noticing an abort.
            current = release.value
            if current >= generation:
                break
            self._futex.wait(self._addr_release, current, min(deadline - now, 0.25))
            if last_spin and (target - arrived.value) & 0xFFFFFFFF == 1:
                spin_until = time.monotonic() + self.last_spin_s
                last_spin = False
        release_ns = time.time_ns()
        common = max(int(self._slot_ns[r][generation & 1]) for r in range(n))
        return BarrierEvent(name, generation, arrive_ns, release_ns, common)

    def _release_all(self, generation: int) -> None:
        self._release.value = generation
        self._futex.wake_all(self._addr_release)

    def _missing(self, generation: int) -> list[int]:
        return [r for r in range(self.world_size) if self._slot_gen[r].value < generation]

    def _time_out(self, name: str, generation: int) -> None:
        missing = self._missing(generation)
        self._set_abort(generation, _ABORT_TIMEOUT, "")
        self._aborted = True
        raise self._timeout_error(name, missing, None)

    def _raise_aborted(self, name: str, generation: int) -> None:
        by_rank = self._abort_rank.value - 1
        self._aborted = True
        if self._abort_kind.value == _ABORT_TIMEOUT:
            raise self._timeout_error(name, self._missing(generation), by_rank)
        reason = bytes(self._mm[_REASON_OFFSET:_HEADER_BYTES]).split(b"\0", 1)[0]
        raise BarrierAborted(
            f"barrier {name!r} ({self.kind}): rank {by_rank} aborted the run: "
            f"{reason.decode(errors='replace')}",
            culprits=(by_rank,),
        )

    def _set_abort(self, generation: int, kind: int, reason: str) -> None:
        if self._abort_gen.value and self._abort_gen.value >= generation:
            return  # someone else already aborted this generation: keep their reason
        data = reason.encode()[: _HEADER_BYTES - _REASON_OFFSET - 1] + b"\0"
        self._mm[_REASON_OFFSET : _REASON_OFFSET + len(data)] = data
        self._abort_kind.value = kind
        self._abort_rank.value = self.rank + 1
        self._abort_gen.value = max(generation, 1)
        self._futex.wake_all(self._addr_release)

    def _mark_aborted(self, kind: str, reason: str) -> None:
        # Abort the barrier this rank would wait at next (or the one it is in).
        self._set_abort(self.generation + 1, _ABORT_ERROR, reason)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._futex.atomic_add(self._addr_closed, self._addr_scratch, 1)
        last = self._closed_count.value >= self.world_size
        # ctypes views export the mmap's buffer; drop them before closing it.
        del self._release, self._arrived, self._abort_gen, self._abort_rank
        del self._closed_count, self._scratch, self._abort_kind, self._slot_gen
        del self._slot_pid, self._slot_ns
        with contextlib.suppress(BufferError):
            # Closing after a timeout, inside the except block: the traceback still holds
            # _wait's frame and its views of the mapping. The mapping goes with them; the
            # segment must be removed now all the same.
            self._mm.close()
        if last or self._aborted:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


# ---------------------------------------------------------------------------- file barrier
class FileBarrier(Barrier):
    """Barrier among ranks sharing a directory (the run directory), with atomic renames only.

    Layout under ``RUN_DIR/.barriers/<namespace>/``: ``gNNNNNN/aNNNNN`` (one arrival file per
    rank and generation, JSON with the arrival time), ``gNNNNNN/abort.NNNNN`` (a rank gave up),
    ``done.NNNNN`` (a rank closed; the last one removes the directory).
    """

    kind = "file"
    # After an abort, how long a closing rank waits for the other waiting ranks to notice it.
    ABORT_LINGER_S = 3.0
    # Poll back-off: fast at first (a release is usually near), slower while a rank warms up.
    POLL_STEPS_S = ((0.002, 50e-6), (0.02, 200e-6), (float("inf"), 1e-3))

    def __init__(
        self, namespace: str, rank: int, world_size: int, timeout_s: float, run_dir: Path
    ) -> None:
        super().__init__(namespace, rank, world_size, timeout_s)
        self.root = Path(run_dir) / FILE_DIR / namespace
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise RunError(f"barrier: cannot create {self.root} ({exc})") from exc
        self._host = os.uname().nodename

    def _gen_dir(self, generation: int) -> Path:
        return self.root / f"g{generation:06d}"

    def _write_atomic(self, path: Path, payload: dict[str, object]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(payload).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _wait(self, name: str, generation: int) -> BarrierEvent:
        n = self.world_size
        gen_dir = self._gen_dir(generation)
        start = time.monotonic()
        deadline = start + self.timeout_s
        try:
            gen_dir.mkdir(exist_ok=True, mode=0o700)
        except FileNotFoundError as exc:
            raise self._removed(name) from exc
        arrive_ns = time.time_ns()
        payload = {
            "rank": self.rank,
            "arrive_ns": arrive_ns,
            "name": name,
            "host": self._host,
            "pid": os.getpid(),
        }
        self._write_atomic(gen_dir / f"a{self.rank:05d}", payload)
        if generation > 2:
            # Every rank has arrived at generation-1, so nobody reads generation-2 any more.
            self._forget(generation - 2)
        steps = iter(self.POLL_STEPS_S)
        until, pause = next(steps)
        while True:
            try:
                names = os.listdir(gen_dir)
            except FileNotFoundError as exc:
                raise self._removed(name) from exc
            arrived = [x for x in names if _is_arrival(x)]
            if any(x.startswith("abort.") for x in names):
                self._raise_aborted(name, generation, names)
            if len(arrived) >= n:
                break
            now = time.monotonic()
            if now >= deadline:
                missing = self._missing(arrived)
                self._aborted = True
                self._write_atomic(
                    gen_dir / f"abort.{self.rank:05d}",
                    {"rank": self.rank, "kind": "timeout", "missing": missing},
                )
                raise self._timeout_error(name, missing, None)
            while now - start > until:
                until, pause = next(steps)
            time.sleep(pause)
        release_ns = time.time_ns()
        common = max(self._arrive_ns(gen_dir / x) for x in arrived)
        return BarrierEvent(name, generation, arrive_ns, release_ns, max(common, arrive_ns))

    def _arrive_ns(self, path: Path) -> int:
        try:
            return int(json.loads(path.read_text())["arrive_ns"])
        except (OSError, ValueError, KeyError):
            return 0

    def _missing(self, arrived: list[str]) -> list[int]:
        present = {int(x[1:]) for x in arrived}
        return [r for r in range(self.world_size) if r not in present]

    def _raise_aborted(self, name: str, generation: int, names: list[str]) -> None:
        self._aborted = True
        gen_dir = self._gen_dir(generation)
        marker = sorted(x for x in names if x.startswith("abort."))[0]
        try:
            info = json.loads((gen_dir / marker).read_text())
        except (OSError, ValueError):
            info = {"rank": marker.split(".")[-1], "kind": "error", "reason": "(unreadable)"}
        by_rank = int(info.get("rank", -1))
        if info.get("kind") == "timeout":
            arrived = [x for x in names if _is_arrival(x)]
            raise self._timeout_error(name, self._missing(arrived), by_rank)
        raise BarrierAborted(
            f"barrier {name!r} ({self.kind}): rank {by_rank} aborted the run: "
            f"{info.get('reason', '')}",
            culprits=(by_rank,),
        )

    def _removed(self, name: str) -> RunError:
        self._aborted = True
        return RunError(
            f"barrier {name!r} ({self.kind}): {self.root} was removed (the run was stopped)"
        )

    def _forget(self, generation: int) -> None:
        gen_dir = self._gen_dir(generation)
        try:
            (gen_dir / f"a{self.rank:05d}").unlink()
            gen_dir.rmdir()  # succeeds for the last rank to forget it
        except OSError:
            pass

    def _mark_aborted(self, kind: str, reason: str) -> None:
        gen_dir = self._gen_dir(self.generation + 1)
        try:
            gen_dir.mkdir(exist_ok=True, mode=0o700)
            self._write_atomic(
                gen_dir / f"abort.{self.rank:05d}",
                {"rank": self.rank, "kind": kind, "reason": reason[:400]},
            )
        except OSError:
            pass  # the directory is gone: nobody is waiting any more

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._write_atomic(self.root / f"done.{self.rank:05d}", {"rank": self.rank})
            done = [x for x in os.listdir(self.root) if x.startswith("done.")]
        except OSError:
            return  # already removed
        if len(done) >= self.world_size:
            self._remove_root()
        elif self._aborted:
            # Ranks still waiting must read the abort marker before it disappears: linger
            # until every rank that arrived has closed too (bounded), then remove the state.
            self._linger_then_remove()

    def _linger_then_remove(self) -> None:
        deadline = time.monotonic() + self.ABORT_LINGER_S
        while time.monotonic() < deadline:
            try:
                waiting: set[int] = set()
                for generation in (self.generation, self.generation + 1):
                    with contextlib.suppress(FileNotFoundError):
                        names = os.listdir(self._gen_dir(generation))
                        waiting.update(int(x[1:]) for x in names if _is_arrival(x))
                done = {int(x[5:]) for x in os.listdir(self.root) if x.startswith("done.")}
            except (OSError, ValueError):
                return  # removed by another rank
            if waiting <= done:
                break
            time.sleep(0.01)
        self._remove_root()

    def _remove_root(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.parent.rmdir()  # only when no other launch uses it


def _is_arrival(name: str) -> bool:
    """Arrival files are ``a`` and a rank number (``abort.N`` and temporaries are not).

    >>> _is_arrival("a00003"), _is_arrival("abort.00001"), _is_arrival(".a00001.77.tmp")
    (True, False, False)
    """
    return name.startswith("a") and name[1:].isdigit()
