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
import { parseUuid, type DomainRef, type TypedParamValue } from "./codec";
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
  /** libvirt's socket on the host; default the first of {@link LIBVIRT_SOCKETS} that exists. */
  readonly socketPath?: string;
}

/** An open connection to libvirt with the target domain found, running, and its agent answering. */
export interface LibvirtGuest {
  readonly session: LibvirtSession;
  readonly domain: DomainRef;
  /** Label for messages, e.g. `root@hv1:22:libvirt:vm1`. */
  readonly label: string;
  close(): void;
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

/** virErrorNumber values this module tells apart. */
const VIR_ERR = {
  NO_DOMAIN: 42,
  AUTH_FAILED: 45,
  OPERATION_INVALID: 55,
  ARGUMENT_UNSUPPORTED: 74,
  AUTH_CANCELLED: 79,
  AGENT_UNRESPONSIVE: 86,
  AUTH_UNAVAILABLE: 94,
  AGENT_COMMAND_TIMEOUT: 112,
} as const;
const AUTH_ERRORS: readonly number[] = [VIR_ERR.AUTH_FAILED, VIR_ERR.AUTH_CANCELLED, VIR_ERR.AUTH_UNAVAILABLE];

function label(target: LibvirtTarget): string {
  return `${target.connection ? sshLabel(target.connection) : "local"}:libvirt:${target.domain}`;
}

/** Opens libvirt's socket: the one given, or the first of {@link LIBVIRT_SOCKETS} that exists. */
async function dial(target: LibvirtTarget, pool: SshPool, signal: AbortSignal | undefined, where: string): Promise<LibvirtSession> {
  const dialer = dialerFor(target.connection, pool);
  const candidates = target.socketPath ? [target.socketPath] : [...LIBVIRT_SOCKETS];
  let lastMissing: QuiesceError | undefined;
  for (const socketPath of candidates) {
    try {
      const channel = await dialer(socketPath, { signal, busyTimeoutMs: 5_000 });
      return new LibvirtSession(channel.stream, { target: channel.target });
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

/**
 * Connects to libvirt and finds the target's domain, running and with its guest agent answering.
 * @throws QuiesceError LIBVIRT_UNAVAILABLE, LIBVIRT_AUTH, UNKNOWN_DOMAIN, DOMAIN_NOT_RUNNING, NO_GUEST_AGENT, and
 *   transport errors.
 */
export async function openLibvirtGuest(
  target: LibvirtTarget,
  options: { pool?: SshPool; signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<LibvirtGuest> {
  const where = label(target);
  const call: CallOptions = { signal: options.signal, timeoutMs: options.timeoutMs };
  const s = await dial(target, options.pool ?? defaultSshPool, options.signal, where);
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
    const uuid = parseUuid(target.domain);
    let domain: DomainRef;
    try {
      domain = uuid ? await lookupDomainByUuid(s, uuid, call) : await lookupDomainByName(s, target.domain, call);
    } catch (err) {
      if (!isQuiesceError(err, "LIBVIRT_ERROR") || err.fields.libvirtCode !== VIR_ERR.NO_DOMAIN) throw err;
      const running = await listRunningDomains(s, call);
      throw new QuiesceError(
        "UNKNOWN_DOMAIN",
        `${where}: libvirt (${target.libvirtUri ?? DEFAULT_LIBVIRT_URI}) has no domain ${JSON.stringify(target.domain)}. ` +
          `Running domains: ${running.length ? running.join(", ") : "none"}. Give one of them by name or UUID. Nothing was frozen.`,
        { target: where, domain: target.domain, running },
        { cause: err },
      );
    }
    if (domain.id === -1) {
      throw new QuiesceError(
        "DOMAIN_NOT_RUNNING",
        `${where}: domain ${domain.name} is defined but not running, so there is nothing to freeze. Start it (virsh start ${domain.name}) ` +
          "or snapshot it as it is: a stopped guest's disks are consistent already. Nothing was frozen.",
        { target: where, domain: domain.name },
      );
    }
    await agentAnswers(s, domain, where, call);
    return { session: s, domain, label: where, close: () => s.close() };
  } catch (err) {
    s.close();
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
    if (code === VIR_ERR.OPERATION_INVALID && /not running/i.test((err as Error).message)) {
      // A paused (or shutting down) domain: it has an id, but its agent cannot answer.
      throw new QuiesceError(
        "DOMAIN_NOT_RUNNING",
        `${where}: domain ${domain.name} is not running (${(err as Error).message}). If it is paused, resume it (virsh resume ${domain.name}). Nothing was frozen.`,
        { target: where, domain: domain.name, libvirtCode: code },
        { cause: err },
      );
    }
    // 74: "QEMU guest agent is not configured" (no channel); 86: not connected or not answering; 112: timed out.
    const agentCodes: readonly unknown[] = [VIR_ERR.ARGUMENT_UNSUPPORTED, VIR_ERR.AGENT_UNRESPONSIVE, VIR_ERR.AGENT_COMMAND_TIMEOUT, VIR_ERR.OPERATION_INVALID];
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

