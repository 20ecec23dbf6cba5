/**
 * A libvirt-managed guest, reached through libvirt itself (libvirt owns the guest agent's socket: a second client
 * connects but never gets a reply, AGENT-FACTS.md). Opens libvirt's socket on the host (over the pooled SSH
 * connection's streamlocal channel, or locally), authenticates, opens the URI and finds the domain, with an error
 * that says what to do for each way that fails: libvirtd not running, authentication refused, an unknown domain
 * (listing the running ones), a domain that is not running, no guest agent.
 */
import { QuiesceError, isQuiesceError } from "../errors";
import { dialerFor } from "../transport/index";
import { defaultSshPool, sshLabel, type SshConnectionConfig, type SshPool } from "../transport/ssh";
import { parseUuid, VirErr, type DomainRef, type TypedParamValue } from "./codec";
import {
  AuthType,
  authList,
  authPolkit,
  connectOpen,
  DEFAULT_LIBVIRT_URI,
  domainAgentCommand,
  domainGetGuestInfo,
  listRunningDomains,
  lookupDomainByName,
  lookupDomainByUuid,
} from "./procedures";
import { LibvirtSession, type CallOptions } from "./session";
import type { Duplex } from "node:stream";

/** libvirt's sockets on the host, in the order libvirt's own client tries them: the modular daemon's, then libvirtd's. */
export const LIBVIRT_SOCKETS = ["/var/run/libvirt/virtqemud-sock", "/var/run/libvirt/libvirt-sock"] as const;

/** Where a libvirt guest is. */
export interface LibvirtTarget {
  /** SSH connection to the host; omitted: this machine. */
  readonly connection?: SshConnectionConfig;
  /** The domain: its name or its UUID. */
  readonly domain: string;
  /** The connection URI. Default {@link DEFAULT_LIBVIRT_URI}. */
  readonly libvirtUri?: string;
  /**
   * libvirt's socket on the host; default the URI's own `?socket=` parameter, else the first of
   * {@link LIBVIRT_SOCKETS} that exists.
   */
  readonly socketPath?: string;
}

/** An open, authenticated libvirt connection with its URI opened (no domain looked up yet). */
export interface LibvirtConnection {
  readonly session: LibvirtSession;
  /** Label for messages, e.g. `root@hv1:22:libvirt:vm1`. */
  readonly label: string;
  /** The socket it went through (absolute, on the host). */
  readonly socketPath: string;
  close(): void;
}

/** An open connection to libvirt with the target domain found, running, and its agent answering. */
export interface LibvirtGuest extends LibvirtConnection {
  readonly domain: DomainRef;
}

/** A filesystem of a libvirt guest, from DOMAIN_GET_GUEST_INFO. */
export interface LibvirtFilesystem {
  readonly mountpoint: string;
  /** Guest device name, e.g. `vda`. */
  readonly name: string;
  readonly type: string;
  readonly totalBytes?: number;
  readonly usedBytes?: number;
  /** Backing disks: libvirt's target (`vda`), the disk serial, the guest device node. */
  readonly disks: readonly { readonly alias?: string; readonly serial?: string; readonly device?: string }[];
}

const AUTH_ERRORS: readonly number[] = [VirErr.AUTH_FAILED, VirErr.AUTH_CANCELLED, VirErr.AUTH_UNAVAILABLE];

/** Label of a libvirt target for messages: `root@hv1:22:libvirt:vm1`, `local:libvirt:vm1`. */
export function libvirtLabel(target: Pick<LibvirtTarget, "connection" | "domain">): string {
  return `${target.connection ? sshLabel(target.connection) : "local"}:libvirt:${target.domain}`;
}

/** The `socket` parameter of a libvirt URI (`qemu:///system?socket=/run/x/libvirt-sock`), if it has one. */
export function uriSocket(uri: string): string | undefined {
  const q = uri.indexOf("?");
  if (q < 0) return undefined;
  return new URLSearchParams(uri.slice(q + 1)).get("socket") ?? undefined;
}

/** Opens libvirt's socket: the one given, the URI's, or the first of {@link LIBVIRT_SOCKETS} that exists. */
async function dial(target: LibvirtTarget, pool: SshPool, signal: AbortSignal | undefined, where: string): Promise<{ session: LibvirtSession; socketPath: string }> {
  const dialer = dialerFor(target.connection, pool);
  const given = target.socketPath ?? uriSocket(target.libvirtUri ?? DEFAULT_LIBVIRT_URI);
  const candidates = given ? [given] : [...LIBVIRT_SOCKETS];
  let lastMissing: QuiesceError | undefined;
  for (const socketPath of candidates) {
    try {
      const channel = await dialer(socketPath, { signal, busyTimeoutMs: 5_000 });
      return { session: new LibvirtSession(channel.stream, { target: channel.target }), socketPath };
    } catch (err) {
      if (isQuiesceError(err, "SOCKET_NO_ACCESS")) {
        throw authRefused(where, `${socketPath} cannot be opened by this user (permission denied): add the user to the libvirt group`);
      }
      // A stale socket file of a stopped daemon is as good as none: try the next one.
      if (!isQuiesceError(err, "SOCKET_MISSING", "SOCKET_UNREACHABLE", "SOCKET_NOT_A_SOCKET")) throw err;
      lastMissing = err;
    }
  }
  throw new QuiesceError(
    "LIBVIRT_UNAVAILABLE",
    `${where}: libvirt is not running there: ${candidates.join(" and ")} ${candidates.length > 1 ? "do not exist or do not answer" : "does not exist or does not answer"}. ` +
      "Start it (systemctl start libvirtd, or virtqemud on a modular install), or give the socket. Nothing was frozen.",
    { target: where, sockets: candidates },
    { cause: lastMissing },
  );
}

