/**
 * The quiesce lifecycle, independent of Pulumi (DESIGN.md, "Lifecycle rules"):
 * create = claim through the host daemon → (over a relay onto the agent connection the daemon holds)
 * sync/ping → status must be thawed → info → fsinfo + plan → arm the lease → freeze → verify;
 * release = the daemon thaws only if the record is this window's; status = the truth from the agent and the record.
 *
 * The host daemon (../host) is the one owner of a guest's freeze state: claims are compare-and-set by the socket's
 * identity, release and end compare-and-delete by window id, and from claim to end it holds the only agent
 * connection, so no dropped channel lets one window touch another's freeze. A failed create leaves the guest
 * thawed: any failure after the lease is armed has the daemon thaw, verify and remove the record.
 */
import { randomBytes } from "node:crypto";
import type { Duplex } from "node:stream";
import { QuiesceError, isQuiesceError } from "../errors";
import { AgentSession, agentCommandError } from "../agent/session";
import {
  fsfreezeFreezeAll,
  fsfreezeFreezeList,
  fsfreezeStatus,
  getFsinfo,
  getInfo,
  getOsinfo,
  ping,
  type AgentExecutor,
  type FreezeStatus,
  type GuestFilesystem,
} from "../agent/commands";
import type { ExecuteOptions } from "../agent/session";
import { dialerFor } from "../transport/index";
import { defaultSshPool, type SshConnectionConfig, type SshPool } from "../transport/ssh";
import {
  DEFAULT_LEASE_DIR,
  daemonFor,
  type DaemonClient,
  type DaemonRelease,
  type DaemonStatus,
  type DaemonThaw,
  type EndedRecord,
  type HostRecord,
} from "../host/daemon";
import { planFreeze, planWithoutFsinfo, type FreezePlan, type Selection } from "./plan";
import { connectLibvirt, findDomain, libvirtLabel, openLibvirtGuest, type LibvirtConnection } from "../libvirt/guest";
import { LibvirtAgent } from "../libvirt/agent";
import { formatUuid, type DomainRef } from "../libvirt/codec";
import { DEFAULT_LIBVIRT_URI } from "../libvirt/procedures";
import { guestOsProfile, LINUX, looksLikeWindows, WINDOWS, type GuestOsKind, type GuestOsProfile } from "./guestOs";

export { DEFAULT_LEASE_DIR, type EndedRecord } from "../host/daemon";

/** What every target has: the host, and the host daemon's directory there. */
export interface TargetBase {
  /** SSH connection to the host; omitted: this machine. */
  readonly connection?: SshConnectionConfig;
  /**
   * Lease directory on that host: the host daemon's directory. It must be owned by the SSH user and not writable
   * by group or others (it is created 0700 when missing). Default {@link DEFAULT_LEASE_DIR}.
   */
  readonly leaseDir?: string;
}

/** A guest reached through its agent's socket (bare QEMU, Proxmox VE). */
export interface SocketTarget extends TargetBase {
  /** Absolute path of the agent's chardev socket on the host. */
  readonly socketPath: string;
  readonly domain?: undefined;
  readonly libvirtUri?: undefined;
}

/**
 * A libvirt domain, reached through libvirt, which owns its agent's socket (a second client of that socket gets
 * no reply). libvirt's socket on the host: the URI's `?socket=`, else `/var/run/libvirt/virtqemud-sock` if it
 * exists, else `/var/run/libvirt/libvirt-sock`, as libvirt's own client chooses.
 */
export interface DomainTarget extends TargetBase {
  /** The domain's name or UUID. */
  readonly domain: string;
  /** libvirt connection URI, local to the host: `qemu:///system` (the default) or `qemu:///session`. */
  readonly libvirtUri?: string;
  readonly socketPath?: undefined;
}

/** Where the guest agent is: exactly one of a socket path and a libvirt domain. */
export type AgentTarget = SocketTarget | DomainTarget;

/** True for a libvirt domain target. */
export function isDomainTarget(target: AgentTarget): target is DomainTarget {
  return typeof target.domain === "string";
}

/** Timeouts of agent operations, in seconds. */
export interface Timeouts {
  /** Sync handshake and ordinary commands (ping, info, status, fsinfo). Default 10 s. */
  readonly agentSeconds?: number;
  /** The freeze command (the guest flushes dirty data first: can take long under write load). Default 30 s. */
  readonly freezeSeconds?: number;
  /** The thaw command. Default 30 s. */
  readonly thawSeconds?: number;
}

/** Defaults of {@link Timeouts}, in seconds. */
export const DEFAULT_TIMEOUTS: Required<Timeouts> = { agentSeconds: 10, freezeSeconds: 30, thawSeconds: 30 };
/** Default lease length, in seconds (5 minutes). */
export const DEFAULT_MAX_DURATION_SECONDS = 300;

/** Injectable dependencies (tests, the CLI and benchmarks use their own pool). */
export interface LifecycleDeps {
  /** SSH pool. Default the process-wide pool. */
  readonly pool?: SshPool;
  /** Clock, for tests. Default `Date.now`. Deadlines are kept on the host's clock, never this one. */
  readonly now?: () => number;
  /**
   * Called at each step boundary of a create, for fault-injection tests (drop a channel, kill a process): the
   * step just done, and the relay stream in use then, if any. Default none.
   */
  readonly onStep?: (step: CreateStep, io: { readonly relay?: Duplex; readonly daemon: DaemonClient }) => void | Promise<void>;
  /**
   * Awaited once the selection is planned, right before the lease is armed and the freeze sent: a group's barrier
   * (every member preflighted, claimed and planned before any is frozen). A rejection fails the create with the
   * claim withdrawn, the guest untouched. Default none.
   */
  readonly beforeFreeze?: () => Promise<void>;
}

/** The step boundaries of a create, in order (see {@link LifecycleDeps.onStep}). */
export const CREATE_STEPS = ["claimed", "relayed", "checked", "planned", "armed", "frozen", "verified", "returned"] as const;
/** One of {@link CREATE_STEPS}. */
export type CreateStep = (typeof CREATE_STEPS)[number];

