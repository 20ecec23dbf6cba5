/**
 * A fake QEMU guest agent behind a UNIX socket, faithful to the behaviour measured on the real
 * qemu-ga 7.2 (AGENT-FACTS.md), plus fault injection. It is trusted only because the conformance
 * suite (test/conformance) passes against both it and the real agent in the lab.
 *
 * Modelled behaviour:
 * - The chardev serves one client at a time; later clients connect but get nothing until the
 *   current one closes.
 * - The agent's parser and its unread output outlive connections: a reply produced while no client
 *   is connected is delivered to the next client (stale replies).
 * - 0xFF resets the parser and yields a "JSON parse error, stray '\uFFFD'" error reply.
 * - freeze-list returns 0 for unknown mount points and for [] and stays thawed; thaw when thawed
 *   returns 0; while frozen every command but ping/info/sync/sync-delimited/status/thaw is refused
 *   with the frozen-state error.
 */
import * as net from "node:net";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

/** A filesystem the fake guest has. */
export interface FakeFilesystem {
  name: string;
  mountpoint: string;
  type: string;
  disks: {
    "bus-type": string;
    bus: number;
    target: number;
    unit: number;
    dev?: string;
    serial?: string;
    "pci-controller"?: { domain: number; bus: number; slot: number; function: number };
  }[];
}

/** Fault injection knobs; change them at any time. */
export interface FakeFaults {
  /** Accept and read, but never answer (agent absent or hung). Commands queue until resume(). */
  silent?: boolean;
  /** Extra latency of freeze and freeze-list, in ms. */
  freezeDelayMs?: number;
  /** Fail the next freeze with this desc after freezing part of the list (the agent then thaws). */
  freezeError?: string;
  /** Close the client's connection when this command arrives, without answering. */
  dieOnCommand?: string;
  /** Bytes sent to the next client before anything else. */
  garbage?: Buffer;
  /** Send an endless line (no newline) to the next client instead of answering. */
  endlessLine?: boolean;
  /** Carry out this command, then stop answering (its reply and everything after queue until resume()). */
  hangAfterCommand?: string;
  /** Report this count from freeze/freeze-list instead of the real one (a lying or buggy agent). */
  reportCount?: number;
}

/**
 * The default layout, mirroring the lab guest (test/lab): /data with serial qdata1 (PCI slot 2), /data2 with
 * serial qdata2 (PCI slot 3), as the real qemu-ga 7.2 reports them there. Both have bus target virtio:0:0:0.
 */
export function defaultFilesystems(): FakeFilesystem[] {
  return [
    {
      name: "vda",
      mountpoint: "/data",
      type: "ext4",
      disks: [{ "bus-type": "virtio", bus: 0, target: 0, unit: 0, dev: "/dev/vda", serial: "qdata1", "pci-controller": { domain: 0, bus: 0, slot: 2, function: 0 } }],
    },
    {
      name: "vdb",
      mountpoint: "/data2",
      type: "ext4",
      disks: [{ "bus-type": "virtio", bus: 0, target: 0, unit: 0, dev: "/dev/vdb", serial: "qdata2", "pci-controller": { domain: 0, bus: 0, slot: 3, function: 0 } }],
    },
  ];
}

/**
 * A Windows guest's volumes as qemu-ga with VSS reports them (qga/commands-win32.c, build_guest_fsinfo): name is
 * the volume GUID path, mountpoint the drive (C:\), type NTFS, disks with a serial and \\.\PhysicalDriveN.
 * E:\ is FAT32, which VSS cannot add to a snapshot set.
 */
export function windowsFilesystems(): FakeFilesystem[] {
  const volume = (n: number, drive: string, type: string, serial: string): FakeFilesystem => ({
    name: `\\\\?\\Volume{0000000${n}-1111-2222-3333-444455556666}\\`,
    mountpoint: `${drive}:\\`,
    type,
    disks: [{ "bus-type": "sata", bus: 0, target: n, unit: 0, dev: `\\\\.\\PhysicalDrive${n}`, serial }],
  });
  return [volume(0, "C", "NTFS", "win-system"), volume(1, "D", "NTFS", "win-data"), volume(2, "E", "FAT32", "win-usb")];
}

