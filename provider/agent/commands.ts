/**
 * Typed QGA commands (qapi/qga: qga/qapi-schema.json). Each function validates the shape of the
 * reply; an unexpected shape is AGENT_PROTOCOL, never a silent `undefined`.
 */
import { QuiesceError } from "../errors";
import type { ExecuteOptions } from "./session";

/**
 * What the typed commands need of a way to the agent: a QGA session (AgentSession), or libvirt's agent
 * command for a guest whose agent libvirt owns (provider/libvirt/agent.ts). `execute` resolves with the reply's
 * `return` value, or rejects with a QuiesceError.
 */
export interface AgentExecutor {
  /** Label for messages. */
  readonly target: string;
  execute(command: string, args?: Readonly<Record<string, unknown>>, options?: ExecuteOptions): Promise<unknown>;
}

/** A command the agent supports, from `guest-info`. */
export interface AgentCommandInfo {
  /** Command name, e.g. `guest-fsfreeze-freeze-list`. */
  readonly name: string;
  /** False when the administrator blocked it (qemu-ga `--block-rpcs`) or the agent disabled it. */
  readonly enabled: boolean;
}

/** Result of `guest-info`. */
export interface AgentInfo {
  /** qemu-ga version, e.g. `7.2.0`. */
  readonly version: string;
  /** Every command the agent knows. */
  readonly commands: readonly AgentCommandInfo[];
}

/** A disk backing a guest filesystem, from `guest-get-fsinfo`. */
export interface GuestDisk {
  /** Bus type as the agent names it: `virtio`, `scsi`, `ide`, `sata`, `nvme`, ...; `unknown` when not reported. */
  readonly busType: string;
  /** Bus number. */
  readonly bus: number;
  /** Target number on the bus. */
  readonly target: number;
  /** Unit number on the target. */
  readonly unit: number;
  /** Guest device node, e.g. `/dev/vdb`, when the agent reports it. */
  readonly dev?: string;
  /** Disk serial, when the disk has one (QEMU: `-drive ...,serial=XYZ`). */
  readonly serial?: string;
  /**
   * The PCI address of the disk's controller (`pci-controller`). The only field that tells two virtio-blk disks
   * apart when neither has a serial: each is its own PCI device, and each reports bus target `virtio:0:0:0`.
   */
  readonly pciController?: { readonly domain: number; readonly bus: number; readonly slot: number; readonly function: number };
  /**
   * libvirt's target of the disk on the host side (`vda`, `sdb`: the domain XML's `<target dev=.../>`), for a libvirt
   * domain's filesystems (from DOMAIN_GET_GUEST_INFO, which reports no bus address: `busType` is then `unknown`).
   */
  readonly libvirtTarget?: string;
}

/** A guest filesystem, from `guest-get-fsinfo`. */
export interface GuestFilesystem {
  /** Guest block device name, e.g. `vdb`. */
  readonly name: string;
  /** Mount point in the guest, e.g. `/data`. */
  readonly mountpoint: string;
  /** Filesystem type, e.g. `ext4`. */
  readonly type: string;
  /** Size in bytes, when reported. */
  readonly totalBytes?: number;
  /** Used bytes, when reported. */
  readonly usedBytes?: number;
  /** Backing disks. */
  readonly disks: readonly GuestDisk[];
}

/** The agent's own freeze bookkeeping. A freeze made inside the guest (`fsfreeze -f`) is not seen. */
export type FreezeStatus = "thawed" | "frozen";

/** `guest-ping`: resolves when the agent answers. */
export async function ping(session: AgentExecutor, options?: ExecuteOptions): Promise<void> {
  await session.execute("guest-ping", undefined, options);
}

/** `guest-info`: agent version and commands. */
export async function getInfo(session: AgentExecutor, options?: ExecuteOptions): Promise<AgentInfo> {
  const command = "guest-info";
  const value = record(await session.execute(command, undefined, options), session, command);
  const list = value.supported_commands;
  if (typeof value.version !== "string" || !Array.isArray(list)) throw shapeError(session, command, value);
  const commands = list.map((item: unknown) => {
    const entry = record(item, session, command);
    if (typeof entry.name !== "string" || typeof entry.enabled !== "boolean") throw shapeError(session, command, item);
    return { name: entry.name, enabled: entry.enabled };
  });
  return { version: value.version, commands };
}

/** The guest's operating system, from `guest-get-osinfo` (every field the agent may leave out). */
export interface GuestOsInfo {
  /** os-release ID on POSIX guests (`debian`, `rhel`, `freebsd`); `mswindows` on Windows. */
  readonly id?: string;
  /** The kernel's release (`uname -r` on POSIX guests). */
  readonly kernelRelease?: string;
  /** The kernel's version (`uname -v` on POSIX guests: `FreeBSD 14.1-RELEASE ...` on FreeBSD). */
  readonly kernelVersion?: string;
  /** A name for people, e.g. `Debian GNU/Linux 12 (bookworm)` or `Microsoft Windows Server 2022`. */
  readonly prettyName?: string;
}

/**
 * `guest-get-osinfo` (qemu-ga 2.10 and later; qga/qapi-schema.json GuestOSInfo). On POSIX guests `id` comes from
 * os-release (the lab guest says `quiesce-lab`); on Windows it is always `mswindows`.
 */
