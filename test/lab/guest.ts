/**
 * The lab guest: a TCG QEMU VM running the stock Debian kernel, an initramfs with the real qemu-ga, and two
 * ext4 data disks (/data, /data2). See AGENT-FACTS.md, "A real guest on these machines".
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { ChildProcess } from "node:child_process";
import { LabError, isRunning, run, spawnTracked, stopProcess, tail, withDeadline } from "./process";
import { JsonObject, LabAgentProbe, qmpExecute } from "./probes";
import { createRunDir, labDir } from "./rundir";

/** What test/lab/build.sh produced (its `manifest.json`). */
export interface LabBuild {
  kernelPackage: string;
  kernelRelease: string;
  /** The kernel QEMU boots: the uncompressed PVH-bootable vmlinux when the build could extract it. */
  kernel: string;
  initramfs: string;
  /** Pristine images: [0] is mounted on /data, [1] on /data2. Never boot these; startGuest copies them. */
  images: [string, string];
}

let buildInFlight: Promise<LabBuild> | undefined;

/**
 * Builds the lab if needed (test/lab/build.sh; about 10 s the first time, 0.2 s when cached) and returns
 * the products. Concurrent callers in one process share one build; build.sh itself locks across processes.
 *
 * @param options.timeoutMs default 10 minutes (the first build downloads a 70 MB kernel package).
 */
