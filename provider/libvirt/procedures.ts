/**
 * Typed libvirt procedures over a {@link LibvirtSession}: the few calls pulumi-quiesce makes, each with its
 * argument and result structures from remote_protocol.x / qemu_protocol.x (AGENT-FACTS.md, "libvirt RPC").
 */
import { QuiesceError } from "../errors";
import {
  PROGRAM,
  QemuProc,
  readDomain,
  readTypedParams,
  RemoteProc,
  UUID_BYTES,
  writeDomain,
  XdrReader,
  XdrWriter,
  type DomainRef,
  type TypedParamValue,
} from "./codec";
import type { CallOptions, LibvirtSession } from "./session";

/** Authentication types (`remote_auth_type`). */
export const AuthType = { NONE: 0, SASL: 1, POLKIT: 2 } as const;

/** The default connection URI, as virsh uses it when none is given. */
export const DEFAULT_LIBVIRT_URI = "qemu:///system";

/** REMOTE_AUTH_TYPE_LIST_MAX. */
const AUTH_TYPE_LIST_MAX = 20;
/** REMOTE_DOMAIN_FSFREEZE_MOUNTPOINTS_MAX. */
export const FSFREEZE_MOUNTPOINTS_MAX = 256;
/** VIR_DOMAIN_GUEST_INFO_FILESYSTEM: the `types` bit of DOMAIN_GET_GUEST_INFO for filesystems. */
export const GUEST_INFO_FILESYSTEM = 16;
/** DOMAIN_AGENT_COMMAND timeouts, in seconds or these values (VIR_DOMAIN_QEMU_AGENT_COMMAND_*). */
export const AgentCommandTimeout = { BLOCK: -2, DEFAULT: -1, NOWAIT: 0 } as const;

function reader(payload: Buffer, what: string): XdrReader {
  return new XdrReader(payload, what);
}

/** AUTH_LIST: the authentication types the server asks of this client (empty or `[NONE]`: none needed). */
export async function authList(s: LibvirtSession, options?: CallOptions): Promise<number[]> {
  const r = reader(await s.call(PROGRAM.REMOTE, RemoteProc.AUTH_LIST, Buffer.alloc(0), "AUTH_LIST", options), "AUTH_LIST reply");
  const types = r.array((x) => x.int(), AUTH_TYPE_LIST_MAX);
  r.end();
  return types;
}

/** AUTH_POLKIT: asks polkit to let this client in; true when it did. */
export async function authPolkit(s: LibvirtSession, options?: CallOptions): Promise<boolean> {
  const r = reader(await s.call(PROGRAM.REMOTE, RemoteProc.AUTH_POLKIT, Buffer.alloc(0), "AUTH_POLKIT", options), "AUTH_POLKIT reply");
  const complete = r.int();
  r.end();
  return complete !== 0;
}

/** CONNECT_OPEN of `uri` (default {@link DEFAULT_LIBVIRT_URI}). */
export async function connectOpen(s: LibvirtSession, uri: string = DEFAULT_LIBVIRT_URI, flags = 0, options?: CallOptions): Promise<void> {
  const payload = new XdrWriter().optionalString(uri).uint(flags).bytes();
  reader(await s.call(PROGRAM.REMOTE, RemoteProc.CONNECT_OPEN, payload, "CONNECT_OPEN", options), "CONNECT_OPEN reply").end();
}

/** CONNECT_CLOSE. */
export async function connectClose(s: LibvirtSession, options?: CallOptions): Promise<void> {
  reader(await s.call(PROGRAM.REMOTE, RemoteProc.CONNECT_CLOSE, Buffer.alloc(0), "CONNECT_CLOSE", options), "CONNECT_CLOSE reply").end();
}

/** DOMAIN_LOOKUP_BY_NAME. @throws QuiesceError LIBVIRT_ERROR with libvirtCode 42 (VIR_ERR_NO_DOMAIN) when unknown. */
export async function lookupDomainByName(s: LibvirtSession, name: string, options?: CallOptions): Promise<DomainRef> {
  const r = reader(await s.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_LOOKUP_BY_NAME, new XdrWriter().string(name).bytes(), "DOMAIN_LOOKUP_BY_NAME", options), "lookup reply");
  const d = readDomain(r);
  r.end();
  return d;
}

/** DOMAIN_LOOKUP_BY_UUID (16 bytes). */
export async function lookupDomainByUuid(s: LibvirtSession, uuid: Buffer, options?: CallOptions): Promise<DomainRef> {
  const payload = new XdrWriter().fixedOpaque(uuid, UUID_BYTES).bytes();
  const r = reader(await s.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_LOOKUP_BY_UUID, payload, "DOMAIN_LOOKUP_BY_UUID", options), "lookup reply");
  const d = readDomain(r);
  r.end();
  return d;
}