/** What to freeze and for how long. */
export interface CreateWindowRequest extends Selection {
  readonly target: AgentTarget;
  /** Lease length in seconds: the guest is thawed by then whatever happens. Default 300. */
  readonly maxDurationSeconds?: number;
  /**
   * Thaw as soon as this process is gone (it dies, falls silent for 15 s, or its SSH connection drops): the
   * window stays held by this process's control channel to the host daemon until it is released. Default true.
   * While the create runs, the window is held that way whatever this says, so a failed create never leaves a
   * freeze behind.
   */
  readonly thawOnDisconnect?: boolean;
  /** Recorded in the lease: who holds the window. Default `pulumi-quiesce`. */
  readonly owner?: string;
  readonly timeouts?: Timeouts;
  readonly signal?: AbortSignal;
  /**
   * What to do when the guest cannot be frozen (its agent does not answer, fsfreeze is blocked, a freeze hook
   * fails, the freeze fails or cannot be verified and was thawed). `"fail"` (the default) fails; with
   * `"crash-consistent"` the window is made with nothing frozen and {@link WindowInfo.consistency} `"crash"`,
   * as vzdump, Nova and Veeam fall back. Input errors (an unknown mount point, a lease too long), a guest
   * frozen by another window and an unreachable host always fail, and nothing falls back while the guest may
   * still be frozen.
   */
  readonly onQuiesceFailure?: OnQuiesceFailure;
}

/** See {@link CreateWindowRequest.onQuiesceFailure}. */
export type OnQuiesceFailure = "fail" | "crash-consistent";

/** What a snapshot taken inside a window is: `filesystem`-consistent (frozen), or only `crash`-consistent. */
export type Consistency = "filesystem" | "crash";

/** A held window. Times are ISO 8601 UTC. */
export interface WindowInfo {
  readonly windowId: string;
  readonly owner: string;
  /** Mount points frozen, sorted. */
  readonly frozenMountpoints: readonly string[];
  /** The count the agent returned (equals `frozenMountpoints.length`, verified). */
  readonly frozenCount: number;
  readonly frozenAt: string;
  readonly expiresAt: string;
  /** qemu-ga version. */
  readonly agentVersion: string;
  /** The guest's filesystems as seen before the freeze. */
  readonly filesystems: readonly GuestFilesystem[];
  /** Milliseconds the freeze command took. */
  readonly freezeMs: number;
  /** `filesystem` when frozen; `crash` when the freeze could not be made and the window fell back (nothing frozen). */
  readonly consistency: Consistency;
  /** Why the window is only crash-consistent (the failure's message), when it is. */
  readonly consistencyReason?: string;
  /** The guest's kind of agent, from guest-get-osinfo (linux when it does not say). */
  readonly guestOs: GuestOsKind;
}

/** How a window stands, from the agent's status and the lease. */
export type WindowState =
  /** The lease is this window's, before its deadline, and the agent says frozen. */
  | "held"
  /** The record is this window's but its deadline has passed, or the daemon thawed it at the deadline. */
  | "expired"
  /** The daemon thawed it because the process holding it went away or fell silent. */
  | "disconnected"
  /** Its owner released it. */
  | "released"
  /** The lease is this window's but the agent says thawed (thawed by someone else, or the guest rebooted). */
  | "thawed-outside"
  /** Another window's lease holds the guest. */
  | "other-window"
  /** Frozen, and no lease: a freeze made outside pulumi-quiesce. */
  | "frozen-outside"
  /** Thawed and no lease of this window: nothing held. */
  | "not-held"
  /**
   * The agent socket no longer exists on the host: the VM stopped or was deleted, which ended any freeze
   * (reported only when asked for with {@link VanishedSocket} `"vm-gone"`).
   */
  | "vm-gone";

/**
 * What a missing agent socket means. `"error"` (the default): a SOCKET_MISSING error, since the path may be
 * wrong. `"vm-gone"`: the path is known good (a window was created through it), so the VM is gone and so is
 * its freeze; the call reports state `vm-gone` instead of failing. The Pulumi provider uses it for read, delete
 * and release, so a stack whose VM was deleted can still be refreshed and destroyed.
 */
export type VanishedSocket = "error" | "vm-gone";

/** The agent's freeze status, or `gone` when its socket no longer exists (state `vm-gone`). */
export type AgentFreezeStatus = FreezeStatus | "gone";

/** The truth about a guest and (optionally) one window. */
export interface StatusReport {
  readonly agentStatus: AgentFreezeStatus;
  /** The host daemon's record of whichever window holds the guest, if any. */
  readonly lease: LeaseRecord | undefined;
  /** How the window asked about ended, if the daemon recorded it. */
  readonly ended: EndedRecord | undefined;
  /** State relative to `windowId` (when given; else relative to the lease's own window). */
  readonly state: WindowState;
}

/** Result of a release. */
export interface ReleaseResult {
  /**
   * `released`: this call thawed the window. `already-released`: its owner had released it before.
   * Otherwise this call touched nothing (see {@link WindowState}).
   */
  readonly outcome: "released" | "already-released" | Exclude<WindowState, "held" | "released">;
  /** How long the freeze was held, in ms (when the lease was this window's). */
  readonly heldMs?: number;
  /** Filesystems thawed by this call. */
  readonly thawedCount: number;
  /** The lease found, if any. */
  readonly lease?: LeaseRecord;
  readonly agentStatus: AgentFreezeStatus;
  /**
   * Windows: the thaw found that VSS had already let the guest's writes resume (it holds them at most 10 s while
   * the agent still says "frozen"), so the window did not hold throughout; `outcome` is then `expired`.
   */
  readonly writesResumed?: boolean;
  /** The thaw happened, but the agent reported a failure besides (a fsfreeze hook failing on "thaw"): its message. */
  readonly thawWarning?: string;
  /** When this call's thaw was answered (the end of the freeze), ISO 8601 UTC on the host's clock. */
  readonly thawedAt?: string;
}


function resolved(t?: Timeouts): Required<Timeouts> {
  return { ...DEFAULT_TIMEOUTS, ...Object.fromEntries(Object.entries(t ?? {}).filter(([, v]) => v !== undefined)) };
}

/**
 * The agent socket of a Proxmox VE guest: qemu-server makes `/var/run/qemu-server/<vmid>.qga`. Proxmox itself
 * connects to it per command, so the socket is shared with vzdump and snapshots (see README, "Proxmox VE").
 */
export function proxmoxSocketPath(vmid: number): string {
  return `/var/run/qemu-server/${vmid}.qga`;
}

/** Label of a target for messages. */
export function targetLabel(target: AgentTarget): string {
  if (isDomainTarget(target)) return libvirtLabel(target);
  const c = target.connection;
  return c ? `${c.user ?? "root"}@${c.host}:${c.port ?? 22}:${target.socketPath}` : `local:${target.socketPath}`;
}


/**
 * The host daemon's record of a window, as the lifecycle reports it. Times are ISO 8601 UTC on the host's clock.
 */
