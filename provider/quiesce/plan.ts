/**
 * Resolving a selection (mount points and/or disks) against the guest's fsinfo, before anything is frozen.
 * The agent silently returns 0 for a mount point that does not exist (AGENT-FACTS.md), so every requested
 * name must be found here, or create fails and lists what the guest has.
 */
import { QuiesceError } from "../errors";
import type { GuestDisk, GuestFilesystem } from "../agent/commands";
import { freezeListArgument, LINUX, type GuestOsProfile } from "./guestOs";

/** What to freeze. Neither given (or both empty): every filesystem, with freeze-all. */
export interface Selection {
  /** Guest mount points, e.g. `/data`. */
  readonly mountpoints?: readonly string[];
  /**
   * Backing disks: a serial (`qdata1`), a guest device (`/dev/vdb`), a bus target (`virtio:0:0:1` =
   * bus-type:bus:target:unit), the controller's PCI address (`pci:0000:00:05.0`), or for a libvirt domain
   * libvirt's target (`vda`). Each must match exactly one disk.
   */
  readonly disks?: readonly string[];
}

/** The resolved selection. */
export interface FreezePlan {
  /** True when everything is frozen with guest-fsfreeze-freeze. */
  readonly all: boolean;
  /** True when the user asked for everything (freeze-all, or on Windows freeze-list of every freezable volume). */
  readonly everything: boolean;
  /** Mount points that will be frozen, sorted; for everything, every filesystem fsinfo lists that the guest can freeze. */
  readonly mountpoints: readonly string[];
  /** What freeze-list is given (when not `all`): the mount points, or on Windows a volume path for a volume without a drive. */
  readonly listArguments: readonly string[];
  /** The filesystems concerned. */
  readonly filesystems: readonly GuestFilesystem[];
  /**
   * The count the agent must return: one per distinct device (fsinfo `name`). qemu-ga counts a bind mount
   * of a device it already froze as nothing (FIFREEZE says EBUSY), so two mount points of one device count once.
   */
  readonly expectedCount: number;
  /** Filesystems "everything" leaves out because the guest cannot freeze them (see {@link GuestOsProfile.canFreeze}). */
  readonly skipped: readonly GuestFilesystem[];
}

function distinctDevices(filesystems: readonly GuestFilesystem[]): number {
  return new Set(filesystems.map((f) => f.name || f.mountpoint)).size;
}

/** The bus-target form of a disk: `bus-type:bus:target:unit`, e.g. `virtio:0:0:0`. */
export function diskBusTarget(disk: GuestDisk): string {
  return `${disk.busType}:${disk.bus}:${disk.target}:${disk.unit}`;
}

/** The PCI address of a disk's controller, `DDDD:BB:SS.F` in hex as lspci prints it, when the agent reports one. */
export function diskPciAddress(disk: GuestDisk): string | undefined {
  const p = disk.pciController;
  if (!p) return undefined;
  const hex = (n: number, width: number): string => n.toString(16).padStart(width, "0");
  return `${hex(p.domain, 4)}:${hex(p.bus, 2)}:${hex(p.slot, 2)}.${hex(p.function, 1)}`;
}

function diskMatches(disk: GuestDisk, wanted: string): boolean {
  const pci = diskPciAddress(disk);
  return (
    disk.serial === wanted ||
    disk.dev === wanted ||
    disk.libvirtTarget === wanted ||
    (disk.busType !== "unknown" && diskBusTarget(disk) === wanted) ||
    (pci !== undefined && `pci:${pci}` === wanted)
  );
}

/**
 * One disk's identity across the filesystems it backs (two partitions of one disk list it twice): its
 * controller's PCI address and bus target when the agent reports the address, else its serial, else its bus
 * target and device node.
 */
function diskIdentity(disk: GuestDisk): string {
  const pci = diskPciAddress(disk);
  if (pci) return `pci:${pci}|${diskBusTarget(disk)}`;
  // Without an address, a serial names the disk (each partition of it reports its own device node).
  if (disk.serial) return `serial:${disk.serial}`;
  // libvirt's target names one disk of the domain.
  return disk.libvirtTarget ? `libvirt:${disk.libvirtTarget}` : [diskBusTarget(disk), disk.dev ?? ""].join("|");
}

