"""Publishing a folder so that two runs and a crash cannot break it.

Every publisher (the nightly run, ``jobs/train.py``, :func:`spark_cf.storage.write_table`)
goes through :class:`Publication`. Beside a target ``<parent>/<name>`` (a nightly run is
``<root>/run_date=YYYY-MM-DD``) it keeps a hidden control folder::

    <parent>/<name>/                          the published folder
    <parent>/_staging/<name>.lock             held while a run publishes <name> (owner, JSON)
    <parent>/_staging/<name>.staging-<hex>    the folder being written
    <parent>/_staging/<name>.aside            the previous <name> during the swap

Staging sits one level deeper than a published folder, so a glob over the parent such as
``root/*/predictions/*.parquet`` never matches it (and Spark's and pyarrow's dataset
discovery skip ``_`` folders anyway). The control folder is removed when a publication
leaves it empty.

The protocol:

1. **lock**: create ``<name>.lock`` exclusively. A lock whose owner is alive makes the run
   fail with :class:`~spark_cf.errors.LockError` (after waiting for another run's short
   ``recover`` hold of step 2 to end); a stale one (its process gone on this host, older
   than the timeout, or still empty after a minute) is taken over with a warning.
2. **recover** (under the lock): put ``<name>.aside`` back when ``<name>`` is missing (a
   crash between the two renames of step 4), else delete it; delete leftover staging
   folders. Then the same for every other target of the parent whose lock is free, and for
   the ``_staging-<name>-<hex>[-old]`` folders of the earlier layout (beside the runs).
3. **write** everything into the staging folder.
4. **commit**: rename ``<name>`` to ``<name>.aside``, the staging folder to ``<name>``
   (never onto an existing path), delete ``<name>.aside``.
5. **release**: delete the staging folder if still there, then the lock.

A crash at any step leaves the old or the new folder complete at ``<name>``, except
between the two renames of step 4, where the old one waits complete as ``<name>.aside``
until step 2 of the next publication under the same parent puts it back.

Tests crash a publication at each step with :data:`fault_hook` (called with the names in
:data:`STEPS`) raising :class:`Crash`, which skips every clean-up as a kill would.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from spark_cf import storage
from spark_cf.errors import LockError, PathError, PublishError

log = logging.getLogger(__name__)

#: The hidden folder beside a published target that holds its lock and staging.
CONTROL = "_staging"

#: A lock older than this is taken over even when its owner cannot be checked (another
#: host); ``output.lock_timeout_hours`` sets it for the jobs.
DEFAULT_LOCK_TIMEOUT_S = 24 * 3600.0

#: How long a run waits for another run's short recovery of its target before refusing.
RECOVERY_WAIT_S = 60.0

#: A lock file still empty or unreadable after this many seconds lost its writer.
UNREADABLE_GRACE_S = 60.0

#: The points of a publication where :data:`fault_hook` is called, in order.
STEPS = ("locked", "recovered", "staged", "aside", "swapped", "cleaned")

#: Test hook: called with each step's name; raise :class:`Crash` to simulate a kill there.
fault_hook: Callable[[str], None] | None = None

#: Tokens of the locks this process holds (a lock naming this process but not listed here
#: was left by a publication that crashed).
_HELD: set[str] = set()

_ENTRY = re.compile(
    r"^(?P<name>.+?)\.(?P<kind>lock|lock\.stale-[0-9a-f]+|staging-[0-9a-f]+|aside)$"
)
_LEGACY = re.compile(r"^_staging-(?P<name>.+)-[0-9a-f]{12}(?P<old>-old)?$")


class Crash(BaseException):  # noqa: N818 - it is not an error but a simulated kill
    """Raised by a :data:`fault_hook` to stop a publication as a kill would: no clean-up
    runs and the lock stays (its owner is then dead)."""


def _step(name: str) -> None:
    if fault_hook is not None:
        fault_hook(name)


@dataclass(frozen=True)
class Target:
    """The paths of one publication target ``<parent>/<name>``."""

    parent: str
    name: str

    @classmethod
    def of(cls, path: str) -> Target:
        """``path`` split into its parent folder and last part (``/model``: ``/`` and
        ``model``; ``model``: ``.`` and ``model``)."""
        parent, slash, name = path.rstrip("/").rpartition("/")
        if not name or name.startswith((".", "_")):
            raise PathError(f"cannot publish to {path!r}: the last part must name a folder")
        return cls(parent if parent else ("/" if slash else "."), name)

    def _in_parent(self, name: str) -> str:
        return f"{self.parent.rstrip('/')}/{name}"

    @property
    def final(self) -> str:
        return self._in_parent(self.name)

    @property
    def control(self) -> str:
        return self._in_parent(CONTROL)

    @property
    def lock(self) -> str:
        return f"{self.control}/{self.name}.lock"

    @property
    def aside(self) -> str:
        return f"{self.control}/{self.name}.aside"

    def new_staging(self) -> str:
        return f"{self.control}/{self.name}.staging-{uuid.uuid4().hex[:12]}"


# ------------------------------------------------------------------------------- the lock


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks (Linux), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: written into the lock file as JSON."""

    host: str
    pid: int
    pid_start: str | None
    user: str
    app_id: str
    started_at: float
    token: str
    purpose: str = "publish"

    @classmethod
    def me(cls, app_id: str, purpose: str = "publish") -> LockOwner:
        pid = os.getpid()
        try:
            user = os.getlogin()
        except OSError:
            user = os.environ.get("USER", "")
        return cls(
            socket.gethostname(),
            pid,
            _process_start(pid),
            user,
            app_id,
            time.time(),
            uuid.uuid4().hex,
            purpose,
        )

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def describe(self) -> str:
        started = datetime.fromtimestamp(self.started_at, timezone.utc).isoformat(
            timespec="seconds"
        )
        return (
            f"pid {self.pid} on {self.host}, user {self.user or '?'}, app {self.app_id}, "
            f"since {started}"
        )

    def alive(self) -> bool | None:
        """Whether the owner still runs: None when it cannot be told (another host)."""
        if self.host != socket.gethostname():
            return None
        if self.pid == os.getpid():
            return self.token in _HELD
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, another user's
        start = _process_start(self.pid)
        return not (self.pid_start and start and start != self.pid_start)  # pid reused