/** Options of {@link connectLibvirt} and {@link openLibvirtGuest}. */
export interface LibvirtOpenOptions {
  /** SSH pool. Default the process-wide pool. */
  readonly pool?: SshPool;
  readonly signal?: AbortSignal;
  /** Per call, in ms. Default {@link DEFAULT_CALL_TIMEOUT_MS}. */
  readonly timeoutMs?: number;
  /**
   * A stream to libvirt's socket to use instead of dialing one (the host daemon's relay), with the socket it leads
   * to. Default: dial.
   */
  readonly over?: { readonly stream: Duplex; readonly socketPath: string; readonly target: string };
}

/**
 * Connects to libvirt: opens its socket, authenticates and opens the URI.
 * @throws QuiesceError LIBVIRT_UNAVAILABLE, LIBVIRT_AUTH, and transport errors.
 */
export async function connectLibvirt(target: LibvirtTarget, options: LibvirtOpenOptions = {}): Promise<LibvirtConnection> {
  const where = libvirtLabel(target);
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const { session: s, socketPath } = options.over
    ? { session: new LibvirtSession(options.over.stream, { target: options.over.target }), socketPath: options.over.socketPath }
    : await dial(target, options.pool ?? defaultSshPool, options.signal, where);
  try {
    const auth = await authList(s, call);
    if (auth.includes(AuthType.POLKIT)) {
      // libvirt answers a polkit denial with an error (AUTH_FAILED, AUTH_CANCELLED), not with complete = 0.
      const allowed = await authPolkit(s, call).catch((err: unknown) => {
        if (isQuiesceError(err, "LIBVIRT_ERROR") && AUTH_ERRORS.includes(err.fields.libvirtCode as number)) throw authRefused(where, err.message);
        throw err;
      });
      if (!allowed) throw authRefused(where, "polkit did not allow this user");
    } else if (auth.length > 0 && !auth.includes(AuthType.NONE)) {
      throw authRefused(where, `the socket asks for ${auth.map((a) => (a === AuthType.SASL ? "SASL" : String(a))).join(", ")}, which pulumi-quiesce does not speak`);
    }
    try {
      await connectOpen(s, target.libvirtUri ?? DEFAULT_LIBVIRT_URI, 0, call);
    } catch (err) {
      if (isQuiesceError(err, "LIBVIRT_ERROR") && AUTH_ERRORS.includes(err.fields.libvirtCode as number)) throw authRefused(where, err.message);
      throw err;
    }
    return { session: s, label: where, socketPath, close: () => s.close() };
  } catch (err) {
    s.close();
    throw err;
  }
}

/**
 * Finds the target's domain, by UUID or name.
 * @throws QuiesceError UNKNOWN_DOMAIN (listing the running ones).
 */
export async function findDomain(conn: LibvirtConnection, target: LibvirtTarget, call: CallOptions = {}): Promise<DomainRef> {
  const s = conn.session;
  const where = conn.label;
  const uuid = parseUuid(target.domain);
  try {
    return uuid ? await lookupDomainByUuid(s, uuid, call) : await lookupDomainByName(s, target.domain, call);
  } catch (err) {
    if (!isQuiesceError(err, "LIBVIRT_ERROR") || err.fields.libvirtCode !== VirErr.NO_DOMAIN) throw err;
    const running = await listRunningDomains(s, call);
    throw new QuiesceError(
      "UNKNOWN_DOMAIN",
      `${where}: libvirt (${target.libvirtUri ?? DEFAULT_LIBVIRT_URI}) has no domain ${JSON.stringify(target.domain)}. ` +
        `Running domains: ${running.length ? running.join(", ") : "none"}. Give one of them by name or UUID. Nothing was frozen.`,
      { target: where, domain: target.domain, running },
      { cause: err },
    );
  }
}

/**
 * Connects to libvirt and finds the target's domain, running and with its guest agent answering.
 * @throws QuiesceError LIBVIRT_UNAVAILABLE, LIBVIRT_AUTH, UNKNOWN_DOMAIN, DOMAIN_NOT_RUNNING, NO_GUEST_AGENT, and
 *   transport errors.
 */
