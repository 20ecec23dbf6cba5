/**
 * The libvirt RPC session against a scripted peer on a real UNIX socket: serials, out-of-order replies, keepalive,
 * remote_error, timeouts with late replies, abort, and a corrupt stream.
 */
import {
  encodeMessage,
  KeepaliveProc,
  MessageStatus,
  MessageType,
  PROGRAM,
  RemoteProc,
  XdrWriter,
  type Message,
} from "../../provider/libvirt/codec";
import { LibvirtSession } from "../../provider/libvirt/session";
import { failure } from "./failure";
import { LibvirtPeer as Peer } from "./libvirtPeer";

let peer: Peer;
let session: LibvirtSession;
beforeEach(async () => {
  peer = new Peer();
  session = new LibvirtSession(await peer.start(), { target: "test" });
});
afterEach(async () => {
  session.close();
  await peer.stop();
});

const intPayload = (n: number): Buffer => new XdrWriter().int(n).bytes();

test("calls get increasing serials, and out-of-order replies reach their own callers", async () => {
  const calls: Message[] = [];
  peer.onCall = (m) => {
    calls.push(m);
    if (calls.length === 2) {
      peer.reply(calls[1], intPayload(2));
      peer.reply(calls[0], intPayload(1));
    }
  };
  const [a, b] = await Promise.all([
    session.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_FSFREEZE, Buffer.alloc(0), "DOMAIN_FSFREEZE"),
    session.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_FSTHAW, Buffer.alloc(0), "DOMAIN_FSTHAW"),
  ]);
  expect(a.readInt32BE(0)).toBe(1);
  expect(b.readInt32BE(0)).toBe(2);
  expect(calls.map((c) => [c.header.serial, c.header.proc, c.header.prog, c.header.vers])).toEqual([
    [1, RemoteProc.DOMAIN_FSFREEZE, PROGRAM.REMOTE, 1],
    [2, RemoteProc.DOMAIN_FSTHAW, PROGRAM.REMOTE, 1],
  ]);
});

test("a keepalive PING is answered with a PONG, and a call still completes", async () => {
  peer.send(encodeMessage({ prog: PROGRAM.KEEPALIVE, vers: 1, proc: KeepaliveProc.PING, type: MessageType.MESSAGE, serial: 0, status: 0 }));
  peer.onCall = (m) => peer.reply(m, intPayload(7));
  const r = await session.call(PROGRAM.REMOTE, RemoteProc.AUTH_LIST, Buffer.alloc(0), "AUTH_LIST");
  expect(r.readInt32BE(0)).toBe(7);
  const pong = peer.received.find((m) => m.header.prog === PROGRAM.KEEPALIVE);
  expect(pong?.header).toMatchObject({ proc: KeepaliveProc.PONG, type: MessageType.MESSAGE, serial: 0 });
});

test("an error reply becomes LIBVIRT_ERROR with libvirt's code, domain and message", async () => {
  peer.onCall = (m) => {
    const e = new XdrWriter().int(42).int(10).optionalString("Domain not found: no domain with matching name 'zz'").int(2);
    e.uint(0).optionalString("zz").optionalString(null).optionalString(null).int(0).int(0).uint(0);
    peer.reply(m, e.bytes(), MessageStatus.ERROR);
  };
  const err = await failure(session.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_LOOKUP_BY_NAME, Buffer.alloc(0), "DOMAIN_LOOKUP_BY_NAME"));
  expect(err.code).toBe("LIBVIRT_ERROR");
  expect(err.message).toBe("test: libvirt refused DOMAIN_LOOKUP_BY_NAME: Domain not found: no domain with matching name 'zz'");
  expect(err.fields).toMatchObject({ libvirtCode: 42, libvirtDomain: 10, str1: "zz" });
});

test("a call times out; its late reply is dropped and the next call gets its own", async () => {
  const calls: Message[] = [];
  peer.onCall = (m) => calls.push(m);
  const err = await failure(session.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_FSFREEZE, Buffer.alloc(0), "DOMAIN_FSFREEZE", { timeoutMs: 100 }));
  expect(err).toMatchObject({ code: "LIBVIRT_TIMEOUT", fields: { procedure: "DOMAIN_FSFREEZE", timeoutMs: 100 } });
  peer.onCall = (m) => {
    peer.reply(calls[0], intPayload(99)); // the late one
    peer.reply(m, intPayload(1));
  };
  const r = await session.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_FSTHAW, Buffer.alloc(0), "DOMAIN_FSTHAW");
  expect(r.readInt32BE(0)).toBe(1);
});

test("an aborted call fails with ABORTED at once", async () => {
  const ac = new AbortController();
  const p = session.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_FSFREEZE, Buffer.alloc(0), "DOMAIN_FSFREEZE", { signal: ac.signal });
  ac.abort();
  expect((await failure(p)).code).toBe("ABORTED");
});

test("the peer closing fails pending calls with LIBVIRT_INTERRUPTED; a corrupt stream fails them with LIBVIRT_PROTOCOL", async () => {
  peer.onCall = () => peer.send(Buffer.from([0, 0, 0, 3]));
  const corrupt = await failure(session.call(PROGRAM.REMOTE, RemoteProc.AUTH_LIST, Buffer.alloc(0), "AUTH_LIST"));
  expect(corrupt.code).toBe("LIBVIRT_PROTOCOL");
  expect(session.closed).toBe(true);
  expect((await failure(session.call(PROGRAM.REMOTE, RemoteProc.AUTH_LIST, Buffer.alloc(0), "AUTH_LIST"))).code).toBe("LIBVIRT_PROTOCOL");

  const other = new Peer();
  const s2 = new LibvirtSession(await other.start(), { target: "t2" });
  other.onCall = () => void other.stop();
  expect((await failure(s2.call(PROGRAM.REMOTE, RemoteProc.AUTH_LIST, Buffer.alloc(0), "AUTH_LIST"))).code).toBe("LIBVIRT_INTERRUPTED");
  s2.close();
});