/** A disk in words: `serial=qdata1 dev=/dev/vda virtio:0:0:0 pci:0000:00:05.0`. */
function describeDisk(d: GuestDisk): string {
  const pci = diskPciAddress(d);
  return [
    d.serial && `serial=${d.serial}`,
    d.dev && `dev=${d.dev}`,
    d.libvirtTarget && `target=${d.libvirtTarget}`,
    d.busType !== "unknown" && diskBusTarget(d),
    pci && `pci:${pci}`,
  ]
    .filter(Boolean)
    .join(" ");
}

/** One line per filesystem, for error messages: `/data (ext4, disk serial=qdata1 dev=/dev/vda virtio:0:0:0)`. */
export function describeFilesystems(filesystems: readonly GuestFilesystem[]): string {
  if (filesystems.length === 0) return "(the guest agent reports no filesystems)";
  return filesystems
    .map((f) => {
      const disks = f.disks.map(describeDisk);
      return `${f.mountpoint} (${f.type}${disks.length ? `, disk ${disks.join("; ")}` : ""})`;
    })
    .join(", ");
}

/**
 * Resolves `selection` against `filesystems` (from guest-get-fsinfo).
 * @throws QuiesceError UNKNOWN_MOUNTPOINT, UNKNOWN_DISK or AMBIGUOUS_DISK, listing what the guest has; NOT_FREEZABLE.
 */
export function planFreeze(selection: Selection, filesystems: readonly GuestFilesystem[], target: string, os: GuestOsProfile = LINUX): FreezePlan {
  const mountpoints = selection.mountpoints ?? [];
  const disks = selection.disks ?? [];
  if (mountpoints.length === 0 && disks.length === 0) {
    const freezable = filesystems.filter((f) => os.canFreeze(f.type));
    const skipped = filesystems.filter((f) => !os.canFreeze(f.type));
    const sorted = [...freezable].sort((a, b) => a.mountpoint.localeCompare(b.mountpoint));
    tooManyForOneFreeze(sorted.map((f) => f.mountpoint), target, os);
    return {
      // VSS fails the whole freeze-all for one volume it refuses: freeze the rest by name instead.
      all: !(os.freezeAllIsAllOrNone && skipped.length > 0),
      everything: true,
      mountpoints: sorted.map((f) => f.mountpoint),
      listArguments: sorted.map((f) => freezeListArgument(os, f)),
      filesystems: sorted,
      expectedCount: distinctDevices(freezable),
      skipped,
    };
  }
  const at = (m: string): GuestFilesystem | undefined => filesystems.find((f) => os.normalizeMountpoint(f.mountpoint) === os.normalizeMountpoint(m));
  const chosen = new Map<string, GuestFilesystem>();
  const missingMounts = mountpoints.filter((m) => at(m) === undefined);
  if (missingMounts.length > 0) {
    throw new QuiesceError(
      "UNKNOWN_MOUNTPOINT",
      `${target}: the guest has no filesystem mounted at ${missingMounts.join(", ")}. Nothing was frozen. ` +
        `The guest has: ${describeFilesystems(filesystems)}. Fix mountpoints to name one of these.`,
      { target, missing: missingMounts, available: filesystems.map((f) => f.mountpoint) },
    );
  }
  for (const m of mountpoints) {
    const f = at(m) as GuestFilesystem;
    chosen.set(f.mountpoint, f);
  }
  const missingDisks: string[] = [];
  for (const d of disks) {
    const matches = filesystems.filter((f) => f.disks.some((disk) => diskMatches(disk, d)));
    if (matches.length === 0) missingDisks.push(d);
    // A selector names one disk. Every virtio-blk disk reports bus target virtio:0:0:0, so that alone would
    // freeze them all (issue 14, item 9): refuse, and say what tells them apart.
    const matchedDisks = new Map<string, { disk: GuestDisk; mountpoints: string[] }>();
    for (const f of matches) {
      for (const disk of f.disks.filter((x) => diskMatches(x, d))) {
        const entry = matchedDisks.get(diskIdentity(disk)) ?? { disk, mountpoints: [] };
        entry.mountpoints.push(f.mountpoint);
        matchedDisks.set(diskIdentity(disk), entry);
      }
    }
    if (matchedDisks.size > 1) {
      const each = [...matchedDisks.values()].map((m) => `${describeDisk(m.disk)} (${m.mountpoints.sort().join(", ")})`).sort((a, b) => a.localeCompare(b));
      throw new QuiesceError(
        "AMBIGUOUS_DISK",
        `${target}: disk selector ${JSON.stringify(d)} matches ${matchedDisks.size} disks: ${each.join("; ")}. Nothing was ` +
          "frozen. Name one disk: by serial, guest device (/dev/vdb) or controller PCI address (pci:0000:00:05.0).",
        { target, selector: d, matches: each },
      );
    }
    for (const f of matches) chosen.set(f.mountpoint, f);
  }
  if (missingDisks.length > 0) {
    throw new QuiesceError(
      "UNKNOWN_DISK",
      `${target}: no guest filesystem is backed by disk ${missingDisks.join(", ")}. Nothing was frozen. ` +
        `Disks are matched by serial, guest device (/dev/vdb), bus target (bus-type:bus:target:unit), PCI address (pci:DDDD:BB:SS.F) ` +
        `or, for a libvirt domain, libvirt's target (vda). ` +
        `The guest has: ${describeFilesystems(filesystems)}.`,
      { target, missing: missingDisks },
    );
  }
  const selected = [...chosen.keys()].sort();
  const selectedFilesystems = selected.map((m) => chosen.get(m) as GuestFilesystem);
  const unfreezable = selectedFilesystems.filter((f) => !os.canFreeze(f.type));
  if (unfreezable.length > 0) {
    throw new QuiesceError(
      "NOT_FREEZABLE",
      `${target}: ${describeFilesystems(unfreezable)} cannot be frozen: ${os.cannotFreezeReason} ` +
        `(${[...new Set(unfreezable.map((f) => f.type))].join(", ")}). Nothing was frozen. ` +
        "Leave it out of the selection (a snapshot of it is crash-consistent at best).",
      { target, notFreezable: unfreezable.map((f) => f.mountpoint), guestOs: os.kind },
    );
  }
  tooManyForOneFreeze(selected, target, os);
  return {
    all: false,
    everything: false,
    mountpoints: selected,
    listArguments: selectedFilesystems.map((f) => freezeListArgument(os, f)),
    filesystems: selectedFilesystems,
    expectedCount: distinctDevices(selectedFilesystems),
    skipped: [],
  };
}

