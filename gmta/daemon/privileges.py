"""Dropping root after the listening sockets are bound (global ``run_as``).

Started as root (by an init system without ``User=``, or by hand), ``gmta
run`` binds every listener first, so ports below 1024 work, then becomes the
``run_as`` user for good before any module starts: everything gmta writes
(queue, Maildirs, buffers) is created by that user. Started as that user
already (systemd ``User=gmta``), nothing happens.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass


@dataclass(frozen=True)
class RunAs:
    """The resolved ``run_as USER [GROUP]``: the group defaults to the user's own."""

    user: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, user: str, group: str | None = None) -> "RunAs":
        """Resolve names (or numeric ids); KeyError names what does not exist."""
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise KeyError(f"no such user: {user}") from None
        gid = entry.pw_gid
        if group is not None:
            try:
                gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
            except KeyError:
                raise KeyError(f"no such group: {group}") from None
        return cls(entry.pw_name, entry.pw_uid, gid)

    @property
    def is_current(self) -> bool:
        return os.geteuid() == self.uid and os.getegid() == self.gid


def give_directory(path: str, run_as: RunAs) -> None:
    """Make *path* (not its contents) the ``run_as`` user's, when root is about to be dropped."""
    os.chown(path, run_as.uid, run_as.gid)


def drop(run_as: RunAs) -> bool:
    """Become *run_as* for good; False if this process already is. Raises PermissionError."""
    if run_as.is_current:
        return False
    if os.geteuid() != 0:
        raise PermissionError(f"cannot switch to user {run_as.user}: "
                              f"running as uid {os.geteuid()}, not root")
    # Supplementary groups first (they need root), then the group, then the
    # user; setuid last because after it nothing else may be changed. Real,
    # effective and saved ids all change, so root cannot be regained.
    os.setgroups(os.getgrouplist(run_as.user, run_as.gid))
    os.setresgid(run_as.gid, run_as.gid, run_as.gid)
    os.setresuid(run_as.uid, run_as.uid, run_as.uid)
    return True
