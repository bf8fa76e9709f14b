"""A FUSE mount that never answers: ``hung_mount_tool.py DIR`` mounts a FUSE file system on
DIR (as root, in the caller's mount namespace) and never reads ``/dev/fuse``, so the first
lookup or getattr under DIR waits in the kernel, as on a hung sshfs or a FUSE server that
never answers ``INIT``. It prints ``mounted`` and holds the mount until its stdin ends;
exiting closes ``/dev/fuse``, which aborts the connection (the waiters get ``ENOTCONN``)
and the mount is detached."""

from __future__ import annotations

import ctypes
import os
import sys

MNT_DETACH = 2


def main(where: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    options = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
    if libc.mount(b"nipc-hung", where.encode(), b"fuse", 0, options) != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"mount fuse on {where}: {os.strerror(err)}")
    print("mounted", flush=True)
    sys.stdin.read()
    os.close(fd)
    libc.umount2(where.encode(), MNT_DETACH)


if __name__ == "__main__":
    main(sys.argv[1])
