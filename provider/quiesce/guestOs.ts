/**
 * What a freeze can do on each kind of guest agent (AGENT-FACTS.md, "Other guest OSes and hooks", from qemu's
 * qga/ sources). Today's lifecycle was written for Linux; these profiles say where the others differ, so that
 * the product says what the guest really did:
 * - Linux (qga/commands-linux.c): FIFREEZE per mount; a type whose driver has no freeze (vfat, exfat, FUSE) is
 *   skipped without a word and not counted.
 * - FreeBSD (qga/commands-bsd.c): the /dev/ufssuspend ioctl suspends UFS only; ZFS and every other type are
 *   skipped without a word and not counted.
 * - Windows (qga/vss-win32/requester.cpp): VSS; only NTFS and ReFS volumes can join a snapshot set, one volume
 *   that cannot fails the whole set ("failed to add … to snapshot set"), and VSS holds writes for at most 10 s,
 *   after which they resume while guest-fsfreeze-status still says "frozen".
 */
import type { GuestFilesystem, GuestOsInfo } from "../agent/commands";

/** The kinds of guest agent whose freeze semantics differ. */
export type GuestOsKind = "linux" | "freebsd" | "windows";

/** How a guest's agent freezes. */
export interface GuestOsProfile {
  readonly kind: GuestOsKind;
  /** Whether the agent really freezes a filesystem of this type (else it skips it without a word, or fails). */
  canFreeze(type: string): boolean;
  /** Why a type cannot be frozen, for messages. */
  readonly cannotFreezeReason: string;
  /** The longest the agent holds a freeze, in seconds; undefined: no limit of its own. */
  readonly maxHoldSeconds?: number;
  /** The canonical spelling of a mount point, for matching a user's selection against fsinfo. */
  normalizeMountpoint(mountpoint: string): string;
  /**
   * The most filesystems one freeze can really hold: qemu-ga on FreeBSD suspends the first UFS only (its
   * UFSSUSPEND ioctl answers EBUSY for every other, which it skips without a word). Undefined: no limit.
   */
  readonly maxFilesystemsPerFreeze?: number;
  /**
   * Whether freeze-all fails as a whole when one filesystem cannot be frozen (VSS), rather than skipping it.
   * Then "everything" is frozen with freeze-list of the freezable ones.
   */
  readonly freezeAllIsAllOrNone: boolean;
}

/** Filesystem types Linux cannot freeze read-write (no freeze_fs in the driver: FIFREEZE says EOPNOTSUPP). */
export const LINUX_NOT_FREEZABLE_TYPES: ReadonlySet<string> = new Set(["vfat", "msdos", "fat", "exfat", "ntfs", "ntfs3", "fuseblk"]);

/** How long VSS holds writes, in seconds (qga/vss-win32: "fsfreeze is limited up to 10 seconds"). */
export const VSS_HOLD_LIMIT_SECONDS = 10;

export const LINUX: GuestOsProfile = {
  kind: "linux",
  canFreeze: (type) => !LINUX_NOT_FREEZABLE_TYPES.has(type),
  cannotFreezeReason: "Linux has no freeze for that filesystem type, and the agent would skip it without a word",
  normalizeMountpoint: (m) => m,
  freezeAllIsAllOrNone: false,
};

export const FREEBSD: GuestOsProfile = {
  kind: "freebsd",
  canFreeze: (type) => type.toLowerCase() === "ufs",
  cannotFreezeReason: "qemu-ga on FreeBSD suspends only UFS, and skips every other type (ZFS too) without a word",
  maxFilesystemsPerFreeze: 1,
  normalizeMountpoint: (m) => m,
  freezeAllIsAllOrNone: false,
};

export const WINDOWS: GuestOsProfile = {
  kind: "windows",
  canFreeze: (type) => ["ntfs", "refs"].includes(type.toLowerCase()),
  cannotFreezeReason: "VSS snapshots only NTFS and ReFS volumes, and one volume it refuses fails the whole freeze",
  maxHoldSeconds: VSS_HOLD_LIMIT_SECONDS,
  // Volume paths are case-insensitive, and `C:` names the same volume as `C:\`.
  normalizeMountpoint: (m) => {
    const upper = /^[A-Za-z]:/.test(m) ? m[0].toUpperCase() + m.slice(1) : m;
    return upper.endsWith("\\") ? upper : `${upper}\\`;
  },
  freezeAllIsAllOrNone: true,
};

/** The profile for what `guest-get-osinfo` says; Linux when the agent does not say (or has no such command). */
export function guestOsProfile(info: GuestOsInfo | undefined): GuestOsProfile {
  const id = info?.id?.toLowerCase();
  if (id === "mswindows") return WINDOWS;
  // A FreeBSD guest without os-release still says so in its kernel version (uname -v: "FreeBSD 14.1-RELEASE ...").
  if (id === "freebsd" || /^FreeBSD\b/.test(info?.kernelVersion ?? "")) return FREEBSD;
  return LINUX;
}

/** What to pass to freeze-list for a filesystem: its mount point, or on Windows its volume path when it has no drive. */
export function freezeListArgument(profile: GuestOsProfile, fs: GuestFilesystem): string {
  if (profile.kind === "windows" && !/^[A-Za-z]:\\/.test(fs.mountpoint)) return fs.name;
  return fs.mountpoint;
}

/**
 * Whether fsinfo reads as a Windows guest's: drive mount points (`C:\\`) or volume GUID names. For an agent whose
 * guest-get-osinfo is blocked, so that VSS's 10 s limit is never missed for want of an OS name.
 */
export function looksLikeWindows(filesystems: readonly GuestFilesystem[]): boolean {
  return filesystems.some((f) => /^[A-Za-z]:\\/.test(f.mountpoint) || f.name.startsWith("\\\\?\\Volume{"));
}
