/**
 * QuiesceWindow, WindowRelease and HostSnapshot: Pulumi dynamic resources.
 *
 * The provider objects below are serialized into every resource's state (`__provider`). Each method only
 * `require()`s this package by name and forwards, so the text stays small and captures nothing stateful
 * and no secret (AGENT-FACTS.md, "Pulumi dynamic providers"). The program's directory must therefore have
 * `pulumi-quiesce` as a dependency.
 */
import * as pulumi from "@pulumi/pulumi";
import type { Connection, FilesystemSummary, TimeoutsArgs } from "./types";

type Impl = typeof import("../provider/dynamic/index");
type ResourceKind = import("../provider/dynamic/index").ResourceKind;

/**
 * A provider object that forwards every method to the package's provider logic (provider/dynamic), so that the
 * serialized text is this function's few lines plus `kind`. Every method is forwarded, present or not there:
 * a missing update would lose outputs, and a missing diff would update on every change of this code.
 */
function forwardTo(kind: ResourceKind): pulumi.dynamic.ResourceProvider {
  const impl = (): pulumi.dynamic.ResourceProvider => (require("pulumi-quiesce/provider/dynamic/index") as Impl).providers[kind];
  return {
    check: (olds, news) => (impl().check as NonNullable<pulumi.dynamic.ResourceProvider["check"]>)(olds, news),
    diff: (id, olds, news) => (impl().diff as NonNullable<pulumi.dynamic.ResourceProvider["diff"]>)(id, olds, news),
    create: (inputs) => impl().create(inputs),
    read: async (id, props) => {
      const read = impl().read;
      return read ? read(id, props) : { id, props };
    },
    update: (id, olds, news) => (impl().update as NonNullable<pulumi.dynamic.ResourceProvider["update"]>)(id, olds, news),
    delete: async (id, props) => {
      await impl().delete?.(id, props);
    },
  };
}

const windowProvider = forwardTo("window");
const releaseProvider = forwardTo("release");
const hostSnapshotProvider = forwardTo("hostSnapshot");
const groupProvider = forwardTo("group");

/**
 * The provider objects, for tests that drive Pulumi's dynamic-provider host directly.
 * @internal
 */
export const providersForTesting = { windowProvider, releaseProvider, hostSnapshotProvider, groupProvider } as const;

/** Arguments of {@link QuiesceWindow}. */
export interface QuiesceWindowArgs {
  /** SSH connection to the hypervisor host. Omitted: the agent socket is on the machine running Pulumi. */
  connection?: pulumi.Input<Connection>;
  /**
   * Absolute path of the guest agent's chardev socket on the host (bare QEMU). Exactly one of this, `proxmox`
   * and `domain`.
   */
  socketPath?: pulumi.Input<string>;
  /**
   * A libvirt domain, by name or UUID: frozen through libvirt, which owns its agent (see the README, "libvirt").
   * Exactly one of this, `socketPath` and `proxmox`.
   */
  domain?: pulumi.Input<string>;
  /**
   * The domain's libvirt URI, local to the host: `qemu:///system` (the default) or `qemu:///session`, optionally
   * with `?socket=/path` (libvirt's socket; default `/var/run/libvirt/virtqemud-sock` if it exists, else
   * `/var/run/libvirt/libvirt-sock`). Only with `domain`.
   */
  libvirtUri?: pulumi.Input<string>;
  /**
   * A Proxmox VE guest, by VMID: its agent socket is `/var/run/qemu-server/<vmid>.qga`. Proxmox shares that
   * socket with its own backups (see the README, "Proxmox VE"). Exactly one of this, `socketPath` and `domain`.
   */
  proxmox?: pulumi.Input<{ vmid: pulumi.Input<number> }>;
  /**
   * What to do when the guest cannot be frozen: its agent does not answer, fsfreeze is blocked, a freeze hook
   * fails, or the freeze fails or cannot be verified (and was thawed). `"fail"` (default) fails the deployment.
   * `"crash-consistent"` makes a window with nothing frozen: `consistency` is `"crash"` with the reason, and
   * HostSnapshot and WindowRelease proceed without failing, as vzdump, Nova and Veeam fall back. Wrong input
   * (an unknown mount point, a lease too long for the guest), another window's freeze and an unreachable
   * host still fail.
   */
  onQuiesceFailure?: pulumi.Input<"fail" | "crash-consistent">;
  /** Guest mount points to freeze, e.g. `["/data"]`. Omitted (and no `disks`): every filesystem. */
  mountpoints?: pulumi.Input<pulumi.Input<string>[]>;
  /**
   * Select filesystems by backing disk: serial, guest device (`/dev/vdb`), bus target (`virtio:0:0:1`), PCI address
   * (`pci:0000:00:05.0`), or for a libvirt domain libvirt's target (`vda`).
   */
  disks?: pulumi.Input<pulumi.Input<string>[]>;
  /**
   * Lease length in seconds: the guest is thawed by then whatever happens. Default 300; on a Windows guest
   * 10, since VSS holds writes for at most 10 s (a longer lease asked of a Windows guest is refused).
   */
  maxDurationSeconds?: pulumi.Input<number>;
  /**
   * Thaw as soon as the process that froze is gone: its control channel to the host daemon closed (within
   * about 0.05 s), or sent no heartbeat for 15 s (a hung process or a crashed machine closes nothing). Default true.
   */
  thawOnDisconnect?: pulumi.Input<boolean>;
  /** Agent timeouts in seconds (defaults: agent 10, freeze 30, thaw 30). */
  timeouts?: pulumi.Input<TimeoutsArgs>;
  /** Any change replaces the window (a new freeze). */
  triggers?: pulumi.Input<unknown[]>;
  /**
   * The host daemon's directory on the host: owned by the SSH user, not writable by group or others (created
   * 0700 when missing; refused otherwise). Default `/run/pulumi-quiesce`.
   */
  leaseDir?: pulumi.Input<string>;
}

