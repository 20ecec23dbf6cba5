/**
 * QuiesceWindow's ResourceProvider logic, as plain functions (the provider objects are in ./index.ts; the
 * serialized providers in sdk/ only `require()` that by package name and forward to it).
 *
 * Contract (DESIGN.md, "Lifecycle rules"; @pulumi/pulumi dynamic/index.ts):
 * - check: pure validation, one failure per field, unknowns tolerated.
 * - diff/update: the one rule of ./rules.ts; target, selection, lease or triggers replace (delete first: freezes
 *   do not nest), anything else updates.
 * - create: if it fails, nothing was created: the guest is thawed.
 * - read: the truth (held or not), never "frozen" when the guest is thawed.
 * - delete: thaw only if owned; "already thawed / expired / another's" succeeds without touching the guest;
 *   an unreachable host fails, so the resource stays in state.
 */
import type { GuestFilesystem } from "../agent/commands";
import type { SshConnectionConfig } from "../transport/ssh";
import {
  createWindow,
  releaseWindow,
  windowStatus,
  proxmoxSocketPath,
  type Consistency,
  type OnQuiesceFailure,
  type Timeouts,
  type WindowState,
  DEFAULT_MAX_DURATION_SECONDS,
} from "../quiesce/lifecycle";
import { validateWindowInputs, type InputFailure } from "../quiesce/validate";
import { diskBusTarget, diskPciAddress } from "../quiesce/plan";
import { DEFAULT_LEASE_DIR } from "../host/daemon";
import { DEFAULT_LIBVIRT_URI } from "../libvirt/procedures";
import { ruleMethods, type ResourceRules } from "./rules";
import { describeOutcome, note, target } from "./shared";

export { describeOutcome, note, socketPathOf, target } from "./shared";
/**
 * The names the serialized providers of 0.1.0 call on this module (their `__provider` text stays in state until
 * the resource changes, and delete runs it): kept so that an upgrade never strands a stack.
 */
export { checkRelease, createRelease } from "./release";
export { checkHostSnapshot, createHostSnapshot, deleteHostSnapshot, runOnHost } from "./hostSnapshot";

/** QuiesceWindow inputs as the provider receives them (plain values). */
export interface WindowInputs {
  readonly connection?: SshConnectionConfig;
  /** The agent socket on the host; exactly one of this and `proxmox`. Set by create from `proxmox` when absent. */
  readonly socketPath?: string;
  /** A Proxmox VE guest by VMID: its socket is `/var/run/qemu-server/<vmid>.qga`. */
  readonly proxmox?: { readonly vmid: number };
  /** A libvirt domain by name or UUID, reached through libvirt; in place of `socketPath`. */
  readonly domain?: string;
  /** The domain's libvirt URI, local to the host. Default `qemu:///system`. */
  readonly libvirtUri?: string;
  /** What to do when the guest cannot be frozen. Default `"fail"`. */
  readonly onQuiesceFailure?: OnQuiesceFailure;
  readonly mountpoints?: string[];
  readonly disks?: string[];
  readonly maxDurationSeconds?: number;
  readonly thawOnDisconnect?: boolean;
  readonly timeouts?: Timeouts;
  readonly triggers?: unknown[];
  readonly leaseDir?: string;
  /** The resource's name, recorded in the lease's owner (set by the SDK). */
  readonly resourceName?: string;
  /** The Pulumi project, from the program (`pulumi.getProject()`), recorded in the lease's owner (set by the SDK). */
  readonly project?: string;
  /** The Pulumi stack, from the program (`pulumi.getStack()`), recorded in the lease's owner (set by the SDK). */
  readonly stack?: string;
}

/** A filesystem in the `filesystems` output. */
export interface FilesystemSummary {
  readonly mountpoint: string;
  readonly type: string;
  readonly usedBytes?: number;
  readonly totalBytes?: number;
  readonly disks: { serial?: string; dev?: string; busType: string; target: string; pci?: string; libvirtTarget?: string }[];
}