/**
 * The plan when the agent cannot list filesystems (qemu-ga on FreeBSD answers guest-get-fsinfo "unsupported").
 * Only named mount points can be frozen then; the count the agent returns is all that tells whether each was
 * really frozen, so it must equal the number named (a ZFS mount, or one that does not exist, comes up short and
 * the freeze is thawed). Everything, and disks, cannot be resolved: refused before anything is frozen.
 * @throws QuiesceError FSINFO_UNAVAILABLE
 */
export function planWithoutFsinfo(selection: Selection, target: string, os: GuestOsProfile): FreezePlan {
  const mountpoints = [...new Set(selection.mountpoints ?? [])].sort();
  tooManyForOneFreeze(mountpoints, target, os);
  if ((selection.disks ?? []).length > 0 || mountpoints.length === 0) {
    throw new QuiesceError(
      "FSINFO_UNAVAILABLE",
      `${target}: the guest agent cannot list its filesystems (guest-get-fsinfo is unsupported by qemu-ga on ${os.kind}), ` +
        `so ${mountpoints.length === 0 && (selection.disks ?? []).length === 0 ? "\"every filesystem\"" : "disks"} cannot be resolved, and ` +
        "it freezes UFS only, skipping anything else without a word. Nothing was frozen. Name the UFS mount points to freeze (mountpoints / --mountpoint).",
      { target, guestOs: os.kind },
    );
  }
  return { all: false, everything: false, mountpoints, listArguments: mountpoints, filesystems: [], expectedCount: mountpoints.length, skipped: [] };
}

/**
 * Refuses, before anything is frozen, more filesystems than one freeze of this agent can hold (FreeBSD: one UFS),
 * since the agent would skip the rest without a word.
 * @throws QuiesceError NOT_FREEZABLE
 */
function tooManyForOneFreeze(mountpoints: readonly string[], target: string, os: GuestOsProfile): void {
  const limit = os.maxFilesystemsPerFreeze;
  if (limit === undefined || mountpoints.length <= limit) return;
  throw new QuiesceError(
    "NOT_FREEZABLE",
    `${target}: ${mountpoints.join(", ")} cannot be frozen together: qemu-ga on ${os.kind} suspends one UFS filesystem per ` +
      "freeze (the kernel answers EBUSY for every other, which the agent skips without a word). Nothing was frozen. " +
      "Select one mount point per window.",
    { target, notFreezable: [...mountpoints], guestOs: os.kind },
  );
}