/**
 * A verified freeze of a guest's filesystems, held from create until {@link WindowRelease} or delete.
 * Snapshot resources `dependsOn` it.
 *
 * @example
 * ```ts
 * const window = new QuiesceWindow("db", {
 *   connection: { host: "hv1", privateKey: cfg.requireSecret("sshKey") },
 *   socketPath: "/var/lib/vms/db/qga.sock",
 *   mountpoints: ["/var/lib/postgresql"],
 *   maxDurationSeconds: 60,
 * });
 * const snap = new HostSnapshot("db-snap", { window, create: "lvcreate -s -n db-snap -L 5G vg0/db" }, { dependsOn: window });
 * new WindowRelease("db-release", { window }, { dependsOn: snap });
 * ```
 */
export class QuiesceWindow extends pulumi.dynamic.Resource {
  /** The window's id (also the resource id); the lease on the host names it. */
  declare public readonly windowId: pulumi.Output<string>;
  /** Mount points frozen, sorted. */
  declare public readonly frozenMountpoints: pulumi.Output<string[]>;
  /** How many filesystems the agent froze (verified to equal `frozenMountpoints.length`). */
  declare public readonly frozenCount: pulumi.Output<number>;
  /** When the freeze was issued (ISO 8601 UTC). */
  declare public readonly frozenAt: pulumi.Output<string>;
  /** The lease deadline (ISO 8601 UTC): thawed by then whatever happens. */
  declare public readonly expiresAt: pulumi.Output<string>;
  /** qemu-ga version in the guest. */
  declare public readonly agentVersion: pulumi.Output<string>;
  /** Milliseconds the freeze command took (the guest flushing and freezing); 0 for a crash-consistent window. */
  declare public readonly freezeMs: pulumi.Output<number>;
  /** The guest's filesystems and their disks, as seen before the freeze. */
  declare public readonly filesystems: pulumi.Output<FilesystemSummary[]>;
  /** Whether the window was held at the last create or refresh. */
  declare public readonly held: pulumi.Output<boolean>;
  /**
   * Window state at the last create or refresh: held, expired, disconnected, thawed-outside, other-window,
   * frozen-outside, not-held, or vm-gone (the agent socket no longer exists on the host).
   */
  declare public readonly state: pulumi.Output<string>;
  /** `filesystem` when the guest was frozen; `crash` when it could not be and `onQuiesceFailure` fell back. */
  declare public readonly consistency: pulumi.Output<"filesystem" | "crash">;
  /** Why the window is only crash-consistent (the failure's code and message); empty when it froze. */
  declare public readonly consistencyReason: pulumi.Output<string>;
  /** The guest agent's OS kind, from guest-get-osinfo: `linux`, `freebsd` or `windows`. */
  declare public readonly guestOs: pulumi.Output<string>;
  /** The agent socket on the host (resolved from `proxmox` when that named the guest); absent for a domain. */
  declare public readonly socketPath: pulumi.Output<string | undefined>;
  /** The libvirt domain, when the window is on one. */
  declare public readonly domain: pulumi.Output<string | undefined>;
  /** Its libvirt URI. */
  declare public readonly libvirtUri: pulumi.Output<string | undefined>;
  declare public readonly connection: pulumi.Output<Connection | undefined>;
  declare public readonly leaseDir: pulumi.Output<string | undefined>;
  declare public readonly timeouts: pulumi.Output<TimeoutsArgs | undefined>;

