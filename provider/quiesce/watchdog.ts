/**
 * The client side of the watchdog (DESIGN.md, "The lease and the watchdog"; the daemon is watchdog.py, or its
 * perl port watchdog.pl on hosts without python3).
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
import { QuiesceError, abortError, isQuiesceError } from "../errors";
import { openLocalChannel } from "../transport/local";
import { defaultSshPool, shellQuote, type SshPool } from "../transport/ssh";
import type { AgentTarget } from "./lifecycle";
import { DEFAULT_LEASE_DIR } from "./lease";

/**
 * The daemon protocol version this client speaks: what the daemon answers to PING (`PONG <version>`), in both
 * ports (watchdog.py, watchdog.pl; a unit test keeps the three in step).
 */
export const WATCHDOG_PROTOCOL_VERSION = "2";

/** Milliseconds to wait for the watchdog to answer a request. */
const WATCHDOG_TIMEOUT_MS = 15_000;
/**
 * Milliseconds for the one exec that uploads and starts the daemon. Generous: sshd runs it through the login
 * shell, whose startup files can be slow on a busy host (measured here: 14 s with 20 concurrent logins, each
 * running `pyenv init`), and it happens once per host until the daemon idles out.
 */
const WATCHDOG_START_TIMEOUT_MS = 45_000;

/**
 * Milliseconds between a hold's heartbeats. The watchdog treats a holder silent for 15 s as gone (its machine
 * crashed or hung: no connection is closed then, so sshd would keep the channel open until the lease deadline).
 */
export const HOLD_BEAT_MS = 2_000;

/** The interpreters the daemon can run under, in order of preference; each has its own port of the daemon. */
export type WatchdogInterpreter = "python3" | "perl";

const WATCHDOG_INTERPRETERS: readonly WatchdogInterpreter[] = ["python3", "perl"];

/** The daemon's file name for each interpreter. */
const WATCHDOG_FILES: Readonly<Record<WatchdogInterpreter, string>> = { python3: "watchdog.py", perl: "watchdog.pl" };