export interface LeaseRecord {
  readonly windowId: string;
  /** Who holds it: `pulumi:project/stack/resource`, `cli:user@host`, or a caller-chosen label. */
  readonly owner: string;
  /** The agent socket path the window was made through, as given; for a libvirt domain, libvirt's socket. */
  readonly socketPath: string;
  /**
   * The guest's identity on the host: the socket's resolved path, device and inode (for a libvirt domain, libvirt's
   * socket with 0 and 0: its identity is {@link LeaseRecord.domain}'s UUID).
   */
  readonly identity: { readonly path: string; readonly dev: number; readonly ino: number };
  /** The libvirt domain, for a window on one. */
  readonly domain?: { readonly name: string; readonly uuid: string; readonly uri: string };
  /** Guest mount points frozen (empty when everything was frozen with freeze-all). */
  readonly mountpoints: readonly string[];
  /** When the freeze was issued (the claim's time while the create still runs). */
  readonly frozenAt: string;
  /** The deadline: the guest is thawed by then whatever happens. */
  readonly expiresAt: string;
  /** Milliseconds left before the deadline, on the host's clock when the daemon answered. */
  readonly remainingMs: number;
  /** The daemon is ending the window (its deadline passed, its holder left, or a release is thawing it). */
  readonly ending: boolean;
  /**
   * The lease is armed: the window's create reached its freeze. Before that, a claim holds the guest but has
   * frozen nothing (a freeze seen then is someone else's).
   */
  readonly armed: boolean;
}

function toLease(r: HostRecord): LeaseRecord {
  return {
    windowId: r.windowId,
    owner: r.owner,
    socketPath: r.socketPath ?? r.libvirt?.socket ?? r.real,
    identity: { path: r.real, dev: r.dev, ino: r.ino },
    ...(r.libvirt ? { domain: { name: r.libvirt.name, uuid: r.libvirt.uuid, uri: r.libvirt.uri } } : {}),
    mountpoints: r.selection,
    frozenAt: r.armedAt ? new Date(Math.round(r.armedAt * 1000)).toISOString() : r.claimedAt,
    // From the same instant as frozenAt, so that the two differ by exactly the lease.
    expiresAt: new Date(r.armedAt && r.leaseMs ? Math.round(r.armedAt * 1000) + r.leaseMs : Math.round(r.deadline * 1000)).toISOString(),
    remainingMs: r.remainingMs,
    ending: r.ending,
    armed: r.armedAt !== null,
  };
}

/** The host daemon that owns the target's freeze state. */
function daemonOf(target: AgentTarget, deps: LifecycleDeps): DaemonClient {
  return daemonFor({ connection: target.connection, leaseDir: target.leaseDir ?? DEFAULT_LEASE_DIR }, deps.pool ?? defaultSshPool);
}

/**
 * Opens a synced agent session to the target, directly (outside windows the daemon holds nothing). Close it as
 * soon as possible: the chardev serves one client.
 */
export async function openSession(
  target: SocketTarget,
  timeouts: Timeouts | undefined,
  deps: LifecycleDeps = {},
  signal?: AbortSignal,
): Promise<AgentSession> {
  const t = resolved(timeouts);
  // Other clients of the same guest are served one at a time: wait for our turn as long as for an answer.
  const channel = await dialerFor(target.connection, deps.pool ?? defaultSshPool)(target.socketPath, {
    signal,
    busyTimeoutMs: t.agentSeconds * 1000,
  });
  return AgentSession.open(channel.stream, {
    target: channel.target,
    syncTimeoutMs: t.agentSeconds * 1000,
    commandTimeoutMs: t.agentSeconds * 1000,
    signal,
  });
}

/**
 * What a create uses of the guest's agent, over its relay: QGA commands (ping, status, info, osinfo), the
 * filesystems, and the freeze. For a socket target, a QGA session on the agent connection the daemon holds; for a
 * libvirt domain, a libvirt session through the daemon onto libvirt's socket (libvirt's agent command, its guest
 * info and its freeze API).
 */
interface FreezeChannel {
  readonly agent: AgentExecutor;
  /** The channel's opening made sure the agent answers (libvirt's: a guest-ping, for NO_GUEST_AGENT). */
  readonly agentAnswered: boolean;
  /** The relay's stream (for fault injection). */
  readonly stream: Duplex;
  filesystems(options: ExecuteOptions): Promise<GuestFilesystem[]>;
  freeze(plan: FreezePlan, options: ExecuteOptions): Promise<number>;
  close(): void;
}

/** Opens the create's {@link FreezeChannel} over a relay of the daemon's for `windowId`. */
async function openFreezeChannel(
  target: AgentTarget,
  ref: GuestRef,
  daemon: DaemonClient,
  windowId: string,
  label: string,
  t: Required<Timeouts>,
  signal?: AbortSignal,
): Promise<FreezeChannel> {
  if (!("libvirt" in ref)) {
    const { session, stream } = await relaySession(daemon, windowId, label, t, signal);
    return {
      agent: session,
      agentAnswered: false,
      stream,
      filesystems: (o) => getFsinfo(session, o),
      freeze: (plan, o) => (plan.all ? fsfreezeFreezeAll(session, o) : fsfreezeFreezeList(session, plan.listArguments, o)),
      close: () => session.close(),
    };
  }
  const stream = await daemon.relay(windowId, { signal, timeoutMs: t.agentSeconds * 1000 + 5_000 });
  const opening = openLibvirtGuest(
    { ...(target as DomainTarget), domain: ref.libvirt.uuid },
    { over: { stream, socketPath: ref.libvirt.socket, target: `${label} (relayed by the host daemon)` }, signal, timeoutMs: t.agentSeconds * 1000 + 5_000 },
  );
  stream.resume(); // the relay comes paused; the session listens now
  const guest = await opening;
  const agent = new LibvirtAgent(guest.session, guest.domain, label);
  return {
    agent,
    agentAnswered: true,
    stream,
    filesystems: (o) => agent.filesystems(o),
    // DOMAIN_FSFREEZE with no mount points is libvirt's freeze-all.
    freeze: (plan, o) => agent.freeze(plan.all ? [] : plan.listArguments, o),
    close: () => guest.close(),
  };
}

/** An agent session over a relay onto the agent connection the daemon holds for `windowId` (no idle poll). */
async function relaySession(
  daemon: DaemonClient,
  windowId: string,
  label: string,
  t: Required<Timeouts>,
  signal?: AbortSignal,
): Promise<{ session: AgentSession; stream: Duplex }> {
  const stream = await daemon.relay(windowId, { signal, timeoutMs: t.agentSeconds * 1000 + 5_000 });
  const opening = AgentSession.open(stream, {
    target: `${label} (relayed by the host daemon)`,
    syncTimeoutMs: t.agentSeconds * 1000,
    commandTimeoutMs: t.agentSeconds * 1000,
    signal,
  });
  // The relay comes paused (nothing the agent sends may be lost before the session listens); it listens now.
  stream.resume();
  return { session: await opening, stream };
}