  constructor(name: string, args: QuiesceWindowArgs, opts?: pulumi.CustomResourceOptions) {
    super(
      windowProvider,
      name,
      {
        ...args,
        socketPath: args.socketPath,
        // The lease names its owner; the engine need not tell the provider host which stack it serves.
        resourceName: name,
        project: pulumi.getProject(),
        stack: pulumi.getStack(),
        windowId: undefined,
        frozenMountpoints: undefined,
        frozenCount: undefined,
        frozenAt: undefined,
        expiresAt: undefined,
        agentVersion: undefined,
        freezeMs: undefined,
        filesystems: undefined,
        held: undefined,
        state: undefined,
        consistency: undefined,
        consistencyReason: undefined,
        guestOs: undefined,
      },
      { ...opts, additionalSecretOutputs: [...(opts?.additionalSecretOutputs ?? []), "connection"] },
      "quiesce",
      "QuiesceWindow",
    );
  }
}

/** One member of a {@link QuiesceGroup}: a name, its guest (as a window's target), and what to freeze there. */
export interface QuiesceGroupMember {
  /** Unique in the group; names the member in outputs and errors. */
  name: pulumi.Input<string>;
  /** SSH connection to the member's host; omitted: this machine. */
  connection?: pulumi.Input<Connection>;
  /** The member's agent socket (exactly one of this, `proxmox` and `domain`). */
  socketPath?: pulumi.Input<string>;
  /** A Proxmox VE guest by VMID. */
  proxmox?: pulumi.Input<{ vmid: pulumi.Input<number> }>;
  /** A libvirt domain by name or UUID. */
  domain?: pulumi.Input<string>;
  /** The domain's libvirt URI (default `qemu:///system`). */
  libvirtUri?: pulumi.Input<string>;
  /** The host daemon's directory on the member's host (default `/run/pulumi-quiesce`). */
  leaseDir?: pulumi.Input<string>;
  /** Mount points to freeze; omitted (and no `disks`): every filesystem. */
  mountpoints?: pulumi.Input<pulumi.Input<string>[]>;
  /** Disks to freeze the filesystems of (serial, device, bus target, PCI address, libvirt target). */
  disks?: pulumi.Input<pulumi.Input<string>[]>;
}

/** Arguments of {@link QuiesceGroup}. */
export interface QuiesceGroupArgs {
  /** The guests frozen together, on one host or several. Members on one host share one SSH connection and one host daemon. */
  members: pulumi.Input<pulumi.Input<QuiesceGroupMember>[]>;
  /** Lease length of every member, in seconds. Default 300. */
  maxDurationSeconds?: pulumi.Input<number>;
  /** Thaw every member as soon as the process that froze them is gone (as a window's). Default true. */
  thawOnDisconnect?: pulumi.Input<boolean>;
  /** Agent timeouts in seconds (defaults: agent 10, freeze 30, thaw 30). */
  timeouts?: pulumi.Input<TimeoutsArgs>;
  /** Any change replaces the group (a new freeze). */
  triggers?: pulumi.Input<unknown[]>;
}

/** A member's window, as {@link QuiesceGroup.windows} lists it. */
export interface QuiesceGroupWindow {
  name: string;
  windowId: string;
  frozenMountpoints: string[];
  frozenAt: string;
  expiresAt: string;
  /** At the last create or refresh: held, expired, disconnected, thawed-outside, ... (as a window's state). */
  state: string;
}

/**
 * Several guests, on one host or several, frozen as one consistent point, all or nothing: every member is
 * checked, claimed and planned before any is frozen, then all are frozen at once and each is verified. If any
 * member fails, every member frozen so far is thawed and the create fails, naming each member that failed and
 * why. Each member keeps its own lease, deadline and dead-man thaw on its host. Snapshot resources (a
 * {@link HostSnapshot} with `group` and `member`) `dependsOn` it, and a {@link WindowRelease} with `group` thaws
 * every member after them.
 *
 * @example
 * ```ts
 * const group = new QuiesceGroup("db", {
 *   members: [
 *     { name: "primary", connection: { host: "hv1" }, socketPath: "/var/lib/vms/db1/qga.sock", mountpoints: ["/var/lib/postgresql"] },
 *     { name: "replica", connection: { host: "hv2" }, domain: "db2", disks: ["vdb"] },
 *   ],
 *   maxDurationSeconds: 60,
 * });
 * const snap = new HostSnapshot("db-snap", { group, member: "primary", create: "rbd group snap create pool/db@nightly" }, { dependsOn: group });
 * new WindowRelease("db-release", { group }, { dependsOn: snap });
 * ```
 */
