/**
 * Groups: one consistent point across several guests on several hosts, all or nothing (issue 12). Independent of
 * Pulumi, like the lifecycle it is built on: each member is an ordinary window (its claim, lease, deadline and
 * dead-man thaw are its own host daemon's), and the group adds a barrier, so that every member is preflighted,
 * claimed and planned before any is armed and frozen, and then all are frozen at once.
 *
 * Members on one host share the pooled SSH connection and that host's daemon (the pool and the daemon client are
 * keyed by host and lease directory). If any member fails, every member frozen so far is thawed and every claim
 * released before the group fails, naming each member that failed and why.
 */
import { randomBytes } from "node:crypto";
import { QuiesceError, isQuiesceError } from "../errors";
import {
  createWindow,
  detachWindow,
  releaseWindow,
  targetLabel,
  windowStatus,
  type AgentTarget,
  type CreateWindowRequest,
  type LifecycleDeps,
  type ReleaseResult,
  type StatusReport,
  type Timeouts,
  type WindowInfo,
} from "./lifecycle";
import type { Selection } from "./plan";

/** One member of a group: a name, its guest, and what to freeze there. */
export interface GroupMember extends Selection {
  /** Unique within the group; names the member in results and errors. */
  readonly name: string;
  readonly target: AgentTarget;
}

/** What to freeze together, and for how long. */
export interface CreateGroupRequest {
  readonly members: readonly GroupMember[];
  /** Lease length of every member, in seconds. Default 300 (each member's guest may lower the default: Windows 10). */
  readonly maxDurationSeconds?: number;
  /** Thaw every member as soon as this process is gone (see CreateWindowRequest.thawOnDisconnect). Default true. */
  readonly thawOnDisconnect?: boolean;
  /** Recorded in each member's lease; `#<member>` is appended. Default `pulumi-quiesce`. */
  readonly owner?: string;
  readonly timeouts?: Timeouts;
  readonly signal?: AbortSignal;
}

/** One member of a held group. */
export interface GroupMemberInfo extends WindowInfo {
  readonly name: string;
  /** When its freeze was issued and verified, ms since the epoch on this machine's clock. */
  readonly freezeIssuedAtMs: number;
  readonly verifiedAtMs: number;
}

/** A held group. */
export interface GroupInfo {
  readonly groupId: string;
  readonly members: readonly GroupMemberInfo[];
  /** From the first member's freeze issued to the last member's freeze verified, in ms. */
  readonly skewMs: number;
  /** The earliest member's frozenAt, and the earliest expiresAt (ISO 8601 UTC): the group holds until then. */
  readonly frozenAt: string;
  readonly expiresAt: string;
}

/** A member, as a release or a status names it. */
export interface GroupMemberRef {
  readonly name: string;
  readonly target: AgentTarget;
  readonly windowId: string;
}

/** What went wrong with one member, as GROUP_FAILED lists it. */
export interface MemberFailure {
  readonly member: string;
  readonly code: string;
  readonly message: string;
}

/** A barrier: resolves every waiter once `count` have arrived; a break rejects every waiter, now and later. */
class Barrier {
  private arrived = 0;
  private broken: unknown;
  private readonly waiters: { resolve(): void; reject(err: unknown): void }[] = [];

  constructor(private readonly count: number) {}

  arrive(): Promise<void> {
    if (this.broken !== undefined) return Promise.reject(this.broken);
    this.arrived++;
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (this.arrived === this.count) for (const w of this.waiters) w.resolve();
    return p;
  }

  break(err: unknown): void {
    if (this.broken !== undefined || this.arrived === this.count) return;
    this.broken = err;
    for (const w of this.waiters) w.reject(err);
  }
}

function checkMembers(members: readonly GroupMember[]): void {
  if (members.length === 0) throw new QuiesceError("INVALID_INPUT", "a group needs at least one member", { field: "members" });
  const seen = new Set<string>();
  for (const m of members) {
    if (!m.name) throw new QuiesceError("INVALID_INPUT", "every member needs a name", { field: "members" });
    if (seen.has(m.name)) throw new QuiesceError("INVALID_INPUT", `two members are named ${JSON.stringify(m.name)}: names must be unique`, { field: "members", member: m.name });
    seen.add(m.name);
  }
}