/** The daemon's source for `interpreter`, shipped next to this module (copied into dist by the build). */
export function watchdogScript(interpreter: WatchdogInterpreter = "python3"): string {
  return fs.readFileSync(path.join(__dirname, WATCHDOG_FILES[interpreter]), "utf8");
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

/**
 * Drops every hold of this process (the watchdog then thaws each window whose lease still names it).
 * For a process about to exit, so that a held socket cannot keep it alive.
 */
export function dropAllHolds(): void {
  for (const hold of [...holds.values()]) hold.drop();
}

/** The hold this process has on `windowId`, if any. */
export function heldHere(windowId: string): WatchdogHold | undefined {
  return holds.get(windowId);
}

/**
 * Opens the watchdog's control socket. `busyTimeoutMs` bounds retries while its accept queue is full; over SSH
 * a missing socket looks the same as a busy one, so a mere "is it running?" check keeps that bound short.
 */
async function openControl(target: AgentTarget, pool: SshPool, signal?: AbortSignal, busyTimeoutMs = WATCHDOG_TIMEOUT_MS): Promise<Duplex> {
  const sock = watchdogSocketPath(target.leaseDir ?? DEFAULT_LEASE_DIR);
  const channel = target.connection
    ? await pool.openAgentChannel(target.connection, sock, { signal, diagnose: false, busyTimeoutMs })
    : await openLocalChannel(sock, { signal, busyTimeoutMs });
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
    stream = await openControl(target, pool, signal, 1_000);
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

/** Exit code of the SSH start command when the host has none of the interpreters it may use. */
const NO_PYTHON_EXIT = 3;

/**
 * The environment variable that forces the watchdog's interpreter: `QUIESCE_WATCHDOG_INTERPRETER=python3` or
 * `QUIESCE_WATCHDOG_INTERPRETER=perl`. Unset or empty, the watchdog runs under python3 when the host has it,
 * else under perl. It applies to the host the watchdog runs on (over SSH as locally); forced, the start fails
 * with WATCHDOG_UNAVAILABLE when that interpreter is missing, without falling back to the other. Tests use it
 * to run the same suite against both ports of the daemon.
 */
export const WATCHDOG_INTERPRETER_ENV = "QUIESCE_WATCHDOG_INTERPRETER";

/** The interpreters to try, in order: both, or only the one forced with {@link WATCHDOG_INTERPRETER_ENV}. */
function interpreterChoice(label: string): readonly WatchdogInterpreter[] {
  const forced = process.env[WATCHDOG_INTERPRETER_ENV];
  if (forced === undefined || forced === "") return WATCHDOG_INTERPRETERS;
  const match = WATCHDOG_INTERPRETERS.find((i) => i === forced);
  if (!match) {
    throw new QuiesceError(
      "INVALID_INPUT",
      `${label}: ${WATCHDOG_INTERPRETER_ENV}=${JSON.stringify(forced)} is not one of ${WATCHDOG_INTERPRETERS.join(", ")}`,
      { target: label },
    );
  }
  return [match];
}

/** A here-document line that ends the script `text`; the script must not contain it as a line. */
function hereDoc(text: string, delimiter: string): string {
  if (text.split("\n").includes(delimiter)) throw new Error(`the watchdog script contains its here-document delimiter ${delimiter}`);
  return `${text.endsWith("\n") ? text : text + "\n"}${delimiter}\n`;
}

/**
 * The POSIX sh program, fed on stdin to `sh -s` in the one exec that starts the daemon on an SSH host: it picks
 * the first of `interpreters` the host has (exit {@link NO_PYTHON_EXIT} when none), writes that port of the
 * daemon into the lease directory from the here-document carrying it, and execs it (which prints READY).
 */
function sshStartProgram(dir: string, interpreters: readonly WatchdogInterpreter[]): string {
  const d = shellQuote(dir);
  const lines = ["umask 077"];
  for (const [n, interpreter] of interpreters.entries()) {
    const file = WATCHDOG_FILES[interpreter];
    const target = shellQuote(path.posix.join(dir, file));
    // $$ makes the temp name unique per starter: concurrent starts must not clobber each other's copy.
    const tmp = `${shellQuote(path.posix.join(dir, `${file}.new.`))}$$`;
    const delimiter = `__QUIESCE_WATCHDOG_${interpreter.toUpperCase()}_EOF__`;
    lines.push(
      `${n === 0 ? "if" : "elif"} command -v ${interpreter} >/dev/null 2>&1; then`,
      `mkdir -p ${d} || exit 1`,
      `cat > ${tmp} <<'${delimiter}' && mv ${tmp} ${target} || exit 1`,
      hereDoc(watchdogScript(interpreter), delimiter).replace(/\n$/, ""),
      `exec ${interpreter} ${target} ${d}`,
    );
  }
  lines.push("fi", `exit ${NO_PYTHON_EXIT}`);
  return lines.join("\n") + "\n";
}

/** Starts the local daemon under `interpreter`; resolves false when the interpreter is not installed. */
function startLocal(dir: string, interpreter: WatchdogInterpreter, label: string): Promise<boolean> {
  const file = path.join(dir, WATCHDOG_FILES[interpreter]);
  fs.writeFileSync(file, watchdogScript(interpreter), { mode: 0o600 });
  return new Promise<boolean>((resolve, reject) => {
    const child = spawn(interpreter, [file, dir], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let errText = "";
    let spawnFailed = false;
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (errText += d.toString()));
    child.on("error", (err: NodeJS.ErrnoException) => {
      spawnFailed = true;
      if (err.code === "ENOENT") resolve(false);
      else reject(err);
    });
    // The daemon forks away after binding its socket; the first process exits once it printed READY.
    child.on("close", (code) => {
      if (spawnFailed) return;
      if (code === 0 && out.includes("READY")) resolve(true);
      else {
        reject(
          new QuiesceError("WATCHDOG_UNAVAILABLE", `${label}: the watchdog (${interpreter}) did not start (exit ${code}): ${errText.trim()}`, {
            target: label,
          }),
        );
      }
    });
  });
}

/**
 * Starts the daemon on the host and waits for READY. It runs under python3 when the host has it, else under
 * perl (or only under the interpreter forced with {@link WATCHDOG_INTERPRETER_ENV}). Over SSH this is one exec
 * that tests for the interpreter and uploads the matching script on stdin.
 */
async function start(target: AgentTarget, pool: SshPool, label: string): Promise<void> {
  const dir = target.leaseDir ?? DEFAULT_LEASE_DIR;
  const interpreters = interpreterChoice(label);
  const missing = () =>
    new QuiesceError(
      "WATCHDOG_UNAVAILABLE",
      interpreters.length > 1
        ? `${label}: the watchdog that thaws guests at the lease deadline needs python3 or perl on the host, and there is neither. ` +
            "Install one on the hypervisor host (apt-get install python3-minimal, or perl-base). Nothing was frozen."
        : `${label}: the watchdog that thaws guests at the lease deadline needs ${interpreters[0]} on the host ` +
            `(${WATCHDOG_INTERPRETER_ENV}=${interpreters[0]}), and there is none. Nothing was frozen.`,
      { target: label },
    );
  if (target.connection) {
    const r = await pool.exec(target.connection, "sh -s", {
      stdin: sshStartProgram(dir, interpreters),
      timeoutMs: WATCHDOG_START_TIMEOUT_MS,
      purpose: "starting the watchdog",
    });
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
  for (const interpreter of interpreters) {
    if (await startLocal(dir, interpreter, label)) return;
  }
  throw missing();
}

/** Makes sure a watchdog serves the target's lease directory. Fails with WATCHDOG_UNAVAILABLE. */
export async function ensureWatchdog(target: AgentTarget, pool: SshPool = defaultSshPool, signal?: AbortSignal): Promise<void> {
  const label = target.connection
    ? `${target.connection.user ?? "root"}@${target.connection.host}:${target.leaseDir ?? DEFAULT_LEASE_DIR}`
    : `local:${target.leaseDir ?? DEFAULT_LEASE_DIR}`;
  if (await ping(target, pool, label, signal)) return;
  try {
    await start(target, pool, label);
  } catch (err) {
    // A slow start may still have succeeded, or another process's start did: what counts is an answer.
    if (await ping(target, pool, label, signal)) return;
    if (isQuiesceError(err, "WATCHDOG_UNAVAILABLE", "ABORTED")) throw err;
    throw new QuiesceError(
      "WATCHDOG_UNAVAILABLE",
      `${label}: could not start the watchdog that ends freezes at the lease deadline: ${(err as Error).message} Nothing was frozen.`,
      { target: label, ...(isQuiesceError(err) ? { causeCode: err.code } : {}) },
      { cause: err },
    );
  }
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
  // The heartbeat: a hung or crashed machine closes nothing, so silence is how the watchdog learns of it.
  // Unref'd: a hold must not be what keeps this process alive.
  const beat = setInterval(() => {
    if (stream.writable) stream.write("BEAT\n");
  }, HOLD_BEAT_MS);
  beat.unref();
  // Swallowing nothing: a later error on the hold channel means the watchdog will act on the disconnect.
  stream.on("error", () => holds.delete(windowId));
  stream.once("close", () => clearInterval(beat));
  const hold: WatchdogHold = {
    windowId,
    disarm: async () => {
      clearInterval(beat);
      holds.delete(windowId);
      try {
        if (!stream.destroyed) await request(stream, `DISARM ${windowId}`, label);
      } finally {
        stream.destroy();
      }
    },
    drop: () => {
      clearInterval(beat);
      holds.delete(windowId);
      stream.destroy();
    },
  };
  holds.set(windowId, hold);
  return hold;
}
