#!/usr/bin/env python3
# pulumi-quiesce watchdog: one per lease directory on a hypervisor host (DESIGN.md, "The lease and the watchdog").
#
# It ends every freeze whose owner can no longer end it:
#   - at the lease deadline (expiresAt), for every lease file in the directory;
#   - when a holder's channel closes without DISARM (thawOnDisconnect): the process that froze is gone.
# It thaws a guest only if the lease still names the window it is acting for, and it reads the lease only
# while it holds the guest's agent channel (the chardev serves one client at a time), so it can never race
# a create or a release of another window. It records how each window ended in <lease>.ended.json.
#
# Protocol on <dir>/watchdog.sock, one line per message:
#   PING                    -> PONG <version>
#   HOLD <windowId> <file>  -> OK      (this connection holds the window; <file> is the lease file name)
#   DISARM <windowId>       -> OK      (released by its owner: closing the connection no longer thaws)
# Started with --foreground for tests; otherwise it daemonizes after binding and prints READY first.
import calendar, errno, json, os, random, select, signal, socket, sys, time

VERSION = "1"
SCAN_INTERVAL = 0.1        # seconds between lease scans: the deadline is honoured within this plus the thaw
AGENT_TIMEOUT = 10.0       # seconds to get an agent sync or reply
IDLE_EXIT = 60.0           # exit after this long with no lease and no holder


def log(dirpath, msg):
    with open(os.path.join(dirpath, "watchdog.log"), "a") as f:
        f.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), msg))


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return None


def write_json_atomic(path, value):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.write("\n")
    os.rename(tmp, path)


def parse_time(s):
    # ISO 8601 UTC as written by the lifecycle: 2026-11-26T06:15:43.123Z
    s = s.rstrip("Z")
    frac = 0.0
    if "." in s:
        s, f = s.split(".", 1)
        frac = float("0." + f)
    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%S")) + frac


