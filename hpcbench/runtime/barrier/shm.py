"""The ``shm`` barrier: ranks of one node, a /dev/shm segment and futexes (see the package doc).

Also the launcher's sweep of segments left by killed runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
import struct
import time
from pathlib import Path

from hpcbench.errors import BarrierAborted, ConfigError, RunError
from hpcbench.runtime.barrier.base import SHM_DIR, SHM_PREFIX, Barrier, BarrierEvent


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
