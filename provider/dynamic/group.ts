/**
 * QuiesceGroup's ResourceProvider logic (issue 12): create freezes every member as one point (provider/quiesce/
 * group.ts), read reports each member's state, delete thaws each member still held by its window.
 */
import type { SshConnectionConfig } from "../transport/ssh";
import { QuiesceError } from "../errors";
import { proxmoxSocketPath, type Timeouts } from "../quiesce/lifecycle";
import { DEFAULT_LEASE_DIR } from "../host/daemon";
import { DEFAULT_LIBVIRT_URI } from "../libvirt/procedures";
import { createGroup, groupStatus, releaseGroup, type GroupMemberRef } from "../quiesce/group";
import { validateGroupInputs, type InputFailure } from "../quiesce/validate";
import { ruleMethods, type ResourceRules } from "./rules";
import { describeOutcome, note, target, type GuestReference } from "./shared";
import { ownerLabel } from "./window";

/** Provider id: the group id. */
type Id = string;

/** One member as the provider receives it. */
export interface GroupMemberInputs extends GuestReference {
  readonly name: string;
  readonly mountpoints?: string[];
  readonly disks?: string[];
}

/** QuiesceGroup inputs. */
export interface GroupInputs {
  readonly members: GroupMemberInputs[];
  readonly maxDurationSeconds?: number;
  readonly thawOnDisconnect?: boolean;
  readonly timeouts?: Timeouts;
  readonly triggers?: unknown[];
  readonly resourceName?: string;
  readonly project?: string;
  readonly stack?: string;
}

/** A member's window, in the outputs. */
export interface GroupWindow {
  readonly name: string;
  readonly windowId: string;
  readonly frozenMountpoints: string[];
  readonly frozenAt: string;
  readonly expiresAt: string;
  /** At the last create or refresh: held, expired, disconnected, thawed-outside, ... (see WindowState). */
  readonly state: string;
}

/** QuiesceGroup outputs. */
export interface GroupOutputs extends GroupInputs {
  readonly groupId: string;
  readonly windows: GroupWindow[];
  /** From the first member's freeze issued to the last member's freeze verified, in ms. */
  readonly skewMs: number;
  readonly frozenAt: string;
  readonly expiresAt: string;
  /** Every member held at the last create or refresh. */
  readonly held: boolean;
}

/** The credentials of a member's connection update; everything else about a member replaces the group. */
const CREDENTIALS = ["privateKey", "privateKeyPassword", "password", "agentSocketPath"];

/**
 * What about a member decides a replace: its name, target and selection, with defaults filled in (port 22, user
 * root, the default lease directory and libvirt URI, a Proxmox VMID as its socket) and without credentials. Members
 * are compared by name, in any order.
 */
function memberIdentity(m: unknown): Record<string, unknown> {
  if (m === null || typeof m !== "object") return { name: m };
  const member = m as Record<string, unknown>;
  const connection = member.connection && typeof member.connection === "object" ? (member.connection as Record<string, unknown>) : undefined;
  const proxmox = member.proxmox as { vmid?: unknown } | undefined;
  return {
    name: member.name,
    connection: connection && {
      ...Object.fromEntries(Object.entries(connection).filter(([k]) => !CREDENTIALS.includes(k))),
      port: connection.port ?? 22,
      user: connection.user ?? "root",
    },
    socketPath: member.socketPath ?? (typeof proxmox?.vmid === "number" ? proxmoxSocketPath(proxmox.vmid) : undefined),
    domain: member.domain,
    libvirtUri: member.domain !== undefined ? (member.libvirtUri ?? DEFAULT_LIBVIRT_URI) : undefined,
    leaseDir: member.leaseDir ?? DEFAULT_LEASE_DIR,
    mountpoints: member.mountpoints ?? [],
    disks: member.disks ?? [],
  };
}

/** QuiesceGroup's keys under the one rule. */
export const GROUP_RULES: ResourceRules = {
  replaces: ["members", "maxDurationSeconds", "thawOnDisconnect", "triggers"],
  defaults: { maxDurationSeconds: 300, thawOnDisconnect: true },
  outputs: ["groupId", "windows", "skewMs", "frozenAt", "expiresAt", "held"],
  replaceOn: { members: (members) => (Array.isArray(members) ? members.map(memberIdentity).sort((x, y) => String(x.name).localeCompare(String(y.name))) : members) },
};