/**
 * The guest's filesystems (guest-get-fsinfo; for a libvirt domain, DOMAIN_GET_GUEST_INFO). Fails with AGENT_FROZEN
 * while frozen.
 */
export async function listFilesystems(target: AgentTarget, options: { timeouts?: Timeouts; signal?: AbortSignal } = {}, deps: LifecycleDeps = {}): Promise<GuestFilesystem[]> {
  if (isDomainTarget(target)) {
    const t = resolved(options.timeouts);
    const guest = await openLibvirtGuest(target, { pool: deps.pool, signal: options.signal, timeoutMs: t.agentSeconds * 1000 + 5_000 });
    try {
      return await new LibvirtAgent(guest.session, guest.domain, guest.label).filesystems({ signal: options.signal, timeoutMs: t.agentSeconds * 1000 });
    } finally {
      guest.close();
    }
  }
  const session = await openSession(target, options.timeouts, deps, options.signal);
  try {
    return await getFsinfo(session, { signal: options.signal });
  } finally {
    session.close();
  }
}

/** A window's state as seen from the end record the daemon keeps. */
function endedState(how: EndedRecord["how"]): WindowState {
  return how === "forced" ? "thawed-outside" : how;
}

function classify(lease: LeaseRecord | undefined, agentStatus: AgentFreezeStatus, windowId: string | undefined, ended?: EndedRecord): WindowState {
  const mine = lease !== undefined && (windowId === undefined || lease.windowId === windowId);
  if (mine && lease && !lease.armed) {
    // A create still claiming: nothing of this window is frozen yet, whatever the agent says.
    return agentStatus === "frozen" ? "frozen-outside" : agentStatus === "gone" ? "vm-gone" : "not-held";
  }
  if (mine && lease) {
    if (agentStatus === "gone") return "vm-gone";
    if (agentStatus === "thawed") return "thawed-outside";
    return lease.remainingMs <= 0 || lease.ending ? "expired" : "held";
  }
  if (lease) return "other-window";
  if (ended && windowId !== undefined && ended.windowId === windowId) return endedState(ended.how);
  if (agentStatus === "frozen") return "frozen-outside";
  if (agentStatus === "gone") return "vm-gone";
  return "not-held";
}

function socketMissing(target: AgentTarget): QuiesceError {
  const label = targetLabel(target);
  if (isDomainTarget(target)) {
    return new QuiesceError(
      "DOMAIN_NOT_RUNNING",
      `${label}: domain ${target.domain} is not running (or no longer defined), so nothing of it can be frozen. Start it, or check the name.`,
      { target: label, domain: target.domain },
    );
  }
  return new QuiesceError(
    "SOCKET_MISSING",
    `${label}: the agent socket ${target.socketPath} does not exist on the host: the VM is not running, or the path is wrong.`,
    { target: label, socketPath: target.socketPath },
  );
}

/** How the daemon names a target's guest: its agent socket, or a libvirt domain by UUID. */
type GuestRef = { readonly socket: string } | { readonly libvirt: LibvirtRef };

/** A libvirt domain as the daemon keys and reaches it. */
interface LibvirtRef {
  readonly uri: string;
  /** Lower-case UUID: the guest's identity. */
  readonly uuid: string;
  readonly name: string;
  /** libvirt's socket on the host. */
  readonly socket: string;
}

function libvirtRef(target: DomainTarget, conn: LibvirtConnection, domain: DomainRef): LibvirtRef {
  return { uri: target.libvirtUri ?? DEFAULT_LIBVIRT_URI, uuid: formatUuid(domain.uuid), name: domain.name, socket: conn.socketPath };
}

/**
 * The daemon's name for the target's guest. For a libvirt domain, looked up through libvirt (by name or UUID);
 * `undefined` when libvirt has no such domain and `vanishedSocket` says that means the VM is gone.
 */
async function guestRefOf(target: AgentTarget, t: Required<Timeouts>, deps: LifecycleDeps, signal: AbortSignal | undefined, vanished: VanishedSocket): Promise<GuestRef | undefined> {
  if (!isDomainTarget(target)) return { socket: target.socketPath };
  const call = { signal, timeoutMs: t.agentSeconds * 1000 + 5_000 };
  const conn = await connectLibvirt(target, { pool: deps.pool, ...call });
  try {
    return { libvirt: libvirtRef(target, conn, await findDomain(conn, target, call)) };
  } catch (err) {
    if (vanished === "vm-gone" && isQuiesceError(err, "UNKNOWN_DOMAIN")) return undefined;
    throw err;
  } finally {
    conn.close();
  }
}

/** Asks the daemon for the status of the target's guest, from `windowId`'s point of view. */
async function daemonStatus(
  target: AgentTarget,
  windowId: string | undefined,
  t: Required<Timeouts>,
  deps: LifecycleDeps,
  signal: AbortSignal | undefined,
  vanished: VanishedSocket,
): Promise<DaemonStatus> {
  const daemon = daemonOf(target, deps);
  const ask = async (ref: GuestRef | undefined): Promise<DaemonStatus> =>
    (await daemon.request("status", { ...(ref ?? {}), ...(windowId ? { windowId } : {}) }, { signal, timeoutMs: 3 * t.agentSeconds * 1000 + 5_000 })) as unknown as DaemonStatus;
  if (isDomainTarget(target) && windowId !== undefined) {
    // The window's record names its domain: no lookup through libvirt while it may be frozen.
    const byWindow = await ask(undefined);
    if (byWindow.record) return byWindow;
  }
  const ref = await guestRefOf(target, t, deps, signal, vanished);
  if (ref === undefined) return { agentStatus: "gone", record: null, ended: windowId ? ((await ask(undefined)).ended ?? null) : null };
  return ask(ref);
}

/**
 * Reports the agent's status and the daemon's record; `windowId` says whose point of view `state` takes. During a
 * window it goes through the agent connection the daemon holds (no idle poll, no second client).
 */
export async function windowStatus(
  target: AgentTarget,
  options: { windowId?: string; timeouts?: Timeouts; signal?: AbortSignal; vanishedSocket?: VanishedSocket } = {},
  deps: LifecycleDeps = {},
): Promise<StatusReport> {
  const r = await daemonStatus(target, options.windowId, resolved(options.timeouts), deps, options.signal, options.vanishedSocket ?? "error");
  const lease = r.record ? toLease(r.record) : undefined;
  const ended = r.ended ?? undefined;
  const agentStatus: AgentFreezeStatus = r.agentStatus ?? "thawed";
  if (agentStatus === "gone" && !lease && options.vanishedSocket !== "vm-gone") throw socketMissing(target);
  return { agentStatus, lease, ended, state: classify(lease, agentStatus, options.windowId, ended) };
}