export async function getOsinfo(session: AgentExecutor, options?: ExecuteOptions): Promise<GuestOsInfo> {
  const command = "guest-get-osinfo";
  const value = record(await session.execute(command, undefined, options), session, command);
  const text = (key: string): string | undefined => (typeof value[key] === "string" ? (value[key] as string) : undefined);
  return {
    ...(text("id") !== undefined ? { id: text("id") } : {}),
    ...(text("kernel-release") !== undefined ? { kernelRelease: text("kernel-release") } : {}),
    ...(text("kernel-version") !== undefined ? { kernelVersion: text("kernel-version") } : {}),
    ...(text("pretty-name") !== undefined ? { prettyName: text("pretty-name") } : {}),
  };
}

/** `guest-get-fsinfo`: the guest's mounted filesystems and their disks. Refused while frozen. */
export async function getFsinfo(session: AgentExecutor, options?: ExecuteOptions): Promise<GuestFilesystem[]> {
  const command = "guest-get-fsinfo";
  const value = await session.execute(command, undefined, options);
  if (!Array.isArray(value)) throw shapeError(session, command, value);
  return value.map((item: unknown): GuestFilesystem => {
    const fs = record(item, session, command);
    if (typeof fs.name !== "string" || typeof fs.mountpoint !== "string" || typeof fs.type !== "string") {
      throw shapeError(session, command, item);
    }
    const disks = Array.isArray(fs.disk) ? fs.disk : [];
    return {
      name: fs.name,
      mountpoint: fs.mountpoint,
      type: fs.type,
      ...(typeof fs["total-bytes"] === "number" ? { totalBytes: fs["total-bytes"] } : {}),
      ...(typeof fs["used-bytes"] === "number" ? { usedBytes: fs["used-bytes"] } : {}),
      disks: disks.map((d: unknown): GuestDisk => {
        const disk = record(d, session, command);
        return {
          busType: typeof disk["bus-type"] === "string" ? disk["bus-type"] : "unknown",
          bus: typeof disk.bus === "number" ? disk.bus : 0,
          target: typeof disk.target === "number" ? disk.target : 0,
          unit: typeof disk.unit === "number" ? disk.unit : 0,
          ...(typeof disk.dev === "string" ? { dev: disk.dev } : {}),
          ...(typeof disk.serial === "string" ? { serial: disk.serial } : {}),
          ...pciController(disk["pci-controller"]),
        };
      }),
    };
  });
}

function pciController(value: unknown): Pick<GuestDisk, "pciController"> {
  if (typeof value !== "object" || value === null) return {};
  const v = value as Record<string, unknown>;
  const fields = [v.domain, v.bus, v.slot, v.function];
  // qemu-ga reports -1 for each field when the disk is not behind a PCI device it could read.
  if (!fields.every((n) => typeof n === "number" && Number.isInteger(n) && n >= 0)) return {};
  return { pciController: { domain: v.domain as number, bus: v.bus as number, slot: v.slot as number, function: v.function as number } };
}

/** `guest-fsfreeze-status`. */
export async function fsfreezeStatus(session: AgentExecutor, options?: ExecuteOptions): Promise<FreezeStatus> {
  const command = "guest-fsfreeze-status";
  const value = await session.execute(command, undefined, options);
  if (value !== "thawed" && value !== "frozen") throw shapeError(session, command, value);
  return value;
}

/** `guest-fsfreeze-freeze`: freezes every freezable filesystem; returns how many it froze. */
export async function fsfreezeFreezeAll(session: AgentExecutor, options?: ExecuteOptions): Promise<number> {
  return count(session, "guest-fsfreeze-freeze", undefined, options);
}

/**
 * `guest-fsfreeze-freeze-list`: freezes the given mount points; returns how many it froze.
 * The agent returns 0 without error for a mount point that does not exist and for `[]`
 * (AGENT-FACTS.md), so an empty list is refused here: it never means "all".
 */
export async function fsfreezeFreezeList(
  session: AgentExecutor,
  mountpoints: readonly string[],
  options?: ExecuteOptions,
): Promise<number> {
  if (mountpoints.length === 0) {
    throw new QuiesceError(
      "INVALID_INPUT",
      "refusing guest-fsfreeze-freeze-list with an empty list: the agent freezes nothing and returns 0. " +
        "Use guest-fsfreeze-freeze to freeze every filesystem.",
      { target: session.target, command: "guest-fsfreeze-freeze-list" },
    );
  }
  return count(session, "guest-fsfreeze-freeze-list", { mountpoints: [...mountpoints] }, options);
}

/** `guest-fsfreeze-thaw`: thaws everything (it takes no list); returns how many it thawed (0 when thawed). */
export async function fsfreezeThaw(session: AgentExecutor, options?: ExecuteOptions): Promise<number> {
  return count(session, "guest-fsfreeze-thaw", undefined, options);
}

async function count(
  session: AgentExecutor,
  command: string,
  args: Record<string, unknown> | undefined,
  options: ExecuteOptions | undefined,
): Promise<number> {
  const value = await session.execute(command, args, options);
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) throw shapeError(session, command, value);
  return value;
}

function record(value: unknown, session: AgentExecutor, command: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw shapeError(session, command, value);
  return value as Record<string, unknown>;
}

function shapeError(session: AgentExecutor, command: string, value: unknown): QuiesceError {
  const text = JSON.stringify(value) ?? String(value);
  return new QuiesceError(
    "AGENT_PROTOCOL",
    `${session.target}: unexpected reply shape to ${command}: ${text.length > 200 ? text.slice(0, 200) + "…" : text}`,
    { target: session.target, command },
  );
}
