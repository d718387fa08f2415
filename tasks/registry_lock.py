"""The registry lock: one holder at a time per registered model, across processes and machines, kept alive by a
heartbeat.

Why a lock: two gates that read the same champion, both decide to promote and both move the alias leave the later
writer as champion, even when it is the worse one; re-reading after the write cannot fix that, because the better
one may have checked and left before the worse one writes. MLflow has no lock or compare-and-set, but
registered-model names are unique in every backend store (a unique key in SQL, checked in one transaction), so
creating the registered model `<model>.gate-lock` succeeds for exactly one caller; deleting it releases the lock.

Who holds it: a random token made when the lock is taken, unique per holder and process lifetime (host and pid are
in it for people to read, never to decide liveness: containers share hostnames and pid numbers). While held, a
heartbeat thread bumps the lock's `beat` tag every `ttl/6` seconds. A waiter that sees the same owner and beat for a
whole TTL (on its own monotonic clock, so clocks of different machines never matter) counts the holder as dead and
breaks the lock. A holder whose lock was broken (its heartbeat stalled: the process was paused, or cut off from the
server, for longer than the TTL) learns it at its next write: `check()` raises `RegistryLockLost` before any alias
or history moves.

A holder can leave a record of a multi-step change it is making on the lock (`record`); whoever breaks the lock of
a dead holder inherits it (`inherited`), copied atomically into its own lock, so the change can be finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from mlflow.exceptions import MlflowException

from tasks.tracking import TrackingUnavailable

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".gate-lock"
# A holder's beat must change within this many seconds, or waiters count it as dead. The holder beats six times
# per TTL, so only a process stalled (or cut off from the server) for the whole TTL loses its lock.
LOCK_TTL_S = 30.0
LOCK_WAIT_S = 330.0
PENDING_TAG = "pending_op"


class RegistryBusy(TrackingUnavailable):
    """Another process held the registry lock of a model for longer than we could wait."""


class RegistryLockLost(TrackingUnavailable):
    """This process's registry lock was taken over (its heartbeat stalled for longer than the TTL): it must not
    write anything more; a re-run finishes the job."""


def _not_found(err: MlflowException) -> bool:
    return err.error_code == "RESOURCE_DOES_NOT_EXIST"


def lock_tags(client, name: str) -> dict[str, str] | None:
    """The lock's tags, or None when nobody holds it."""
    try:
        return dict(client.get_registered_model(name).tags)
    except MlflowException as err:
        if _not_found(err):
            return None
        raise


class Lock:
    """A held registry lock: its heartbeat, the write guard, and the pending-change record."""

    def __init__(self, client, name: str, ttl_s: float, inherited: dict[str, Any] | None) -> None:
        self.client, self.name, self.ttl_s = client, name, ttl_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self.inherited = inherited  # the pending change of the dead holder whose lock was broken for this one
        self.finished: dict[str, Any] | None = None  # the inherited change, once finished
        self.lost: str | None = None
        self._mutex = threading.RLock()  # the heartbeat thread and the writer share the beat
        self._beat = 0
        self._last_beat = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"registry-lock-{name}", daemon=True)

    def tags(self, now_ms: int) -> dict[str, str]:
        tags = {"owner": self.token, "beat": "0", "ttl_ms": str(int(self.ttl_s * 1000)), "acquired_ms": str(now_ms)}
        if self.inherited is not None:
            tags[PENDING_TAG] = json.dumps(self.inherited)
        return tags

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.ttl_s)  # a beat stuck on a dead server must not hold up the release

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 6):
            try:
                self.beat()
            except RegistryLockLost:
                return
            except Exception as err:  # the server may be back by the next beat; check() reports what is wrong
                log.warning("registry lock %s: heartbeat failed (%s); retrying", self.name, err)

    def beat(self) -> None:
        """Renew the lock: make sure it is still ours, then bump its beat."""
        with self._mutex:
            self._verify()
            self._beat += 1
            self.client.set_registered_model_tag(self.name, "beat", str(self._beat))
            self._last_beat = time.monotonic()

    def _verify(self) -> None:
        if self.lost is None:
            holder = lock_tags(self.client, self.name)
            if holder is None or holder.get("owner") != self.token:
                self.lost = (
                    f"registry lock {self.name} was taken over while this process held it (now held by "
                    f"{(holder or {}).get('owner', 'nobody')}): its heartbeat stalled for over {self.ttl_s:g}s"
                )
        if self.lost is not None:
            raise RegistryLockLost(f"{self.lost}; this process wrote nothing more. Re-run to finish the job")

    def check(self) -> None:
        """Before a write that needs the lock: raise RegistryLockLost unless it is still ours (renewed first when
        the last beat is getting old)."""
        with self._mutex:
            if time.monotonic() - self._last_beat > self.ttl_s / 2:
                self.beat()
            else:
                self._verify()

    def record(self, change: dict[str, Any] | None) -> None:
        """Leave (or, with None, clear) the record of the multi-step change this holder is making."""
        self.check()
        if change is None:
            self.client.delete_registered_model_tag(self.name, PENDING_TAG)
        else:
            self.client.set_registered_model_tag(self.name, PENDING_TAG, json.dumps(change))