/**
 * Whether `windowId` still holds its guest, by the daemon's record alone (asked by window id, no agent round
 * trip): `held` when the record is this window's, armed, before its deadline and not ending. Blind to a thaw made
 * outside pulumi-quiesce: {@link windowStatus} is the truth, and HostSnapshot asks it after its command, which is
 * what proves the snapshot consistent; this cheaper check before the command keeps frozen time down.
 */
export async function leaseHeld(
  target: AgentTarget,
  windowId: string,
  deps: LifecycleDeps = {},
  options: { timeouts?: Timeouts; signal?: AbortSignal } = {},
): Promise<{ state: WindowState; lease: LeaseRecord | undefined }> {
  const t = resolved(options.timeouts);
  const reply = (await daemonOf(target, deps).request("status", { windowId, agent: false }, { signal: options.signal, timeoutMs: 3 * t.agentSeconds * 1000 + 5_000 })) as unknown as DaemonStatus;
  const lease = reply.record ? toLease(reply.record) : undefined;
  if (!lease) return { state: reply.ended ? endedState(reply.ended.how) : "not-held", lease };
  return { state: classify(lease, reply.agentStatus ?? "frozen", windowId), lease };
}


function alreadyFrozen(label: string, lease: LeaseRecord | undefined): QuiesceError {
  if (lease) {
    return new QuiesceError(
      "ALREADY_FROZEN",
      `${label}: the guest is already frozen by window ${lease.windowId} of ${lease.owner} (frozen at ${lease.frozenAt}, ` +
        `lease until ${lease.expiresAt}). Freezes do not nest: wait for that window to be released (its lease ends ` +
        `it by then at the latest), or release it with \`quiesce thaw --window ${lease.windowId}\`` +
        `${lease.owner.startsWith("pulumi:") ? " --force (it is a Pulumi stack's: only if its deployment is gone)" : ""}. Nothing was changed.`,
      { target: label, ownerWindowId: lease.windowId, owner: lease.owner, expiresAt: lease.expiresAt },
    );
  }
  return new QuiesceError(
    "ALREADY_FROZEN",
    `${label}: the guest is already frozen, by a freeze made outside pulumi-quiesce (no lease). Nothing was changed. ` +
      "Find who froze it (virsh domfsfreeze, another tool); `quiesce thaw --force` thaws it if you are sure.",
    { target: label },
  );
}


/**
 * Claims the guest through the host daemon, freezes the selection and arms the lease. On any failure after the
 * lease is armed, the daemon thaws and verifies before the create fails; before it, the claim is withdrawn.
 * @throws QuiesceError ALREADY_FROZEN, UNKNOWN_MOUNTPOINT, UNKNOWN_DISK, AGENT_FSFREEZE_DISABLED, FREEZE_MISMATCH,
 *   AGENT_* and transport errors.
 */
export async function createWindow(request: CreateWindowRequest, deps: LifecycleDeps = {}): Promise<WindowInfo> {
  const windowId = `qw-${randomBytes(8).toString("hex")}`;
  const owner = request.owner ?? "pulumi-quiesce";
  const startedAt = (deps.now ?? Date.now)();
  try {
    return await freezeWindow(request, deps, windowId, owner);
  } catch (err) {
    if ((request.onQuiesceFailure ?? "fail") !== "crash-consistent" || !quiesceFailureFallsBack(err)) throw err;
    // The callers say it loudly (the CLI's progress, the provider's note); the result carries the reason.
    const reason = (err as Error).message;
    return {
      windowId,
      owner,
      frozenMountpoints: [],
      frozenCount: 0,
      frozenAt: new Date(startedAt).toISOString(),
      expiresAt: new Date(startedAt).toISOString(),
      agentVersion: "",
      filesystems: [],
      freezeMs: 0,
      consistency: "crash",
      consistencyReason: `${isQuiesceError(err) ? err.code : "ERROR"}: ${reason}`,
      guestOs: "linux",
    };
  }
}

/**
 * Failures after which a crash-consistent window may stand in: the guest agent could not make the freeze, and
 * nothing is frozen (the failure path thawed and verified it). Never input errors, another window's freeze (a
 * refused claim, ALREADY_FROZEN), a host that cannot be reached, or a guest that may still be frozen.
 */
function quiesceFailureFallsBack(err: unknown): boolean {
  if (!isQuiesceError(err) || err.fields.mayBeFrozen === true) return false;
  return ["AGENT_TIMEOUT", "AGENT_FSFREEZE_DISABLED", "AGENT_COMMAND_FAILED", "FREEZE_HOOK_FAILED", "FREEZE_MISMATCH", "VSS_VOLUME_REFUSED"].includes(err.code);
}

/** The lease length for a guest, in seconds: the request's, within what its agent can hold (Windows VSS: 10 s). */
function leaseSeconds(request: CreateWindowRequest, os: GuestOsProfile, label: string): number {
  const limit = os.maxHoldSeconds;
  if (limit === undefined) return request.maxDurationSeconds ?? DEFAULT_MAX_DURATION_SECONDS;
  // The default adapts to the guest; an explicit lease the guest cannot hold is refused, never shortened.
  if (request.maxDurationSeconds === undefined) return Math.min(DEFAULT_MAX_DURATION_SECONDS, limit);
  if (request.maxDurationSeconds > limit) {
    throw new QuiesceError(
      "VSS_LEASE_TOO_LONG",
      `${label}: a lease of ${request.maxDurationSeconds} s was asked of a Windows guest, but VSS holds writes for at most ` +
        `${limit} s and then lets them resume while the agent still says "frozen": a snapshot taken later would not be ` +
        `consistent. Nothing was frozen. Set maxDurationSeconds (quiesce --ttl) to ${limit} or less, or leave it out ` +
        `(the default is ${limit} s on Windows), and keep the snapshot step within it.`,
      { target: label, maxDurationSeconds: request.maxDurationSeconds, limitSeconds: limit },
    );
  }
  return request.maxDurationSeconds;
}