function failureOf(member: string, err: unknown): MemberFailure {
  return { member, code: isQuiesceError(err) ? err.code : "ERROR", message: (err as Error).message ?? String(err) };
}

/**
 * Freezes every member as one point: preflight, claim, plan and arm each (in parallel), then freeze all at once,
 * then verify each. On any failure, every member frozen so far is thawed and every claim released, and the group
 * fails with GROUP_FAILED naming each member that failed and why (`fields.failures`); a member that could not be
 * confirmed thawed says so loudly (`fields.mayBeFrozen`).
 * @param deps.onStep receives each member's steps too: `(step, io, member)` in `memberDeps`.
 */
export async function createGroup(
  request: CreateGroupRequest,
  deps: LifecycleDeps & { readonly memberDeps?: (member: string) => LifecycleDeps } = {},
): Promise<GroupInfo> {
  checkMembers(request.members);
  const groupId = `qg-${randomBytes(8).toString("hex")}`;
  const owner = request.owner ?? "pulumi-quiesce";
  // Two barriers: every member planned before any is armed (a break then leaves every claim unarmed, withdrawn
  // without touching a guest), and every member armed before any freeze is sent (so the freezes go out together,
  // and the skew does not carry the arm's round trip).
  const barrier = new Barrier(request.members.length);
  const armedBarrier = new Barrier(request.members.length);
  const issued = new Map<string, number>();
  const verified = new Map<string, number>();
  const outcomes = await Promise.allSettled(
    request.members.map(async (m): Promise<WindowInfo> => {
      try {
        const own = deps.memberDeps?.(m.name) ?? {};
        const windowRequest: CreateWindowRequest = {
          target: m.target,
          mountpoints: m.mountpoints,
          disks: m.disks,
          maxDurationSeconds: request.maxDurationSeconds,
          // Held by this process until every member is frozen, whatever the group asks: a failure must thaw all.
          thawOnDisconnect: true,
          owner: `${owner}#${m.name}`,
          timeouts: request.timeouts,
          signal: request.signal,
        };
        return await createWindow(windowRequest, {
          ...deps,
          ...own,
          onStep: async (step, io) => {
            if (step === "armed") {
              await armedBarrier.arrive();
              issued.set(m.name, Date.now()); // the freeze is sent next
            }
            if (step === "verified") verified.set(m.name, Date.now());
            await own.onStep?.(step, io);
            await deps.onStep?.(step, io);
          },
          beforeFreeze: () => barrier.arrive(),
        });
      } catch (err) {
        // A member that fails before a barrier stops the others there: nothing is frozen yet.
        const stop = new QuiesceError("GROUP_FAILED", `member ${m.name} failed before the freeze; nothing was frozen`, { member: m.name, stoppedBy: m.name }, { cause: err });
        barrier.break(stop);
        armedBarrier.break(stop);
        throw err;
      }
    }),
  );
  const failures: MemberFailure[] = [];
  const unconfirmed: MemberFailure[] = [];
  outcomes.forEach((o, i) => {
    if (o.status !== "rejected") return;
    const name = request.members[i].name;
    const err = o.reason as unknown;
    // A member stopped at a broken barrier is not a failure of its own, unless its own cleanup could not be
    // confirmed (it was armed, between the barriers): then it is named, as possibly frozen.
    const stopped = isQuiesceError(err) && err.fields.stoppedBy !== undefined && err.fields.stoppedBy !== name;
    if (isQuiesceError(err) && err.fields.mayBeFrozen === true) unconfirmed.push(failureOf(name, err));
    else if (!stopped) failures.push(failureOf(name, err));
  });
  const held = outcomes.flatMap((o, i) => (o.status === "fulfilled" ? [{ member: request.members[i], info: o.value }] : []));
  if (failures.length === 0 && unconfirmed.length === 0 && !(request.thawOnDisconnect ?? true)) {
    // Every member is frozen: from now on only the deadlines, or a release, end them. If any member cannot be let
    // go, the group fails like any other: every member is thawed.
    const detached = await Promise.allSettled(held.map(({ member, info }) => detachWindow(member.target, info.windowId, deps, request.signal)));
    detached.forEach((d, i) => {
      if (d.status === "rejected") failures.push(failureOf(held[i].member.name, new QuiesceError("GROUP_FAILED", `frozen, but could not be handed to its host daemon's lease alone (${(d.reason as Error).message})`, { member: held[i].member.name }, { cause: d.reason })));
    });
  }
  if (failures.length > 0 || unconfirmed.length > 0) {
    // Thaw every member that froze (each only if its record is still its window's), then fail naming each member.
    const thaws = await Promise.allSettled(held.map(({ member, info }) => releaseWindow({ target: member.target, windowId: info.windowId, timeouts: request.timeouts }, deps)));
    thaws.forEach((t, i) => {
      if (t.status === "rejected") unconfirmed.push(failureOf(held[i].member.name, t.reason));
    });
    const named = failures.length > 0 ? failures : unconfirmed;
    throw new QuiesceError(
      "GROUP_FAILED",
      `group ${groupId}: ${named.map((f) => `member ${f.member} failed: ${f.code}: ${f.message}`).join("; ")}. ` +
        (held.length > 0 ? `Members ${held.map((h) => h.member.name).join(", ")} had frozen and were thawed. ` : "") +
        (unconfirmed.length > 0
          ? `THE THAW OF ${unconfirmed.map((f) => f.member).join(", ")} COULD NOT BE CONFIRMED: ${unconfirmed.length > 1 ? "THEY" : "IT"} MAY STILL BE FROZEN ` +
            "(their host daemons keep trying, until their deadlines at the latest); check with `quiesce group status`."
          : "No member is left frozen."),
      {
        groupId,
        failures: named,
        thawed: held.filter((_, i) => thaws[i].status === "fulfilled").map((h) => h.member.name),
        ...(unconfirmed.length > 0 ? { mayBeFrozen: true, unconfirmed: unconfirmed.map((f) => f.member) } : {}),
      },
    );
  }
  const members = held.map(({ member, info }) => ({
    ...info,
    name: member.name,
    freezeIssuedAtMs: issued.get(member.name) ?? Number.NaN,
    verifiedAtMs: verified.get(member.name) ?? Number.NaN,
  }));
  const first = Math.min(...members.map((m) => m.freezeIssuedAtMs));
  const last = Math.max(...members.map((m) => m.verifiedAtMs));
  const earliest = (key: "frozenAt" | "expiresAt"): string => members.map((m) => m[key]).sort()[0];
  return { groupId, members, skewMs: last - first, frozenAt: earliest("frozenAt"), expiresAt: earliest("expiresAt") };
}