/** A FreeBSD guest's filesystems: UFS root, and a ZFS dataset qemu-ga skips without a word (qga/commands-bsd.c). */
export function freebsdFilesystems(): FakeFilesystem[] {
  return [
    { name: "vtbd0p2", mountpoint: "/", type: "ufs", disks: [{ "bus-type": "virtio", bus: 0, target: 0, unit: 0, dev: "/dev/vtbd0p2", serial: "bsd-root" }] },
    { name: "zroot/data", mountpoint: "/data", type: "zfs", disks: [{ "bus-type": "virtio", bus: 0, target: 0, unit: 0, dev: "/dev/vtbd1", serial: "bsd-zfs" }] },
  ];
}

/** Filesystem types whose Linux driver has no freeze (FIFREEZE: EOPNOTSUPP), as a read-write mount. */
const CANNOT_FREEZE = new Set(["vfat", "msdos", "exfat", "ntfs3", "fuseblk"]);

/** Whether the fake's OS really freezes a type (its own lists: the fake imports no product code). */
function freezes(os: FakeOs, type: string): boolean {
  if (os === "windows") return ["ntfs", "refs"].includes(type.toLowerCase());
  if (os === "freebsd") return type === "ufs";
  return !CANNOT_FREEZE.has(type);
}

/** The guest OS the fake agent models. */
export type FakeOs = "linux" | "windows" | "freebsd";

/**
 * A freeze hook (qemu-ga -F) that fails, as qga/commands-posix.c reports it: a non-zero exit, a signal, a hook
 * that cannot be run (which fails the thaw too), one that never returns (qemu-ga waits for it with no timeout),
 * or one that fails only when called with "thaw". qemu-ga runs the thaw hook after thawing and clearing its
 * flag (qmp_guest_fsfreeze_thaw), so a failing thaw hook fails the reply of a thaw that happened.
 */
export type FakeHook = "fail" | "abnormal" | "missing" | "hang" | "fail-on-thaw";

const ALLOWED_WHILE_FROZEN = new Set([
  "guest-ping",
  "guest-info",
  "guest-sync",
  "guest-sync-delimited",
  "guest-fsfreeze-status",
  "guest-fsfreeze-thaw",
]);

const SUPPORTED = [
  "guest-sync-delimited",
  "guest-sync",
  "guest-ping",
  "guest-info",
  "guest-get-fsinfo",
  "guest-fsfreeze-status",
  "guest-fsfreeze-freeze",
  "guest-fsfreeze-freeze-list",
  "guest-fsfreeze-thaw",
  "guest-get-osinfo",
];

/** Options of {@link FakeAgent.start}. */
export interface FakeAgentOptions {
  socketPath?: string;
  filesystems?: FakeFilesystem[];
  /** Commands reported with enabled=false in guest-info (and refused), like qemu-ga --block-rpcs. */
  blockedCommands?: string[];
  faults?: FakeFaults;
  /** The guest OS whose agent this models (default linux); windows and freebsd also set their default layouts. */
  os?: FakeOs;
  /** A failing freeze hook (default none). */
  hook?: FakeHook;
  /** Windows: milliseconds VSS holds writes before it lets them resume (default 10 000, as VSS). */
  vssHoldLimitMs?: number;
  /**
   * FreeBSD: answer guest-get-fsinfo (default false: qemu-ga on FreeBSD lists it as enabled but answers
   * "unsupported", qga/commands-bsd.c; true models an agent that implements it).
   */
  bsdFsinfo?: boolean;
}

/** A running fake agent. */
export class FakeAgent {
  readonly socketPath: string;
  readonly filesystems: FakeFilesystem[];
  readonly faults: FakeFaults;
  readonly blockedCommands: Set<string>;
  readonly os: FakeOs;
  hook: FakeHook | undefined;
  readonly vssHoldLimitMs: number;
  readonly bsdFsinfo: boolean;
  /** Windows: VSS let the writes resume while the agent still says frozen. */
  writesResumed = false;
  private vssTimer: NodeJS.Timeout | undefined;
  private hookExits: (() => void) | undefined;
  /** Every command executed, in order (for assertions). */
  readonly log: string[] = [];
  /** Mount points currently frozen. */
  readonly frozen = new Set<string>();
  private readonly server: net.Server;
  private readonly ownDir: string | undefined;
  private active: net.Socket | undefined;
  private readonly waiting: net.Socket[] = [];
  private inputBuffer = "";
  private unread: Buffer[] = [];
  private queued: string[] = [];
  private working = false;
  private garbageSent = false;
  private hangingReply = false;
  /** Number of client connections accepted so far. */
  connections = 0;

