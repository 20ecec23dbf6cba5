/**
 * Host commands (HostSnapshot's create/delete, `quiesce run`): a shell script run on the hypervisor host, over
 * SSH or on this machine, such that
 * - nothing secret is on a command line: the script and its environment travel on the command's stdin, and the
 *   command line is a fixed wrapper plus a random terminator (issue 14, item 4: `export TOKEN='…'` used to be
 *   visible in /proc/PID/cmdline on the host while the command ran);
 * - the command dies with its channel: the wrapper leads its own process group and keeps reading stdin; when
 *   stdin ends (the client was killed, its SSH connection dropped, it timed out, or it destroyed the channel),
 *   it SIGKILLs the whole process group at once (issue 14, item 5). KILL, not TERM with
 *   a grace period: the client's window is being thawed by then (within ~0.1 s of a disconnect), so a snapshot
 *   command allowed to finish would take an inconsistent snapshot that nobody records.
 *
 * Why a POSIX sh wrapper and not a pty: a pty would also SIGHUP the command when the channel closes, but it
 * merges stdout and stderr (and rewrites newlines), and HostSnapshot reports them apart.
 * Why the wrapper's own group: dash (Debian's /bin/sh) turns job control off without a terminal (`set -m`
 * fails), and a setsid(1) session for the script races with an end of stdin already waiting (see WRAPPER).
 * A command that calls setsid or daemonizes itself (systemd-run, at) still escapes, as from any group kill.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { QuiesceError, abortError } from "../errors";
import { defaultSshPool, shellQuote, type ExecResult, type SshConnectionConfig, type SshPool } from "./ssh";

/**
 * The wrapper, run as `sh -c WRAPPER quiesce-host-command TOKEN KILL_AFTER` as the leader of its own process
 * group: over SSH it is what sshd's session leader (the login shell) execs into, and locally it is spawned
 * detached. It reads the script from stdin up to the line TOKEN (a client gone before that runs nothing: exit
 * 125), runs it in the user's login shell (`$SHELL` when POSIX, else sh) with stdin from /dev/null, and
 * watches the rest of stdin. When stdin ends, the watcher SIGKILLs the whole group: the script and anything it
 * left behind. That happens when the client is gone, timed out or aborted, and also right after the script's
 * own exit (the client then ends stdin), so no background leftover outlives the command. With KILL_AFTER > 0
 * the group is also killed after that many seconds, on the host's own clock: a client cut off by a network
 * partition can end nothing, and its window is thawed by then. Each sh detail was checked with dash and bash:
 * - a background job's stdin is /dev/null without job control, even with `<&0`, hence the copy on fd 4;
 * - the script reaches its shell through a here-document on fd 3 read as /dev/fd/3 (a pipe, or an unlinked
 *   0600 temp file for bash < 5.1), never argv; its expansion `$s` is not scanned again, so the script's own
 *   `$`, quotes and backslashes are safe;
 * - the group exists before the script starts, so an end of stdin that is already waiting still kills it
 *   (with setsid(1) for the script, the watcher could kill an empty group first: 12 of 20 jobs survived);
 * - the watcher and the timer ignore HUP, INT and TERM, so a signal to the group cannot leave the script alone;
 * - they kill `-$$`, the wrapper's own group, never `0`: under an SSH server that does not make each command a
 *   session of its own (OpenSSH does), a kill of `0` would take the server's process with it;
 * - the script's first line closes fd 3, so the commands it runs do not inherit the here-document (LVM warns
 *   about every leaked descriptor).
 */
const WRAPPER = [
  't=$1; s=',
  'while IFS= read -r l; do [ "$l" = "$t" ] && break; s="$s$l',
  '"; done',
  '[ "$l" = "$t" ] || exit 125',
  'case "${SHELL##*/}" in bash|dash|ksh|mksh|ash|sh) j=$SHELL ;; *) j=sh ;; esac',
  '[ -x "$j" ] || j=sh',
  "exec 4<&0",
  '( trap "" HUP INT TERM; while IFS= read -r l; do :; done; kill -KILL -$$ ) <&4 4<&- >/dev/null 2>&1 &',
  'if [ "${2:-0}" -gt 0 ]; then ( trap "" HUP INT TERM; sleep "$2"; kill -KILL -$$ ) </dev/null >/dev/null 2>&1 & fi',
  '"$j" /dev/fd/3 3<<QUIESCE_EOF </dev/null 4<&- &',
  "$s",
  "QUIESCE_EOF",
  'wait "$!"',
].join("\n");

/** A command to run on the host. */
export interface HostCommand {
  /** Shell script (POSIX sh), run as is: it is the user's own command. Quote user data with {@link shellQuote}. */
  readonly script: string;
  /** Environment variables for the script. Names must be shell identifiers; values travel on stdin, quoted. */
  readonly environment?: Readonly<Record<string, string>>;
  /** Milliseconds before the command is killed and the call fails with SSH_COMMAND_TIMEOUT. Default 1 hour. */
  readonly timeoutMs?: number;
  /** Keep at most this many bytes of each output stream. Default 65536. */
  readonly maxOutputBytes?: number;
  /** Aborting kills the command and fails the call with ABORTED. */
  readonly signal?: AbortSignal;
  /** What the command is for, in a few words; names it in errors. Default "host command". */
  readonly purpose?: string;
  /**
   * Seconds after which the host kills the command by itself, whatever happens to the client (a network
   * partition ends no channel); a value already past kills it after 1 s. Default: no limit on the host (the
   * client's timeout still applies).
   */
  readonly killAfterSeconds?: number;
}

