# A hostile local client of switchyardd's control socket, run by the tests
# as an unprivileged user: python3 hostile_client.py MODE SOCKET N
#
#   idle  N: open N connections and hold them, saying nothing.
#   list  N: open N connections with a 4 KiB receive buffer, ask each for
#            the binding list, and never read.
#   flood N: N threads each ask for the binding list and read it, over and
#            over (reconnecting when the daemon hangs up).
#   bind  N: on one connection, ask N times to bind (refused: not root).
#   fakereply N: on N connections at once, send a message flagged a reply
#            (list-bindings, 1 GiB announced) and stream up to 64 MiB of
#            it; REFUSED counts the connections the daemon hung up on
#            before that.
#
# It prints "ready OPEN REFUSED" once set up, then waits until its stdin
# closes; flood and bind print "done COUNT" when finished.
import socket
import struct
import sys
import threading

mode, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
REPLY = 0x1
MORE = 0x2


def message(op, payload):
    p = payload.encode()
    return b"SWYD" + struct.pack(">HHHHII", 1, op, 0, 0, len(p), len(p)) + p


def dial(rcvbuf=0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect(path)
    return s


def read_reply(s):
    """Reads one reply; returns its payload, or None if the daemon hung up."""
    out = []
    while True:
        d = s.recv(70000)
        if not d:
            return None
        flags = struct.unpack(">H", d[8:10])[0]
        out.append(d[20:])
        if not flags & MORE:
            return b"".join(out)


held = []
if mode in ("idle", "list"):
    refused = 0
    for i in range(n):
        try:
            s = dial(4096 if mode == "list" else 0)
            if mode == "list":
                s.send(message(4, "{}"))
            held.append(s)
        except OSError:
            refused += 1
    print("ready", len(held), refused, flush=True)
    sys.stdin.read()
elif mode == "flood":
    stop = threading.Event()
    count = [0]
    lock = threading.Lock()

    def loop():
        s = None
        while not stop.is_set():
            try:
                if s is None:
                    s = dial()
                s.send(message(4, "{}"))
                if read_reply(s) is None:
                    s.close()
                    s = None
                    continue
                with lock:
                    count[0] += 1
            except OSError:
                if s is not None:
                    s.close()
                s = None

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    print("ready", n, 0, flush=True)
    sys.stdin.read()
    stop.set()
    print("done", count[0], flush=True)
elif mode == "fakereply":
    hung_up = [0]
    lock = threading.Lock()

    def push():
        chunk = b"x" * 60000
        head = b"SWYD" + struct.pack(">HHHHII", 1, 4, REPLY | MORE, 0, 1 << 30, len(chunk))
        try:
            s = dial()
            held.append(s)
            for i in range((64 << 20) // len(chunk)):
                s.send(head + chunk)
        except OSError:
            with lock:
                hung_up[0] += 1

    threads = [threading.Thread(target=push) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("ready", n, hung_up[0], flush=True)
    sys.stdin.read()
elif mode == "bind":
    s = dial()
    print("ready", 1, 0, flush=True)
    refused = 0
    body = '{"binding":{"label":"x","protocol":"tcp","prefix":"10.9.9.0/24","ports":"80"}}'
    for i in range(n):
        s.send(message(2, body))
        r = read_reply(s)
        if r is not None and b"permission" in r:
            refused += 1
    print("done", refused, flush=True)
    sys.stdin.read()
