#!/usr/bin/env python3
# pulumi-quiesce host daemon: the one owner of every change pulumi-quiesce makes to a guest's freeze state on
# this host (DESIGN.md, "The host daemon"). One per lease directory; python3 >= 3.6 (RHEL 8's platform-python),
# standard library only. It is fed to `python3 - DIR` on stdin: no copy of it is ever run from a file.
#
# Records. One per guest, keyed by the agent socket's identity (device and inode of the resolved path, never the
# spelling the client typed). A claim is a compare-and-set, release and end a compare-and-delete by window id; all
# of them run on this process's one event loop, so nothing interleaves. Records are persisted (claim-*.json) so a
# restarted daemon still ends them; how a window ended is kept in ended-<windowId>.json.
#
# The agent connection. From claim to end the daemon keeps the guest's agent socket open (the chardev serves one
# client at a time, so nothing else can freeze or thaw the guest meanwhile). The client's QGA session runs over a
# relay onto it; the deadline, a holder's disconnect or silence, and a release cut any relay, then the daemon
# syncs, thaws, verifies "thawed", records how the window ended and removes the record.
#
# libvirt guests. libvirt owns such a guest's agent socket for good, so the daemon cannot hold it: a record is keyed
# by the domain's UUID instead ("lv-<uuid>"), the client's libvirt RPC session runs over a relay onto a fresh
# connection to libvirt's socket (cut, like any relay, before an end thaws, so nothing the client sent can reach
# libvirt after the daemon's thaw), and the daemon's own status and thaw go through libvirt's RPC protocol on a
# connection it holds while the window stands (LibvirtRpc: DOMAIN_FSTHAW, and DOMAIN_AGENT_COMMAND for the status).
# No shell, and no process, is involved.
#
# Protocol on DIR/daemon.sock (0600, in a 0700 directory owned by this user): one JSON object per line.
# Requests carry "id" and "op"; each reply carries the same "id" with "ok": true, or "ok": false plus "code" and
# "message". Requests on one connection run concurrently. Ops:
#   hello                                   -> version, pid, supervisor
#   beat                                    (no reply: a holder's heartbeat)
#   claim   socket|libvirt windowId owner selection claimMs agentMs thawMs
#           (libvirt = {uri, uuid, name, socket}: a libvirt domain, by its UUID, through libvirt's socket)
#                                           -> record. This connection holds the window: if it closes, or is
#                                              silent for HOLD_SILENCE s, the window ends ("disconnected").
#   arm     windowId leaseMs                -> record, with frozenAt = now and the deadline leaseMs later
#   unhold  windowId                        -> the window no longer ends when this connection closes
#   attach  windowId                        -> this connection holds the window again (a holder re-arming)
#   relay   windowId                        -> {ok}, then the connection is a raw byte pipe to the agent
#   status  socket?|libvirt? windowId? agent?        -> agentStatus (frozen|thawed|gone; null with agent: false), record, ended
#   release windowId thaw                   -> outcome, thaw {count, error, status}, record, ended
#   force   socket|libvirt                          -> break-glass thaw of the guest, and removal of any record
#   list                                    -> records
# Events, sent unasked on a holder's connection: {"event": "ended", "windowId", "how"} when a window it holds ends.
import asyncio, errno, fcntl, json, os, random, re, resource, signal, socket, stat, struct, sys, time, traceback

VERSION = "3"
AGENT_TIMEOUT = 10.0      # seconds: sync and ordinary agent commands issued by the daemon
HOLD_SILENCE = 15.0       # seconds without a byte from a holder (it beats every 2 s) before it counts as gone
REATTACH_GRACE = 15.0     # seconds a record loaded at start waits for its holder to re-attach
IDLE_EXIT = 60.0          # seconds with no record and no client before the daemon exits
RETRY_MAX = 5.0           # seconds: a failing thaw is retried with backoff up to this interval
ENDED_KEEP = 7 * 86400    # seconds an ended record is kept
WINDOW_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CLAIM_FILE = re.compile(r"^claim-([0-9]+-[0-9]+|lv-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.json$")
LIBVIRT_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# Local URIs of the QEMU driver only, with libvirt's own `socket` parameter at most: the daemon talks to this host.
LIBVIRT_URI = re.compile(r"^qemu:///(system|session)(\?socket=/[A-Za-z0-9._/+-]{1,4000})?$")
LIBVIRT_SLACK = 35.0      # seconds: libvirt waits up to 30 s for a domain's job before it gives up; then some
RELAY_DRAIN = 120.0       # seconds a cut libvirt relay waits for libvirt to answer the calls it forwarded
ENDED_FILE = re.compile(r"^ended-([A-Za-z0-9][A-Za-z0-9._-]{0,127})\.json$")
EXIT_REFUSED = 4          # the lease directory failed the trust checks


class Refused(Exception):
    """The lease directory cannot be trusted; the message says what to do."""


class Failure(Exception):
    """A request failed: code and message go back to the client."""

    def __init__(self, code, message, **fields):
        Exception.__init__(self, message)
        self.code, self.message, self.fields = code, message, fields


class VmGone(Exception):
    """The agent socket no longer exists, or is another one now: the VM stopped, and its freeze with it."""


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + (".%03dZ" % int((t % 1) * 1000))


# ---- trust -------------------------------------------------------------------------------------------------

def check_dir(path):
    """Makes sure DIR can be trusted with freeze state: owned by us, not writable by group or others, no
    symbolic link, and every ancestor owned by root or us and not writable by others unless sticky."""
    if not os.path.isabs(path):
        raise Refused("the lease directory %s is not an absolute path" % path)
    uid = os.geteuid()
    parent = os.path.dirname(path.rstrip("/")) or "/"
    full = path.rstrip("/")

    def cannot_create(e):
        return Refused("cannot create the lease directory %s as uid %d: %s. Create it on the host for this user "
                       "(install -d -m 700 -o %d %s), or choose a leaseDir (--lease-dir) this user may create, e.g. under "
                       "$XDG_RUNTIME_DIR" % (full, uid, e.strerror, uid, full))
    existing = parent
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    p = os.path.realpath(existing)  # the deepest existing ancestor: checked up to / before anything is created
    while True:
        st = os.stat(p)
        if st.st_uid not in (0, uid):
            raise Refused("the lease directory's ancestor %s is owned by uid %d: another user could replace the lease directory. "
                          "Choose a leaseDir (--lease-dir) under a directory owned by root or by this user" % (p, st.st_uid))
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise Refused("the lease directory's ancestor %s is writable by group or others (mode %o) without the sticky bit: "
                          "another user could replace the lease directory. Choose a leaseDir (--lease-dir) elsewhere, e.g. "
                          "/run/pulumi-quiesce" % (p, stat.S_IMODE(st.st_mode)))
        if p == "/":
            break
        p = os.path.dirname(p)
    try:
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o700)  # missing levels are created by this user, 0700
    except OSError as e:
        raise cannot_create(e)
    real_parent = os.path.realpath(parent)
    full = os.path.join(real_parent, os.path.basename(path.rstrip("/")))
    try:
        os.mkdir(full, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise cannot_create(e)
    st = os.lstat(full)
    if stat.S_ISLNK(st.st_mode):
        raise Refused("the lease directory %s is a symbolic link; give the directory itself as leaseDir (--lease-dir)" % full)
    if not stat.S_ISDIR(st.st_mode):
        raise Refused("the lease directory %s is not a directory; remove it, or choose another leaseDir (--lease-dir)" % full)
    if st.st_uid != uid:
        raise Refused("the lease directory %s is owned by uid %d, not by this user (uid %d): another user could forge or remove "
                      "leases. Run `chown %d %s` on the host, or choose another leaseDir (--lease-dir)" % (full, st.st_uid, uid, uid, full))
    if st.st_mode & 0o022:
        raise Refused("the lease directory %s is writable by group or others (mode %o): another user could forge or remove "
                      "leases, or make the daemon thaw any socket. Run `chmod 700 %s` on the host, or choose another leaseDir "
                      "(--lease-dir)" % (full, stat.S_IMODE(st.st_mode), full))
    return full


def open_private(path, flags):
    """Opens a file in the lease directory without following a symbolic link planted at its name."""
    return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)


