"""The reaper: one small process between the daemon and each process backend.

A backend (vLLM and its engine and worker processes) may spawn children that leave
its process group or session, or daemonize by forking twice. A process group or a
`killpg` cannot find those; the kernel's child subreaper can: every descendant that
loses its parent is re-parented to the nearest subreaper above it instead of init. So
each backend runs under its own reaper (PR_SET_CHILD_SUBREAPER), whose descendants
are, at every moment, exactly what the backend started. The reaper:

- starts the backend's command, passing its output pipe through;
- on SIGTERM (a stop, or the daemon's death through PR_SET_PDEATHSIG) sends SIGTERM to
  every descendant, SIGKILL to what is left after the grace period, reaps them all,
  and exits;
- when the backend's main process exits on its own, ends whatever it left behind the
  same way, then exits with the main process's exit code (128+N for signal N);
- drops the supplementary groups it inherited, when it may (the daemon's `docker`
  group must not reach a backend: the Docker socket is root-equivalent).

Signals go through pidfds, opened before each process's parent is checked, so a PID
that was reaped and reused by an unrelated process is never signalled.

Only the standard library: the daemon runs this file with `python -I -S`, so a backend
starts in a few milliseconds without the daemon's imports.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
HANDLED = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
CANNOT_RUN = 127


def _parent_of(pid: int) -> int | None:
    """`pid`'s parent from /proc (the field after the command name, which may hold ')')."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (ValueError, IndexError):
        return None


def descendants(root: int) -> set[int]:
    """Every process below `root`, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (parent := _parent_of(int(entry))) is not None:
            children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def signal_tree(root: int, sig: signal.Signals) -> int:
    """Send `sig` to every descendant of `root`; how many were signalled.

    Each process is pinned by a pidfd first, then its parent is checked: if the PID was
    reused meanwhile, the new process's parent is not in the tree (unless the tree
    forked it, and then it is ours too), so no stranger is ever signalled."""
    tree = descendants(root)
    members = tree | {root}
    sent = 0
    for pid in tree:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue  # gone already
        try:
            if _parent_of(pid) in members:
                signal.pidfd_send_signal(pidfd, sig)
                sent += 1
        except OSError:
            pass
        finally:
            os.close(pidfd)
    return sent


def exit_status(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _reap(leader: int) -> tuple[bool, int | None]:
    """Reap every child that has exited: (any children left, the leader's exit code)."""
    leader_code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False, leader_code
        if pid == 0:
            return True, leader_code
        if pid == leader:
            leader_code = exit_status(status)


def run(daemon_pid: int, grace_s: float, command: list[str]) -> int:
    """Run `command` under this subreaper until it and all it started are gone."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != daemon_pid:
        return 1  # the daemon died before the death signal was armed
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    with contextlib.suppress(PermissionError):
        os.setgroups([])
    leader = os.fork()
    if leader == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        try:
            os.execv(command[0], command)
        except OSError as exc:
            print(f"modeld: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(CANNOT_RUN)
    me = os.getpid()
    code: int | None = None
    ending_since: float | None = None
    while True:
        left, exited = _reap(leader)
        if exited is not None:
            code = exited
        if not left:
            break
        now = time.monotonic()
        if code is not None and ending_since is None:
            # The main process is gone: what it left behind must not keep GPU memory.
            signal_tree(me, signal.SIGTERM)
            ending_since = now
        if ending_since is not None and now - ending_since >= grace_s:
            # Past the grace period, again at every turn: a survivor may have forked.
            signal_tree(me, signal.SIGKILL)
            wait_s = 0.1
        elif ending_since is not None:
            wait_s = max(0.01, ending_since + grace_s - now)
        else:
            wait_s = 1.0
        info = signal.sigtimedwait(HANDLED, wait_s)
        if info is not None and info.si_signo != signal.SIGCHLD and ending_since is None:
            signal_tree(me, signal.SIGTERM)
            ending_since = time.monotonic()
    return code if code is not None else 128 + signal.SIGTERM


def main() -> None:
    """`reaper.py DAEMON_PID GRACE_S -- COMMAND...`"""
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        print("usage: reaper.py DAEMON_PID GRACE_S -- COMMAND...", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(int(sys.argv[1]), float(sys.argv[2]), sys.argv[4:]))


if __name__ == "__main__":
    main()