def _stale_reason(owner: LockOwner | None, age_s: float, timeout_s: float) -> str | None:
    """Why a lock may be taken over, or None when its owner may still be running.

    An owner known to run keeps its lock however old it is; the timeout applies only to
    owners that cannot be checked (another host) and to unreadable locks."""
    alive = owner.alive() if owner is not None else None
    if alive is True:
        return None
    if alive is False:
        return f"its process {owner.pid} on {owner.host} is gone"
    if age_s > timeout_s:
        return f"older than the timeout of {timeout_s / 3600:g} h"
    if owner is None:  # being written just now, or its writer died between create and write
        return f"unreadable for {age_s:.0f} s" if age_s > UNREADABLE_GRACE_S else None
    return None


@dataclass
class Lock:
    """A held publication lock; :meth:`release` gives it up."""

    spark: object
    path: str
    owner: LockOwner

    def release(self) -> None:
        if self.owner.token not in _HELD:
            return
        text = (
            storage.read_text(self.spark, self.path)
            if storage.exists(self.spark, self.path)
            else ""
        )
        current = LockOwner.parse(text)
        if current is not None and current.token == self.owner.token:
            storage.delete(self.spark, self.path)
        else:
            log.warning("lock %s was taken over by another run while held", self.path)
        _HELD.discard(self.owner.token)

    def abandon(self) -> None:
        """Forget the lock without deleting it (a simulated kill)."""
        _HELD.discard(self.owner.token)


