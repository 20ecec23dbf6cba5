/**
 * The client side of the watchdog (DESIGN.md, "The lease and the watchdog"; the daemon is watchdog.py).
 *
 * One watchdog per lease directory on the host that holds the agent sockets. It thaws every leased guest at
 * its deadline, and, for a window armed with thawOnDisconnect, as soon as the window's hold channel closes
 * (the process that froze is gone, or its SSH connection dropped). It thaws only a guest whose lease still
 * names the window it acts for.
 *
 * Cost per window: one streamlocal channel (nearly free, uncapped). An exec (110-170 ms) happens only when
 * no watchdog runs yet for the directory, to start one.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Duplex } from "node:stream";
import { QuiesceError, abortError } from "../errors";
import { openLocalChannel } from "../transport/local";
import { defaultSshPool, shellQuote, type SshPool } from "../transport/ssh";
import type { AgentTarget } from "./lifecycle";
import { DEFAULT_LEASE_DIR } from "./lease";

/** Seconds to wait for the watchdog to answer or start. */
const WATCHDOG_TIMEOUT_MS = 15_000;

/** The daemon's source, shipped next to this module (copied into dist by the build). */
export function watchdogScript(): string {
  return fs.readFileSync(path.join(__dirname, "watchdog.py"), "utf8");
}

/** The watchdog's control socket in a lease directory. */
export function watchdogSocketPath(leaseDir: string): string {
  return path.posix.join(leaseDir, "watchdog.sock");
}

/** A window's hold on the watchdog: while its channel is open, the watchdog will not thaw on disconnect. */
export interface WatchdogHold {
  readonly windowId: string;
  /** Tells the watchdog the window was released by its owner, then closes the channel. */
  disarm(): Promise<void>;
  /** Closes the channel without disarming: the watchdog thaws the window's guest if its lease still names it. */
  drop(): void;
}

/** Holds made by this process, by window id: a release in the same process disarms its hold. */
const holds = new Map<string, WatchdogHold>();

/** The hold this process has on `windowId`, if any. */
export function heldHere(windowId: string): WatchdogHold | undefined {
  return holds.get(windowId);
}

async function openControl(target: AgentTarget, pool: SshPool, signal?: AbortSignal): Promise<Duplex> {
  const sock = watchdogSocketPath(target.leaseDir ?? DEFAULT_LEASE_DIR);
  const channel = target.connection
    ? await pool.openAgentChannel(target.connection, sock, { signal, diagnose: false })
    : await openLocalChannel(sock, { signal });
  return channel.stream;
}

/** Sends one line and waits for one line back. */
function request(stream: Duplex, line: string, label: string, signal?: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffer = "";
    const cleanup = (): void => {
      clearTimeout(timer);
      stream.removeListener("data", onData);
      stream.removeListener("close", onClose);
      signal?.removeEventListener("abort", onAbort);
    };
    const onData = (chunk: Buffer): void => {
      buffer += chunk.toString("utf8");
      const nl = buffer.indexOf("\n");
      if (nl >= 0) {
        cleanup();
        resolve(buffer.slice(0, nl));
      }
    };
    const onClose = (): void => {
      cleanup();
      reject(new QuiesceError("WATCHDOG_UNAVAILABLE", `${label}: the watchdog closed its control channel`, { target: label }));
    };
    const onAbort = (): void => {
      cleanup();
      reject(abortError(signal as AbortSignal, { target: label }));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new QuiesceError("WATCHDOG_UNAVAILABLE", `${label}: the watchdog did not answer within ${WATCHDOG_TIMEOUT_MS} ms`, { target: label }));
    }, WATCHDOG_TIMEOUT_MS);
    timer.unref();
    stream.on("data", onData);
    stream.once("close", onClose);
    signal?.addEventListener("abort", onAbort, { once: true });
    stream.write(line + "\n");
  });
}

async function ping(target: AgentTarget, pool: SshPool, label: string, signal?: AbortSignal): Promise<boolean> {
  let stream: Duplex;
  try {
    stream = await openControl(target, pool, signal);
  } catch (err) {
    // No watchdog socket (or nothing listening on it) means "not running": the caller starts one.
    if (err instanceof QuiesceError && ["SOCKET_MISSING", "SOCKET_NOT_A_SOCKET", "SOCKET_UNREACHABLE"].includes(err.code)) return false;
    throw err;
  }
  try {
    return (await request(stream, "PING", label, signal)).startsWith("PONG");
  } finally {
    stream.destroy();
  }
}

const NO_PYTHON_EXIT = 3;