export async function openLibvirtGuest(target: LibvirtTarget, options: LibvirtOpenOptions & { /** Skip the agent's guest-ping (default false). */ skipAgentCheck?: boolean } = {}): Promise<LibvirtGuest> {
  const conn = await connectLibvirt(target, options);
  const where = conn.label;
  const s = conn.session;
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  try {
    const domain = await findDomain(conn, target, call);
    if (domain.id === -1) {
      throw new QuiesceError(
        "DOMAIN_NOT_RUNNING",
        `${where}: domain ${domain.name} is defined but not running, so there is nothing to freeze. Start it (virsh start ${domain.name}) ` +
          "or snapshot it as it is: a stopped guest's disks are consistent already. Nothing was frozen.",
        { target: where, domain: domain.name },
      );
    }
    if (!options.skipAgentCheck) await agentAnswers(s, domain, where, call);
    return { ...conn, domain };
  } catch (err) {
    conn.close();
    throw err;
  }
}

function authRefused(where: string, why: string): QuiesceError {
  return new QuiesceError(
    "LIBVIRT_AUTH",
    `${where}: libvirt refused this user: ${why}. Connect as root, or as a user in the libvirt group where polkit allows ` +
      "it (or the socket has auth_unix_rw = \"none\"). Nothing was frozen.",
    { target: where },
  );
}

/** The guest agent answers a guest-ping through libvirt; otherwise NO_GUEST_AGENT says what is missing. */
async function agentAnswers(s: LibvirtSession, domain: DomainRef, where: string, call: CallOptions): Promise<void> {
  try {
    await domainAgentCommand(s, domain, '{"execute":"guest-ping"}', 5, call);
  } catch (err) {
    const code = isQuiesceError(err, "LIBVIRT_ERROR") ? err.fields.libvirtCode : undefined;
    if (code === VirErr.OPERATION_INVALID && /not running/i.test((err as Error).message)) {
      // A paused (or shutting down) domain: it has an id, but its agent cannot answer.
      throw new QuiesceError(
        "DOMAIN_NOT_RUNNING",
        `${where}: domain ${domain.name} is not running (${(err as Error).message}). If it is paused, resume it (virsh resume ${domain.name}). Nothing was frozen.`,
        { target: where, domain: domain.name, libvirtCode: code },
        { cause: err },
      );
    }
    // 74: "QEMU guest agent is not configured" (no channel); 86: not connected or not answering; 112: timed out.
    const agentCodes: readonly unknown[] = [VirErr.ARGUMENT_UNSUPPORTED, VirErr.AGENT_UNRESPONSIVE, VirErr.AGENT_COMMAND_TIMEOUT, VirErr.OPERATION_INVALID];
    if (!agentCodes.includes(code)) throw err;
    throw new QuiesceError(
      "NO_GUEST_AGENT",
      `${where}: domain ${domain.name} has no guest agent answering (${(err as Error).message}). The domain needs ` +
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>, and qemu-ga running in the " +
        "guest (apt install qemu-guest-agent, or dnf install qemu-guest-agent). Nothing was frozen.",
      { target: where, domain: domain.name, libvirtCode: code },
      { cause: err },
    );
  }
}

/** The guest's filesystems, from DOMAIN_GET_GUEST_INFO (which, unlike GET_FSINFO, reports disk serials). */
export async function libvirtFilesystems(guest: LibvirtGuest, options?: CallOptions): Promise<LibvirtFilesystem[]> {
  return filesystemsFromGuestInfo(await domainGetGuestInfo(guest.session, guest.domain, undefined, options));
}

/** Maps DOMAIN_GET_GUEST_INFO's `fs.*` typed parameters to filesystems. */
export function filesystemsFromGuestInfo(info: ReadonlyMap<string, TypedParamValue>): LibvirtFilesystem[] {
  const text = (k: string): string | undefined => (typeof info.get(k) === "string" ? (info.get(k) as string) : undefined);
  const num = (k: string): number | undefined => {
    const v = info.get(k);
    return typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : undefined;
  };
  const out: LibvirtFilesystem[] = [];
  // Counts come from the peer: never more than the parameters actually sent.
  const count = (k: string): number => Math.min(num(k) ?? 0, info.size);
  for (let i = 0; i < count("fs.count"); i++) {
    const p = `fs.${i}`;
    const disks = [];
    for (let d = 0; d < count(`${p}.disk.count`); d++) {
      const q = `${p}.disk.${d}`;
      disks.push({
        ...(text(`${q}.alias`) ? { alias: text(`${q}.alias`) } : {}),
        ...(text(`${q}.serial`) ? { serial: text(`${q}.serial`) } : {}),
        ...(text(`${q}.device`) ? { device: text(`${q}.device`) } : {}),
      });
    }
    out.push({
      mountpoint: text(`${p}.mountpoint`) ?? "",
      name: text(`${p}.name`) ?? "",
      type: text(`${p}.fstype`) ?? "",
      ...(num(`${p}.total-bytes`) !== undefined ? { totalBytes: num(`${p}.total-bytes`) } : {}),
      ...(num(`${p}.used-bytes`) !== undefined ? { usedBytes: num(`${p}.used-bytes`) } : {}),
      disks,
    });
  }
  return out;
}