export function ensureBuilt(options: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<LabBuild> {
  buildInFlight ??= buildOnce(options).finally(() => {
    buildInFlight = undefined;
  });
  return buildInFlight;
}

async function buildOnce(options: { timeoutMs?: number; signal?: AbortSignal }): Promise<LabBuild> {
  const dir = labDir();
  try {
    await run("bash", [path.join(__dirname, "build.sh")], {
      timeoutMs: options.timeoutMs ?? 600_000,
      signal: options.signal,
      env: { ...process.env, QUIESCE_LAB_DIR: dir },
    });
  } catch (error) {
    throw new LabError(
      `building the lab in ${dir} failed (install the packages with .ci/install-lab-deps.sh): ${(error as Error).message}`,
      "LAB_BUILD_FAILED",
      { cause: error },
    );
  }
  return JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8")) as LabBuild;
}

/** A data disk of the guest. */
export interface LabDisk {
  /** Where the guest mounts it. */
  mountpoint: "/data" | "/data2";
  /** The working image on the host (this guest's own copy; `cache=none`, so a copy taken while frozen is a snapshot). */
  image: string;
  /** The virtio-blk serial, as guest-get-fsinfo reports it; absent when the disk was given none. */
  serial?: string;
  /** The guest's device node, e.g. `/dev/vda`, as the guest's init reported it. */
  guestDev?: string;
}

/** A running lab guest. */
export interface LabGuest {
  /** This guest's directory: working images, sockets, console log. Removed by stop() unless `keepRunDir`. */
  runDir: string;
  /** Absolute path of the agent's chardev socket (QEMU listens; one client at a time). */
  socketPath: string;
  /** Absolute path of the QMP monitor socket. */
  qmpSocketPath: string;
  /** The serial console, as written so far (init's `QUIESCE-LAB-*` marker lines are in it). */
  consoleLogPath: string;
  disks: LabDisk[];
  /** PID of the QEMU process. */
  pid: number;
  /** Whether the guest runs the write load on /data (see test/lab/init.sh). */
  load: boolean;
  /** Whether qemu-ga was started in the guest. */
  agent: boolean;
  /** Milliseconds from spawning QEMU to the READY marker, and to the first answered agent sync. */
  timings: { bootMs: number; agentReadyMs?: number };
  /** The disk mounted on `mountpoint`. */
  disk(mountpoint: "/data" | "/data2"): LabDisk;
  /** Runs one QMP command, e.g. `qmp("stop")` pauses the VM (its agent then never answers) and `qmp("cont")` resumes it. */
  qmp<T = unknown>(command: string, args?: JsonObject): Promise<T>;
  /** Stops QEMU by its PID (SIGTERM, then SIGKILL) and removes the run dir. Idempotent. */
  stop(): Promise<void>;
}

/** Options of {@link startGuest}. */
export interface StartGuestOptions {
  /** Run the in-guest write load on /data (default true). */
  load?: boolean;
  /** Pause between two load writes, in milliseconds (default 100; under TCG a write cycle itself takes ~0.3 s). */
  loadIntervalMs?: number;
  /** Start qemu-ga in the guest (default true). `false` gives a guest whose agent never answers. */
  agent?: boolean;
  /** Serial of the /data2 disk (default "qdata2"); `null` attaches it without a serial. /data is always "qdata1". */
  data2Serial?: string | null;
  /** Attach a blank disk (serial "qefi") that init formats as vfat and mounts on /boot/efi, as on a UEFI guest (default false). */
  efiDisk?: boolean;
  /** Run qemu-ga with a fsfreeze hook (-F) that fails every freeze with status 3 (default false). */
  failingFreezeHook?: boolean;
  /** Boot plus agent handshake budget, in milliseconds (default 90 000; a boot takes 3–9 s under TCG). */
  bootTimeoutMs?: number;
  /** Let a guest reboot (system_reset, or a reboot inside) restart it instead of ending QEMU (default false: -no-reboot). */
  allowReboot?: boolean;
  /** Keep the run dir after stop() (also with env QUIESCE_LAB_KEEP=1). */
  keepRunDir?: boolean;
  signal?: AbortSignal;
}

const READY = "QUIESCE-LAB-READY";
const FAILED = "QUIESCE-LAB-FAILED";
const DISK_MARKER = /^QUIESCE-LAB-DISK mountpoint=(\S+) dev=(\S+) serial=(\S*)/;
/** sockaddr_un.sun_path is 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH = 107;

/**
 * Boots a lab guest and resolves once its init printed READY and (when the agent runs) the agent answered
 * a guest-sync-delimited. Readiness is driven by the console stream, never by sleeping. Working images are
 * fresh sparse copies of the pristine ones, so every guest starts from clean filesystems.
 *
 * @example
 * const guest = await startGuest({ load: true });
 * try { await withAgentProbe(guest.socketPath, (agent) => agent.execute("guest-ping")); }
 * finally { await guest.stop(); }
 */
export async function startGuest(options: StartGuestOptions = {}): Promise<LabGuest> {
  const load = options.load ?? true;
  const agent = options.agent ?? true;
  const bootTimeoutMs = options.bootTimeoutMs ?? 90_000;
  const keepRunDir = options.keepRunDir ?? process.env.QUIESCE_LAB_KEEP === "1";
  const data2Serial = options.data2Serial === undefined ? "qdata2" : options.data2Serial;
  const build = await ensureBuilt({ signal: options.signal });

  const runDir = createRunDir("guest");
  const socketPath = path.join(runDir, "qga.sock");
  const qmpSocketPath = path.join(runDir, "qmp.sock");
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
    fs.rmSync(runDir, { recursive: true, force: true });
    throw new LabError(`socket path ${socketPath} is too long for a UNIX socket; set QUIESCE_LAB_DIR to a shorter path`, "LAB_BOOT_FAILED");
  }
  const consoleLogPath = path.join(runDir, "console.log");
  const disks: LabDisk[] = [
    { mountpoint: "/data", image: path.join(runDir, "data1.img"), serial: "qdata1" },
    { mountpoint: "/data2", image: path.join(runDir, "data2.img"), ...(data2Serial === null ? {} : { serial: data2Serial }) },
  ];
  let qemu: ChildProcess | undefined;
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (qemu) await stopProcess(qemu);
      if (!keepRunDir) fs.rmSync(runDir, { recursive: true, force: true });
    })());

  try {
    await Promise.all(
      disks.map((disk, index) =>
        run("cp", ["--sparse=always", build.images[index], disk.image], { timeoutMs: 60_000, signal: options.signal }),
      ),
    );
    const efiImage = path.join(runDir, "efi.img");
    if (options.efiDisk) {
      fs.writeFileSync(efiImage, "");
      fs.truncateSync(efiImage, 16 * 1024 * 1024);
    }
    const append = ["console=ttyS0", "quiet", "panic=-1", `quiesce.load=${load ? 1 : 0}`, `quiesce.agent=${agent ? 1 : 0}`];
    if (options.efiDisk) append.push("quiesce.efi=1");
    if (options.failingFreezeHook) append.push("quiesce.hook=fail");
    if (options.loadIntervalMs !== undefined) append.push(`quiesce.load_ms=${Math.max(0, Math.round(options.loadIntervalMs))}`);
    const args = [
      "-accel", "tcg", "-m", "256", "-smp", "1",
      "-nodefaults", "-no-user-config", "-display", "none", ...(options.allowReboot ? [] : ["-no-reboot"]),
      "-kernel", build.kernel, "-initrd", build.initramfs, "-append", append.join(" "),
      // The serial console is QEMU's stdout: the lab reads init's marker lines from the stream.
      "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
      ...disks.flatMap((disk, index) => [
        "-drive", `file=${disk.image},if=none,id=data${index + 1},format=raw,cache=none`,
        "-device", `virtio-blk-pci,drive=data${index + 1}${disk.serial ? `,serial=${disk.serial}` : ""}`,
      ]),
      ...(options.efiDisk
        ? ["-drive", `file=${efiImage},if=none,id=efi,format=raw,cache=none`, "-device", "virtio-blk-pci,drive=efi,serial=qefi"]
        : []),
      "-chardev", `socket,path=${socketPath},server=on,wait=off,id=qga0`,
      "-device", "virtio-serial-pci",
      "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
      "-qmp", `unix:${qmpSocketPath},server=on,wait=off`,
    ];
    fs.writeFileSync(path.join(runDir, "qemu.cmdline"), ["qemu-system-x86_64", ...args].join(" ") + "\n");
    const startedAt = Date.now();
    qemu = spawnTracked("qemu-system-x86_64", args, { cwd: runDir, stdio: ["ignore", "pipe", "pipe"] });
    const booted = watchConsole(qemu, consoleLogPath, path.join(runDir, "qemu.stderr"));
    const markers = await withDeadline(booted, { timeoutMs: bootTimeoutMs, signal: options.signal, what: "lab guest boot" });
    const bootMs = Date.now() - startedAt;
    for (const [mountpoint, dev] of markers) {
      const disk = disks.find((d) => d.mountpoint === mountpoint);
      if (disk) disk.guestDev = dev;
    }
    let agentReadyMs: number | undefined;
    if (agent) {
      const remaining = Math.max(1_000, bootTimeoutMs - bootMs);
      const probe = await LabAgentProbe.connect(socketPath, { timeoutMs: remaining, signal: options.signal }).catch(
        (error: unknown) => {
          throw new LabError(`the guest booted but its agent did not answer: ${(error as Error).message}`, "LAB_AGENT_FAILED", {
            cause: error,
          });
        },
      );
      probe.close();
      agentReadyMs = Date.now() - startedAt;
    }
    const qemuPid = qemu.pid as number;
    return {
      runDir,
      socketPath,
      qmpSocketPath,
      consoleLogPath,
      disks,
      pid: qemuPid,
      load,
      agent,
      timings: { bootMs, agentReadyMs },
      disk(mountpoint) {
        const found = disks.find((d) => d.mountpoint === mountpoint);
        if (!found) throw new LabError(`no disk on ${mountpoint}`, "LAB_BOOT_FAILED");
        return found;
      },
      qmp: (command, args) => qmpExecute(qmpSocketPath, command, args),
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * Copies QEMU's stdout (the serial console) to the console log and resolves with init's disk markers
 * (mount point → guest device) on READY. Rejects on FAILED or if QEMU exits first, with the console and
 * stderr tails in the message.
 */
function watchConsole(qemu: ChildProcess, consoleLogPath: string, stderrPath: string): Promise<Map<string, string>> {
  const consoleLog = fs.createWriteStream(consoleLogPath);
  const stderrLog = fs.createWriteStream(stderrPath);
  let consoleText = "";
  let stderrText = "";
  qemu.stderr?.on("data", (chunk: Buffer) => {
    stderrLog.write(chunk);
    stderrText = (stderrText + chunk.toString("utf8")).slice(-4096);
  });
  qemu.stderr?.once("end", () => stderrLog.end());
  qemu.stdout?.once("end", () => consoleLog.end());
  const markers = new Map<string, string>();
  return new Promise((resolve, reject) => {
    let partial = "";
    let settled = false;
    const settle = (error?: Error): void => {
      if (settled) return;
      settled = true;
      qemu.removeListener("exit", onExit);
      if (error) reject(error);
      else resolve(markers);
    };
    const describe = (): string =>
      `\n--- console (tail) ---\n${tail(consoleText, 15)}\n--- qemu stderr (tail) ---\n${tail(stderrText, 10)}`;
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      settle(new LabError(`QEMU exited (${code ?? signal}) before the guest was ready${describe()}`, "LAB_BOOT_FAILED"));
    };
    qemu.once("exit", onExit);
    qemu.stdout?.on("data", (chunk: Buffer) => {
      consoleLog.write(chunk);
      const text = chunk.toString("utf8");
      consoleText = (consoleText + text).slice(-8192);
      if (settled) return;
      const lines = (partial + text).split("\n");
      partial = lines.pop() ?? "";
      for (const raw of lines) {
        const line = raw.replace(/\r$/, "");
        const disk = DISK_MARKER.exec(line);
        if (disk) markers.set(disk[1], disk[2]);
        else if (line.startsWith(FAILED)) settle(new LabError(`guest init failed: ${line}${describe()}`, "LAB_BOOT_FAILED"));
        else if (line.startsWith(READY)) settle();
      }
    });
    if (!isRunning(qemu)) onExit(qemu.exitCode, qemu.signalCode);
  });
}