  private constructor(options: FakeAgentOptions, socketPath: string, ownDir: string | undefined) {
    this.socketPath = socketPath;
    this.ownDir = ownDir;
    this.os = options.os ?? "linux";
    this.hook = options.hook;
    this.vssHoldLimitMs = options.vssHoldLimitMs ?? 10_000;
    this.bsdFsinfo = options.bsdFsinfo ?? false;
    this.filesystems = options.filesystems ?? (this.os === "windows" ? windowsFilesystems() : this.os === "freebsd" ? freebsdFilesystems() : defaultFilesystems());
    this.faults = options.faults ?? {};
    this.blockedCommands = new Set(options.blockedCommands ?? []);
    this.server = net.createServer((socket) => this.onConnection(socket));
  }

  /** Starts a fake agent on `options.socketPath` or a fresh temp path. */
  static async start(options: FakeAgentOptions = {}): Promise<FakeAgent> {
    let ownDir: string | undefined;
    let socketPath = options.socketPath;
    if (!socketPath) {
      ownDir = fs.mkdtempSync(path.join(os.tmpdir(), "fake-qga-"));
      socketPath = path.join(ownDir, "qga.sock");
    }
    const agent = new FakeAgent(options, socketPath, ownDir);
    await new Promise<void>((resolve, reject) => {
      agent.server.once("error", reject);
      agent.server.listen(socketPath, () => {
        agent.server.removeListener("error", reject);
        resolve();
      });
    });
    return agent;
  }

  /** The agent's own status. */
  get status(): "thawed" | "frozen" {
    return this.frozen.size > 0 ? "frozen" : "thawed";
  }

  /** A hanging hook (`hook: "hang"`) exits 0 at last: the freeze it held up goes ahead. */
  finishHook(): void {
    this.hookExits?.();
    this.hookExits = undefined;
  }

  /** Ends a `silent` fault: the agent answers again, processing what queued meanwhile. */
  resume(): void {
    this.faults.silent = false;
    this.pump();
  }

  /** Stops the server and drops every connection. */
  async stop(): Promise<void> {
    clearTimeout(this.vssTimer);
    this.finishHook();
    for (const s of [this.active, ...this.waiting]) s?.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    if (this.ownDir) fs.rmSync(this.ownDir, { recursive: true, force: true });
  }

  private onConnection(socket: net.Socket): void {
    socket.on("error", () => socket.destroy());
    if (this.active) {
      // One client at a time: the chardev does not read from later clients until the first closes.
      socket.pause();
      this.waiting.push(socket);
      socket.once("close", () => {
        const i = this.waiting.indexOf(socket);
        if (i >= 0) this.waiting.splice(i, 1);
      });
      return;
    }
    this.activate(socket);
  }

  private activate(socket: net.Socket): void {
    this.active = socket;
    this.connections++;
    socket.on("data", (chunk: Buffer) => this.onInput(chunk));
    socket.once("close", () => {
      if (this.active === socket) this.active = undefined;
      const next = this.waiting.shift();
      if (next) {
        this.activate(next);
        next.resume();
      }
    });
    if (this.faults.garbage && !this.garbageSent) {
      this.garbageSent = true;
      socket.write(this.faults.garbage);
    }
    if (this.faults.endlessLine) {
      this.sendEndlessLine(socket);
      return;
    }
    // Replies nobody read are still in the channel (AGENT-FACTS.md: stale replies arrive).
    for (const chunk of this.unread) socket.write(chunk);
    this.unread = [];
  }

  private sendEndlessLine(socket: net.Socket): void {
    const chunk = Buffer.alloc(64 * 1024, "x".charCodeAt(0));
    const write = (): void => {
      while (!socket.destroyed && socket.write(chunk)) {
        /* keep writing until the kernel buffer is full */
      }
      if (!socket.destroyed) socket.once("drain", write);
    };
    write();
  }

  private onInput(chunk: Buffer): void {
    // The agent's parser state survives connections, as in the real agent.
    for (const byte of chunk) {
      if (byte === 0xff) {
        // 0xFF resets the parser and is itself reported as a parse error.
        this.inputBuffer = "";
        this.queued.push("\u0000stray");
      } else if (byte === 0x0a) {
        if (this.inputBuffer.trim() !== "") this.queued.push(this.inputBuffer);
        this.inputBuffer = "";
      } else {
        this.inputBuffer += String.fromCharCode(byte);
      }
    }
    this.pump();
  }