/** Default of {@link HostCommand.timeoutMs}: 1 hour. */
export const DEFAULT_HOST_COMMAND_TIMEOUT_MS = 3_600_000;

/** The text sent on the wrapper's stdin: the exports, the script, then the terminator line. */
export function hostCommandPayload(command: HostCommand, token: string): string {
  const exports = Object.entries(command.environment ?? {}).map(([name, value]) => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
      throw new QuiesceError("INVALID_INPUT", `environment variable name ${JSON.stringify(name)} is not a shell identifier`, { field: `environment.${name}` });
    }
    return `export ${name}=${shellQuote(value)}`;
  });
  return ["exec 3<&-", ...exports, command.script, token, ""].join("\n");
}

/** The fixed command line that runs the wrapper (no user data in it: the token and a number). */
export function hostCommandLine(token: string, killAfterSeconds?: number): string {
  return `exec sh -c ${shellQuote(WRAPPER)} quiesce-host-command ${token} ${wholeSeconds(killAfterSeconds)}`;
}

/** Undefined: no limit on the host (0 to the wrapper). A limit already past still kills, after 1 s. */
function wholeSeconds(s: number | undefined): number {
  if (s === undefined || Number.isNaN(s)) return 0;
  return Math.max(1, Math.ceil(s));
}

/**
 * Runs `command` on the host: over SSH when `connection` is given, else on this machine. Resolves with its exit
 * code (null when it died by a signal) and output; the command never outlives the call's channel.
 * @throws QuiesceError SSH_COMMAND_TIMEOUT, ABORTED, INVALID_INPUT, and transport errors.
 */
export async function runHostCommand(
  connection: SshConnectionConfig | undefined,
  command: HostCommand,
  pool: SshPool = defaultSshPool,
): Promise<ExecResult> {
  const token = `QUIESCE-END-${randomBytes(16).toString("hex")}`;
  const payload = hostCommandPayload(command, token);
  const timeoutMs = command.timeoutMs ?? DEFAULT_HOST_COMMAND_TIMEOUT_MS;
  const maxOutputBytes = command.maxOutputBytes ?? 65_536;
  const purpose = command.purpose ?? "host command";
  if (connection) {
    return pool.exec(connection, hostCommandLine(token, command.killAfterSeconds), {
      stdin: payload,
      keepStdinOpen: true,
      timeoutMs,
      maxOutputBytes,
      signal: command.signal,
      purpose,
    });
  }
  return runLocally(token, payload, { timeoutMs, maxOutputBytes, purpose, signal: command.signal, killAfterSeconds: wholeSeconds(command.killAfterSeconds) });
}

function runLocally(
  token: string,
  payload: string,
  o: { timeoutMs: number; maxOutputBytes: number; purpose: string; signal?: AbortSignal; killAfterSeconds: number },
): Promise<ExecResult> {
  const target = "local";
  if (o.signal?.aborted) return Promise.reject(abortError(o.signal, { target }));
  return new Promise<ExecResult>((resolve, reject) => {
    // Same wrapper as over SSH: if this process dies, the pipe to the wrapper's stdin closes and the job is killed.
    // Detached: the wrapper leads a process group of its own, as under sshd, which a signal to ours never reaches.
    const child = spawn("sh", ["-c", WRAPPER, "quiesce-host-command", token, String(o.killAfterSeconds)], { stdio: ["pipe", "pipe", "pipe"], detached: true });
    let stdout = "";
    let stderr = "";
    let settled = false;
    const finish = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      o.signal?.removeEventListener("abort", onAbort);
      fn();
    };
    // Ending stdin is what kills the job (the wrapper's watcher sees EOF).
    const stop = (): void => {
      child.stdin.destroy();
    };
    const timer = setTimeout(() => {
      stop();
      finish(() =>
        reject(new QuiesceError("SSH_COMMAND_TIMEOUT", `${target}: ${o.purpose} did not finish within ${o.timeoutMs} ms; it was killed.`, { target, timeoutMs: o.timeoutMs })),
      );
    }, o.timeoutMs);
    timer.unref();
    const onAbort = (): void => {
      stop();
      finish(() => reject(abortError(o.signal as AbortSignal, { target })));
    };
    o.signal?.addEventListener("abort", onAbort, { once: true });
    child.stdout.on("data", (d: Buffer) => {
      if (stdout.length < o.maxOutputBytes) stdout += d.toString("utf8").slice(0, o.maxOutputBytes - stdout.length);
    });
    child.stderr.on("data", (d: Buffer) => {
      if (stderr.length < o.maxOutputBytes) stderr += d.toString("utf8").slice(0, o.maxOutputBytes - stderr.length);
    });
    // EPIPE when the wrapper exits before reading everything (it exits 125 then): the exit code says so.
    child.stdin.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code !== "EPIPE") finish(() => reject(new QuiesceError("HOST_COMMAND_FAILED", `${target}: writing the ${o.purpose} to sh failed: ${err.message}`, { target }, { cause: err })));
    });
    child.on("error", (err) => finish(() => reject(new QuiesceError("HOST_COMMAND_FAILED", `${target}: cannot start sh for the ${o.purpose}: ${err.message}`, { target }, { cause: err }))));
    child.on("close", (code) => finish(() => resolve({ code, stdout, stderr })));
    child.stdin.write(payload);
    // stdin stays open until the command ends: its end is the "client gone" signal.
    child.on("exit", () => child.stdin.destroy());
  });
}