export class QuiesceGroup extends pulumi.dynamic.Resource {
  /** The group's id (also the resource id). */
  declare public readonly groupId: pulumi.Output<string>;
  /** Each member's window. */
  declare public readonly windows: pulumi.Output<QuiesceGroupWindow[]>;
  /** From the first member's freeze issued to the last member's freeze verified, in milliseconds. */
  declare public readonly skewMs: pulumi.Output<number>;
  /** The earliest member's freeze (ISO 8601 UTC). */
  declare public readonly frozenAt: pulumi.Output<string>;
  /** The earliest member's deadline (ISO 8601 UTC): every member is held until then at least. */
  declare public readonly expiresAt: pulumi.Output<string>;
  /** Every member held at the last create or refresh. */
  declare public readonly held: pulumi.Output<boolean>;
  /** The members, as given (secret: they carry their connections). */
  declare public readonly members: pulumi.Output<QuiesceGroupMember[]>;
  declare public readonly timeouts: pulumi.Output<TimeoutsArgs | undefined>;

  constructor(name: string, args: QuiesceGroupArgs, opts?: pulumi.CustomResourceOptions) {
    super(
      groupProvider,
      name,
      {
        ...args,
        resourceName: name,
        project: pulumi.getProject(),
        stack: pulumi.getStack(),
        groupId: undefined,
        windows: undefined,
        skewMs: undefined,
        frozenAt: undefined,
        expiresAt: undefined,
        held: undefined,
      },
      { ...opts, additionalSecretOutputs: [...(opts?.additionalSecretOutputs ?? []), "members"] },
      "quiesce",
      "QuiesceGroup",
    );
  }
}

/** Arguments of {@link WindowRelease}. */
export interface WindowReleaseArgs {
  /** The window to release. Exactly one of this and `group`. */
  window?: QuiesceWindow;
  /** The group to release: every member is thawed, and the release fails unless every one was held throughout. */
  group?: QuiesceGroup;
  /** Succeed even if the window was no longer held when release ran. Default false: fail loudly. */
  allowExpired?: pulumi.Input<boolean>;
}

/**
 * Thaws a {@link QuiesceWindow} within the same deployment; place it after the snapshots (`dependsOn`).
 * Fails if the window was no longer held when it ran (the snapshots may be inconsistent), unless `allowExpired`.
 */
export class WindowRelease extends pulumi.dynamic.Resource {
  /** How long the freeze was held, in milliseconds. */
  declare public readonly heldMs: pulumi.Output<number>;
  /** When the release ran (ISO 8601 UTC). */
  declare public readonly releasedAt: pulumi.Output<string>;
  /** `released`; `crash-consistent` for a window that froze nothing; or (with allowExpired) why nothing was thawed. */
  declare public readonly outcome: pulumi.Output<string>;

  /** A group's release: each member's outcome and heldMs. */
  declare public readonly memberOutcomes: pulumi.Output<{ name: string; outcome: string; heldMs: number }[] | undefined>;

  constructor(name: string, args: WindowReleaseArgs, opts?: pulumi.CustomResourceOptions) {
    const on = actsOn(args, "WindowRelease");
    super(
      releaseProvider,
      name,
      {
        ...on.inputs,
        ...(args.window ? { consistency: args.window.consistency } : {}),
        allowExpired: args.allowExpired,
        heldMs: undefined,
        releasedAt: undefined,
        outcome: undefined,
        memberOutcomes: undefined,
      },
      afterWindow(opts, on.resource, on.secrets),
      "quiesce",
      "WindowRelease",
    );
  }
}

/** Arguments of {@link HostSnapshot}. */
export interface HostSnapshotArgs {
  /** The window that must be held while `create` runs. Exactly one of this and `group`. */
  window?: QuiesceWindow;
  /** A group: every member must be held while `create` runs; the commands run on `member`'s host. */
  group?: QuiesceGroup;
  /** With `group`: the member (by name) on whose host the commands run. */
  member?: pulumi.Input<string>;
  /** Shell command run on the hypervisor host (over the window's connection) while the window is held. */
  create: pulumi.Input<string>;
  /** Shell command run on the host when the resource is deleted (e.g. remove the snapshot). */
  delete?: pulumi.Input<string>;
  /** Environment variables for both commands; values are shell-quoted. */
  environment?: pulumi.Input<Record<string, pulumi.Input<string>>>;
}

