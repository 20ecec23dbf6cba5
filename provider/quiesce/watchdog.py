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
#   BEAT                    -> nothing (a holder's heartbeat; a holder silent for HOLD_SILENCE seconds is gone)
# Started with --foreground for tests; otherwise it daemonizes after binding and prints READY first.
import calendar, errno, json, os, random, re, select, signal, socket, sys, threading, time, traceback

VERSION = "2"
SCAN_INTERVAL = 0.1        # seconds between lease scans: the deadline is honoured within this plus the thaw
AGENT_TIMEOUT = 10.0       # seconds to get an agent sync or reply
IDLE_EXIT = 60.0           # exit after this long with no lease and no holder
HOLD_SILENCE = 15.0        # seconds without a byte from a holder (it beats every 2 s) before it counts as gone:
                           # a crashed or hung client machine closes no connection, so sshd would keep its channel


LEASE_NAME = re.compile(r"^[0-9a-f]{32}\.json$")
RETRY_MAX = 5.0            # seconds: a failing thaw is retried with backoff up to this interval
_log_lock = threading.Lock()


def log(dirpath, msg):
    # Logging must never take the daemon down (a full /run, a removed directory, no descriptor left).
    line = "%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), msg)
    try:
        with _log_lock, open(os.path.join(dirpath, "watchdog.log"), "a") as f:
            f.write(line)
    except OSError:
        try:
            sys.stderr.write(line)  # already open, needs no descriptor (/dev/null once daemonized)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_lease(path):
    """A lease record, or None when missing or not a valid lease (never raises)."""
    lease = read_json(path)
    if not isinstance(lease, dict):
        return None
    for key in ("windowId", "socketPath", "frozenAt", "expiresAt"):
        if not isinstance(lease.get(key), str):
            return None
    return lease


def write_json_atomic(path, value):
    tmp = "%s.%d.%d.tmp" % (path, os.getpid(), threading.get_ident())
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


class AgentError(RuntimeError):
    """The agent answered a command with an error reply (not a transport failure)."""


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
            raise AgentError("%s: the agent replied an error: %s" % (command, reply["error"].get("desc")))
        return reply.get("return")


