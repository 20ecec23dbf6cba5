/**
 * The quiesce lifecycle, independent of Pulumi (DESIGN.md, "Lifecycle rules"):
 * create = sync/ping/info → status must be thawed → fsinfo + plan → freeze → verify → lease;
 * release = thaw only if the lease is this window's; status = the truth from the agent and the lease.
 *
 * A failed create leaves the guest thawed: any failure after the freeze thaws first, then fails.
 * A window never thaws a freeze it does not own.
 */
import { randomBytes } from "node:crypto";
import { QuiesceError, isQuiesceError } from "../errors";
import { AgentSession } from "../agent/session";
import {
  fsfreezeFreezeAll,
  fsfreezeFreezeList,
  fsfreezeStatus,
  fsfreezeThaw,
  getFsinfo,
  getInfo,
  getOsinfo,
  ping,
  type FreezeStatus,
  type GuestFilesystem,
} from "../agent/commands";
import { dialerFor } from "../transport/index";
import { defaultSshPool, type SshConnectionConfig, type SshPool } from "../transport/ssh";
import { DEFAULT_LEASE_DIR, LocalLeaseStore, SftpLeaseStore, leaseFileName, type EndedRecord, type LeaseRecord, type LeaseStore } from "./lease";
import { ensureWatchdog, heldHere, holdWindow, type WatchdogHold } from "./watchdog";
import { planFreeze, planWithoutFsinfo, type Selection } from "./plan";
import { guestOsProfile, LINUX, looksLikeWindows, WINDOWS, type GuestOsKind, type GuestOsProfile } from "./guestOs";

