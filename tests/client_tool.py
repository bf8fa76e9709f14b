"""A NIPC client run as a real local user by the tests; prints one JSON object.

    client_tool.py greet TARGET            connect, send 'ping', half-close, read all
    client_tool.py bulk TARGET N SEED      send N seeded bytes while reading to EOF
    client_tool.py raw LINE                send LINE (escapes allowed) and read the reply
    client_tool.py raw-all TEXT            send TEXT, half-close, read everything
"""

from __future__ import annotations

import errno
import json
import socket
import sys

import nipc
from nipc.client import daemon_socket

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from support import send_while_reading, stream  # noqa: E402


def main() -> dict[str, object]:
    verb, *args = sys.argv[1:]
    if verb in ("raw", "raw-all"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(daemon_socket())
        s.sendall(args[0].encode("utf-8").decode("unicode_escape").encode("latin-1"))
        s.settimeout(30)
        data = b""
        if verb == "raw-all":
            s.shutdown(socket.SHUT_WR)
        while (verb == "raw-all" or b"\n" not in data) and (chunk := s.recv(4096)):
            data += chunk
        return {"reply": data.decode("utf-8", "replace")}
    try:
        sock = nipc.connect(args[0], timeout=60)
    except OSError as e:
        return {"error": errno.errorcode.get(e.errno or 0, str(e.errno)), "message": e.strerror}
    if verb == "greet":
        sock.sendall(b"ping\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        first, _, rest = data.partition(b"\n")
        return {"server": json.loads(first), "echo": rest.decode()}
    if verb == "bulk":
        digest, n = send_while_reading(sock, int(args[1]), int(args[2]))
        return {"received": digest, "received_bytes": n}
    if verb == "halfclose":
        size, seed = int(args[1]), int(args[2])
        for part in stream(seed, size):
            sock.sendall(part)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return {"reply": data.decode()}
    raise SystemExit(f"unknown verb {verb}")


if __name__ == "__main__":
    print(json.dumps(main()))