/** Starts the daemon on the host (SSH: one exec that uploads the script on stdin) and waits for READY. */
async function start(target: AgentTarget, pool: SshPool, label: string): Promise<void> {
  const dir = target.leaseDir ?? DEFAULT_LEASE_DIR;
  const script = watchdogScript();
  const missing = () =>
    new QuiesceError(
      "WATCHDOG_UNAVAILABLE",
      `${label}: the watchdog that thaws guests at the lease deadline needs python3 on the host, and there is none. ` +
        "Install python3 on the hypervisor host (apt-get install python3-minimal). Nothing was frozen.",
      { target: label },
    );
  if (target.connection) {
    const d = shellQuote(dir);
    const command =
      `command -v python3 >/dev/null 2>&1 || exit ${NO_PYTHON_EXIT}; umask 077; mkdir -p ${d} && ` +
      `cat > ${d}/watchdog.py.new && mv ${d}/watchdog.py.new ${d}/watchdog.py && exec python3 ${d}/watchdog.py ${d}`;
    const r = await pool.exec(target.connection, command, { stdin: script, timeoutMs: WATCHDOG_TIMEOUT_MS });
    if (r.code === NO_PYTHON_EXIT) throw missing();
    if (r.code !== 0 || !r.stdout.includes("READY")) {
      throw new QuiesceError(
        "WATCHDOG_UNAVAILABLE",
        `${label}: could not start the watchdog in ${dir} (exit ${r.code}): ${r.stderr.trim().split("\n").slice(-3).join(" | ")}`,
        { target: label },
      );
    }
    return;
  }
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, "watchdog.py");
  fs.writeFileSync(file, script, { mode: 0o600 });
  await new Promise<void>((resolve, reject) => {
    const child = spawn("python3", [file, dir], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let errText = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (errText += d.toString()));
    child.on("error", (err: NodeJS.ErrnoException) => reject(err.code === "ENOENT" ? missing() : err));
    // The daemon forks away after binding its socket; the first process exits once it printed READY.
    child.on("close", (code) => {
      if (code === 0 && out.includes("READY")) resolve();
      else reject(new QuiesceError("WATCHDOG_UNAVAILABLE", `${label}: the watchdog did not start (exit ${code}): ${errText.trim()}`, { target: label }));
    });
  });
}

/** Makes sure a watchdog serves the target's lease directory. Fails with WATCHDOG_UNAVAILABLE. */
export async function ensureWatchdog(target: AgentTarget, pool: SshPool = defaultSshPool, signal?: AbortSignal): Promise<void> {
  const label = target.connection
    ? `${target.connection.user ?? "root"}@${target.connection.host}:${target.leaseDir ?? DEFAULT_LEASE_DIR}`
    : `local:${target.leaseDir ?? DEFAULT_LEASE_DIR}`;
  if (await ping(target, pool, label, signal)) return;
  await start(target, pool, label);
  if (!(await ping(target, pool, label, signal))) {
    throw new QuiesceError("WATCHDOG_UNAVAILABLE", `${label}: the watchdog started but does not answer`, { target: label });
  }
}

/**
 * Arms thaw-on-disconnect for a window: opens a hold channel and keeps it open until {@link WatchdogHold.disarm}.
 * If this process dies or its SSH connection drops, the watchdog thaws the window's guest.
 */
export async function holdWindow(
  target: AgentTarget,
  windowId: string,
  leaseFile: string,
  pool: SshPool = defaultSshPool,
  signal?: AbortSignal,
): Promise<WatchdogHold> {
  const label = `watchdog for ${windowId}`;
  const stream = await openControl(target, pool, signal);
  const answer = await request(stream, `HOLD ${windowId} ${leaseFile}`, label, signal).catch((err: unknown) => {
    stream.destroy();
    throw err;
  });
  if (answer !== "OK") {
    stream.destroy();
    throw new QuiesceError("WATCHDOG_UNAVAILABLE", `${label}: the watchdog refused the hold: ${answer}`, { windowId });
  }
  // Swallowing nothing: a later error on the hold channel means the watchdog will act on the disconnect.
  stream.on("error", () => holds.delete(windowId));
  const hold: WatchdogHold = {
    windowId,
    disarm: async () => {
      holds.delete(windowId);
      try {
        if (!stream.destroyed) await request(stream, `DISARM ${windowId}`, label);
      } finally {
        stream.destroy();
      }
    },
    drop: () => {
      holds.delete(windowId);
      stream.destroy();
    },
  };
  holds.set(windowId, hold);
  return hold;
}