class Watchdog:
    def __init__(self, dirpath):
        self.dir = dirpath
        self.sock_path = os.path.join(dirpath, "watchdog.sock")
        self.sock_ino = None
        self.holders = {}      # connection -> {windowId: leaseFile}
        self.buffers = {}
        self.last_seen = {}    # connection -> time of its last byte
        self.conns = []        # client connections; on self, so a restarted serve() keeps reading them
        self.accept_paused_until = 0.0
        self.pending = {}      # lease file -> (window id, how): thaws owed, retried with backoff
        self.retry_at = {}     # lease file -> (next attempt time, current backoff)
        self.in_flight = set() # lease files with a thaw running in a worker thread
        self.lock = threading.Lock()
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
            except OSError as ce:
                if ce.errno in (errno.EAGAIN, errno.ECONNREFUSED) and self._alive_soon():
                    return None  # a watchdog is starting (bound, not yet listening) or busy
                os.unlink(self.sock_path)  # stale socket of a dead watchdog
                server.bind(self.sock_path)
        os.chmod(self.sock_path, 0o600)
        server.listen(512)
        server.setblocking(False)
        self.sock_ino = os.stat(self.sock_path).st_ino
        return server

    def _alive_soon(self):
        # Another starter may be between bind() and listen(): give it a moment before calling its socket stale.
        for _ in range(20):
            time.sleep(0.05)
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.sock_path)
                probe.close()
                return True
            except OSError:
                probe.close()
        return False

    def deadline(self, path, lease):
        # The deadline is enforced on this host's clock: lease length (from the record) after the lease file was
        # written here (its mtime), so a skewed clock on the client cannot stretch or cut the freeze.
        length = parse_time(lease["expiresAt"]) - parse_time(lease["frozenAt"])
        return os.stat(path).st_mtime + max(0.0, length)

    def end_window(self, lease_file, window_id, how):
        """Thaws the guest of lease_file if its lease still names window_id. True when nothing is owed anymore."""
        path = os.path.join(self.dir, lease_file)
        lease = read_lease(path)
        if not lease or lease.get("windowId") != window_id:
            return True
        agent = None
        try:
            agent = Agent(lease["socketPath"])
            agent.sync()
            # Re-read under the agent channel: nobody else can change the guest's freeze meanwhile.
            lease = read_lease(path)
            if not lease or lease.get("windowId") != window_id:
                return True
            # qemu-ga thaws and clears its flag first, then runs the fsfreeze hook with "thaw"
            # (qmp_guest_fsfreeze_thaw); on Windows it reports that VSS had let the writes resume. So an error reply
            # may come with the guest thawed: the status below decides.
            try:
                thawed = agent.execute("guest-fsfreeze-thaw")
            except AgentError as e:
                log(self.dir, "window %s: the thaw replied an error, checking the status: %s" % (window_id, e))
                thawed = None
            status = agent.execute("guest-fsfreeze-status")
            if status != "thawed":
                log(self.dir, "window %s: thaw returned %r but status is %r; keeping the lease, will retry" % (window_id, thawed, status))
                return False
            # The lease goes first: once it is gone the window is over, whatever happens to the record.
            os.unlink(path)
            write_json_atomic(path[: -len(".json")] + ".ended.json", {
                "windowId": window_id, "how": how, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "thawedCount": thawed, "status": status,
            })
            log(self.dir, "window %s ended (%s): thawed %s, status %s" % (window_id, how, thawed, status))
            return True
        except FileNotFoundError:
            if not os.path.exists(lease["socketPath"]):
                log(self.dir, "window %s: agent socket %s is gone (VM stopped?), will retry" % (window_id, lease["socketPath"]))
            return False
        except Exception as e:  # noqa: BLE001 - logged, and retried with backoff while the lease remains
            log(self.dir, "window %s: thaw (%s) failed, will retry: %r" % (window_id, how, e))
            return False
        finally:
            if agent:
                agent.close()

    def owe(self, lease_file, window_id, how):
        """Schedules a thaw in a worker thread (one per lease at a time), so a silent agent delays no other guest."""
        now = time.time()
        with self.lock:
            if lease_file in self.in_flight:
                self.pending.setdefault(lease_file, (window_id, how))
                return
            due, _ = self.retry_at.get(lease_file, (0.0, 0.0))
            if due > now:
                self.pending.setdefault(lease_file, (window_id, how))
                return
            self.in_flight.add(lease_file)
            self.pending.pop(lease_file, None)

        def work():
            done = False
            try:
                done = self.end_window(lease_file, window_id, how)
            finally:
                with self.lock:
                    self.in_flight.discard(lease_file)
                    if done:
                        self.retry_at.pop(lease_file, None)
                    else:
                        _, backoff = self.retry_at.get(lease_file, (0.0, 0.0))
                        backoff = min(RETRY_MAX, max(0.2, backoff * 2))
                        self.retry_at[lease_file] = (time.time() + backoff, backoff)
                        if how == "disconnected":
                            self.pending[lease_file] = (window_id, how)

        threading.Thread(target=work, daemon=True).start()

    def scan(self):
        now = time.time()
        any_lease = False
        with self.lock:
            owed = list(self.pending.items())
        for lease_file, (window_id, how) in owed:
            self.owe(lease_file, window_id, how)
        for name in os.listdir(self.dir):
            if not LEASE_NAME.match(name):
                continue
            path = os.path.join(self.dir, name)
            lease = read_lease(path)
            if not lease:
                continue
            any_lease = True
            try:
                expires = self.deadline(path, lease)
            except (ValueError, OSError):
                continue  # a bad time or a lease removed meanwhile; never fatal
            if expires <= now:
                self.owe(name, lease["windowId"], "expired")
        with self.lock:
            busy = any_lease or self.holders or self.pending or self.in_flight
        if busy:
            self.last_busy = now

    def send(self, conn, data):
        try:
            conn.sendall(data)
        except OSError:
            pass  # the client left before the reply; its EOF is handled by the select loop

    def on_line(self, conn, line):
        self.last_busy = time.time()
        parts = line.split()
        if not parts:
            return
        if parts[0] == "PING":
            self.send(conn, ("PONG %s\n" % VERSION).encode())
        elif parts[0] == "HOLD" and len(parts) == 3 and LEASE_NAME.match(parts[2]):
            self.holders.setdefault(conn, {})[parts[1]] = parts[2]
            self.send(conn, b"OK\n")
        elif parts[0] == "DISARM" and len(parts) == 2:
            self.holders.get(conn, {}).pop(parts[1], None)
            self.send(conn, b"OK\n")
        elif parts[0] == "BEAT":
            pass  # its arrival is what counts (last_seen)
        else:
            self.send(conn, b"ERR unknown command\n")

    def drop(self, conn):
        windows = self.holders.pop(conn, {})
        self.buffers.pop(conn, None)
        self.last_seen.pop(conn, None)
        conn.close()
        for window_id, lease_file in windows.items():
            self.owe(lease_file, window_id, "disconnected")

    def forget(self, conn):
        if conn in self.conns:
            self.conns.remove(conn)
        self.drop(conn)

    def accept_all(self, server):
        while True:  # accept every pending client, not one per pass
            try:
                conn, _ = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # Out of file descriptors (EMFILE, ENFILE) or the like: pause accepting, keep enforcing leases.
                log(self.dir, "cannot accept a client (%s); pausing accepts for 1 s" % e)
                self.accept_paused_until = time.time() + 1.0
                return
            conn.setblocking(True)
            conn.settimeout(5.0)
            self.conns.append(conn)
            self.buffers[conn] = b""
            self.last_busy = time.time()

    def serve(self, server):
        while True:
            listening = [server] if time.time() >= self.accept_paused_until else []
            readable, _, _ = select.select(listening + self.conns, [], [], SCAN_INTERVAL)
            for r in readable:
                if r is server:
                    self.accept_all(server)
                    continue
                try:
                    data = r.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.forget(r)
                    continue
                self.last_seen[r] = time.time()
                self.buffers[r] += data
                while b"\n" in self.buffers.get(r, b""):
                    line, self.buffers[r] = self.buffers[r].split(b"\n", 1)
                    self.on_line(r, line.decode("utf-8", "replace"))
            now = time.time()
            for conn in [c for c in self.holders if now - self.last_seen.get(c, now) > HOLD_SILENCE]:
                log(self.dir, "a holder of %s sent nothing for %.0f s: treating it as gone" % (sorted(self.holders[conn]), HOLD_SILENCE))
                self.forget(conn)
            if not os.path.isdir(self.dir):
                return  # the lease directory was removed: nothing left to watch
            try:
                self.scan()
            except Exception:  # noqa: BLE001 - a scan never stops the watchdog: logged, and tried again next pass
                log(self.dir, "scan failed, will retry: %s" % traceback.format_exc())
            if not self.conns and time.time() - self.last_busy > IDLE_EXIT:
                try:
                    if os.stat(self.sock_path).st_ino == self.sock_ino:
                        os.unlink(self.sock_path)  # only our own socket, never a newer daemon's
                except OSError:
                    pass
                # A lease written while we were deciding to leave must not go unwatched.
                if any(LEASE_NAME.match(n) for n in os.listdir(self.dir)):
                    log(self.dir, "lease appeared during idle exit; staying")
                    server.close()
                    server = self.bind()
                    if server is None:
                        return
                    self.last_busy = time.time()
                    continue
                log(self.dir, "idle, exiting")
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
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    while True:
        try:
            w.serve(server)
            return
        except Exception:  # noqa: BLE001 - the watchdog must outlive any bug: log it and keep serving
            log(dirpath, "watchdog error, continuing: %s" % traceback.format_exc())
            time.sleep(SCAN_INTERVAL)


if __name__ == "__main__":
    main()