/** Where the guest agent is. */
export interface AgentTarget {
  /** SSH connection to the host holding the socket; omitted: the socket is on this machine. */
  readonly connection?: SshConnectionConfig;
  /** Absolute path of the agent's chardev socket on that host. */
  readonly socketPath: string;
  /** Lease directory on that host. Default {@link DEFAULT_LEASE_DIR}. */
  readonly leaseDir?: string;
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

/** Injectable dependencies (tests, the CLI and benchmarks use their own pool or lease store). */
export interface LifecycleDeps {
  /** SSH pool. Default the process-wide pool. */
  readonly pool?: SshPool;
  /** Lease store. Default: SFTP on the SSH host, or the local lease directory. */
  readonly leaseStore?: LeaseStore;
  /** Clock, for tests. Default `Date.now`. */
  readonly now?: () => number;
}

/** What to freeze and for how long. */
export interface CreateWindowRequest extends Selection {
  readonly target: AgentTarget;
  /** Lease length in seconds: the guest is thawed by then whatever happens. Default 300. */
  readonly maxDurationSeconds?: number;
  /**
   * Thaw as soon as this process is gone (it dies, or its SSH connection drops): the window keeps a hold
   * channel open to the host's watchdog until it is released. Default true.
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
  /** The lease is this window's but its deadline has passed, or the watchdog thawed it at the deadline. */
  | "expired"
  /** The watchdog thawed it because the process holding it went away. */
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
  readonly lease: LeaseRecord | undefined;
  /** How the socket's last watchdog-ended window ended, if recorded. */
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
  const c = target.connection;
  return c ? `${c.user ?? "root"}@${c.host}:${c.port ?? 22}:${target.socketPath}` : `local:${target.socketPath}`;
}

/** The lease store for a target. */
export function leaseStoreFor(target: AgentTarget, pool: SshPool = defaultSshPool): LeaseStore {
  const dir = target.leaseDir ?? DEFAULT_LEASE_DIR;
  return target.connection ? new SftpLeaseStore(pool, target.connection, dir) : new LocalLeaseStore(dir);
}

/** Opens a synced agent session to the target. Close it as soon as possible: the chardev serves one client. */
export async function openSession(
  target: AgentTarget,
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

async function withSession<T>(
  target: AgentTarget,
  timeouts: Timeouts | undefined,
  deps: LifecycleDeps,
  signal: AbortSignal | undefined,
  fn: (session: AgentSession) => Promise<T>,
  whenVmGone?: () => Promise<T>,
): Promise<T> {
  let session: AgentSession;
  try {
    session = await openSession(target, timeouts, deps, signal);
  } catch (err) {
    // Only the socket's absence, diagnosed as such, means the VM is gone; every other failure stays one.
    if (whenVmGone && isQuiesceError(err, "SOCKET_MISSING")) return whenVmGone();
    throw err;
  }
  try {
    return await fn(session);
  } finally {
    session.close();
  }
}

/** The guest's filesystems (guest-get-fsinfo). Fails with AGENT_FROZEN while frozen. */
export function listFilesystems(target: AgentTarget, options: { timeouts?: Timeouts; signal?: AbortSignal } = {}, deps: LifecycleDeps = {}): Promise<GuestFilesystem[]> {
  return withSession(target, options.timeouts, deps, options.signal, (s) => getFsinfo(s, { signal: options.signal }));
}

function classify(
  lease: LeaseRecord | undefined,
  agentStatus: FreezeStatus,
  windowId: string | undefined,
  now: number,
  ended?: EndedRecord,
): WindowState {
  const mine = lease !== undefined && (windowId === undefined || lease.windowId === windowId);
  if (mine && lease) {
    if (agentStatus === "thawed") return "thawed-outside";
    return Date.parse(lease.expiresAt) < now ? "expired" : "held";
  }
  if (lease) return "other-window";
  if (agentStatus === "frozen") return "frozen-outside";
  if (ended && windowId !== undefined && ended.windowId === windowId) return ended.how;
  return "not-held";
}

/** What the host records for a socket: its lease, or else how its last window ended. */
interface HostRecords {
  readonly lease: LeaseRecord | undefined;
  readonly ended: EndedRecord | undefined;
}

async function readRecords(store: LeaseStore, socketPath: string): Promise<HostRecords> {
  const lease = await store.read(socketPath);
  return { lease, ended: lease ? undefined : await store.readEnded(socketPath) };
}

/** Reports the agent's status and the lease; `windowId` says whose point of view `state` takes. */
export async function windowStatus(
  target: AgentTarget,
  options: { windowId?: string; timeouts?: Timeouts; signal?: AbortSignal; vanishedSocket?: VanishedSocket } = {},
  deps: LifecycleDeps = {},
): Promise<StatusReport> {
  const store = deps.leaseStore ?? leaseStoreFor(target, deps.pool);
  const now = (deps.now ?? Date.now)();
  const records = (): Promise<HostRecords> => readRecords(store, target.socketPath);
  return withSession<StatusReport>(
    target,
    options.timeouts,
    deps,
    options.signal,
    async (session) => {
      const agentStatus = await fsfreezeStatus(session, { signal: options.signal });
      const { lease, ended } = await records();
      return { agentStatus, lease, ended, state: classify(lease, agentStatus, options.windowId, now, ended) };
    },
    options.vanishedSocket === "vm-gone" ? async () => ({ agentStatus: "gone", ...(await records()), state: "vm-gone" }) : undefined,
  );
}

/**
 * Lets go of this process's hold on a window whose thaw is done and verified. Best effort: the lease is gone,
 * so the watchdog has nothing left to do for it; a failed DISARM must not fail (or mask the error of) the
 * call that thawed. The channel is closed either way.
 */
async function disarmBestEffort(windowId: string, label: string): Promise<void> {
  const hold = heldHere(windowId);
  if (!hold) return;
  try {
    await hold.disarm();
  } catch (err) {
    hold.drop();
    process.stderr.write(`pulumi-quiesce: ${label}: window ${windowId} thawed, but disarming its watchdog hold failed: ${(err as Error).message}\n`);
  }
}

/**
 * The lease's view of a window, without an agent session: `held` when the lease names `windowId` and its
 * deadline has not passed. Cheap (a file read; opening an agent session costs about 100 ms, all of it frozen
 * time inside a window), but blind to a thaw made outside pulumi-quiesce: {@link windowStatus} is the truth.
 */
export async function leaseHeld(
  target: AgentTarget,
  windowId: string,
  deps: LifecycleDeps = {},
): Promise<{ state: "held" | "expired" | "other-window" | "not-held"; lease: LeaseRecord | undefined }> {
  const store = deps.leaseStore ?? leaseStoreFor(target, deps.pool);
  const lease = await store.read(target.socketPath);
  if (!lease) return { state: "not-held", lease };
  if (lease.windowId !== windowId) return { state: "other-window", lease };
  return { state: Date.parse(lease.expiresAt) < (deps.now ?? Date.now)() ? "expired" : "held", lease };
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
 * Freezes the selection and records the lease. On any failure after the freeze, thaws first, then fails.
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
    // A guest another window holds is never "cannot be frozen" (its agent may merely have stopped answering).
    // A lease that cannot be read does not fall back either: the original failure stands.
    let held: LeaseRecord | undefined;
    try {
      held = await (deps.leaseStore ?? leaseStoreFor(request.target, deps.pool)).read(request.target.socketPath);
    } catch (readErr) {
      const failure = err as QuiesceError; // quiesceFailureFallsBack accepts only QuiesceErrors
      throw new QuiesceError(
        failure.code,
        `${failure.message} No crash-consistent fallback: the lease, which says whether another window holds the guest, could not be read (${(readErr as Error).message}).`,
        failure.fields,
        { cause: new AggregateError([err, readErr], "quiesce failure, then lease read failure") },
      );
    }
    if (held && held.windowId !== windowId) {
      const failure = err as QuiesceError;
      throw new QuiesceError(
        failure.code,
        `${failure.message} No crash-consistent fallback: window ${held.windowId} of ${held.owner} holds the guest.`,
        { ...failure.fields, ownerWindowId: held.windowId },
        { cause: err },
      );
    }
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
 * nothing is frozen (the failure path thawed and verified it). Never input errors, another window's freeze,
 * a host that cannot be reached, or a guest that may still be frozen.
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
  const store = deps.leaseStore ?? leaseStoreFor(target, deps.pool);

  return withSession(target, request.timeouts, deps, signal, async (session) => {
    // 1. The agent answers, and the guest is thawed. Status comes before guest-info: while frozen the agent
    //    reports the freeze commands as disabled, which would read as an administrator's block.
    //    Holding the channel keeps every other client out until we close it.
    await ping(session, { signal });
    if ((await fsfreezeStatus(session, { signal })) === "frozen") throw alreadyFrozen(label, await store.read(target.socketPath));
    // 2. fsfreeze is enabled (an administrator can block commands).
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
    // 3. What kind of agent this is: Windows (VSS) and FreeBSD freeze differently (./guestOs.ts). Agents
    //    without guest-get-osinfo (before 2.10) are POSIX.
    const reported = offers("guest-get-osinfo") ? guestOsProfile(await getOsinfo(session, { signal })) : LINUX;
    // qemu-ga on FreeBSD cannot list filesystems: 7.1-9.0 list guest-get-fsinfo as enabled but answer it
    // "unsupported" (qga/commands-bsd.c), 9.1 leaves it out of the schema. Plan without it there.
    const fsinfoOptional = reported.kind === "freebsd";
    requireEnabled(["guest-fsfreeze-status", "guest-fsfreeze-thaw", ...(fsinfoOptional ? [] : ["guest-get-fsinfo"])]);
    // 4. Resolve the selection before freezing: fsinfo is refused once frozen.
    let filesystems: GuestFilesystem[] | undefined;
    if (!fsinfoOptional || offers("guest-get-fsinfo")) {
      try {
        filesystems = await getFsinfo(session, { signal });
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
    // 5. The watchdog must run before anything is frozen: it is what ends the freeze if all else fails.
    const pool = deps.pool ?? defaultSshPool;
    await ensureWatchdog(target, pool, signal);
    // 6. Claim the guest: the lease is written before the freeze, so the watchdog can end this window
    //    whatever happens from here on (this process dying between freeze and lease would leave no trace).
    const frozenAtMs = now();
    const lease: LeaseRecord = {
      version: 1,
      windowId,
      owner,
      socketPath: target.socketPath,
      mountpoints: plan.all ? [] : plan.mountpoints,
      frozenAt: new Date(frozenAtMs).toISOString(),
      expiresAt: new Date(frozenAtMs + maxDurationSeconds * 1000).toISOString(),
    };
    await store.write(lease);
    let hold: WatchdogHold | undefined;
    if (request.thawOnDisconnect ?? true) {
      try {
        hold = await holdWindow(target, windowId, leaseFileName(target.socketPath), pool, signal);
      } catch (err) {
        await store.remove(target.socketPath);
        throw err;
      }
    }
    // 7. Freeze. From here on, every failure thaws before it is reported.
    const failed = async (err: unknown, what: string): Promise<unknown> => {
      const { error, thawed } = await thawAfterFailure(target, session, request.timeouts, deps, err, what);
      if (thawed) {
        try {
          // Compare-and-delete: if our session was lost, another window may have claimed the guest since.
          if ((await store.read(target.socketPath))?.windowId === windowId) await store.remove(target.socketPath);
        } finally {
          await disarmBestEffort(windowId, label);
        }
      } else if (hold) {
        // Could not thaw: keep the lease and let the hold go, so the watchdog thaws at once (a disconnect),
        // retrying until the agent answers.
        hold.drop();
      } else {
        // No hold to drop: end the lease now instead (its length becomes 0, so it is due at once on the host's
        // clock), or the watchdog would wait for the deadline.
        try {
          if ((await store.read(target.socketPath))?.windowId === windowId) await store.write({ ...lease, expiresAt: lease.frozenAt });
        } catch (handoffErr) {
          return new QuiesceError(
            isQuiesceError(error) ? error.code : "FREEZE_MISMATCH",
            `${(error as Error).message} Handing the thaw to the watchdog failed too (${(handoffErr as Error).message}): ` +
              `it thaws the guest at the lease deadline, ${lease.expiresAt}, unless \`quiesce thaw --force\` does first.`,
            { target: label, windowId, mayBeFrozen: true },
            { cause: new AggregateError([error, handoffErr], "thaw failure, then handoff failure") },
          );
        }
      }
      return error;
    };
    let count: number;
    try {
      const options = { signal, timeoutMs: t.freezeSeconds * 1000 };
      count = plan.all ? await fsfreezeFreezeAll(session, options) : await fsfreezeFreezeList(session, plan.listArguments, options);
    } catch (err) {
      throw await failed(hookMayHang(err, t.freezeSeconds), "the freeze command failed");
    }
    const freezeMs = now() - frozenAtMs;
    try {
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
      if (now() >= Date.parse(lease.expiresAt)) {
        throw new QuiesceError(
          "LEASE_EXPIRED",
          `${label}: the freeze took ${now() - frozenAtMs} ms, longer than the ${maxDurationSeconds} s lease: the window would be ` +
            "over before anything ran in it. The guest was thawed. Raise maxDurationSeconds (--ttl), or find why the freeze is slow.",
          { target: label, freezeMs: now() - frozenAtMs },
        );
      }
    } catch (err) {
      throw await failed(err, "verifying the freeze failed");
    }
    return {
      windowId,
      owner,
      frozenMountpoints: plan.mountpoints,
      frozenCount: count,
      frozenAt: lease.frozenAt,
      expiresAt: lease.expiresAt,
      agentVersion: info.version,
      filesystems: filesystems ?? [],
      freezeMs,
      consistency: "filesystem",
      guestOs: os.kind,
    };
  });
}

/**
 * A freeze that timed out may be waiting on a fsfreeze hook: qemu-ga runs the hook (qemu-ga -F) before freezing
 * and waits for it with no timeout (AGENT-FACTS.md, "Freeze hooks"). Say so; the failure path thaws as usual.
 */
function hookMayHang(err: unknown, freezeSeconds: number): unknown {
  if (!isQuiesceError(err, "AGENT_TIMEOUT")) return err;
  return new QuiesceError(
    "AGENT_TIMEOUT",
    `${err.message} The freeze took longer than ${freezeSeconds} s (timeouts.freezeSeconds). If the guest runs a fsfreeze ` +
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
 * guest-fsfreeze-thaw, reading a failed reply the way qemu-ga means it. qemu-ga thaws and clears its frozen flag
 * first, and only then runs the fsfreeze hook with `thaw` (qga/commands-posix.c, qmp_guest_fsfreeze_thaw); on
 * Windows it clears the flag and then reports that VSS had let the writes resume. Either way the reply is an
 * error while the guest is thawed, so the error counts only when the status does not say thawed. The caller
 * verifies the status after a success as before.
 */
async function thawReadingErrors(session: AgentSession, timeoutMs: number): Promise<ThawResult> {
  try {
    return { thawedCount: await fsfreezeThaw(session, { timeoutMs }), writesResumed: false };
  } catch (err) {
    if (!isQuiesceError(err, "FREEZE_HOOK_FAILED", "VSS_WRITES_RESUMED", "AGENT_COMMAND_FAILED")) throw err;
    const replied: QuiesceError = err;
    if ((await fsfreezeStatus(session)) !== "thawed") throw replied;
    if (replied.code === "VSS_WRITES_RESUMED") return { thawedCount: 0, writesResumed: true };
    process.stderr.write(`pulumi-quiesce: ${session.target}: the guest is thawed, but the agent reported: ${replied.message}\n`);
    return { thawedCount: 0, writesResumed: false, hookError: replied };
  }
}

/**
 * Thaws after a failed create. Returns the error to throw (the original one when the thaw worked, else one
 * that says loudly the guest may still be frozen) and whether the guest is known to be thawed.
 */
async function thawAfterFailure(
  target: AgentTarget,
  session: AgentSession,
  timeouts: Timeouts | undefined,
  deps: LifecycleDeps,
  cause: unknown,
  what: string,
): Promise<{ error: unknown; thawed: boolean }> {
  const t = resolved(timeouts);
  const label = targetLabel(target);
  // No abort signal here: the thaw must run even when the caller gave up.
  const thaw = async (s: AgentSession): Promise<FreezeStatus> => {
    await thawReadingErrors(s, t.thawSeconds * 1000);
    return fsfreezeStatus(s);
  };
  try {
    let status: FreezeStatus;
    if (session.state !== "closed") status = await thaw(session);
    else {
      const fresh = await openSession(target, timeouts, deps);
      try {
        status = await thaw(fresh);
      } finally {
        fresh.close();
      }
    }
    if (status === "thawed") return { error: cause, thawed: true };
    return {
      thawed: false,
      error: new QuiesceError(
        "FREEZE_MISMATCH",
        `${label}: ${what}, and after a thaw the agent still reports "${status}". The host's watchdog takes over and ` +
          "keeps trying to thaw it; check with `quiesce status`.",
        { target: label, mayBeFrozen: true },
        { cause },
      ),
    };
  } catch (thawErr) {
    return {
      thawed: false,
      error: new QuiesceError(
        isQuiesceError(cause) ? cause.code : "FREEZE_MISMATCH",
        `${label}: ${what} (${(cause as Error).message}), and the thaw that followed failed too (${(thawErr as Error).message}). ` +
          "THE GUEST MAY BE FROZEN. The host's watchdog takes over and keeps trying to thaw it until the agent " +
          "answers; check with `quiesce status`.",
        { target: label, thawError: (thawErr as Error).message, mayBeFrozen: true },
        { cause: new AggregateError([cause, thawErr], "freeze failure, then thaw failure") },
      ),
    };
  }
}

/** Options of {@link releaseWindow}. */
export interface ReleaseRequest {
  readonly target: AgentTarget;
  /** The window to release. */
  readonly windowId: string;
  readonly timeouts?: Timeouts;
  readonly signal?: AbortSignal;
  /**
   * What a missing agent socket means (see {@link VanishedSocket}); default `"error"`. With `"vm-gone"` the
   * release succeeds with outcome `vm-gone`, removes this window's lease (nothing is left for the watchdog
   * to thaw) and lets go of this process's hold.
   */
  readonly vanishedSocket?: VanishedSocket;
}

/**
 * Thaws the guest if, and only if, the lease names `windowId` (an expired lease of this window is still
 * this window's, and is thawed). Otherwise touches nothing and says why. Verifies `thawed` afterwards.
 */
export async function releaseWindow(request: ReleaseRequest, deps: LifecycleDeps = {}): Promise<ReleaseResult> {
  const { target, windowId } = request;
  const t = resolved(request.timeouts);
  const label = targetLabel(target);
  const now = deps.now ?? Date.now;
  const store = deps.leaseStore ?? leaseStoreFor(target, deps.pool);
  const vmGone = async (): Promise<ReleaseResult> => {
    const lease = await store.read(target.socketPath);
    if (lease?.windowId === windowId) await store.remove(target.socketPath);
    await disarmBestEffort(windowId, label);
    return { outcome: "vm-gone", thawedCount: 0, lease, agentStatus: "gone" };
  };
  return withSession(target, request.timeouts, deps, request.signal, async (session) => {
    const agentStatus = await fsfreezeStatus(session);
    const { lease, ended } = await readRecords(store, target.socketPath);
    const state = classify(lease, agentStatus, windowId, now(), ended);
    if (lease?.windowId !== windowId) {
      // Nothing of ours to thaw; a hold this process still has would only thaw someone else's lease-less guest.
      heldHere(windowId)?.drop();
      const outcome: ReleaseResult["outcome"] = state === "released" ? "already-released" : (state as ReleaseResult["outcome"]);
      return { outcome, thawedCount: 0, lease, agentStatus };
    }
    const heldMs = now() - Date.parse(lease.frozenAt);
    let thawedCount = 0;
    let writesResumed = false;
    let thawWarning: string | undefined;
    if (agentStatus === "frozen") {
      let hookError: QuiesceError | undefined;
      ({ thawedCount, writesResumed, hookError } = await thawReadingErrors(session, t.thawSeconds * 1000));
      thawWarning = hookError?.message;
      const after = await fsfreezeStatus(session);
      if (after !== "thawed") {
        throw new QuiesceError(
          "FREEZE_MISMATCH",
          `${label}: thawed window ${windowId} but the agent still reports "${after}". THE GUEST MAY BE FROZEN.`,
          { target: label, windowId },
        );
      }
    }
    await store.remove(target.socketPath);
    if (agentStatus === "frozen") {
      // Best effort: the thaw is done and verified; a failed record must not turn it into a failed release.
      await store.writeEnded(target.socketPath, { windowId, how: writesResumed ? "expired" : "released", at: new Date(now()).toISOString() }).catch((err: unknown) => {
        process.stderr.write(`pulumi-quiesce: ${label}: window ${windowId} released, but its ended record was not written: ${(err as Error).message}\n`);
      });
    }
    await disarmBestEffort(windowId, label);
    return {
      // Writes that resumed before the release mean the window did not hold throughout: as an expired lease.
      outcome: state === "held" && !writesResumed ? "released" : writesResumed ? "expired" : (state as ReleaseResult["outcome"]),
      heldMs,
      thawedCount,
      lease,
      agentStatus: "thawed",
      ...(writesResumed ? { writesResumed } : {}),
      ...(thawWarning ? { thawWarning } : {}),
    };
  }, request.vanishedSocket === "vm-gone" ? vmGone : undefined);
}

/**
 * Break-glass thaw of whatever freeze the guest has, owned or not, and removal of any lease.
 * Only for an operator who knows why (`quiesce thaw --force`).
 */
export async function forceThaw(
  target: AgentTarget,
  options: { timeouts?: Timeouts; signal?: AbortSignal } = {},
  deps: LifecycleDeps = {},
): Promise<{ thawedCount: number; lease: LeaseRecord | undefined }> {
  const t = resolved(options.timeouts);
  const store = deps.leaseStore ?? leaseStoreFor(target, deps.pool);
  return withSession(target, options.timeouts, deps, options.signal, async (session) => {
    const lease = await store.read(target.socketPath);
    const { thawedCount } = await thawReadingErrors(session, t.thawSeconds * 1000);
    if ((await fsfreezeStatus(session)) !== "thawed") {
      throw new QuiesceError("FREEZE_MISMATCH", `${targetLabel(target)}: thaw did not thaw the guest`, { target: targetLabel(target) });
    }
    await store.remove(target.socketPath);
    return { thawedCount, lease };
  });
}