class Agent:
    """A minimal QGA client: 0xFF + guest-sync-delimited, then one command at a time (AGENT-FACTS.md)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(AGENT_TIMEOUT)
        self.sock.connect(path)
        self.buf = b""

    def close(self):
        self.sock.close()

    def _line(self, deadline):
        while b"\n" not in self.buf:
            remaining = deadline - time.time()
            if remaining <= 0:
                raise TimeoutError("agent did not answer")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("agent channel closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def sync(self):
        sync_id = random.randint(1, 2**31 - 2)
        self.sock.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode() + b"\n")
        deadline = time.time() + AGENT_TIMEOUT
        while True:
            line = self._line(deadline)
            if b"\xff" in line:
                line = line[line.rindex(b"\xff") + 1:]
                try:
                    if json.loads(line.decode("utf-8", "replace")).get("return") == sync_id:
                        return
                except ValueError:
                    pass  # a stale or partial line: keep discarding until our own reply

    def execute(self, command):
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        reply = json.loads(self._line(time.time() + AGENT_TIMEOUT).decode("utf-8", "replace"))
        if "error" in reply:
            raise RuntimeError("%s: %s" % (command, reply["error"].get("desc")))
        return reply.get("return")


class Watchdog:
    def __init__(self, dirpath):
        self.dir = dirpath
        self.sock_path = os.path.join(dirpath, "watchdog.sock")
        self.holders = {}      # connection -> {windowId: leaseFile}
        self.buffers = {}
        self.pending = {}      # lease file -> window id, disconnect thaws to retry
        self.last_busy = time.time()

    def bind(self):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(self.sock_path)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.sock_path)
                probe.close()
                return None  # another watchdog serves this directory
            except OSError:
                os.unlink(self.sock_path)  # stale socket of a dead watchdog
                server.bind(self.sock_path)
        os.chmod(self.sock_path, 0o600)
        server.listen(128)
        server.setblocking(False)
        return server

    def end_window(self, lease_file, window_id, how):
        """Thaws the guest of lease_file if its lease still names window_id; records how the window ended."""
        path = os.path.join(self.dir, lease_file)
        lease = read_json(path)
        if not lease or lease.get("windowId") != window_id:
            return True
        agent = None
        try:
            agent = Agent(lease["socketPath"])
            agent.sync()
            # Re-read under the agent channel: nobody else can change the guest's freeze meanwhile.
            lease = read_json(path)
            if not lease or lease.get("windowId") != window_id:
                return True
            thawed = agent.execute("guest-fsfreeze-thaw")
            status = agent.execute("guest-fsfreeze-status")
            write_json_atomic(path[: -len(".json")] + ".ended.json", {
                "windowId": window_id, "how": how, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "thawedCount": thawed, "status": status,
            })
            os.unlink(path)
            log(self.dir, "window %s ended (%s): thawed %s, status %s" % (window_id, how, thawed, status))
            return True
        except Exception as e:  # noqa: BLE001 - logged, and retried on the next scan while the lease remains
            log(self.dir, "window %s: thaw (%s) failed, will retry: %r" % (window_id, how, e))
            return False
        finally:
            if agent:
                agent.close()

    def scan(self):
        now = time.time()
        any_lease = False
        # Thaws owed to holders that went away but could not be done yet (agent busy or not answering).
        for lease_file, window_id in list(self.pending.items()):
            if self.end_window(lease_file, window_id, "disconnected"):
                del self.pending[lease_file]
        for name in os.listdir(self.dir):
            if not name.endswith(".json") or name.endswith(".ended.json"):
                continue
            lease = read_json(os.path.join(self.dir, name))
            if not lease or "expiresAt" not in lease:
                continue
            any_lease = True
            try:
                expires = parse_time(lease["expiresAt"])
            except ValueError:
                log(self.dir, "lease %s has a bad expiresAt %r" % (name, lease.get("expiresAt")))
                continue
            if expires <= now:
                self.end_window(name, lease["windowId"], "expired")
        if any_lease or self.holders or self.pending:
            self.last_busy = now

    def on_line(self, conn, line):
        parts = line.split()
        if not parts:
            return
        if parts[0] == "PING":
            conn.sendall(("PONG %s\n" % VERSION).encode())
        elif parts[0] == "HOLD" and len(parts) == 3 and "/" not in parts[2]:
            self.holders.setdefault(conn, {})[parts[1]] = parts[2]
            conn.sendall(b"OK\n")
        elif parts[0] == "DISARM" and len(parts) == 2:
            self.holders.get(conn, {}).pop(parts[1], None)
            conn.sendall(b"OK\n")
        else:
            conn.sendall(b"ERR unknown command\n")

    def drop(self, conn):
        windows = self.holders.pop(conn, {})
        self.buffers.pop(conn, None)
        conn.close()
        for window_id, lease_file in windows.items():
            if not self.end_window(lease_file, window_id, "disconnected"):
                self.pending[lease_file] = window_id

    def serve(self, server):
        conns = []
        while True:
            readable, _, _ = select.select([server] + conns, [], [], SCAN_INTERVAL)
            for r in readable:
                if r is server:
                    conn, _ = server.accept()
                    conn.setblocking(True)
                    conns.append(conn)
                    self.buffers[conn] = b""
                    continue
                try:
                    data = r.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    conns.remove(r)
                    self.drop(r)
                    continue
                self.buffers[r] += data
                while b"\n" in self.buffers[r]:
                    line, self.buffers[r] = self.buffers[r].split(b"\n", 1)
                    self.on_line(r, line.decode("utf-8", "replace"))
            if not os.path.isdir(self.dir):
                return  # the lease directory was removed: nothing left to watch
            self.scan()
            if not conns and time.time() - self.last_busy > IDLE_EXIT:
                log(self.dir, "idle, exiting")
                os.unlink(self.sock_path)
                return


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    foreground = "--foreground" in sys.argv
    dirpath = args[0]
    os.makedirs(dirpath, mode=0o700, exist_ok=True)
    w = Watchdog(dirpath)
    server = w.bind()
    if server is None:
        print("READY already-running", flush=True)
        return
    if not foreground:
        # Detach: survive the SSH session that started us (new session, no controlling terminal).
        if os.fork() > 0:
            print("READY started", flush=True)
            os._exit(0)
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if os.fork() > 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    else:
        print("READY foreground", flush=True)
    log(dirpath, "watchdog %s serving %s (pid %d)" % (VERSION, dirpath, os.getpid()))
    w.serve(server)


if __name__ == "__main__":
    main()