# (thread, registry, lock name) -> (held lock, depth): the lock is re-entrant within a thread
_held: dict[tuple[int, str, str], list[Any]] = {}


def _key(client, model_name: str) -> tuple[int, str, str]:
    return threading.get_ident(), str(getattr(client, "_registry_uri", "")), f"{model_name}{LOCK_SUFFIX}"


@contextlib.contextmanager
def gate_lock(client, model_name: str, wait_s: float | None = None) -> Iterator[Lock]:
    """Hold the registry lock of model_name (see the module docstring): one holder at a time, across processes
    and machines; a waiter gives up after wait_s (default LOCK_WAIT_S) with RegistryBusy."""
    key = _key(client, model_name)
    if key in _held:
        _held[key][1] += 1
        try:
            yield _held[key][0]
        finally:
            _held[key][1] -= 1
        return
    lock = _acquire(client, key[2], LOCK_WAIT_S if wait_s is None else wait_s)
    _held[key] = [lock, 1]
    lock.start()
    try:
        yield lock
    finally:
        del _held[key]
        lock.stop()
        _release(lock)


def check_held(client, model_name: str) -> None:
    """Raise RegistryLockLost if this thread holds model_name's lock and it was taken over; no-op otherwise."""
    held = _held.get(_key(client, model_name))
    if held is not None:
        held[0].check()


def _acquire(client, name: str, wait_s: float) -> Lock:
    deadline = time.monotonic() + wait_s
    inherited: dict[str, Any] | None = None
    seen: tuple[str, str] | None = None  # (owner, beat) last seen, and since when on our clock
    since = 0.0
    while True:
        lock = Lock(client, name, LOCK_TTL_S, inherited)
        try:
            client.create_registered_model(
                name, tags=lock.tags(int(time.time() * 1000)), description="rewardflow registry lock; see gate_lock"
            )
            return lock
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                # the lock existed when the server tried to create it, and its holder released it before the
                # server read it back to say so (MLflow's SQL store): it is free now, try again
                continue
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        holder = lock_tags(client, name)
        if holder is None:  # released in between: try again at once
            continue
        state = (holder.get("owner", ""), holder.get("beat", ""))
        if state != seen:
            seen, since = state, time.monotonic()
        ttl_s = int(holder.get("ttl_ms") or LOCK_TTL_S * 1000) / 1000
        if time.monotonic() - since >= ttl_s:
            # no beat for a whole TTL: the holder is dead. Re-read just before deleting, so that a lock someone
            # else has just taken over, or a holder that just beat, is left alone.
            again = lock_tags(client, name) or {}
            if (again.get("owner", ""), again.get("beat", "")) == state:
                log.warning("registry lock %s: breaking it (held by %s, no heartbeat for %.0fs)", name, state[0], ttl_s)
                with contextlib.suppress(MlflowException):
                    client.delete_registered_model(name)
                if PENDING_TAG in again:
                    inherited = json.loads(again[PENDING_TAG])
            continue
        if time.monotonic() > deadline:
            raise RegistryBusy(
                f"registry lock {name} is held by {holder.get('owner')} (another pipeline registering or promoting); "
                f"waited {wait_s:.0f}s. Re-run later; a holder that died is counted out {ttl_s:g}s after its last "
                "heartbeat"
            )
        time.sleep(random.uniform(0.05, 0.3))


def _release(lock: Lock) -> None:
    """Delete the lock if it is still ours. A release that fails (server down) leaves a lock without heartbeat,
    which the next holder breaks after the TTL."""
    try:
        holder = lock_tags(lock.client, lock.name)
        if holder is not None and holder.get("owner") == lock.token:
            lock.client.delete_registered_model(lock.name)
        elif not lock.lost:
            log.warning("registry lock %s was taken from us; now held by %s", lock.name, (holder or {}).get("owner"))
    except MlflowException as err:
        log.warning(
            "registry lock %s: could not release it (%s); the next holder breaks it %.0fs after its last heartbeat",
            lock.name,
            err,
            lock.ttl_s,
        )