async function freezeWindow(request: CreateWindowRequest, deps: LifecycleDeps, windowId: string, owner: string): Promise<WindowInfo> {
  const { target, signal } = request;
  const t = resolved(request.timeouts);
  const label = targetLabel(target);
  const now = deps.now ?? Date.now;
  const daemon = daemonOf(target, deps);

  // 0. A libvirt domain is looked up first (by name or UUID, running, its agent answering): the claim names it by
  //    UUID, and each way this fails has its own error, before anything is claimed.
  let ref: GuestRef;
  if (isDomainTarget(target)) {
    // (The agent is asked over the relay, after the claim: one agent round trip fewer before the freeze.)
    const guest = await openLibvirtGuest(target, { pool: deps.pool, signal, timeoutMs: t.agentSeconds * 1000 + 5_000, skipAgentCheck: true });
    ref = { libvirt: libvirtRef(target, guest, guest.domain) };
    guest.close();
  } else {
    ref = { socket: target.socketPath };
  }

  // 1. Claim the guest: a compare-and-set in the host daemon, keyed by the socket's identity (a domain's UUID).
  //    From here on the daemon holds the guest's only agent connection (for a domain, every byte this process
  //    sends libvirt goes through it), and this process's control channel holds the claim: if this process dies
  //    or its connection drops, the daemon ends the window.
  try {
    await daemon.request(
      "claim",
      { ...ref, windowId, owner, claimMs: claimMs(t), thawMs: t.thawSeconds * 1000, agentMs: t.agentSeconds * 1000 },
      { signal, timeoutMs: t.agentSeconds * 1000 + 15_000, holds: windowId },
    );
  } catch (err) {
    if (isQuiesceError(err) && err.fields.daemonCode === "HELD") throw alreadyFrozen(label, toLease(err.fields.holder as HostRecord));
    // No answer at all: the claim may stand. Withdraw it (it was never armed: the guest is not touched).
    if (!isQuiesceError(err) || err.fields.daemonCode === undefined) throw await abandonClaim(daemon, windowId, label, false, err, t);
    throw err;
  }
  let channel: FreezeChannel | undefined;
  let armed = false;
  const step = async (name: CreateStep): Promise<void> => {
    await deps.onStep?.(name, { relay: channel?.stream, daemon });
  };
  try {
    await step("claimed");
    channel = await openFreezeChannel(target, ref, daemon, windowId, label, t, signal);
    const session = channel.agent;
    await step("relayed");
    // 2. The agent answers, and the guest is thawed. Status comes before guest-info: while frozen the agent
    //    reports the freeze commands as disabled, which would read as an administrator's block. Frozen now means
    //    frozen by someone else: nothing of pulumi-quiesce's, since our claim would have been refused.
    if (!channel.agentAnswered) await ping(session, { signal });
    if ((await fsfreezeStatus(session, { signal })) === "frozen") throw alreadyFrozen(label, undefined);
    await step("checked");
    // 3. fsfreeze is enabled (an administrator can block commands).
    const info = await getInfo(session, { signal });
    const offers = (name: string): boolean => info.commands.some((c) => c.name === name && c.enabled);
    const requireEnabled = (needed: string[]): void => {
      const disabled = needed.filter((name) => !offers(name));
      if (disabled.length > 0) {
        throw new QuiesceError(
          "AGENT_FSFREEZE_DISABLED",
          `${label}: the guest agent (qemu-ga ${info.version}) does not offer ${disabled.join(", ")}. Enable them in the ` +
            "guest (qemu-ga --block-rpcs / --allow-rpcs, or /etc/qemu/qemu-ga.conf). Nothing was frozen.",
          { target: label, disabled },
        );
      }
    };
    // 4. What kind of agent this is: Windows (VSS) and FreeBSD freeze differently (./guestOs.ts). Agents
    //    without guest-get-osinfo (before 2.10) are POSIX.
    const reported = offers("guest-get-osinfo") ? guestOsProfile(await getOsinfo(session, { signal })) : LINUX;
    // qemu-ga on FreeBSD cannot list filesystems: 7.1-9.0 list guest-get-fsinfo as enabled but answer it
    // "unsupported" (qga/commands-bsd.c), 9.1 leaves it out of the schema. Plan without it there.
    const fsinfoOptional = reported.kind === "freebsd";
    requireEnabled(["guest-fsfreeze-status", "guest-fsfreeze-thaw", ...(fsinfoOptional ? [] : ["guest-get-fsinfo"])]);
    // 5. Resolve the selection before freezing: fsinfo is refused once frozen.
    let filesystems: GuestFilesystem[] | undefined;
    if (!fsinfoOptional || offers("guest-get-fsinfo")) {
      try {
        filesystems = await channel.filesystems({ signal });
      } catch (err) {
        if (!fsinfoOptional || !isQuiesceError(err, "AGENT_COMMAND_FAILED")) throw err;
      }
    }
    // A Windows agent whose guest-get-osinfo is blocked still lists its volumes as Windows does.
    const os = reported === LINUX && filesystems && looksLikeWindows(filesystems) ? WINDOWS : reported;
    const maxDurationSeconds = leaseSeconds(request, os, label);
    const plan = filesystems ? planFreeze(request, filesystems, label, os) : planWithoutFsinfo(request, label, os);
    if (plan.mountpoints.length === 0) {
      throw new QuiesceError("UNKNOWN_MOUNTPOINT", `${label}: the guest agent reports no filesystems to freeze. Nothing was frozen.`, { target: label });
    }
    // Only the freeze command this plan uses must be enabled.
    requireEnabled([plan.all ? "guest-fsfreeze-freeze" : "guest-fsfreeze-freeze-list"]);
    await step("planned");
    // A group's barrier: every member planned before any is armed and frozen (a broken barrier leaves this claim
    // unarmed, so it is withdrawn without touching the guest).
    if (deps.beforeFreeze) await deps.beforeFreeze();
    // 6. Arm the lease: from the daemon's answer on, its end thaws (before, nothing of ours can be frozen, and an
    //    end only withdraws the claim). The deadline is on the host's clock, from now.
    const armedRecord = toLease(
      (
        await daemon.request(
          "arm",
          { windowId, leaseMs: maxDurationSeconds * 1000, selection: plan.all ? [] : plan.mountpoints },
          { signal },
        )
      ).record as HostRecord,
    );
    armed = true;
    await step("armed");
    const frozenAtMs = now();
    // 7. Freeze. From here on, every failure has the daemon thaw before it is reported.
    let count: number;
    try {
      const options = { signal, timeoutMs: t.freezeSeconds * 1000 };
      count = await channel.freeze(plan, options);
    } catch (err) {
      throw hookMayHang(err, t.freezeSeconds, isDomainTarget(target));
    }
    const freezeMs = now() - frozenAtMs;
    await step("frozen");
    {
      // 8. Verify: the count must match the selection (one per distinct device) and the agent must say frozen.
      //    Freezing everything may also count a read-only mount of a type that cannot be frozen read-write.
      const status = await fsfreezeStatus(session, { signal });
      const countOk = plan.all ? count >= plan.expectedCount && count <= plan.expectedCount + plan.skipped.length : count === plan.expectedCount;
      if (!countOk || status !== "frozen") {
        throw new QuiesceError(
          "FREEZE_MISMATCH",
          `${label}: asked to freeze ${plan.mountpoints.join(", ")} (${plan.expectedCount} device(s)) but the agent ` +
            `froze ${count} and reports "${status}". The guest was thawed. ` +
            (os.kind === "freebsd"
              ? "qemu-ga on FreeBSD freezes UFS only and skips, without a word, a ZFS (or any other) mount point and one that " +
                "does not exist; it cannot list the guest's filesystems to check first. Select only UFS mount points."
              : "The agent skips, without a word, a filesystem that cannot be frozen (FIFREEZE: EOPNOTSUPP, e.g. a FUSE or " +
                "vfat mount) or one it already froze through another mount point: select mountpoints explicitly, and " +
                "check the guest's mounts and the agent's log."),
          { target: label, expected: plan.expectedCount, got: count, status, guestOs: os.kind },
        );
      }
      // A freeze slower than the lease (a VSS freeze can take seconds, against a 10 s lease) is over already.
      if (freezeMs >= maxDurationSeconds * 1000) {
        throw new QuiesceError(
          "LEASE_EXPIRED",
          `${label}: the freeze took ${freezeMs} ms, longer than the ${maxDurationSeconds} s lease: the window would be ` +
            "over before anything ran in it. The guest was thawed. Raise maxDurationSeconds (--ttl), or find why the freeze is slow.",
          { target: label, freezeMs },
        );
      }
    }
    await step("verified");
    channel.close();
    channel = undefined;
    if (!(request.thawOnDisconnect ?? true)) {
      // The window outlives this process: only its deadline (or a release) ends it from now on.
      await daemon.request("unhold", { windowId }, { signal });
      daemon.forget(windowId);
    }
    const lost = daemon.lostHold(windowId);
    if (lost !== undefined && (request.thawOnDisconnect ?? true)) {
      throw new QuiesceError("NOT_HELD", `${label}: window ${windowId} ended while it was being created: ${lost}. The guest was thawed by the host daemon.`, {
        target: label,
        windowId,
      });
    }
    await step("returned");
    return {
      windowId,
      owner,
      frozenMountpoints: plan.mountpoints,
      frozenCount: count,
      frozenAt: armedRecord.frozenAt,
      expiresAt: armedRecord.expiresAt,
      agentVersion: info.version,
      filesystems: filesystems ?? [],
      freezeMs,
      consistency: "filesystem",
      guestOs: os.kind,
    };
  } catch (err) {
    channel?.close();
    throw await abandonClaim(daemon, windowId, label, armed, err, t);
  }
}

