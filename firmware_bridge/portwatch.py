"""Who else is on the unit's port: the host link's evidence that another process is reading it.

Another process reading the port takes bytes the unit sent to this host; the link then waits
for replies it will never see. :func:`port_alive` tells that apart from a port that went away
(a readable port that yields nothing, yet still answers an ioctl, was read by someone else), and
:func:`other_readers` names the processes that have the same device open for reading (Linux
/proc; nothing elsewhere), so the one-line error can say whom to stop.
"""

from __future__ import annotations

import fcntl
import os
import stat
import termios

__all__ = ["opened_for_reading", "other_readers", "port_alive"]


def port_alive(fd: int) -> bool:
    """Does the port still answer an ioctl (FIONREAD)? A hung-up tty (a board unplugged, a pty
    whose other end closed) fails every ioctl with EIO."""
    try:
        fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return False
    return True


def opened_for_reading(pid: int, fd: str) -> bool:
    """Is descriptor ``fd`` of process ``pid`` open for reading (not O_WRONLY)? True when the
    system does not say."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE != os.O_WRONLY
    except (OSError, ValueError, IndexError):
        pass
    return True


def other_readers(url: str, limit: int = 3) -> str:
    """The other processes that have the device ``url`` open for reading, as "pid N (name)"
    (Linux /proc; "" when none is found, on other systems, or for a URL that is not a device
    path). A write-only holder (QEMU's keep-alive descriptor, a second writer) cannot take the
    unit's replies and is not listed."""
    try:
        rdev = os.stat(url)
    except (OSError, ValueError):
        return ""
    if not stat.S_ISCHR(rdev.st_mode):
        return ""
    me = os.getpid()
    found: list[str] = []
    try:
        pids = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return ""
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = list(os.scandir(f"/proc/{pid}/fd"))
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                st = os.stat(fd.path)
            except OSError:
                continue
            if (
                stat.S_ISCHR(st.st_mode)
                and st.st_rdev == rdev.st_rdev
                and opened_for_reading(pid, fd.name)
            ):
                try:
                    with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                        name = f.read().strip()
                except OSError:
                    name = "?"
                found.append(f"pid {pid} ({name})")
                break
        if len(found) >= limit:
            break
    return ", ".join(found)