/** A member's release. */
export interface MemberRelease extends ReleaseResult {
  readonly name: string;
  readonly windowId: string;
}

/** Thaws every member (each only if its record is still its window's) and reports each. */
export async function releaseGroup(
  members: readonly GroupMemberRef[],
  options: { timeouts?: Timeouts; signal?: AbortSignal; vanishedSocket?: "error" | "vm-gone" } = {},
  deps: LifecycleDeps = {},
): Promise<{ members: MemberRelease[]; heldThroughout: boolean; failures: MemberFailure[] }> {
  const results = await Promise.allSettled(
    members.map((m) => releaseWindow({ target: m.target, windowId: m.windowId, timeouts: options.timeouts, signal: options.signal, vanishedSocket: options.vanishedSocket }, deps)),
  );
  const released: MemberRelease[] = [];
  const failures: MemberFailure[] = [];
  results.forEach((r, i) => {
    if (r.status === "fulfilled") released.push({ ...r.value, name: members[i].name, windowId: members[i].windowId });
    else failures.push(failureOf(members[i].name, r.reason));
  });
  return { members: released, failures, heldThroughout: failures.length === 0 && released.every((r) => r.outcome === "released") };
}

/** Each member's state (see windowStatus). */
export async function groupStatus(
  members: readonly GroupMemberRef[],
  options: { timeouts?: Timeouts; signal?: AbortSignal; vanishedSocket?: "error" | "vm-gone" } = {},
  deps: LifecycleDeps = {},
): Promise<{ name: string; windowId: string; label: string; report?: StatusReport; error?: MemberFailure }[]> {
  return Promise.all(
    members.map(async (m) => {
      try {
        return { name: m.name, windowId: m.windowId, label: targetLabel(m.target), report: await windowStatus(m.target, { windowId: m.windowId, ...options }, deps) };
      } catch (err) {
        return { name: m.name, windowId: m.windowId, label: targetLabel(m.target), error: failureOf(m.name, err) };
      }
    }),
  );
}