def acquire(
    spark,
    target: Target,
    *,
    timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    purpose: str = "publish",
    wait_s: float = RECOVERY_WAIT_S,
) -> Lock:
    """Take ``target``'s lock, taking a stale one over.

    Parameters
    ----------
    timeout_s
        A lock older than this is stale whatever its owner.
    purpose
        ``publish``, or ``recover`` for the short hold of another run's :func:`sweep`.
    wait_s
        How long to wait for a ``recover`` hold to end before giving up.

    Raises
    ------
    LockError
        When a run that may still be running holds it.
    """
    me = LockOwner.me(str(spark.sparkContext.applicationId), purpose)
    text = json.dumps(asdict(me), sort_keys=True)
    deadline = time.time() + wait_s
    breaks = 0
    while True:
        if storage.create_exclusive(spark, target.lock, text):
            _HELD.add(me.token)
            log.info("lock %s taken", target.lock)
            return Lock(spark, target.lock, me)
        seen = storage.read_text(spark, target.lock) if storage.exists(spark, target.lock) else None
        if seen is None:
            continue  # released meanwhile
        owner = LockOwner.parse(seen)
        modified = storage.modification_time(spark, target.lock) or time.time()
        age = time.time() - (owner.started_at if owner else modified)
        reason = _stale_reason(owner, age, timeout_s)
        if reason is None:
            if owner is not None and owner.purpose == "recover" and time.time() < deadline:
                time.sleep(0.2)  # another run is cleaning up after a crash: a moment
                continue
            who = owner.describe() if owner else "owner not written yet"
            raise LockError(
                f"{target.final} is being published by another run (lock {target.lock}: "
                f"{who}); wait for it to end, or delete the lock if that run is gone"
            )
        if breaks == 3:
            raise LockError(f"could not take the lock {target.lock}: other runs keep taking it")
        breaks += 1
        log.warning(
            "taking over the stale lock %s (%s): %s",
            target.lock,
            owner.describe() if owner else "unreadable",
            reason,
        )
        _break(spark, target.lock, seen)


def _break(spark, path: str, seen: str) -> None:
    """Remove the stale lock ``path`` if it still holds ``seen`` (moved away first, so of
    two runs breaking it only one succeeds)."""
    moved = f"{path}.stale-{uuid.uuid4().hex[:12]}"
    try:
        storage.rename(spark, path, moved)
    except PublishError:
        return  # another run broke it first
    if storage.read_text(spark, moved) == seen:
        storage.delete(spark, moved)
        return
    try:  # another run had taken it over meanwhile: give it back, never delete it
        storage.rename(spark, moved, path)
    except PublishError:
        raise LockError(
            f"the lock {path} changed hands while it was being taken over; its new owner's "
            f"lock is at {moved}: move it back to {path} if that run still goes on"
        ) from None


# ---------------------------------------------------------------------------- recovery


def recover(spark, target: Target) -> None:
    """Repair what a crashed publication of ``target`` left (call it under its lock).

    Puts ``<name>.aside`` back when ``<name>`` is missing, else deletes it; deletes the
    staging folders, broken locks (a minute old: a younger one may be another run's lock
    on its way back, see :func:`_break`), and the same leftovers of the earlier layout.
    """
    final_exists = storage.exists(spark, target.final)
    asides = [target.aside] if storage.exists(spark, target.aside) else []
    asides += [f"{target.parent}/{n}" for n in _legacy(spark, target, old=True)]
    for aside in asides:
        if not final_exists:
            log.warning(
                "restoring %s from %s (a run crashed while replacing it)", target.final, aside
            )
            storage.rename(spark, aside, target.final)
            final_exists = True
        else:
            log.info("removing %s, the previous copy left by a crashed run", aside)
            storage.delete(spark, aside)
    debris = [
        f"{target.control}/{n}"
        for n in storage.list_names(spark, target.control)
        if (m := _ENTRY.match(n))
        and m["name"] == target.name
        and m["kind"] not in ("lock", "aside")
    ]
    debris += [f"{target.parent}/{n}" for n in _legacy(spark, target, old=False)]
    for path in debris:
        if ".lock.stale-" in path:
            modified = storage.modification_time(spark, path)
            if modified is not None and time.time() - modified < UNREADABLE_GRACE_S:
                continue
        log.info("removing %s, left by a crashed run", path)
        storage.delete(spark, path)