/**
 * Runs a snapshot command on the hypervisor host while a window is held, and fails unless the window was
 * held throughout. Before the command, the window's lease must still be its own and unexpired (a file read:
 * no agent session, which would cost about 100 ms of frozen time). After it, the guest agent itself must say
 * frozen with the lease still the window's. If that fails, the snapshot just taken is not consistent: the
 * `delete` command, when given, removes it at once, and the error says whether it did.
 * Outputs the exit code and the first 16 KiB of stdout/stderr.
 */
export class HostSnapshot extends pulumi.dynamic.Resource {
  /** Exit code of `create` (always 0: anything else fails the resource). */
  declare public readonly exitCode: pulumi.Output<number>;
  /** Standard output of `create`, at most 16 KiB. */
  declare public readonly stdout: pulumi.Output<string>;
  /** Standard error of `create`, at most 16 KiB. */
  declare public readonly stderr: pulumi.Output<string>;
  /** Milliseconds the `create` command ran. */
  declare public readonly commandMs: pulumi.Output<number>;
  /**
   * `filesystem`: taken while the guest was frozen, and the window held throughout. `crash`: the window froze
   * nothing (its `onQuiesceFailure` fell back), so the snapshot is only crash-consistent.
   */
  declare public readonly consistency: pulumi.Output<"filesystem" | "crash">;

  constructor(name: string, args: HostSnapshotArgs, opts?: pulumi.CustomResourceOptions) {
    const on = actsOn(args, "HostSnapshot");
    super(
      hostSnapshotProvider,
      name,
      {
        ...on.inputs,
        ...(args.window ? { windowConsistency: args.window.consistency } : { member: args.member }),
        create: args.create,
        delete: args.delete,
        environment: args.environment,
        exitCode: undefined,
        stdout: undefined,
        stderr: undefined,
        commandMs: undefined,
        consistency: undefined,
      },
      // The environment may carry secrets nested in its map, and the command may print them.
      afterWindow(opts, on.resource, [...on.secrets, "environment", "stdout", "stderr"]),
      "quiesce",
      "HostSnapshot",
    );
  }
}

/** The inputs a resource that acts on a window takes from it: which window, and how to reach its guest. */
function windowTarget(w: QuiesceWindow): pulumi.Inputs {
  return {
    windowId: w.windowId,
    connection: w.connection,
    socketPath: w.socketPath,
    domain: w.domain,
    libvirtUri: w.libvirtUri,
    leaseDir: w.leaseDir,
    timeouts: w.timeouts,
  };
}

/** The inputs a resource takes from the window or the group it acts on (exactly one of them). */
function actsOn(args: { window?: QuiesceWindow; group?: QuiesceGroup }, kind: string): { inputs: pulumi.Inputs; resource: pulumi.Resource; secrets: string[] } {
  if ((args.window === undefined) === (args.group === undefined)) {
    throw new Error(`${kind}: give exactly one of window (a QuiesceWindow) and group (a QuiesceGroup)`);
  }
  if (args.window) return { inputs: windowTarget(args.window), resource: args.window, secrets: [] };
  const g = args.group as QuiesceGroup;
  // The members carry their connections (credentials included): secret, as a window's connection is.
  return { inputs: { groupId: g.groupId, groupMembers: g.members, groupWindows: g.windows, timeouts: g.timeouts }, resource: g, secrets: ["groupMembers"] };
}

/** Options of a resource that acts on a window: it depends on the window, and its connection output is secret. */
function afterWindow(
  opts: pulumi.CustomResourceOptions | undefined,
  w: pulumi.Resource,
  secretOutputs: string[] = [],
): pulumi.CustomResourceOptions {
  return {
    ...opts,
    dependsOn: mergeDependsOn(opts?.dependsOn, w),
    additionalSecretOutputs: [...(opts?.additionalSecretOutputs ?? []), "connection", ...secretOutputs],
  };
}

function mergeDependsOn(
  dependsOn: pulumi.Input<pulumi.Input<pulumi.Resource>[]> | pulumi.Input<pulumi.Resource> | undefined,
  extra: pulumi.Resource,
): pulumi.Input<pulumi.Input<pulumi.Resource>[]> {
  if (dependsOn === undefined) return [extra];
  return pulumi.output(dependsOn).apply((d) => [...(Array.isArray(d) ? d : [d]), extra]) as pulumi.Input<pulumi.Input<pulumi.Resource>[]>;
}
