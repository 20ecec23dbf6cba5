/**
 * Child processes of the lab, and bounded waits.
 *
 * Every process the lab starts goes through {@link spawnTracked}: it is stopped by its PID in `stop()`,
 * killed by an exit hook if the test process ends first, and, through `setpriv --pdeathsig`, killed by
 * the kernel if the test process is SIGKILLed (a stray TCG guest would hold a whole core).
 */
import { ChildProcess, spawn, SpawnOptions } from "node:child_process";
import * as fs from "node:fs";
import { constants } from "node:os";

const osSignals = constants.signals;

/** A failure of the lab itself (build, boot, sshd), not of the code under test. */
export class LabError extends Error {
  constructor(
    message: string,
    /** Stable code: what failed. */
    readonly code:
      | "LAB_BUILD_FAILED"
      | "LAB_BOOT_FAILED"
      | "LAB_AGENT_FAILED"
      | "LAB_SSHD_FAILED"
      | "LAB_TIMEOUT"
      | "LAB_ABORTED"
      | "LAB_PROCESS_FAILED"
      | "LAB_QMP_FAILED",
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "LabError";
  }
}

const tracked = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Kills what is still running when the test process exits without stopping the lab. */
function exitHook(): void {
  for (const child of tracked) {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) signalIfAlive(child.pid, "SIGKILL");
  }
}

function track(child: ChildProcess): void {
  tracked.add(child);
  if (!exitHookInstalled) {
    process.on("exit", exitHook);
    exitHookInstalled = true;
  }
  child.once("exit", () => {
    tracked.delete(child);
    if (tracked.size === 0 && exitHookInstalled) {
      process.removeListener("exit", exitHook);
      exitHookInstalled = false;
    }
  });
}

const setprivPath = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => fs.existsSync(p));

/**
 * Spawns a process the lab owns. It is started through `setpriv --pdeathsig SIGKILL` (util-linux), which
 * execs the command in place, so the PID is the command's own.
 */
export function spawnTracked(command: string, args: readonly string[], options: SpawnOptions): ChildProcess {
  const child = setprivPath
    ? spawn(setprivPath, ["--pdeathsig", "SIGKILL", "--", command, ...args], options)
    : spawn(command, args, options);
  if (child.pid === undefined) {
    // spawn reports ENOENT asynchronously through 'error'; the pid is already undefined here.
    child.once("error", () => undefined);
    throw new LabError(`cannot start ${command}`, "LAB_PROCESS_FAILED");
  }
  track(child);
  return child;
}

/** Sends a signal to a PID the lab started (or that descends from one); a PID already gone is fine. */
export function signalIfAlive(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ESRCH") throw error;
  }
}

/** True while the child has neither exited nor been killed. */
export function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** Resolves when the child has exited; rejects after `timeoutMs`. */
export function waitForExit(child: ChildProcess, timeoutMs: number): Promise<void> {
  if (!isRunning(child)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.removeListener("exit", onExit);
      reject(new LabError(`pid ${child.pid} did not exit within ${timeoutMs} ms`, "LAB_TIMEOUT"));
    }, timeoutMs);
    timer.unref();
    function onExit(): void {
      clearTimeout(timer);
      resolve();
    }
    child.once("exit", onExit);
  });
}

/**
 * Stops a child by its PID: SIGTERM (and SIGCONT, in case a test SIGSTOPped it), then SIGKILL if it has
 * not exited after `graceMs`.
 */
export async function stopProcess(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (!isRunning(child)) return;
  child.kill("SIGTERM");
  child.kill("SIGCONT");
  try {
    await waitForExit(child, graceMs);
    return;
  } catch (error) {
    if (!(error instanceof LabError && error.code === "LAB_TIMEOUT")) throw error;
  }
  child.kill("SIGKILL");
  await waitForExit(child, 5_000);
}

/** Options of {@link run} and {@link runCommand}. */
export interface RunOptions {
  timeoutMs: number;
  signal?: AbortSignal;
  input?: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

/** Runs a command to completion (killed after `timeoutMs`) and returns its exit code and output. */
export async function runCommand(
  command: string,
  args: readonly string[],
  options: RunOptions,
): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const child = spawnTracked(command, args, {
    stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    cwd: options.cwd,
    env: options.env ?? process.env,
  });
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout?.on("data", (chunk: Buffer) => stdout.push(chunk));
  child.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk));
  const exited = new Promise<number>((resolve, reject) => {
    child.stdin?.on("error", (error: NodeJS.ErrnoException) => {
      // EPIPE: the command exited without reading all its input; its exit code tells the outcome.
      if (error.code !== "EPIPE") reject(error);
    });
    child.stdin?.end(options.input);
    child.once("error", reject);
    // A child killed by a signal reports it the shell's way, 128 + signal number.
    child.once("close", (code, signal) => resolve(code ?? 128 + (signal ? osSignals[signal] : 0)));
  });
  try {
    const exitCode = await withDeadline(exited, {
      timeoutMs: options.timeoutMs,
      signal: options.signal,
      what: `${command} ${args.join(" ")}`,
    });
    return { exitCode, stdout: Buffer.concat(stdout).toString("utf8"), stderr: Buffer.concat(stderr).toString("utf8") };
  } finally {
    await stopProcess(child, 1_000);
  }
}

/** Runs a command to completion and returns its stdout; rejects with its stderr tail on a non-zero exit. */
export async function run(command: string, args: readonly string[], options: RunOptions): Promise<string> {
  const result = await runCommand(command, args, options);
  if (result.exitCode !== 0) {
    throw new LabError(
      `${command} ${args.join(" ")} exited with ${result.exitCode}: ${tail(result.stderr, 20)}`,
      "LAB_PROCESS_FAILED",
    );
  }
  return result.stdout;
}

/** The last `lines` lines of a text, for error messages. */
export function tail(text: string, lines: number): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/**
 * Waits for `promise`, but rejects with a {@link LabError} after `timeoutMs` or when `signal` aborts.
 * The timer is cleared either way.
 */
export function withDeadline<T>(
  promise: Promise<T>,
  options: { timeoutMs: number; signal?: AbortSignal; what: string },
): Promise<T> {
  const { timeoutMs, signal, what } = options;
  if (signal?.aborted) return Promise.reject(new LabError(`${what}: aborted`, "LAB_ABORTED", { cause: signal.reason }));
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      reject(new LabError(`${what}: timed out after ${timeoutMs} ms`, "LAB_TIMEOUT"));
    }, timeoutMs);
    timer.unref();
    const onAbort = (): void => {
      cleanup();
      reject(new LabError(`${what}: aborted`, "LAB_ABORTED", { cause: signal?.reason }));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    function cleanup(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
    promise.then(
      (value) => {
        cleanup();
        resolve(value);
      },
      (error: unknown) => {
        cleanup();
        reject(error);
      },
    );
  });
}

/** Resolves after `ms` with an unref'd timer; for bounded poll loops only, never for readiness. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
