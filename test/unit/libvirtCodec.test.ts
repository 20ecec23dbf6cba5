/**
 * The libvirt RPC codec against wire bytes assembled by hand from virnetprotocol.x / remote_protocol.x (not from
 * the encoder under test), plus its bounds checks.
 */
import {
  encodeMessage,
  formatUuid,
  MAX_MESSAGE_BYTES,
  MessageDecoder,
  MessageStatus,
  MessageType,
  parseUuid,
  PROGRAM,
  readDomain,
  readRemoteError,
  readTypedParams,
  RemoteProc,
  writeDomain,
  XdrReader,
  XdrWriter,
} from "../../provider/libvirt/codec";
import { isQuiesceError } from "../../provider/errors";
import { wireHex } from "../fake/libvirtPeer";

const hex = wireHex;

test("a CONNECT_OPEN call is framed as libvirt's client frames it", () => {
  const payload = new XdrWriter().optionalString("qemu:///system").uint(0).bytes();
  const wire = encodeMessage(
    { prog: PROGRAM.REMOTE, vers: 1, proc: RemoteProc.CONNECT_OPEN, type: MessageType.CALL, serial: 1, status: MessageStatus.OK },
    payload,
  );
  expect(wire).toEqual(
    hex(`
      00000038                               # length 56 (28 of length word and header, 28 of payload)
      20008086 00000001 00000001             # prog REMOTE, vers 1, proc CONNECT_OPEN
      00000000 00000001 00000000             # type CALL, serial 1, status OK
      00000001 0000000e 71656d753a2f2f2f73797374656d 0000   # remote_string: present, 14 bytes, padded to 16
      00000000                               # flags
    `),
  );
});

test("the decoder splits messages across arbitrary chunk boundaries and keeps the remainder", () => {
  const a = encodeMessage({ prog: PROGRAM.KEEPALIVE, vers: 1, proc: 1, type: MessageType.MESSAGE, serial: 0, status: 0 });
  const b = encodeMessage({ prog: PROGRAM.REMOTE, vers: 1, proc: 66, type: MessageType.REPLY, serial: 7, status: 0 }, hex("00000001 00000000"));
  const stream = Buffer.concat([a, b, b.subarray(0, 5)]);
  const d = new MessageDecoder();
  const got = [...stream].flatMap((byte) => d.push(Buffer.from([byte])));
  expect(got.map((m) => [m.header.prog, m.header.proc, m.header.serial])).toEqual([
    [PROGRAM.KEEPALIVE, 1, 0],
    [PROGRAM.REMOTE, 66, 7],
  ]);
  expect(got[1].payload).toEqual(hex("00000001 00000000"));
  expect(d.pending).toBe(5);
});

test("a length below the header or above the maximum is a protocol error, not a hang or an allocation", () => {
  for (const length of [27, MAX_MESSAGE_BYTES + 1]) {
    const d = new MessageDecoder();
    const b = Buffer.alloc(4);
    b.writeUInt32BE(length);
    let err: unknown;
    try {
      d.push(b);
    } catch (e) {
      err = e;
    }
    expect(isQuiesceError(err, "LIBVIRT_PROTOCOL")).toBe(true);
  }
});

test("remote_error decodes code, domain, message and the optional fields", () => {
  // VIR_ERR_NO_DOMAIN (42) from the QEMU driver (domain 10), with a message, no dom, str1, no str2/str3.
  const payload = hex(`
    0000002a 0000000a                                            # code 42, domain 10
    00000001 00000014 446f6d61696e206e6f7420666f756e643a207a7a   # message: "Domain not found: zz" (20 bytes)
    00000002                                                     # level
    00000000                                                     # dom: absent
    00000001 00000002 7a7a 0000                                  # str1: "zz"
    00000000 00000000                                            # str2, str3: absent
    00000000 00000000                                            # int1, int2
    00000000                                                     # net: absent
  `);
  const r = new XdrReader(payload, "remote_error");
  const e = readRemoteError(r);
  r.end();
  expect(e).toMatchObject({ code: 42, domain: 10, message: "Domain not found: zz", level: 2, dom: null, str1: "zz", str2: null, str3: null, int1: 0, int2: 0 });
});

test("a domain reference and typed parameters round-trip through the wire forms", () => {
  const uuid = parseUuid("c7a5fdbd-cdaf-9455-926a-d65c16db1809") as Buffer;
  const w = new XdrWriter();
  writeDomain(w, { name: "vm1", uuid, id: 3 });
  const r = new XdrReader(w.bytes());
  expect(readDomain(r)).toEqual({ name: "vm1", uuid, id: 3 });
  r.end();
  expect(formatUuid(uuid)).toBe("c7a5fdbd-cdaf-9455-926a-d65c16db1809");
  expect(parseUuid("c7a5fdbdcdaf9455926ad65c16db1809")).toEqual(uuid);
  expect(parseUuid("vm1")).toBeUndefined();

  // fs.count (uint 1), fs.0.mountpoint (string), fs.0.disk.0.serial (string), a boolean and an unsigned long long.
  const params = hex(`
    00000005
    00000008 66732e636f756e74 00000002 00000001
    0000000f 66732e302e6d6f756e74706f696e74 00 00000007 00000005 2f64617461 000000
    00000012 66732e302e6469736b2e302e73657269616c 0000 00000007 00000006 716461746131 0000
    00000001 62 000000 00000006 00000001
    00000001 75 000000 00000004 0000000100000000
  `);
  const p = readTypedParams(new XdrReader(params));
  expect(p.get("fs.count")).toBe(1);
  expect(p.get("fs.0.mountpoint")).toBe("/data");
  expect(p.get("fs.0.disk.0.serial")).toBe("qdata1");
  expect(p.get("b")).toBe(true);
  expect(p.get("u")).toBe(4294967296n);
});

test("truncated payloads, oversized counts, bad bools and unknown union arms are protocol errors", () => {
  const cases: Array<() => unknown> = [
    () => new XdrReader(hex("0000")).int(),
    () => new XdrReader(hex("00000010 6162")).string(),
    () => new XdrReader(hex("ffffffff")).array((r) => r.int(), 16),
    () => new XdrReader(hex("00000002")).bool(),
    () => readTypedParams(new XdrReader(hex("00000001 00000001 61000000 00000009 00000000"))),
    () => new XdrReader(hex("00000000 00000000")).end(),
  ];
  for (const c of cases) {
    let err: unknown;
    try {
      c();
    } catch (e) {
      err = e;
    }
    expect(isQuiesceError(err, "LIBVIRT_PROTOCOL")).toBe(true);
  }
  expect(() => new XdrWriter().int(2 ** 31)).toThrow(RangeError);
});