/**
 * DOMAIN_FSFREEZE: libvirt sends guest-fsfreeze-freeze-list with `mountpoints`, or guest-fsfreeze-freeze when the
 * list is empty (so never pass `[]` meaning "nothing"). Returns the count the agent returned.
 */
export async function domainFsFreeze(s: LibvirtSession, dom: DomainRef, mountpoints: readonly string[], options?: CallOptions): Promise<number> {
  if (mountpoints.length > FSFREEZE_MOUNTPOINTS_MAX) {
    throw new QuiesceError("INVALID_INPUT", `libvirt freezes at most ${FSFREEZE_MOUNTPOINTS_MAX} mount points in one call, not ${mountpoints.length}`, {
      count: mountpoints.length,
    });
  }
  const w = new XdrWriter();
  writeDomain(w, dom);
  w.array(mountpoints, (x, m) => x.string(m)).uint(0);
  const r = reader(await s.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_FSFREEZE, w.bytes(), "DOMAIN_FSFREEZE", options), "DOMAIN_FSFREEZE reply");
  const n = r.int();
  r.end();
  return n;
}

/** DOMAIN_FSTHAW: thaws everything (libvirt rejects mount points on thaw). Returns the count thawed. */
export async function domainFsThaw(s: LibvirtSession, dom: DomainRef, options?: CallOptions): Promise<number> {
  const w = new XdrWriter();
  writeDomain(w, dom);
  w.array([] as string[], (x, m) => x.string(m)).uint(0);
  const r = reader(await s.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_FSTHAW, w.bytes(), "DOMAIN_FSTHAW", options), "DOMAIN_FSTHAW reply");
  const n = r.int();
  r.end();
  return n;
}

/**
 * DOMAIN_GET_GUEST_INFO for `types` (default filesystems): typed parameters such as `fs.count`,
 * `fs.N.{name,mountpoint,fstype}` and `fs.N.disk.M.{alias,serial,device}`.
 */
export async function domainGetGuestInfo(
  s: LibvirtSession,
  dom: DomainRef,
  types = GUEST_INFO_FILESYSTEM,
  options?: CallOptions,
): Promise<Map<string, TypedParamValue>> {
  const w = new XdrWriter();
  writeDomain(w, dom);
  w.uint(types).uint(0);
  const r = reader(await s.call(PROGRAM.REMOTE, RemoteProc.DOMAIN_GET_GUEST_INFO, w.bytes(), "DOMAIN_GET_GUEST_INFO", options), "DOMAIN_GET_GUEST_INFO reply");
  const params = readTypedParams(r);
  r.end();
  return params;
}

/**
 * The QEMU program's DOMAIN_AGENT_COMMAND: sends `command` (a QGA JSON request) to the guest agent libvirt owns, and
 * returns the agent's whole JSON reply. Marks the domain tainted (`custom-ga-command`). `timeoutSeconds` is a
 * number of seconds or one of {@link AgentCommandTimeout}.
 */
export async function domainAgentCommand(
  s: LibvirtSession,
  dom: DomainRef,
  command: string,
  timeoutSeconds: number,
  options?: CallOptions,
): Promise<string | null> {
  const w = new XdrWriter();
  writeDomain(w, dom);
  w.string(command).int(timeoutSeconds).uint(0);
  const r = reader(await s.call(PROGRAM.QEMU, QemuProc.DOMAIN_AGENT_COMMAND, w.bytes(), "DOMAIN_AGENT_COMMAND", options), "DOMAIN_AGENT_COMMAND reply");
  const result = r.optionalString();
  r.end();
  return result;
}

/** VIR_CONNECT_LIST_DOMAINS_ACTIVE. */
const LIST_DOMAINS_ACTIVE = 1;
/** REMOTE_DOMAIN_LIST_MAX. */
const DOMAIN_LIST_MAX = 16384;

/** CONNECT_LIST_ALL_DOMAINS, running domains only: their names, sorted. */
export async function listRunningDomains(s: LibvirtSession, options?: CallOptions): Promise<string[]> {
  const payload = new XdrWriter().int(1).uint(LIST_DOMAINS_ACTIVE).bytes();
  const r = reader(await s.call(PROGRAM.REMOTE, RemoteProc.CONNECT_LIST_ALL_DOMAINS, payload, "CONNECT_LIST_ALL_DOMAINS", options), "domain list");
  const domains = r.array((x) => readDomain(x), DOMAIN_LIST_MAX);
  r.uint();
  r.end();
  return domains.map((d) => d.name).sort();
}