/**
 * Makes a held window outlive this process (as `thawOnDisconnect: false` does at create): only its deadline, or a
 * release, ends it from now on. A group holds its members this way until every one is frozen.
 */
export async function detachWindow(target: AgentTarget, windowId: string, deps: LifecycleDeps = {}, signal?: AbortSignal): Promise<void> {
  const daemon = daemonOf(target, deps);
  await daemon.request("unhold", { windowId }, { signal });
  daemon.forget(windowId);
}

/**
 * Milliseconds a claim lasts before its lease is armed: enough for the steps before the freeze (sync, ping,
 * status, info, osinfo, fsinfo), each bounded by timeouts.agentSeconds.
 */
function claimMs(t: Required<Timeouts>): number {
  return (8 * t.agentSeconds + 10) * 1000;
}

/**
 * Ends a claim whose create failed, and returns the error to throw. Not armed: the claim is withdrawn, the guest
 * untouched (nothing of ours is frozen; a freeze found there is someone else's). Armed: the daemon cuts the relay,
 * thaws, verifies "thawed" and removes the record, only if it is still this window's. If that cannot be confirmed,
 * the error says loudly that the guest may be frozen: the daemon keeps trying (and this process's control channel
 * closing, or the deadline, ends the window too).
 */
async function abandonClaim(daemon: DaemonClient, windowId: string, label: string, armed: boolean, cause: unknown, t: Required<Timeouts>): Promise<unknown> {
  try {
    const r = (await daemon.request("release", { windowId, thaw: armed }, { timeoutMs: releaseTimeoutMs(t) })) as unknown as DaemonRelease;
    daemon.forget(windowId);
    if (!armed || r.outcome === "withdrawn") return cause;
    const status = r.thaw?.status ?? r.ended?.status;
    if (status === "thawed" || status === "gone" || r.outcome === "vm-gone") return cause;
    return new QuiesceError(
      "FREEZE_MISMATCH",
      `${label}: ${(cause as Error).message} The host daemon ended the window but could not confirm a thaw (status ${String(status)}): ` +
        "THE GUEST MAY BE FROZEN; check with `quiesce status`.",
      { target: label, windowId, mayBeFrozen: true },
      { cause },
    );
  } catch (endErr) {
    daemon.forget(windowId);
    if (!armed) return cause;
    const failure = isQuiesceError(cause) ? cause : undefined;
    return new QuiesceError(
      failure?.code ?? "FREEZE_MISMATCH",
      `${label}: ${(cause as Error).message} The thaw that followed could not be confirmed (${(endErr as Error).message}): ` +
        "THE GUEST MAY BE FROZEN. The host daemon owns the window and keeps trying to thaw it until the agent answers " +
        "(at the latest at its deadline); check with `quiesce status`.",
      { ...(failure?.fields ?? {}), target: label, windowId, thawError: (endErr as Error).message, mayBeFrozen: true },
      { cause: new AggregateError([cause, endErr], "create failure, then thaw failure") },
    );
  }
}

/**
 * Milliseconds to wait for a release: the daemon's sync, status, thaw and status, plus the 35 s libvirt may make a
 * thaw wait for a domain's agent job (a freeze still running) before it gives up.
 */
function releaseTimeoutMs(t: Required<Timeouts>): number {
  return t.thawSeconds * 1000 + 3 * t.agentSeconds * 1000 + 40_000;
}


/**
 * A freeze that timed out may be waiting on a fsfreeze hook: qemu-ga runs the hook (qemu-ga -F) before freezing
 * and waits for it with no timeout (AGENT-FACTS.md, "Freeze hooks"). Say so; the failure path thaws as usual.
 */
function hookMayHang(err: unknown, freezeSeconds: number, libvirt = false): unknown {
  if (!isQuiesceError(err, "AGENT_TIMEOUT")) return err;
  return new QuiesceError(
    "AGENT_TIMEOUT",
    `${err.message} The freeze took longer than ${freezeSeconds} s (timeouts.freezeSeconds). ` +
      (libvirt
        ? "libvirt waits for a freeze as long as the domain's agent timeout says (by default with no limit; " +
          "pulumi-quiesce never changes it), holding the domain's agent job meanwhile, so the host daemon's thaw waits " +
          "for the freeze to finish and is retried until it goes through. "
        : "") +
      "If the guest runs a fsfreeze " +
      "hook (qemu-ga -F), it may be hanging: qemu-ga waits for it with no timeout. Check the hook and " +
      "/var/log/qga-fsfreeze-hook.log in the guest.",
    { ...err.fields, hookMayHang: true },
    { cause: err },
  );
}