def _legacy(spark, target: Target, *, old: bool) -> list[str]:
    """The earlier layout's ``_staging-<name>-<hex>`` (``old``: ``...-old``) folders."""
    return [
        n
        for n in storage.list_names(spark, target.parent)
        if (m := _LEGACY.match(n)) and m["name"] == target.name and bool(m["old"]) == old
    ]


def _others(spark, target: Target) -> list[str]:
    """The other targets of ``target.parent`` that have leftovers."""
    names = {m["name"] for n in storage.list_names(spark, target.control) if (m := _ENTRY.match(n))}
    names |= {
        m["name"] for n in storage.list_names(spark, target.parent) if (m := _LEGACY.match(n))
    }
    names.discard(target.name)
    return sorted(names)


def sweep(spark, target: Target, *, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
    """Recover every other target of ``target.parent`` whose lock is free."""
    for name in _others(spark, target):
        other = Target(target.parent, name)
        try:
            lock = acquire(spark, other, timeout_s=timeout_s, purpose="recover", wait_s=0.0)
        except LockError:
            log.info("leaving %s alone: another run is publishing it", other.final)
            continue
        try:
            recover(spark, other)
        finally:
            lock.release()


# ------------------------------------------------------------------------- publication


class Publication:
    """Publish one folder: ``with Publication(spark, path) as pub:`` write into
    ``pub.staging``, then call ``pub.commit()``.

    Entering takes the lock (:class:`~spark_cf.errors.LockError` when another live run
    holds it) and recovers the parent's leftovers; leaving without a commit (an error)
    deletes the staging folder and leaves the published folder as it was.

    Parameters
    ----------
    spark
        The session (for its Hadoop file system).
    path
        Where the folder is published.
    timeout_s
        A lock older than this many seconds is stale whatever its owner.
    """

    def __init__(self, spark, path: str, *, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S):
        self.spark = spark
        self.target = Target.of(path)
        self.timeout_s = timeout_s
        self.staging = self.target.new_staging()
        self.committed = False
        self._lock: Lock | None = None

    @property
    def path(self) -> str:
        return self.target.final

    def __enter__(self) -> Publication:
        self._lock = acquire(self.spark, self.target, timeout_s=self.timeout_s)
        try:
            _step("locked")
            recover(self.spark, self.target)
            sweep(self.spark, self.target, timeout_s=self.timeout_s)
            _step("recovered")
        except Crash:
            self._lock.abandon()
            raise
        except BaseException:
            self._release()
            raise
        return self

    def commit(self) -> None:
        """Swap the staging folder in at the target (the previous folder is deleted)."""
        spark, t = self.spark, self.target
        _step("staged")
        if not storage.exists(spark, self.staging):
            raise PublishError(f"nothing was written to {self.staging}: nothing to publish")
        if storage.exists(spark, t.final):
            storage.rename(spark, t.final, t.aside)
            _step("aside")
            try:
                storage.rename(spark, self.staging, t.final)
            except Exception:
                storage.rename(spark, t.aside, t.final)
                raise
            _step("swapped")
            storage.delete(spark, t.aside)
        else:
            storage.rename(spark, self.staging, t.final)
            _step("swapped")
        self.committed = True
        log.info("published %s", t.final)
        _step("cleaned")

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None and issubclass(kind, Crash):
            if self._lock is not None:
                self._lock.abandon()
            return
        self._release()

    def _release(self) -> None:
        try:
            storage.delete(self.spark, self.staging)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            storage.delete_if_empty(self.spark, self.target.control)