  private pump(): void {
    if (this.working || this.faults.silent) return;
    const line = this.queued.shift();
    if (line === undefined) return;
    this.working = true;
    // Replies are produced asynchronously, as by the guest, so a client that writes and leaves
    // at once leaves its replies unread for the next client.
    setImmediate(() => {
      void this.handle(line).then(() => {
        this.working = false;
        this.pump();
      });
    });
  }

  private reply(value: unknown, delimited = false): void {
    if (this.hangingReply) {
      // The agent hung right after acting: this reply waits, like the commands behind it, for resume().
      this.hangingReply = false;
      this.faults.silent = true;
      return;
    }
    const text = Buffer.from(JSON.stringify(value) + "\n", "utf8");
    const bytes = delimited ? Buffer.concat([Buffer.of(0xff), text]) : text;
    // An agent stuck sending an endless line never gets to its replies.
    if (this.faults.endlessLine) return;
    if (this.active && !this.active.destroyed) this.active.write(bytes);
    else this.unread.push(bytes);
  }

  private error(cls: string, desc: string): void {
    this.reply({ error: { class: cls, desc } });
  }

  private async handle(line: string): Promise<void> {
    if (line === "\u0000stray") {
      this.error("GenericError", "JSON parse error, stray '\uFFFD'");
      return;
    }
    let request: { execute?: unknown; arguments?: Record<string, unknown> };
    try {
      request = JSON.parse(line) as typeof request;
    } catch (err) {
      this.error("GenericError", `JSON parse error, ${(err as Error).message}`);
      return;
    }
    const command = typeof request.execute === "string" ? request.execute : "";
    const args = request.arguments ?? {};
    this.log.push(command);
    if (this.faults.hangAfterCommand === command) {
      this.faults.hangAfterCommand = undefined;
      this.hangingReply = true;
    }
    if (this.faults.dieOnCommand === command) {
      this.active?.destroy();
      return;
    }
    if (!SUPPORTED.includes(command)) {
      this.error("CommandNotFound", `The command ${command} has not been found`);
      return;
    }
    if (this.blockedCommands.has(command)) {
      this.error("CommandNotFound", `The command ${command} has been disabled for this instance`);
      return;
    }
    if (this.frozen.size > 0 && !ALLOWED_WHILE_FROZEN.has(command)) {
      this.error("CommandNotFound", `Command ${command} has been disabled: the agent is in frozen state`);
      return;
    }
    switch (command) {
      case "guest-sync-delimited":
        this.reply({ return: args.id }, true);
        return;
      case "guest-sync":
        this.reply({ return: args.id });
        return;
      case "guest-ping":
        this.reply({ return: {} });
        return;
      case "guest-info":
        this.reply({
          return: {
            version: "7.2.0-fake",
            supported_commands: SUPPORTED.map((name) => ({
              name,
              // While frozen, the real agent reports the commands it refuses as disabled.
              enabled: !this.blockedCommands.has(name) && (this.frozen.size === 0 || ALLOWED_WHILE_FROZEN.has(name)),
              "success-response": true,
            })),
          },
        });
        return;
      case "guest-get-fsinfo":
        if (this.os === "freebsd" && !this.bsdFsinfo) {
          this.error("GenericError", "this feature or command is not currently supported"); // QERR_UNSUPPORTED
          return;
        }
        this.reply({
          return: this.filesystems.map(({ disks, ...rest }) => ({
            ...rest,
            "total-bytes": 60_000_000,
            "used-bytes": 1_000_000,
            disk: disks,
          })),
        });
        return;
      case "guest-get-osinfo":
        // qga/commands-posix.c reads os-release and uname; qga/commands-win32.c says mswindows / Windows_NT.
        this.reply({
          return:
            this.os === "windows"
              ? { id: "mswindows", name: "Microsoft Windows", "pretty-name": "Windows Server 2022 Standard", "kernel-release": "20348", machine: "x86_64" }
              : this.os === "freebsd"
                ? { id: "freebsd", name: "FreeBSD", "pretty-name": "FreeBSD 14.1-RELEASE", "kernel-release": "14.1-RELEASE", machine: "amd64" }
                : { id: "debian", name: "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)", "kernel-release": "6.1.0-fake", machine: "x86_64" },
        });
        return;
      case "guest-fsfreeze-status":
        // Windows: qemu-ga reads its own flag, so this still says frozen after VSS let the writes resume.
        this.reply({ return: this.status });
        return;
      case "guest-fsfreeze-freeze":
      case "guest-fsfreeze-freeze-list": {
        if (this.faults.freezeDelayMs) await delay(this.faults.freezeDelayMs);
        const wanted =
          command === "guest-fsfreeze-freeze"
            ? this.filesystems.map((f) => f.mountpoint)
            : Array.isArray(args.mountpoints)
              ? this.filesystems.map((f) => f.mountpoint).filter((m) => (args.mountpoints as unknown[]).includes(m))
              : this.filesystems.map((f) => f.mountpoint);
        // The hook runs before anything is frozen (qga/commands-posix.c, execute_fsfreeze_hook).
        if (this.hook === "hang") {
          // qemu-ga waits for the hook with no timeout, answering nothing meanwhile; when the hook finally
          // exits 0, the freeze goes ahead.
          await new Promise<void>((resolve) => (this.hookExits = resolve));
          this.hook = undefined;
        }
        if (this.hook && this.hook !== "fail-on-thaw") {
          this.error(
            "GenericError",
            this.hook === "fail"
              ? "fsfreeze hook has failed with status 1"
              : this.hook === "abnormal"
                ? "fsfreeze hook has terminated abnormally"
                : "can't access fsfreeze hook '/etc/qemu/fsfreeze-hook': No such file or directory",
          );
          return;
        }
        if (this.os === "windows") {
          // VSS: all or none (qga/vss-win32/requester.cpp): a volume it cannot add fails the whole set.
          const refused = wanted.map((m) => this.filesystems.find((f) => f.mountpoint === m) as FakeFilesystem).find((f) => !freezes(this.os, f.type));
          if (refused) {
            this.error("GenericError", `failed to add ${refused.mountpoint} to snapshot set: (error: 8004230c)`);
            return;
          }
        }
        if (this.faults.freezeError) {
          const desc = this.faults.freezeError;
          this.faults.freezeError = undefined;
          // qemu-ga thaws what it froze before reporting a failed freeze.
          this.frozen.clear();
          this.error("GenericError", desc);
          return;
        }
        // As qemu-ga (qga/commands-posix.c): a filesystem whose FIFREEZE says EOPNOTSUPP (no freeze in its
        // driver) or EBUSY (its device was frozen through another mount point) is skipped and not counted.
        let count = 0;
        const frozenDevices = new Set(this.filesystems.filter((f) => this.frozen.has(f.mountpoint)).map((f) => f.name));
        for (const m of wanted) {
          const fs = this.filesystems.find((f) => f.mountpoint === m) as FakeFilesystem;
          if (!freezes(this.os, fs.type) || frozenDevices.has(fs.name)) continue;
          // FreeBSD (qga/commands-bsd.c): UFSSUSPEND answers EBUSY for every UFS after the first, skipped uncounted.
          if (this.os === "freebsd" && count > 0) continue;
          frozenDevices.add(fs.name);
          this.frozen.add(m);
          count++;
        }
        if (this.os === "windows" && count > 0) {
          // VSS holds writes for at most 10 s, then lets them resume without a word.
          this.writesResumed = false;
          this.vssTimer = setTimeout(() => (this.writesResumed = true), this.vssHoldLimitMs);
          this.vssTimer.unref();
        }
        this.reply({ return: this.faults.reportCount ?? count });
        return;
      }
      case "guest-fsfreeze-thaw": {
        const n = this.frozen.size;
        this.frozen.clear();
        clearTimeout(this.vssTimer);
        if (this.hook === "missing" || this.hook === "fail-on-thaw") {
          this.error(
            "GenericError",
            this.hook === "missing" ? "can't access fsfreeze hook '/etc/qemu/fsfreeze-hook': No such file or directory" : "fsfreeze hook has failed with status 2",
          );
          return;
        }
        if (this.os === "windows" && this.writesResumed && n > 0) {
          // The flag is cleared anyway; the thaw reports that writes had resumed.
          this.writesResumed = false;
          this.error("GenericError", "couldn't hold writes: fsfreeze is limited up to 10 seconds: (error: 80042314)");
          return;
        }
        this.reply({ return: n });
        return;
      }
    }
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
