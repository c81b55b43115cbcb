"""The ``file`` barrier: ranks sharing the run directory, atomic renames only (see the package)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from hpcbench.errors import BarrierAborted, RunError
from hpcbench.jsonfile import write_atomic
from hpcbench.runfiles import BARRIER_DIR
from hpcbench.runtime.barrier.base import Barrier, BarrierEvent


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
        self.root = Path(run_dir) / BARRIER_DIR / namespace
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise RunError(f"barrier: cannot create {self.root} ({exc})") from exc
        self._host = os.uname().nodename

    def _gen_dir(self, generation: int) -> Path:
        return self.root / f"g{generation:06d}"

    def _write_atomic(self, path: Path, payload: dict[str, object]) -> None:
        write_atomic(path, json.dumps(payload))

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