const groupMethods = ruleMethods<GroupInputs, GroupOutputs>(GROUP_RULES);
/** diff for QuiesceGroup. */
export const diffGroup = groupMethods.diff;
/** update for QuiesceGroup: credentials or timeouts changed; the freeze stays. */
export const updateGroup = groupMethods.update;

/** check for QuiesceGroup. */
export async function checkGroup(_olds: unknown, news: GroupInputs): Promise<{ inputs: GroupInputs; failures: InputFailure[] }> {
  return { inputs: news, failures: validateGroupInputs(news as unknown as Record<string, unknown>) };
}

/** The members as the lifecycle names them, with their windows. */
export function memberRefs(members: readonly GroupMemberInputs[], windows: readonly { name: string; windowId: string }[]): GroupMemberRef[] {
  return windows.map((w) => {
    const m = members.find((x) => x.name === w.name);
    if (!m) throw new QuiesceError("INVALID_INPUT", `group member ${w.name} is in the state but not in the inputs`, { member: w.name });
    return { name: w.name, target: target(m), windowId: w.windowId };
  });
}

/** create: every member frozen as one point; on any failure every member is thawed and the create fails. */
export async function createGroupResource(inputs: GroupInputs): Promise<{ id: Id; outs: GroupOutputs }> {
  const g = await createGroup({
    members: inputs.members.map((m) => ({ name: m.name, target: target(m), mountpoints: m.mountpoints, disks: m.disks })),
    maxDurationSeconds: inputs.maxDurationSeconds,
    thawOnDisconnect: inputs.thawOnDisconnect,
    timeouts: inputs.timeouts,
    owner: ownerLabel(inputs),
  });
  return {
    id: g.groupId,
    outs: {
      ...inputs,
      groupId: g.groupId,
      windows: g.members.map((m) => ({ name: m.name, windowId: m.windowId, frozenMountpoints: [...m.frozenMountpoints], frozenAt: m.frozenAt, expiresAt: m.expiresAt, state: "held" })),
      skewMs: g.skewMs,
      frozenAt: g.frozenAt,
      expiresAt: g.expiresAt,
      held: true,
    },
  };
}

/** read: each member's state (a member thawed outside pulumi-quiesce shows as such). */
export async function readGroup(id: Id, props: GroupOutputs): Promise<{ id: Id; props: GroupOutputs }> {
  const states = await groupStatus(memberRefs(props.members, props.windows), { timeouts: props.timeouts, vanishedSocket: "vm-gone" });
  const stateOf = (name: string): string => {
    const s = states.find((x) => x.name === name);
    if (s?.error) throw new QuiesceError("GROUP_FAILED", `group ${id}: member ${name}: ${s.error.code}: ${s.error.message}`, { member: name, memberCode: s.error.code });
    return s?.report?.state ?? "unknown";
  };
  const windows = props.windows.map((w) => ({ ...w, state: stateOf(w.name) }));
  return { id, props: { ...props, windows, held: windows.every((w) => w.state === "held") } };
}

/** delete: thaws each member still held by its window; a member already thawed is said, not failed. */
export async function deleteGroup(id: Id, props: GroupOutputs): Promise<void> {
  const r = await releaseGroup(memberRefs(props.members, props.windows), { timeouts: props.timeouts, vanishedSocket: "vm-gone" });
  for (const m of r.members) if (m.outcome !== "released") note(`group ${id}: member ${m.name}: nothing to thaw (${describeOutcome(m.outcome, m.lease?.owner)})`);
  if (r.failures.length > 0) {
    throw new QuiesceError(
      "GROUP_FAILED",
      `group ${id}: ${r.failures.map((f) => `member ${f.member}: ${f.code}: ${f.message}`).join("; ")}. The group stays in state; its members' deadlines thaw them in any case.`,
      { groupId: id, failures: r.failures },
    );
  }
}

/** The connection of a named member (HostSnapshot on a group runs on that member's host). */
export function memberConnection(members: readonly GroupMemberInputs[], name: string): SshConnectionConfig | undefined {
  const m = members.find((x) => x.name === name);
  if (!m) throw new QuiesceError("INVALID_INPUT", `the group has no member ${JSON.stringify(name)}: it has ${members.map((x) => x.name).join(", ")}`, { member: name });
  return m.connection;
}