/** QuiesceWindow outputs. */
export interface WindowOutputs extends WindowInputs {
  readonly windowId: string;
  readonly frozenMountpoints: string[];
  readonly frozenCount: number;
  readonly frozenAt: string;
  readonly expiresAt: string;
  readonly agentVersion: string;
  /** Milliseconds the freeze command took (the guest flushing and freezing). */
  readonly freezeMs: number;
  readonly filesystems: FilesystemSummary[];
  /** Whether the window was held at the last create or refresh. */
  readonly held: boolean;
  /** The window's state at the last create or refresh; `crash-consistent` for a window that froze nothing. */
  readonly state: WindowState | "crash-consistent";
  /** `filesystem` when the guest was frozen; `crash` when the freeze could not be made (onQuiesceFailure). */
  readonly consistency: Consistency;
  /** Why the window is only crash-consistent; empty when it froze. */
  readonly consistencyReason: string;
  /** The guest agent's OS kind: `linux`, `freebsd` or `windows`. */
  readonly guestOs: string;
}

/** Provider id: the window id. */
type Id = string;

/** Summarises fsinfo for the `filesystems` output. */
export function summarizeFilesystems(filesystems: readonly GuestFilesystem[]): FilesystemSummary[] {
  return filesystems.map((f) => ({
    mountpoint: f.mountpoint,
    type: f.type,
    ...(f.usedBytes !== undefined ? { usedBytes: f.usedBytes } : {}),
    ...(f.totalBytes !== undefined ? { totalBytes: f.totalBytes } : {}),
    disks: f.disks.map((d) => {
      const pci = diskPciAddress(d);
      return {
        ...(d.serial ? { serial: d.serial } : {}),
        ...(d.dev ? { dev: d.dev } : {}),
        busType: d.busType,
        target: d.busType === "unknown" ? "" : diskBusTarget(d),
        ...(pci ? { pci } : {}),
        ...(d.libvirtTarget ? { libvirtTarget: d.libvirtTarget } : {}),
      };
    }),
  }));
}

// ---- QuiesceWindow ------------------------------------------------------------------------------

/** check: pure validation. */
export async function checkWindow(_olds: unknown, news: WindowInputs): Promise<{ inputs: WindowInputs; failures: InputFailure[] }> {
  return { inputs: news, failures: validateWindowInputs(news as unknown as Record<string, unknown>) };
}

/**
 * QuiesceWindow's keys under the one rule: the target (host, port, socket, lease directory), the selection,
 * the lease and the triggers replace; credentials, timeouts and the owner labels update.
 */
export const WINDOW_RULES: ResourceRules = {
  replaces: ["connection.host", "connection.port", "socketPath", "domain", "libvirtUri", "leaseDir", "mountpoints", "disks", "maxDurationSeconds", "thawOnDisconnect", "triggers"],
  defaults: {
    "connection.port": 22,
    "connection.user": "root",
    leaseDir: DEFAULT_LEASE_DIR,
    libvirtUri: DEFAULT_LIBVIRT_URI,
    maxDurationSeconds: DEFAULT_MAX_DURATION_SECONDS,
    thawOnDisconnect: true,
    mountpoints: [],
    disks: [],
  },
  outputs: ["windowId", "frozenMountpoints", "frozenCount", "frozenAt", "expiresAt", "agentVersion", "freezeMs", "filesystems", "held", "state", "consistency", "consistencyReason", "guestOs"],
  // A Proxmox VMID and the socket path it stands for are the same target.
  normalize: (props) => (props.socketPath === undefined && isVmid(props.proxmox) ? { ...props, socketPath: proxmoxSocketPath(props.proxmox.vmid) } : props),
};

const windowMethods = ruleMethods<WindowInputs, WindowOutputs>(WINDOW_RULES);
/** diff: what replaces (a new freeze) and what merely updates. */
export const diffWindow = windowMethods.diff;
/** update: credentials, timeouts or labels changed; the freeze and its outputs stay, removed inputs go. */
export const updateWindow = windowMethods.update;