def write_json(dirpath, name, value):
    """Atomically replaces dirpath/name: an unpredictable temp name created exclusively, then renamed over (a
    rename replaces a symbolic link at the name, it never writes through it)."""
    tmp = os.path.join(dirpath, ".tmp-%s" % os.urandom(8).hex())
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(value) + "\n")
        os.rename(tmp, os.path.join(dirpath, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(dirpath, name):
    fd = open_private(os.path.join(dirpath, name), os.O_RDONLY)
    with os.fdopen(fd) as f:
        return json.load(f)


def unlink_quiet(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---- the agent connection ----------------------------------------------------------------------------------

class AgentConn(asyncio.Protocol):
    """The daemon's connection to one guest's agent socket. Bytes go to the relay while one is attached, else to
    the daemon's own minimal QGA client (0xFF + guest-sync-delimited, then one command at a time)."""

    def __init__(self, on_lost):
        self.transport = None
        self.buf = b""
        self.sink = None
        self.closed = False
        self.on_lost = on_lost
        self.waiter = None
        # True after our own sync, while only the daemon's own client has used the connection since (each of its
        # commands reads exactly its one reply): no stale bytes can be in flight, so the next use needs no sync.
        self.clean = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.sink is not None:
            self.sink(data)
            return
        self.buf += data
        self._wake()

    def connection_lost(self, exc):
        self.closed = True
        if self.sink is not None:
            self.sink(None)
        self._wake()
        self.on_lost(self)

    def _wake(self):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def close(self):
        if self.transport is not None:
            self.transport.close()

    def write(self, data):
        if not self.closed:
            self.transport.write(data)

    async def _line(self, deadline):
        loop = asyncio.get_event_loop()
        while b"\n" not in self.buf:
            if self.closed:
                raise ConnectionError("the agent socket closed")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError()
            self.waiter = loop.create_future()
            try:
                await asyncio.wait_for(self.waiter, remaining)
            finally:
                self.waiter = None
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    async def ensure_synced(self, timeout):
        if not self.clean:
            await self.sync(timeout)

    async def sync(self, timeout):
        self.clean = False
        sync_id = random.randint(1, 2 ** 31 - 2)
        self.buf = b""
        self.write(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode() + b"\n")
        deadline = asyncio.get_event_loop().time() + timeout
        while True:
            line = await self._line(deadline)
            if b"\xff" in line:
                line = line[line.rindex(b"\xff") + 1:]
            try:
                if json.loads(line.decode("utf-8", "replace")).get("return") == sync_id:
                    self.clean = True
                    return
            except (ValueError, AttributeError):
                pass  # a stale reply, the parser-reset error, or half a line: discarded until our own reply

    async def execute(self, command, timeout):
        """One command: ("return", value) or ("error", {"class", "desc"})."""
        was_clean, self.clean = self.clean, False  # until its reply is read, a reply is in flight
        self.write(json.dumps({"execute": command}).encode() + b"\n")
        reply = json.loads((await self._line(asyncio.get_event_loop().time() + timeout)).decode("utf-8", "replace"))
        self.clean = was_clean
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
            return "error", {"class": str(reply["error"].get("class")), "desc": str(reply["error"].get("desc"))}
        if not isinstance(reply, dict) or "return" not in reply:
            raise ValueError("not a QGA reply: %r" % (reply,))
        return "return", reply["return"]


def identity(path):
    """(resolved path, dev, ino) of an agent socket; Failure with the errno's meaning otherwise."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise Failure("INVALID_INPUT", "socket %r is not an absolute path" % (path,))
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except FileNotFoundError:
        raise Failure("SOCKET_MISSING", "%s does not exist on the host (the VM is not running, or the path is wrong)" % path)
    except PermissionError:
        raise Failure("SOCKET_NO_ACCESS", "%s cannot be reached by this user (a directory on its path is not searchable)" % path)
    except OSError as e:
        raise Failure("SOCKET_UNREACHABLE", "%s: %s" % (path, e.strerror))
    if not stat.S_ISSOCK(st.st_mode):
        raise Failure("SOCKET_NOT_A_SOCKET", "%s exists but is not a UNIX socket (resolved: %s)" % (path, real))
    return real, st.st_dev, st.st_ino


def connect_failure(path, e):
    if isinstance(e, FileNotFoundError):
        return Failure("SOCKET_MISSING", "%s does not exist on the host" % path)
    if isinstance(e, PermissionError):
        return Failure("SOCKET_NO_ACCESS", "%s: permission denied to this user" % path)
    if isinstance(e, ConnectionRefusedError):
        return Failure("SOCKET_UNREACHABLE", "%s refuses connections: nothing listens on it (QEMU is gone?)" % path)
    if isinstance(e, asyncio.TimeoutError):
        return Failure("SOCKET_UNREACHABLE", "%s: connect did not complete within %.0f s" % (path, AGENT_TIMEOUT))
    return Failure("SOCKET_UNREACHABLE", "%s: %s" % (path, e))


# ---- libvirt guests ----------------------------------------------------------------------------------------

def libvirt_ref(value):
    """A client's reference to a libvirt domain, validated: {uri, uuid, name, socket}. Each goes into an argv or a
    connect() only, never a shell; the UUID is the identity (the client resolved the name it was given)."""
    if not isinstance(value, dict):
        raise Failure("INVALID_INPUT", "libvirt %r is not a domain reference" % (value,))
    uri, uuid, name, sock = value.get("uri"), value.get("uuid"), value.get("name"), value.get("socket")
    if not isinstance(uri, str) or not LIBVIRT_URI.fullmatch(uri):
        raise Failure("INVALID_INPUT", "libvirt URI %r is not qemu:///system or qemu:///session (with ?socket=/path at most)" % (uri,))
    if not isinstance(uuid, str) or not LIBVIRT_UUID.fullmatch(uuid):
        raise Failure("INVALID_INPUT", "libvirt domain UUID %r is not a UUID in lower case" % (uuid,))
    if not isinstance(name, str) or not 0 < len(name) <= 1024 or "\0" in name:
        raise Failure("INVALID_INPUT", "libvirt domain name %r is not a name" % (name,))
    try:
        name.encode("utf-8")  # every call names the domain: a name that cannot be sent would make it unthawable
    except UnicodeEncodeError:
        raise Failure("INVALID_INPUT", "libvirt domain name %r is not valid UTF-8" % (name,))
    if not isinstance(sock, str) or not sock.startswith("/") or "\0" in sock:
        raise Failure("INVALID_INPUT", "libvirt socket %r is not an absolute path" % (sock,))
    return {"uri": uri, "uuid": uuid, "name": name, "socket": sock}


class LibvirtRpc:
    """A minimal client of libvirt's RPC protocol (src/rpc/virnetprotocol.x, src/remote/remote_protocol.x): just
    what the daemon's own end and status need (auth, open, lookup by UUID, DOMAIN_FSTHAW, the QEMU program's
    DOMAIN_AGENT_COMMAND), on one connection held while a window stands. Hand-written because the daemon is
    standard-library python and a host need not have libvirt's python bindings (python3-libvirt); a virsh process
    per command would cost ~45 ms of frozen time per release (measured on the lab's libvirtd 9). The full client,
    with the same framing, is provider/libvirt (TypeScript)."""

    REMOTE, QEMU, KEEPALIVE = 0x20008086, 0x20008087, 0x6b656570
    CONNECT_OPEN, DOMAIN_LOOKUP_BY_UUID, AUTH_LIST, AUTH_POLKIT, DOMAIN_FSTHAW = 1, 24, 66, 70, 336
    QEMU_DOMAIN_AGENT_COMMAND = 3
    CALL, REPLY, MESSAGE = 0, 1, 2
    PING, PONG = 1, 2
    MAX_MESSAGE = 32 * 1024 * 1024 + 4

    def __init__(self, ref):
        self.ref = ref
        self.reader = self.writer = None
        self.serial = 0
        self.lock = asyncio.Lock()
        self.dom = None

    @staticmethod
    def xdr_string(s):
        b = s.encode("utf-8")
        return struct.pack(">I", len(b)) + b + b"\0" * ((4 - len(b) % 4) % 4)

    @staticmethod
    def read_string(buf, pos):
        (n,) = struct.unpack_from(">I", buf, pos)
        if n > len(buf) - pos - 4:
            raise ValueError("libvirt: a string longer than its message")
        return buf[pos + 4:pos + 4 + n].decode("utf-8", "replace"), pos + 4 + n + (4 - n % 4) % 4

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.dom = None

    async def _send(self, prog, proc, mtype, serial, payload):
        header = struct.pack(">IIIiIIi", 28 + len(payload), prog, 1, proc, mtype, serial, 0)
        self.writer.write(header + payload)
        await self.writer.drain()

    async def _call(self, prog, proc, payload):
        self.serial += 1
        serial = self.serial
        await self._send(prog, proc, self.CALL, serial, payload)
        while True:
            (length,) = struct.unpack(">I", await self.reader.readexactly(4))
            if not 28 <= length <= self.MAX_MESSAGE:
                raise ValueError("libvirt: a message of %d bytes" % length)
            body = await self.reader.readexactly(length - 4)
            rprog, _, rproc, rtype, rserial, rstatus = struct.unpack_from(">IIiIIi", body, 0)
            payload = body[24:]
            if rprog == self.KEEPALIVE and rproc == self.PING:
                await self._send(self.KEEPALIVE, self.PONG, self.MESSAGE, 0, b"")
                continue
            if rtype != self.REPLY or rserial != serial:
                continue  # an event or a stale reply: not ours
            if rstatus == 0:
                return payload
            code, domain = struct.unpack_from(">ii", payload, 0)
            (present,) = struct.unpack_from(">I", payload, 8)
            message = self.read_string(payload, 12)[0] if present else "libvirt error %d" % code
            raise LibvirtError(code, message)

    async def call(self, prog, proc, payload, timeout):
        """One call on the held connection (opened, authenticated and the URI opened first when needed)."""
        async with self.lock:
            try:
                return await asyncio.wait_for(self._open_and_call(prog, proc, payload), timeout)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.CancelledError, ValueError, struct.error):
                self.close()  # a reply may be half read: the next call reconnects
                raise

    async def _open_and_call(self, prog, proc, payload):
        if self.writer is None:
            try:
                self.reader, self.writer = await asyncio.open_unix_connection(self.ref["socket"])
            except OSError as e:
                raise Failure("LIBVIRT_UNAVAILABLE", "libvirt's socket %s" % connect_failure(self.ref["socket"], e).message)
            try:
                auth = await self._call(self.REMOTE, self.AUTH_LIST, b"")
                (n,) = struct.unpack_from(">I", auth, 0)
                types = struct.unpack_from(">%di" % n, auth, 4) if n else ()
                if 2 in types:  # polkit: libvirt asks polkit whether this user may connect
                    (complete,) = struct.unpack_from(">i", await self._call(self.REMOTE, self.AUTH_POLKIT, b""), 0)
                    if not complete:
                        raise Failure("LIBVIRT_AUTH", "polkit did not let this user connect to libvirt")
                elif types and 0 not in types:
                    raise Failure("LIBVIRT_AUTH", "libvirt asks for authentication %r, which the daemon does not speak" % (types,))
                await self._call(self.REMOTE, self.CONNECT_OPEN, struct.pack(">I", 1) + self.xdr_string(self.ref["uri"]) + struct.pack(">I", 0))
            except BaseException:
                self.close()
                raise
        return await self._call(prog, proc, payload)

    async def domain(self, timeout):
        """The domain's remote_nonnull_domain (name, UUID, id), looked up by UUID: None when libvirt has none."""
        try:
            reply = await self.call(self.REMOTE, self.DOMAIN_LOOKUP_BY_UUID, bytes.fromhex(self.ref["uuid"].replace("-", "")), timeout)
        except LibvirtError as e:
            if e.code == 42:  # VIR_ERR_NO_DOMAIN
                return None
            raise
        name, pos = self.read_string(reply, 0)
        (dom_id,) = struct.unpack_from(">i", reply, pos + 16)
        return {"name": name, "uuid": reply[pos:pos + 16], "id": dom_id}

    def domain_xdr(self):
        return self.xdr_string(self.ref["name"]) + bytes.fromhex(self.ref["uuid"].replace("-", "")) + struct.pack(">i", -1)


class RpcFrames:
    """Splits one direction of a relayed libvirt RPC stream into messages: (prog, type, serial) of each complete
    one. The relay uses it to know which of the client's calls libvirt has not answered yet."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data
        out = []
        while len(self.buf) >= 28:
            (length,) = struct.unpack_from(">I", self.buf, 0)
            if not 28 <= length <= LibvirtRpc.MAX_MESSAGE:
                raise ValueError("libvirt: a message of %d bytes" % length)
            if len(self.buf) < length:
                break
            prog, _, _, mtype, serial, _ = struct.unpack_from(">IIiIIi", self.buf, 4)
            out.append((prog, mtype, serial))
            self.buf = self.buf[length:]
        return out


class LibvirtError(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code, self.message = code, message


class LibvirtAgent:
    """A libvirt guest's agent, as the daemon's own end and status reach it: through libvirt (LibvirtRpc, one
    connection held while the window stands). Same interface as AgentConn's client side; libvirt serialises
    agent commands itself (its agent job), so there is nothing to sync."""

    def __init__(self, ref):
        self.rpc = LibvirtRpc(ref)
        self.closed = False
        self.clean = True

    async def ensure_synced(self, timeout):
        return None

    def close(self):
        self.rpc.close()

    async def gone(self, timeout):
        """After a failure saying the domain is not running: gone when libvirt has no such domain, or it is shut
        off (id -1). A paused domain is not."""
        dom = await self.rpc.domain(timeout)
        return dom is None or dom["id"] == -1

    async def execute(self, command, timeout):
        """("return", value) or ("error", {"class", "desc"}), as AgentConn.execute; VmGone when the domain is."""
        wait = timeout + LIBVIRT_SLACK
        try:
            if command == "guest-fsfreeze-thaw":
                # The proper API (virDomainFSThaw), not a custom agent command. It waits for the domain's agent
                # job: behind a freeze still running, up to 30 s, then fails, and the end is retried.
                reply = await self.rpc.call(LibvirtRpc.REMOTE, LibvirtRpc.DOMAIN_FSTHAW, self.rpc.domain_xdr() + struct.pack(">II", 0, 0), wait)
                return "return", struct.unpack_from(">i", reply, 0)[0]
            request = json.dumps({"execute": command})
            reply = await self.rpc.call(LibvirtRpc.QEMU, LibvirtRpc.QEMU_DOMAIN_AGENT_COMMAND,
                                        self.rpc.domain_xdr() + LibvirtRpc.xdr_string(request) + struct.pack(">iI", max(1, int(timeout)), 0), wait)
            (present,) = struct.unpack_from(">I", reply, 0)
            parsed = json.loads(LibvirtRpc.read_string(reply, 4)[0]) if present else None
            if not isinstance(parsed, dict) or "return" not in parsed:
                raise ValueError("not a QGA reply: %r" % (parsed,))
            return "return", parsed["return"]
        except LibvirtError as e:
            # 55 (operation invalid) is what a shut-off domain answers; its text is translated, so the lookup decides.
            if e.code == 42 or (e.code == 55 and await self.gone(AGENT_TIMEOUT)):
                raise VmGone()
            if e.code in (68, 86, 112):
                # The domain's agent job is busy (a freeze still running, or hung: "cannot acquire state change
                # lock"), or the agent does not answer: an end retries until it goes through.
                raise Failure("AGENT_TIMEOUT", "libvirt: %s" % e.message)
            m = re.search(r"unable to execute QEMU agent command '[^']*': (.*)$", e.message, re.S)
            return "error", {"class": "libvirt", "desc": m.group(1) if m else e.message}


# ---- records -----------------------------------------------------------------------------------------------

class Guest:
    """One record: a window's claim on one guest, with the agent connection it keeps."""

    def __init__(self, real, dev, ino, libvirt=None):
        self.libvirt = libvirt     # a libvirt domain's reference: keyed by its UUID, reached through libvirt
        self.key = "lv-%s" % libvirt["uuid"] if libvirt else "%d-%d" % (dev, ino)
        self.real, self.dev, self.ino = real, dev, ino
        self.agent = None
        self.relay = None          # the Client whose connection is the relay, while one is attached
        self.holders = set()
        self.ending = None         # the end task, once ending started
        self.ending_how = None
        self.waiters = []          # futures of end() callers, resolved by the next end attempt
        self.wake = asyncio.Event()  # cuts a retry's backoff short when someone asks again
        self.connecting = None     # the agent connect in progress, shared by concurrent callers
        self.thaw_sent = False     # a thaw of this window was sent: a later "already thawed" is our own doing
        self.timer = None
        self.grace = None
        self.lock = asyncio.Lock()
        self.rec = {}

    def view(self):
        now = time.time()
        r = dict(self.rec)
        r["remainingMs"] = max(0, int((r["deadline"] - now) * 1000))
        r["ending"] = self.ending is not None
        r["held"] = bool(self.holders)
        r["endingHow"] = self.ending_how
        return r


class Client:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.holds = set()
        self.last_seen = time.time()
        self.busy = 0
        self.closed = False

    def send(self, obj):
        if not self.closed:
            self.writer.write((json.dumps(obj) + "\n").encode())

    def abort(self):
        self.closed = True
        self.writer.transport.abort()


class Daemon:
    def __init__(self, dirpath, loop, supervisor, log_fd):
        self.dir = dirpath
        self.loop = loop
        self.supervisor = supervisor
        self.by_key = {}
        self.by_window = {}
        self.ended = {}
        self.clients = set()
        self.last_busy = time.time()
        self.log_fd = log_fd
        self.stopping = loop.create_future()
        self.dir_ino = os.lstat(dirpath).st_ino

    def log(self, msg):
        try:
            os.write(self.log_fd, ("%s [%d] %s\n" % (iso(time.time()), os.getpid(), msg)).encode())
        except OSError:
            pass  # a full /run must not take the daemon down; the freeze state is in memory and in the records

    # -- persistence --

    def persist(self, guest):
        write_json(self.dir, "claim-%s.json" % guest.key, guest.rec)

    def load(self):
        now = time.time()
        for name in sorted(os.listdir(self.dir)):
            m = ENDED_FILE.fullmatch(name)
            if m:
                try:
                    rec = read_json(self.dir, name)
                    if now - os.lstat(os.path.join(self.dir, name)).st_mtime > ENDED_KEEP:
                        os.unlink(os.path.join(self.dir, name))
                    elif isinstance(rec, dict):
                        self.ended[m.group(1)] = rec
                except (OSError, ValueError) as e:
                    self.log("ignoring ended record %s: %s" % (name, e))
                continue
            if name.startswith(".tmp-"):
                unlink_quiet(os.path.join(self.dir, name))
                continue
            if not CLAIM_FILE.fullmatch(name):
                continue
            try:
                rec = read_json(self.dir, name)
                ref = libvirt_ref(rec["libvirt"]) if rec.get("libvirt") is not None else None
                real, dev, ino = rec["real"], int(rec["dev"]), int(rec["ino"])
                expected = "claim-lv-%s.json" % ref["uuid"] if ref else "claim-%d-%d.json" % (dev, ino)
                if name != expected or not WINDOW_ID.fullmatch(rec["windowId"]):
                    raise ValueError("inconsistent record")
                float(rec["deadline"])
            except (OSError, ValueError, KeyError, TypeError, Failure) as e:
                self.log("ignoring claim record %s: %s" % (name, e))
                continue
            guest = Guest(real, dev, ino, ref)
            guest.rec = rec
            self.by_key[guest.key] = guest
            self.by_window[rec["windowId"]] = guest
            self.log("window %s: record loaded (deadline %s)" % (rec["windowId"], iso(rec["deadline"])))
            self.arm_timer(guest)
            asyncio.ensure_future(self.reconnect(guest))
            if rec.get("holdRequired"):
                guest.grace = self.loop.call_later(REATTACH_GRACE, self.grace_over, guest)

    async def reconnect(self, guest):
        """Takes a loaded record's agent connection back at once, so that nobody else gets the guest meanwhile."""
        try:
            await self.agent_of(guest)
        except VmGone:
            self.end(guest, "vm-gone")
        except Exception as e:  # noqa: BLE001 - logged; the deadline, or the next request, tries again
            self.log("window %s: could not reconnect to its agent yet: %r" % (guest.rec["windowId"], e))

    def grace_over(self, guest):
        guest.grace = None
        if not guest.holders and self.by_window.get(guest.rec["windowId"]) is guest:
            self.log("window %s: its holder did not re-attach within %.0f s" % (guest.rec["windowId"], REATTACH_GRACE))
            self.end(guest, "disconnected")

    def arm_timer(self, guest):
        if guest.timer is not None:
            guest.timer.cancel()
        guest.timer = self.loop.call_later(max(0.0, guest.rec["deadline"] - time.time()), self.end, guest, "expired")

    # -- the agent connection --

    def on_agent_lost(self, guest, conn):
        if guest.agent is not conn:
            return
        guest.agent = None
        if self.by_window.get(guest.rec.get("windowId")) is guest and guest.ending is None:
            asyncio.ensure_future(self.check_gone(guest))

    async def check_gone(self, guest):
        """After the held agent connection dropped: a socket that is gone, or is another one, means the VM is."""
        try:
            real, dev, ino = await self.identity_of(guest.real)
            gone = (dev, ino) != (guest.dev, guest.ino)
        except Failure as f:
            gone = f.code in ("SOCKET_MISSING", "SOCKET_NOT_A_SOCKET")
        if gone and self.by_window.get(guest.rec.get("windowId")) is guest and guest.ending is None:
            self.log("window %s: the agent socket %s is gone" % (guest.rec["windowId"], guest.real))
            self.end(guest, "vm-gone")

    async def agent_of(self, guest):
        """The guest's agent connection, reconnected if it dropped; VmGone if the socket is not the claimed one.
        One connect at a time per guest (concurrent callers share it), and a connection made for a record that
        ended meanwhile is closed at once: outside windows the daemon holds nothing."""
        if guest.libvirt is not None:
            # Nothing to hold: libvirt owns the agent. Each command goes through libvirt on its own.
            if guest.agent is None:
                guest.agent = LibvirtAgent(guest.libvirt)
            return guest.agent
        while guest.connecting is not None:
            await asyncio.shield(guest.connecting)
        if guest.agent is not None and not guest.agent.closed:
            return guest.agent
        guest.connecting = self.loop.create_future()
        try:
            try:
                real, dev, ino = await self.identity_of(guest.real)
            except Failure as f:
                if f.code in ("SOCKET_MISSING", "SOCKET_NOT_A_SOCKET"):
                    raise VmGone()
                raise
            if (dev, ino) != (guest.dev, guest.ino):
                raise VmGone()
            try:
                _, conn = await asyncio.wait_for(
                    self.loop.create_unix_connection(lambda: AgentConn(lambda c: self.on_agent_lost(guest, c)), guest.real), AGENT_TIMEOUT)
            except ConnectionRefusedError:
                raise VmGone()  # the socket file outlived its QEMU: the freeze ended with it
            except (OSError, asyncio.TimeoutError) as e:
                raise connect_failure(guest.real, e)
            if self.by_key.get(guest.key) is not guest:
                conn.close()
                raise Failure("NOT_HELD", "window %s ended while its agent connection was being made" % guest.rec["windowId"])
            guest.agent = conn
            return conn
        finally:
            fut, guest.connecting = guest.connecting, None
            fut.set_result(None)

    async def identity_of(self, path):
        """identity() off the event loop, bounded: a socket path on a hung NFS or FUSE mount must not stall every
        other window's deadline."""
        try:
            return await asyncio.wait_for(self.loop.run_in_executor(None, identity, path), AGENT_TIMEOUT)
        except asyncio.TimeoutError:
            raise Failure("SOCKET_UNREACHABLE", "%s: stat did not return within %.0f s (a hung mount on its path?)" % (path, AGENT_TIMEOUT))

    def cut_relay(self, guest):
        if guest.relay is not None:
            guest.relay.abort()

    # -- ending: the one path that thaws a window's guest --

    def end(self, guest, how):
        """Ends guest's window (idempotent): cuts any relay, thaws, verifies, records, removes. Returns a future of
        the outcome of the next attempt; failed attempts are retried while the record stands, and asking again
        cuts the retry's backoff short."""
        waiter = self.loop.create_future()
        guest.waiters.append(waiter)
        if guest.ending is None:
            guest.ending_how = how
            guest.ending = asyncio.ensure_future(self.end_loop(guest, how))
            self.cut_relay(guest)
        else:
            guest.wake.set()
        return waiter

    async def end_loop(self, guest, how):
        wid = guest.rec["windowId"]
        backoff = 0.2
        result = {"how": how, "thaw": None}
        while self.by_window.get(wid) is guest:
            waiters, guest.waiters = guest.waiters, []
            done = True
            try:
                result = await self.end_once(guest, how)
            except VmGone:
                self.finish(guest, "vm-gone", {"count": None, "error": None, "status": "gone"})
                result = {"how": "vm-gone", "thaw": {"count": None, "error": None, "status": "gone"}}
            except Exception as e:  # noqa: BLE001 - logged, answered, and retried while the record stands
                self.log("window %s: thaw (%s) failed, will retry: %r" % (wid, how, e))
                if guest.agent is not None:
                    guest.agent.close()
                result = {"failed": ("%s" % (e,)) or e.__class__.__name__}
                done = False
            for w in waiters + (guest.waiters if done else []):
                if not w.done():
                    w.set_result(result)
            if done:
                guest.waiters = []
                return
            guest.wake.clear()
            try:
                await asyncio.wait_for(guest.wake.wait(), backoff)  # a retry interval, cut short by a new request
            except asyncio.TimeoutError:
                pass
            backoff = min(RETRY_MAX, backoff * 2)
        for w in guest.waiters:  # the record was removed meanwhile (finished by another path)
            if not w.done():
                w.set_result(result if "failed" not in result else {"how": how, "thaw": None})
        guest.waiters = []

    async def end_once(self, guest, how):
        wid = guest.rec["windowId"]
        # The relay was cut; wait for it to detach (its reader sees the abort at once), bounded.
        async with guest.lock:
            if self.by_window.get(wid) is not guest:
                return {"how": how, "thaw": None}
            if not guest.rec.get("armedAt") and how != "forced":
                # Never armed: the client froze nothing under this claim (it arms, and waits for the answer, before
                # its freeze), so a freeze found now is someone else's. The claim goes; the guest is not touched.
                self.finish(guest, how, None)
                return {"how": how, "thaw": None}
            agent = await self.agent_of(guest)
            await agent.ensure_synced(AGENT_TIMEOUT)
            before = None
            sent_before = guest.thaw_sent
            if how == "released" and not guest.thaw_sent and guest.libvirt is None:
                # The owner asks whether the window held to the end: the status first, since a thaw hook failing
                # on "thaw" turns the thaw's own reply into an error that says nothing of what was frozen.
                kind, value = await agent.execute("guest-fsfreeze-status", AGENT_TIMEOUT)
                before = value if kind == "return" else None
            count, err = None, None
            guest.thaw_sent = True
            kind, value = await agent.execute("guest-fsfreeze-thaw", guest.rec.get("thawMs", 30000) / 1000.0)
            thawed_at = time.time()  # the thaw's reply: the end of the freeze (the status below only confirms it)
            # qemu-ga thaws and clears its flag before the fsfreeze hook runs with "thaw", and on Windows it reports
            # that VSS had let writes resume: an error reply may come with the guest thawed. The status decides.
            if kind == "return":
                count = value
            else:
                err = value
            # A successful thaw of nothing also means the guest was thawed already (`fsfreeze -u` in the guest leaves
            # the agent's own flag saying frozen), unless an earlier attempt of ours thawed it.
            # (For a libvirt guest the thaw's count alone tells: a status before it would cost a round trip while frozen.)
            if how == "released" and count == 0 and (before is not None or (guest.libvirt is not None and not sent_before)):
                before = "thawed"
            kind, status = await agent.execute("guest-fsfreeze-status", AGENT_TIMEOUT)
            if kind != "return" or status != "thawed":
                raise RuntimeError("after the thaw the agent reports %r" % (status,))
            thaw = {"count": count, "error": err, "status": status, "before": before, "at": thawed_at}
            self.finish(guest, how, thaw)
            return {"how": how, "thaw": thaw}

    def finish(self, guest, how, thaw):
        """Compare-and-delete: removes guest's record (still its window's) and records how the window ended."""
        wid = guest.rec["windowId"]
        if self.by_window.get(wid) is not guest:
            return
        del self.by_window[wid]
        self.by_key.pop(guest.key, None)
        for h in list(guest.holders):
            h.holds.discard(wid)
            h.send({"event": "ended", "windowId": wid, "how": how})  # the holder learns at once
        guest.holders.clear()
        for t in (guest.timer, guest.grace):
            if t is not None:
                t.cancel()
        self.cut_relay(guest)
        if guest.agent is not None:
            guest.agent.close()  # outside windows the daemon holds nothing
            guest.agent = None
        now = time.time()
        ended = {"windowId": wid, "how": how, "at": iso(now), "owner": guest.rec.get("owner"),
                 "frozenAt": guest.rec.get("frozenAt"), "socketPath": guest.rec.get("socketPath"), "libvirt": guest.rec.get("libvirt"),
                 "heldMs": int((now - guest.rec.get("armedAt", now)) * 1000) if guest.rec.get("armedAt") else None,
                 "thawedCount": thaw.get("count") if thaw else None, "status": thaw.get("status") if thaw else None}
        self.ended[wid] = ended
        try:
            unlink_quiet(os.path.join(self.dir, "claim-%s.json" % guest.key))
            write_json(self.dir, "ended-%s.json" % wid, ended)
        except OSError as e:
            self.log("window %s: could not update its files: %s" % (wid, e))
        self.log("window %s ended (%s): thawed %s, status %s" % (wid, how, ended["thawedCount"], ended["status"]))
        self.last_busy = now

    # -- requests --

    def guest_of(self, wid):
        if not isinstance(wid, str) or not WINDOW_ID.fullmatch(wid):
            raise Failure("INVALID_INPUT", "windowId %r is not a window id" % (wid,))
        return self.by_window.get(wid)

    async def op_hello(self, client, msg):
        return {"version": VERSION, "pid": os.getpid(), "supervisor": self.supervisor, "dir": self.dir}

    async def op_claim(self, client, msg):
        if client.closed:
            raise Failure("NOT_HELD", "the claiming client went away before its claim ran")
        wid = msg.get("windowId")
        self.guest_of(wid)  # validates the id before any I/O
        ref = libvirt_ref(msg["libvirt"]) if msg.get("libvirt") is not None else None
        if ref is not None:
            real, dev, ino = ref["socket"], 0, 0
        else:
            real, dev, ino = await self.identity_of(msg.get("socket"))
        if client.closed:
            raise Failure("NOT_HELD", "the claiming client went away before its claim ran")
        if self.guest_of(wid) is not None or wid in self.ended:
            raise Failure("INVALID_INPUT", "window id %s was used before" % wid)
        key = "lv-%s" % ref["uuid"] if ref else "%d-%d" % (dev, ino)
        held = self.by_key.get(key)
        if held is not None:
            raise Failure("HELD", "the guest is held by window %s" % held.rec["windowId"], holder=held.view())
        guest = Guest(real, dev, ino, ref)
        now = time.time()
        ms = lambda k, d: int(msg[k]) if isinstance(msg.get(k), (int, float)) and 0 < msg[k] <= 86400000 else d
        guest.rec = {
            "version": 3, "windowId": wid, "owner": str(msg.get("owner", "")),
            "socketPath": msg.get("socket") if ref is None else None, "libvirt": ref,
            "real": real, "dev": dev, "ino": ino,
            "selection": msg.get("selection") if isinstance(msg.get("selection"), list) else [],
            "claimedAt": iso(now), "frozenAt": None, "armedAt": None,
            "deadline": now + ms("claimMs", 60000) / 1000.0, "leaseMs": None,
            "thawMs": ms("thawMs", 30000), "holdRequired": True,
        }
        # The compare-and-set: nothing awaited between the check above and these two lines.
        self.by_key[key] = guest
        self.by_window[wid] = guest
        self.hold(client, guest)
        try:
            self.persist(guest)
            agent = await self.agent_of(guest)
            if ref is not None:
                # The connection the daemon thaws through is opened, authenticated and its domain found now,
                # before anything is frozen, and held for the window.
                dom = await agent.rpc.domain(AGENT_TIMEOUT + LIBVIRT_SLACK)
                if dom is None or dom["id"] == -1:
                    raise Failure("DOMAIN_NOT_RUNNING", "libvirt domain %s (%s) is not running, or no longer defined" % (ref["name"], ref["uuid"]))
            if self.by_window.get(wid) is not guest or guest.ending is not None:
                raise Failure("NOT_HELD", "window %s ended while it was being claimed (its holder went away)" % wid)
        except VmGone:
            self.drop_claim(guest)
            raise Failure("SOCKET_UNREACHABLE", "%s refuses connections: nothing listens on it (QEMU is gone?)" % real)
        except BaseException:
            self.drop_claim(guest)
            raise
        self.arm_timer(guest)
        self.log("window %s: claimed %s (%s) for %s" % (wid, real, key, guest.rec["owner"]))
        return {"record": guest.view()}

    def drop_claim(self, guest):
        """Removes a claim under which nothing was frozen (the claim itself failed)."""
        wid = guest.rec["windowId"]
        if self.by_window.get(wid) is guest:
            del self.by_window[wid]
            self.by_key.pop(guest.key, None)
            for h in guest.holders:
                h.holds.discard(wid)
            unlink_quiet(os.path.join(self.dir, "claim-%s.json" % guest.key))
            if guest.agent is not None:
                guest.agent.close()
            if guest.timer is not None:
                guest.timer.cancel()

    def hold(self, client, guest):
        guest.holders.add(client)
        client.holds.add(guest.rec["windowId"])
        if guest.grace is not None:
            guest.grace.cancel()
            guest.grace = None

    def live(self, msg):
        guest = self.guest_of(msg.get("windowId"))
        if guest is None:
            raise Failure("NOT_HELD", "window %s holds no guest here" % msg.get("windowId"), ended=self.ended.get(msg.get("windowId")))
        if guest.ending is not None:
            raise Failure("NOT_HELD", "window %s is ending" % msg.get("windowId"))
        return guest

    async def op_arm(self, client, msg):
        guest = self.live(msg)
        lease = msg.get("leaseMs")
        if not isinstance(lease, (int, float)) or not 0 < lease <= 86400000:
            raise Failure("INVALID_INPUT", "leaseMs %r is not a lease length in ms" % (lease,))
        now = time.time()
        guest.rec.update({"frozenAt": iso(now), "armedAt": now, "deadline": now + lease / 1000.0, "leaseMs": int(lease)})
        if isinstance(msg.get("selection"), list):
            guest.rec["selection"] = msg["selection"]
        self.persist(guest)
        self.arm_timer(guest)
        return {"record": guest.view()}

    async def op_unhold(self, client, msg):
        guest = self.live(msg)
        guest.holders.discard(client)
        client.holds.discard(guest.rec["windowId"])
        if not guest.holders:
            guest.rec["holdRequired"] = False
            self.persist(guest)
        return {"record": guest.view()}

    async def op_attach(self, client, msg):
        guest = self.live(msg)
        if client.closed:
            raise Failure("NOT_HELD", "the attaching client went away")
        self.hold(client, guest)
        return {"record": guest.view()}

    async def acquire(self, guest):
        """Takes the guest's agent connection for one use (a relay, or the daemon's own commands), bounded."""
        try:
            await asyncio.wait_for(guest.lock.acquire(), AGENT_TIMEOUT)
        except asyncio.TimeoutError:
            raise Failure("AGENT_BUSY", "window %s: the agent connection stayed in use (by the window's own create, or a thaw) for %.0f s; "
                          "try again" % (guest.rec["windowId"], AGENT_TIMEOUT))

    async def transient(self, real):
        """A synced agent connection to a guest no window holds, for one command; the caller closes it at once."""
        try:
            _, conn = await asyncio.wait_for(self.loop.create_unix_connection(lambda: AgentConn(lambda c: None), real), AGENT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:
            raise connect_failure(real, e)
        try:
            await conn.sync(AGENT_TIMEOUT)
        except asyncio.TimeoutError:
            conn.close()
            raise Failure("AGENT_TIMEOUT", "%s: the agent did not answer within %.0f s" % (real, AGENT_TIMEOUT))
        except BaseException:
            conn.close()
            raise
        return conn

    async def op_relay(self, client, msg):
        guest = self.live(msg)
        await self.acquire(guest)
        pipe = None
        try:
            if guest.ending is not None or self.by_window.get(guest.rec["windowId"]) is not guest:
                raise Failure("NOT_HELD", "window %s ended" % guest.rec["windowId"])
            if guest.libvirt is not None:
                agent = pipe = await self.libvirt_pipe(guest.libvirt["socket"])
            else:
                try:
                    agent = await self.agent_of(guest)
                except VmGone:
                    self.end(guest, "vm-gone")
                    raise Failure("SOCKET_MISSING", "the agent socket of window %s is gone" % guest.rec["windowId"])
            if guest.ending is not None or self.by_window.get(guest.rec["windowId"]) is not guest or client.closed:
                raise Failure("NOT_HELD", "window %s ended" % guest.rec["windowId"])
        except BaseException:
            if pipe is not None:
                pipe.close()  # a pipe opened for a relay that is not going ahead
            guest.lock.release()
            raise
        return {"relay": (guest, agent)}

    async def libvirt_pipe(self, path):
        """A fresh connection to libvirt's socket, for one relay (closed with it)."""
        try:
            _, conn = await asyncio.wait_for(self.loop.create_unix_connection(lambda: AgentConn(lambda c: None), path), AGENT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as e:
            f = connect_failure(path, e)
            raise Failure("LIBVIRT_UNAVAILABLE", "libvirt's socket %s" % f.message)
        return conn

    async def run_relay(self, client, guest, agent):
        """Pipes bytes between the client and the agent until either side closes or the daemon cuts the relay."""
        if guest.ending is not None or self.by_window.get(guest.rec["windowId"]) is not guest:
            guest.lock.release()  # the window ended between the grant and here: no relay, and the end goes first
            if guest.libvirt is not None:
                agent.close()
            client.abort()
            return
        guest.relay = client
        agent.buf = b""
        agent.clean = False  # the relay's client may leave replies unread
        writer = client.writer

        def to_client(data):
            if data is None:
                client.abort()
            elif not client.closed:
                writer.write(data)

        # libvirt: the client's calls libvirt has not answered yet. libvirt runs each call in a worker thread of its
        # own, and the calls waiting for a domain's agent job are woken in no set order: a freeze sent before the
        # relay was cut could still run after a thaw sent after it. So a cut relay stops forwarding at once, but
        # keeps libvirt's side open until every call it forwarded is answered, and only then lets an end thaw.
        pending = set()
        answered = asyncio.Event()
        sent, got = RpcFrames(), RpcFrames()

        def from_libvirt(data):
            if data is None:
                answered.set()  # libvirt closed: nothing of the client's is left to run
                client.abort()
                return
            try:
                for prog, mtype, serial in got.feed(data):
                    if mtype == LibvirtRpc.REPLY and prog != LibvirtRpc.KEEPALIVE:
                        pending.discard(serial)
            except ValueError as e:
                self.log("window %s: relay: %s" % (guest.rec["windowId"], e))
                agent.close()
            if not pending:
                answered.set()
            if not client.closed:
                writer.write(data)

        agent.sink = from_libvirt if guest.libvirt is not None else to_client
        try:
            while not client.closed:
                data = await client.reader.read(65536)
                if not data:
                    break
                client.last_seen = time.time()
                if guest.relay is client:
                    if guest.libvirt is not None:
                        for prog, mtype, serial in sent.feed(data):
                            if mtype == LibvirtRpc.CALL:
                                pending.add(serial)
                                answered.clear()
                    agent.write(data)
        except ValueError as e:
            self.log("window %s: relay: the client's stream is not libvirt RPC: %s" % (guest.rec["windowId"], e))
        except (ConnectionError, OSError):
            pass  # the relay's channel went away: detaching is all there is to do
        finally:
            if guest.relay is client:
                guest.relay = None
            if guest.libvirt is not None:
                if pending and not agent.closed:
                    try:
                        await asyncio.wait_for(answered.wait(), RELAY_DRAIN)
                    except asyncio.TimeoutError:
                        self.log("window %s: libvirt did not answer %d call(s) of the cut relay within %.0f s; closing it" % (guest.rec["windowId"], len(pending), RELAY_DRAIN))
                agent.sink = None
                agent.close()
                guest.lock.release()
                return
            if agent.sink is to_client:
                agent.sink = None
            guest.lock.release()
            # Sync now, while the client moves on (the engine's next step, the snapshot command): the next check or
            # thaw on this connection then needs no sync while the guest is frozen.
            if guest.ending is None and self.by_window.get(guest.rec["windowId"]) is guest:
                asyncio.ensure_future(self.resync(guest))

    async def resync(self, guest):
        try:
            await self.acquire(guest)
        except Failure:
            return  # busy with a new relay or an end: whoever holds it syncs as needed
        try:
            if guest.agent is not None and not guest.agent.closed and guest.ending is None:
                await guest.agent.ensure_synced(AGENT_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - the next use syncs again (the connection stays unclean)
            self.log("window %s: background sync failed: %r" % (guest.rec["windowId"], e))
        finally:
            guest.lock.release()

    async def agent_status_of(self, guest):
        """guest-fsfreeze-status through the held connection, between relay uses."""
        await self.acquire(guest)
        try:
            agent = await self.agent_of(guest)
            await agent.ensure_synced(AGENT_TIMEOUT)
            kind, value = await agent.execute("guest-fsfreeze-status", AGENT_TIMEOUT)
            if kind != "return":
                raise Failure("AGENT_COMMAND_FAILED", "guest-fsfreeze-status: %s" % value.get("desc"))
            return value
        except VmGone:
            return "gone"
        except (asyncio.TimeoutError, ConnectionError) as e:
            if guest.agent is not None:
                guest.agent.close()
            raise Failure("AGENT_TIMEOUT", "guest-fsfreeze-status through the held agent connection: %r" % (e,))
        finally:
            guest.lock.release()

    async def transient_agent(self, real, ref):
        """The agent of a guest no window holds, for a command or two (the caller closes it): a synced connection
        to its socket, or, for a libvirt domain, libvirt."""
        return LibvirtAgent(ref) if ref is not None else await self.transient(real)

    async def transient_status(self, real, ref=None):
        """Status of a guest no window holds (frozen, thawed, or gone for a libvirt domain), the agent closed at once."""
        agent = await self.transient_agent(real, ref)
        try:
            kind, value = await agent.execute("guest-fsfreeze-status", AGENT_TIMEOUT)
            if kind != "return":
                raise Failure("AGENT_COMMAND_FAILED", "guest-fsfreeze-status: %s" % value.get("desc"))
            return value
        except VmGone:
            return "gone"
        except asyncio.TimeoutError:
            raise Failure("AGENT_TIMEOUT", "%s: the agent did not answer in time" % (ref["name"] if ref else real))
        finally:
            agent.close()

    async def op_status(self, client, msg):
        wid = msg.get("windowId")
        mine = self.guest_of(wid) if wid is not None else None
        guest = mine
        if guest is None and msg.get("libvirt") is not None:
            ref = libvirt_ref(msg["libvirt"])
            guest = self.by_key.get("lv-%s" % ref["uuid"])
            if guest is None:
                return {"agentStatus": await self.transient_status(ref["socket"], ref), "record": None, "ended": self.ended.get(wid)}
        if guest is None and msg.get("socket") is not None:
            try:
                real, dev, ino = await self.identity_of(msg.get("socket"))
            except Failure as f:
                if f.code != "SOCKET_MISSING":
                    raise
                return {"agentStatus": "gone", "record": None, "ended": self.ended.get(wid)}
            guest = self.by_key.get("%d-%d" % (dev, ino))
            if guest is None:
                return {"agentStatus": await self.transient_status(real), "record": None, "ended": self.ended.get(wid)}
        if guest is None:
            return {"agentStatus": None, "record": None, "ended": self.ended.get(wid)}
        # agent: false asks for the record alone (a check whose truth comes from a later one), no agent round trip.
        status = await self.agent_status_of(guest) if guest.ending is None and msg.get("agent") is not False else None
        return {"agentStatus": status, "record": guest.view(), "ended": None}

    async def op_release(self, client, msg):
        wid = msg.get("windowId")
        guest = self.guest_of(wid)
        if guest is None:
            return {"outcome": "not-held", "ended": self.ended.get(wid)}
        record = guest.view()
        if not msg.get("thaw") and not guest.rec.get("armedAt"):
            if guest.ending is not None:
                raise Failure("NOT_HELD", "window %s is ending" % wid)
            # The client froze nothing under this claim (it failed before the freeze, or found a freeze made
            # outside pulumi-quiesce): the claim goes, the guest is not touched.
            self.drop_claim(guest)
            self.log("window %s: claim withdrawn before any freeze" % wid)
            return {"outcome": "withdrawn", "record": record}
        how = "expired" if guest.ending is None and time.time() >= guest.rec["deadline"] else "released"
        result = await asyncio.shield(self.end(guest, how))
        if "failed" in result:
            raise Failure("THAW_FAILED", "the thaw of window %s failed: %s. The daemon keeps trying until the agent thaws the guest"
                          % (wid, result["failed"]), record=record)
        ended = self.ended.get(wid)
        return {"outcome": ended["how"] if ended else result["how"], "record": record, "thaw": result.get("thaw"), "ended": ended}

    async def op_force(self, client, msg):
        ref = libvirt_ref(msg["libvirt"]) if msg.get("libvirt") is not None else None
        if ref is not None:
            real, key = ref["socket"], "lv-%s" % ref["uuid"]
        else:
            real, dev, ino = await self.identity_of(msg.get("socket"))
            key = "%d-%d" % (dev, ino)
        guest = self.by_key.get(key)
        if guest is not None:
            record = guest.view()
            result = await asyncio.shield(self.end(guest, "forced"))
            if "failed" in result:
                raise Failure("THAW_FAILED", "the thaw failed: %s. The daemon keeps the record and keeps trying; check with "
                              "`quiesce status`, and look at the guest agent" % result["failed"])
            return {"record": record, "thaw": result.get("thaw")}
        agent = await self.transient_agent(real, ref)
        try:
            kind, value = await agent.execute("guest-fsfreeze-thaw", AGENT_TIMEOUT * 3)
            skind, status = await agent.execute("guest-fsfreeze-status", AGENT_TIMEOUT)
            return {"record": None, "thaw": {"count": value if kind == "return" else None, "error": value if kind == "error" else None,
                                              "status": status if skind == "return" else None}}
        except VmGone:
            return {"record": None, "thaw": {"count": None, "error": None, "status": "gone"}}
        except asyncio.TimeoutError:
            raise Failure("AGENT_TIMEOUT", "%s: the agent did not answer in time" % (ref["name"] if ref else real))
        finally:
            agent.close()

    async def op_list(self, client, msg):
        return {"records": [g.view() for g in self.by_window.values()]}

    OPS = {"hello": op_hello, "claim": op_claim, "arm": op_arm, "unhold": op_unhold, "attach": op_attach,
           "relay": op_relay, "status": op_status, "release": op_release, "force": op_force, "list": op_list}

    async def run_request(self, client, msg):
        rid = msg.get("id")
        client.busy += 1
        try:
            op = Daemon.OPS.get(msg.get("op"))
            if op is None:
                raise Failure("BAD_REQUEST", "unknown op %r" % (msg.get("op"),))
            reply = await op(self, client, msg)
            relay = reply.pop("relay", None) if isinstance(reply, dict) else None
            client.send(dict(reply, id=rid, ok=True))
            return relay
        except Failure as f:
            client.send(dict(f.fields, id=rid, ok=False, code=f.code, message=f.message))
        except LibvirtError as e:
            client.send({"id": rid, "ok": False, "code": "LIBVIRT_ERROR", "message": "libvirt: %s" % e.message, "libvirtCode": e.code})
        except Exception as e:  # noqa: BLE001 - a bad request never takes the daemon down
            self.log("request %r failed: %s" % (msg.get("op"), traceback.format_exc()))
            client.send({"id": rid, "ok": False, "code": "DAEMON_ERROR", "message": "%s: %s" % (e.__class__.__name__, e)})
        finally:
            client.busy -= 1
            client.last_seen = time.time()
        return None

    async def serve_client(self, reader, writer):
        client = Client(reader, writer)
        self.clients.add(client)
        self.last_busy = time.time()
        tasks = set()
        try:
            while not client.closed:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    client.send({"ok": False, "code": "BAD_REQUEST", "message": "line too long"})
                    break
                except (ConnectionError, OSError):
                    break
                if not line:
                    break
                client.last_seen = time.time()
                try:
                    msg = json.loads(line.decode("utf-8", "replace"))
                    if not isinstance(msg, dict):
                        raise ValueError("not an object")
                except ValueError:
                    client.send({"ok": False, "code": "BAD_REQUEST", "message": "not a JSON object"})
                    continue
                if msg.get("op") == "beat":
                    continue
                if msg.get("op") == "relay":
                    # The connection turns into a pipe: no more requests on it.
                    for t in list(tasks):
                        await t
                    relay = await self.run_request(client, msg)
                    if relay is not None:
                        await self.run_relay(client, relay[0], relay[1])
                    break
                t = asyncio.ensure_future(self.run_request(client, msg))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        finally:
            client.closed = True
            self.clients.discard(client)
            writer.close()
            self.client_gone(client)

    def client_gone(self, client):
        for wid in list(client.holds):
            guest = self.by_window.get(wid)
            if guest is None:
                continue
            guest.holders.discard(client)
            if not guest.holders and guest.ending is None:
                self.log("window %s: its holder went away" % wid)
                self.end(guest, "disconnected")
        client.holds.clear()
        self.last_busy = time.time()

    async def housekeeping(self, server, sock_ino):
        while True:
            await asyncio.sleep(1.0)  # a periodic check, not a readiness wait
            now = time.time()
            for c in list(self.clients):
                if c.holds and not c.busy and now - c.last_seen > HOLD_SILENCE:
                    self.log("a holder of %s sent nothing for %.0f s: treating it as gone" % (sorted(c.holds), HOLD_SILENCE))
                    c.abort()
                    self.client_gone(c)
            try:
                gone = os.lstat(self.dir).st_ino != self.dir_ino
            except OSError:
                gone = True
            if gone and not self.by_window:
                self.log_fd = -1
                self.stopping.set_result(None)  # the lease directory was removed: nothing left to serve
                return
            if self.by_window or self.clients:
                self.last_busy = now
            elif now - self.last_busy > IDLE_EXIT:
                server.close()
                try:
                    if os.lstat(os.path.join(self.dir, "daemon.sock")).st_ino == sock_ino:
                        os.unlink(os.path.join(self.dir, "daemon.sock"))
                except OSError:
                    pass
                self.log("idle, exiting")
                self.stopping.set_result(None)
                return


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass  # keep the soft limit: the daemon then serves fewer windows at once, and says so when accept fails


def take_lock(dirpath):
    """The lock that makes this process the one daemon of the directory (released when the process dies)."""
    fd = open_private(os.path.join(dirpath, "daemon.lock"), os.O_RDWR | os.O_CREAT)
    deadline = time.time() + 10.0
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.path.join(dirpath, "daemon.sock"))
            return None  # another daemon serves this directory
        except OSError:
            pass  # it is starting (bound, not yet listening) or exiting: the lock frees or the socket answers
        finally:
            probe.close()
        if time.time() > deadline:
            raise Refused("another process holds %s/daemon.lock but does not answer on daemon.sock for 10 s: a daemon is stuck. "
                          "Find it with `fuser -v %s/daemon.lock` and stop it" % (dirpath, dirpath))
        time.sleep(0.02)  # bounded retry between two other processes' steps; see the deadline above


def bind(dirpath):
    path = os.path.join(dirpath, "daemon.sock")
    unlink_quiet(path)  # under the lock: a socket left here is a dead daemon's
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(1024)
    server.setblocking(False)
    return server, os.lstat(path).st_ino


def open_log(dirpath):
    try:
        return open_private(os.path.join(dirpath, "daemon.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Refused("%s/daemon.log is a symbolic link: someone planted it. Remove it, and find out who could write the lease "
                          "directory" % dirpath)
        raise


def serve(dirpath, server, sock_ino, supervisor, log_fd):
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    d = Daemon(dirpath, loop, supervisor, log_fd)
    d.log("daemon %s serving %s (supervisor %s)" % (VERSION, dirpath, supervisor))
    d.load()
    srv = loop.run_until_complete(asyncio.start_unix_server(d.serve_client, sock=server, limit=1 << 20))
    hk = loop.create_task(d.housekeeping(srv, sock_ino))
    loop.run_until_complete(d.stopping)
    hk.cancel()


def supervise(dirpath, server, sock_ino, log_fd):
    """Runs the daemon in a child and restarts it if it dies of anything but its idle exit: its records are on
    disk, so the new one ends them, and holders re-attach."""
    me = os.getpid()
    restarts = []
    while True:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                serve(dirpath, server, sock_ino, me, log_fd)
                os._exit(0)
            except BaseException:
                sys.stderr.write(traceback.format_exc())
                os._exit(70)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            return
        now = time.time()
        restarts = [t for t in restarts if now - t < 60] + [now]
        try:
            os.write(log_fd, ("%s [%d] supervisor: the daemon (pid %d) died (status %d); %s\n" % (
                iso(now), me, pid, status, "restarting" if len(restarts) <= 20 else "giving up")).encode())
        except OSError:
            pass  # a full /run must not stop the restart
        if len(restarts) > 20:
            return
        time.sleep(0.05)  # pace restarts of a daemon that dies at once


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    foreground = "--foreground" in sys.argv
    if len(args) != 1:
        sys.stderr.write("usage: daemon.py LEASE_DIR\n")
        sys.exit(2)
    os.umask(0o077)
    try:
        dirpath = check_dir(args[0])
        lock = take_lock(dirpath)
        log_fd = open_log(dirpath) if lock is not None else None
    except Refused as e:
        print("REFUSED %s" % e, flush=True)
        sys.exit(EXIT_REFUSED)
    if lock is None:
        print("READY already-running", flush=True)
        return
    raise_fd_limit()
    server, sock_ino = bind(dirpath)
    if foreground:
        print("READY foreground %d" % os.getpid(), flush=True)
        serve(dirpath, server, sock_ino, None, log_fd)
        return
    # Detach: survive the SSH session that started us (new session, no controlling terminal, stdio closed so the
    # exec's channel closes), then supervise the serving child.
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    print("READY started %d" % os.getpid(), flush=True)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    supervise(dirpath, server, sock_ino, log_fd)


if __name__ == "__main__":
    main()
