/**
 * Resolving a selection (mount points and/or disks) against the guest's fsinfo, before anything is frozen.
 * The agent silently returns 0 for a mount point that does not exist (AGENT-FACTS.md), so every requested
 * name must be found here, or create fails and lists what the guest has.
 */
import { QuiesceError } from "../errors";
import type { GuestDisk, GuestFilesystem } from "../agent/commands";

/** What to freeze. Neither given (or both empty): every filesystem, with freeze-all. */
export interface Selection {
  /** Guest mount points, e.g. `/data`. */
  readonly mountpoints?: readonly string[];
  /** Backing disks: a serial (`qdata1`), a guest device (`/dev/vdb`) or a bus target (`virtio:0:0:1` = bus-type:bus:target:unit). */
  readonly disks?: readonly string[];
}

/** The resolved selection. */
export interface FreezePlan {
  /** True when everything is frozen with guest-fsfreeze-freeze. */
  readonly all: boolean;
  /** Mount points that will be frozen, sorted; for `all`, every filesystem fsinfo lists. */
  readonly mountpoints: readonly string[];
  /** The filesystems concerned. */
  readonly filesystems: readonly GuestFilesystem[];
}

/** The bus-target form of a disk: `bus-type:bus:target:unit`, e.g. `virtio:0:0:0`. */
export function diskBusTarget(disk: GuestDisk): string {
  return `${disk.busType}:${disk.bus}:${disk.target}:${disk.unit}`;
}

function diskMatches(disk: GuestDisk, wanted: string): boolean {
  return disk.serial === wanted || disk.dev === wanted || diskBusTarget(disk) === wanted;
}

/** One line per filesystem, for error messages: `/data (ext4, disk serial=qdata1 dev=/dev/vda virtio:0:0:0)`. */
export function describeFilesystems(filesystems: readonly GuestFilesystem[]): string {
  if (filesystems.length === 0) return "(the guest agent reports no filesystems)";
  return filesystems
    .map((f) => {
      const disks = f.disks.map((d) => [d.serial && `serial=${d.serial}`, d.dev && `dev=${d.dev}`, diskBusTarget(d)].filter(Boolean).join(" "));
      return `${f.mountpoint} (${f.type}${disks.length ? `, disk ${disks.join("; ")}` : ""})`;
    })
    .join(", ");
}

/**
 * Resolves `selection` against `filesystems` (from guest-get-fsinfo).
 * @throws QuiesceError UNKNOWN_MOUNTPOINT or UNKNOWN_DISK, listing what the guest has.
 */
export function planFreeze(selection: Selection, filesystems: readonly GuestFilesystem[], target: string): FreezePlan {
  const mountpoints = selection.mountpoints ?? [];
  const disks = selection.disks ?? [];
  if (mountpoints.length === 0 && disks.length === 0) {
    return { all: true, mountpoints: filesystems.map((f) => f.mountpoint).sort(), filesystems };
  }
  const chosen = new Map<string, GuestFilesystem>();
  const missingMounts = mountpoints.filter((m) => !filesystems.some((f) => f.mountpoint === m));
  if (missingMounts.length > 0) {
    throw new QuiesceError(
      "UNKNOWN_MOUNTPOINT",
      `${target}: the guest has no filesystem mounted at ${missingMounts.join(", ")}. Nothing was frozen. ` +
        `The guest has: ${describeFilesystems(filesystems)}. Fix mountpoints to name one of these.`,
      { target, missing: missingMounts, available: filesystems.map((f) => f.mountpoint) },
    );
  }
  for (const m of mountpoints) chosen.set(m, filesystems.find((f) => f.mountpoint === m) as GuestFilesystem);
  const missingDisks: string[] = [];
  for (const d of disks) {
    const matches = filesystems.filter((f) => f.disks.some((disk) => diskMatches(disk, d)));
    if (matches.length === 0) missingDisks.push(d);
    for (const f of matches) chosen.set(f.mountpoint, f);
  }
  if (missingDisks.length > 0) {
    throw new QuiesceError(
      "UNKNOWN_DISK",
      `${target}: no guest filesystem is backed by disk ${missingDisks.join(", ")}. Nothing was frozen. ` +
        `Disks are matched by serial, guest device (/dev/vdb) or bus target (bus-type:bus:target:unit). ` +
        `The guest has: ${describeFilesystems(filesystems)}.`,
      { target, missing: missingDisks },
    );
  }
  const selected = [...chosen.keys()].sort();
  return { all: false, mountpoints: selected, filesystems: selected.map((m) => chosen.get(m) as GuestFilesystem) };
}