function isVmid(value: unknown): value is { vmid: number } {
  return typeof value === "object" && value !== null && typeof (value as { vmid?: unknown }).vmid === "number";
}


/**
 * The lease's owner label: `pulumi:project/stack/resource`. Project and stack come from the program (inputs set
 * by the SDK), since the engine need not set PULUMI_PROJECT / PULUMI_STACK for the provider host; the
 * environment is only a fallback for state written before those inputs existed.
 */
export function ownerLabel(inputs: Pick<WindowInputs, "project" | "stack" | "resourceName">): string {
  const project = inputs.project ?? process.env.PULUMI_PROJECT ?? "";
  const stack = inputs.stack ?? process.env.PULUMI_STACK ?? "";
  return `pulumi:${[project, stack, inputs.resourceName].filter(Boolean).join("/") || "unknown"}`;
}

/** create: a verified freeze; on failure the guest is thawed. */
export async function createWindowResource(inputs: WindowInputs): Promise<{ id: Id; outs: WindowOutputs }> {
  const t = target(inputs);
  const w = await createWindow({
    target: t,
    mountpoints: inputs.mountpoints,
    disks: inputs.disks,
    maxDurationSeconds: inputs.maxDurationSeconds,
    thawOnDisconnect: inputs.thawOnDisconnect,
    timeouts: inputs.timeouts,
    owner: ownerLabel(inputs),
    onQuiesceFailure: inputs.onQuiesceFailure,
  });
  const crash = w.consistency === "crash";
  if (crash) note(`window ${w.windowId}: NOTHING WAS FROZEN; snapshots in this window are crash-consistent only (${w.consistencyReason})`);
  return {
    id: w.windowId,
    outs: {
      ...inputs,
      // The resolved socket, so that the resources acting on the window reach it whatever named it.
      ...(t.socketPath !== undefined ? { socketPath: t.socketPath } : {}),
      windowId: w.windowId,
      frozenMountpoints: [...w.frozenMountpoints],
      frozenCount: w.frozenCount,
      frozenAt: w.frozenAt,
      expiresAt: w.expiresAt,
      agentVersion: w.agentVersion,
      freezeMs: w.freezeMs,
      filesystems: summarizeFilesystems(w.filesystems),
      held: !crash,
      state: crash ? "crash-consistent" : "held",
      consistency: w.consistency,
      consistencyReason: w.consistencyReason ?? "",
      guestOs: w.guestOs,
    },
  };
}

/** read: the truth about the window. A crash-consistent window holds nothing, so there is nothing to ask the host. */
export async function readWindow(id: Id, props: WindowOutputs): Promise<{ id: Id; props: WindowOutputs }> {
  if (props.consistency === "crash") return { id, props: { ...props, held: false, state: "crash-consistent" } };
  // The socket path is the one the window was created through: if it is gone, so is the VM (refresh must not fail).
  const report = await windowStatus(target(props), { windowId: id, timeouts: props.timeouts, vanishedSocket: "vm-gone" });
  return { id, props: { ...props, held: report.state === "held", state: report.state } };
}


/** delete: thaw if this window still owns the freeze; otherwise succeed and say why. */
export async function deleteWindow(id: Id, props: WindowOutputs): Promise<void> {
  // A crash-consistent window froze nothing and holds no lease: there is nothing to thaw, and the guest that
  // could not be frozen (its agent may not answer at all) must not make the stack undeletable.
  if (props.consistency === "crash") return;
  // A VM deleted before the stack must not make the stack undeletable: a missing socket reports vm-gone.
  const r = await releaseWindow({ target: target(props), windowId: id, timeouts: props.timeouts, vanishedSocket: "vm-gone" });
  if (r.outcome !== "released") note(`window ${id}: nothing to thaw (${describeOutcome(r.outcome, r.lease?.owner)})`);
}