/** What a thaw did: the count it reported, and what the agent said besides. */
interface ThawResult {
  readonly thawedCount: number;
  /** Windows: VSS had let the writes resume before this thaw. */
  readonly writesResumed: boolean;
  /** The agent thawed, then its fsfreeze hook failed on `thaw`: the guest is thawed, the hook's work may not be. */
  readonly hookError?: QuiesceError;
}

/**
 * Reads the daemon's thaw the way qemu-ga means it. qemu-ga thaws and clears its frozen flag first, and only then
 * runs the fsfreeze hook with `thaw` (qga/commands-posix.c, qmp_guest_fsfreeze_thaw); on Windows it clears the
 * flag and then reports that VSS had let the writes resume. Either way the reply is an error while the guest is
 * thawed; the daemon accepted it only because the status then said thawed. The typed mapping of that error stays
 * here, with the agent client's.
 */
function readThaw(thaw: DaemonThaw | null | undefined, label: string): ThawResult {
  if (!thaw?.error) return { thawedCount: thaw?.count ?? 0, writesResumed: false };
  const replied = agentCommandError("guest-fsfreeze-thaw", thaw.error, label);
  if (replied.code === "VSS_WRITES_RESUMED") return { thawedCount: 0, writesResumed: true };
  process.stderr.write(`pulumi-quiesce: ${label}: the guest is thawed, but the agent reported: ${replied.message}\n`);
  return { thawedCount: 0, writesResumed: false, hookError: replied };
}

/** Options of {@link releaseWindow}. */
export interface ReleaseRequest {
  readonly target: AgentTarget;
  /** The window to release. */
  readonly windowId: string;
  readonly timeouts?: Timeouts;
  readonly signal?: AbortSignal;
  /**
   * What a missing agent socket means when no record of this window is left (see {@link VanishedSocket}); default
   * `"error"`. A window whose socket vanished while held is reported `vm-gone` either way: its record proves the
   * path was right.
   */
  readonly vanishedSocket?: VanishedSocket;
}

/**
 * Thaws the guest if, and only if, the daemon's record names `windowId` (an expired record of this window is
 * still this window's, and is thawed): the daemon cuts any relay, thaws, verifies `thawed` and removes the record,
 * in one place. Otherwise touches nothing and says why.
 */
export async function releaseWindow(request: ReleaseRequest, deps: LifecycleDeps = {}): Promise<ReleaseResult> {
  const { target, windowId } = request;
  const t = resolved(request.timeouts);
  const label = targetLabel(target);
  const daemon = daemonOf(target, deps);
  let r: DaemonRelease;
  try {
    r = (await daemon.request("release", { windowId, thaw: true }, { signal: request.signal, timeoutMs: releaseTimeoutMs(t) })) as unknown as DaemonRelease;
  } catch (err) {
    if (isQuiesceError(err) && err.fields.daemonCode === "THAW_FAILED") {
      throw new QuiesceError(
        "FREEZE_MISMATCH",
        `${err.message}. THE GUEST MAY BE FROZEN: the host daemon keeps the record and retries the thaw until the agent answers.`,
        { target: label, windowId, mayBeFrozen: true },
        { cause: err },
      );
    }
    throw err;
  }
  daemon.forget(windowId);
  if (r.outcome === "not-held" || r.outcome === "withdrawn") {
    // No record of this window: it ended before (say how), or another window or outside freeze has the guest.
    const ended = r.ended ?? undefined;
    if (ended) {
      const state = endedState(ended.how);
      return {
        outcome: state === "released" ? "already-released" : (state as ReleaseResult["outcome"]),
        thawedCount: 0,
        agentStatus: ended.how === "vm-gone" ? "gone" : "thawed",
      };
    }
    const report = await windowStatus(target, { windowId, timeouts: request.timeouts, signal: request.signal, vanishedSocket: request.vanishedSocket }, deps);
    return { outcome: report.state as ReleaseResult["outcome"], thawedCount: 0, lease: report.lease, agentStatus: report.agentStatus };
  }
  const lease = r.record ? toLease(r.record) : undefined;
  const heldMs = r.ended?.heldMs ?? undefined;
  if (r.outcome === "vm-gone") return { outcome: "vm-gone", thawedCount: 0, lease, agentStatus: "gone", heldMs };
  const { thawedCount, writesResumed, hookError } = readThaw(r.thaw, label);
  const thawedOutside = r.thaw?.before === "thawed";
  const state = endedState(r.outcome);
  return {
    // Writes that resumed before the release mean the window did not hold throughout: as an expired lease.
    outcome: writesResumed ? "expired" : thawedOutside ? "thawed-outside" : state === "released" ? "released" : (state as ReleaseResult["outcome"]),
    heldMs,
    thawedCount,
    lease,
    agentStatus: "thawed",
    ...(writesResumed ? { writesResumed } : {}),
    ...(hookError ? { thawWarning: hookError.message } : {}),
    ...(r.thaw?.at ? { thawedAt: new Date(Math.round(r.thaw.at * 1000)).toISOString() } : {}),
  };
}

/**
 * Break-glass thaw of whatever freeze the guest has, owned or not, and removal of any record (it ends as
 * `forced`). Only for an operator who knows why (`quiesce thaw --force`).
 */
export async function forceThaw(
  target: AgentTarget,
  options: { timeouts?: Timeouts; signal?: AbortSignal } = {},
  deps: LifecycleDeps = {},
): Promise<{ thawedCount: number; lease: LeaseRecord | undefined }> {
  const t = resolved(options.timeouts);
  const label = targetLabel(target);
  const ref = await guestRefOf(target, t, deps, options.signal, "error");
  const r = (await daemonOf(target, deps).request("force", { ...ref }, { signal: options.signal, timeoutMs: releaseTimeoutMs(t) })) as unknown as {
    record: HostRecord | null;
    thaw: DaemonThaw | null;
  };
  if (r.thaw?.status !== "thawed") {
    throw new QuiesceError("FREEZE_MISMATCH", `${label}: the thaw did not thaw the guest (status ${String(r.thaw?.status)})`, { target: label });
  }
  return { thawedCount: readThaw(r.thaw, label).thawedCount, lease: r.record ? toLease(r.record) : undefined };
}
