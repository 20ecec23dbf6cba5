/**
 * The typed libvirt procedures: what each puts on the wire (checked against bytes assembled by hand from
 * remote_protocol.x / qemu_protocol.x) and how each reads its reply.
 */
import { PROGRAM, QemuProc, RemoteProc, TypedParamType, XdrWriter, parseUuid, type Message } from "../../provider/libvirt/codec";
import { domainAgentCommand, domainFsFreeze, domainFsThaw, domainGetGuestInfo, lookupDomainByName } from "../../provider/libvirt/procedures";
import { LibvirtSession } from "../../provider/libvirt/session";
import { LibvirtPeer, wireHex } from "./libvirtPeer";

const hex = wireHex;

let peer: LibvirtPeer;
let session: LibvirtSession;
beforeEach(async () => {
  peer = new LibvirtPeer();
  session = new LibvirtSession(await peer.start(), { target: "test" });
});
afterEach(async () => {
  session.close();
  await peer.stop();
});

const dom = { name: "vm1", uuid: parseUuid("00112233-4455-6677-8899-aabbccddeeff") as Buffer, id: 1 };
const DOM_HEX = `
  00000003 766d3100                        # name "vm1"
  00112233445566778899aabbccddeeff         # uuid
  00000001                                 # id
`;

function answering(payload: Buffer): Promise<Message> {
  return new Promise((resolve) => {
    peer.onCall = (m) => {
      peer.reply(m, payload);
      resolve(m);
    };
  });
}

test("DOMAIN_LOOKUP_BY_NAME sends the name and reads remote_nonnull_domain", async () => {
  const call = answering(hex(DOM_HEX));
  expect(await lookupDomainByName(session, "vm1")).toEqual(dom);
  const m = await call;
  expect([m.header.prog, m.header.proc]).toEqual([PROGRAM.REMOTE, RemoteProc.DOMAIN_LOOKUP_BY_NAME]);
  expect(m.payload).toEqual(hex("00000003 766d3100"));
});

test("DOMAIN_FSFREEZE sends the domain, the mount points and flags 0, and returns the agent's count; FSTHAW sends no mount points", async () => {
  const freeze = answering(hex("00000001"));
  expect(await domainFsFreeze(session, dom, ["/data"])).toBe(1);
  const f = await freeze;
  expect([f.header.prog, f.header.proc]).toEqual([PROGRAM.REMOTE, RemoteProc.DOMAIN_FSFREEZE]);
  expect(f.payload).toEqual(hex(`${DOM_HEX} 00000001 00000005 2f64617461 000000  # mountpoints ["/data"]
    00000000                               # flags`));
  const thaw = answering(hex("00000002"));
  expect(await domainFsThaw(session, dom)).toBe(2);
  expect((await thaw).payload).toEqual(hex(`${DOM_HEX} 00000000 00000000`));
  await expect(domainFsFreeze(session, dom, Array.from({ length: 257 }, (_, i) => `/m${i}`))).rejects.toMatchObject({ code: "INVALID_INPUT" });
});

test("DOMAIN_GET_GUEST_INFO asks for filesystems and reads the typed parameters", async () => {
  const w = new XdrWriter().uint(2);
  w.string("fs.count").int(TypedParamType.UINT).uint(1);
  w.string("fs.0.disk.0.serial").int(TypedParamType.STRING).string("qdata1");
  const call = answering(w.bytes());
  const info = await domainGetGuestInfo(session, dom);
  expect(Object.fromEntries(info)).toEqual({ "fs.count": 1, "fs.0.disk.0.serial": "qdata1" });
  expect((await call).payload).toEqual(hex(`${DOM_HEX} 00000010 00000000  # types FILESYSTEM, flags`));
});

test("the QEMU program's DOMAIN_AGENT_COMMAND sends the JSON and the timeout, and returns the agent's reply", async () => {
  const call = answering(new XdrWriter().optionalString('{"return":"frozen"}').bytes());
  expect(await domainAgentCommand(session, dom, '{"execute":"guest-fsfreeze-status"}', 5)).toBe('{"return":"frozen"}');
  const m = await call;
  expect([m.header.prog, m.header.proc]).toEqual([PROGRAM.QEMU, QemuProc.DOMAIN_AGENT_COMMAND]);
  expect(m.payload.subarray(m.payload.length - 8)).toEqual(hex("00000005 00000000"));
});
