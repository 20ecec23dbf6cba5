/**
 * The client side of the host daemon (DESIGN.md, "The host daemon"; the daemon itself is ./daemon.py).
 *
 * One daemon per lease directory per host owns every change pulumi-quiesce makes to a guest's freeze state:
 * claims keyed by the agent socket's identity, the agent connection of every held window, deadlines,
 * thaw-on-disconnect, and how each window ended. This module speaks its protocol (version
 * {@link DAEMON_PROTOCOL_VERSION}: JSON lines, requests with ids, see daemon.py's header):
 * - one control channel per pooled SSH connection (or local socket) and lease directory carries every request of
 *   this process, and is the hold of every window this process claimed: if it closes, the daemon ends them;
 * - a relay channel per agent session, a raw byte pipe onto the agent connection the daemon holds, over which
 *   the typed QGA client (../agent) runs unchanged.
 *
 * No maintained Node library speaks this protocol: it is ours, and small.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import type { Duplex } from "node:stream";
import { QuiesceError, abortError, isQuiesceError, type QuiesceErrorCode } from "../errors";
import { openLocalChannel } from "../transport/local";
import { defaultSshPool, shellQuote, sshLabel, type SshConnectionConfig, type SshPool } from "../transport/ssh";

/** The protocol version this client speaks: what the daemon answers to `hello`. */
export const DAEMON_PROTOCOL_VERSION = "3";

/** Default lease directory on the host (tmpfs on most systems: a host reboot ends every VM and record). */
export const DEFAULT_LEASE_DIR = "/run/pulumi-quiesce";

/**
 * Milliseconds between heartbeats on a control channel that holds windows. The daemon treats a holder silent for
 * 15 s as gone (its machine crashed or hung: no connection is closed then).
 */
export const HOLD_BEAT_MS = 2_000;

/** Milliseconds to wait for an ordinary reply from the daemon. */
const REQUEST_TIMEOUT_MS = 15_000;

/**
 * Milliseconds for the one exec that starts the daemon. Generous: sshd runs it through the login shell, whose
 * startup files can be slow on a busy host (measured here: 14 s with 20 concurrent logins running `pyenv init`).
 */
const START_TIMEOUT_MS = 45_000;

/** Exit code of the start command when the host has no python3. */
const NO_PYTHON_EXIT = 3;
/** Exit code of the daemon when the lease directory fails its trust checks (it prints `REFUSED <why>`). */
const REFUSED_EXIT = 4;

/** The interpreters tried, in order: python3 ≥ 3.6, or RHEL 8's platform-python (no python3 by default there). */
const INTERPRETERS = ["python3", "/usr/libexec/platform-python"] as const;

/** Where a daemon is: the host (SSH connection, or this machine) and its lease directory. */
export interface DaemonAddress {
  /** SSH connection to the host; omitted: this machine. */
  readonly connection?: SshConnectionConfig;
  /** Lease directory on the host. Default {@link DEFAULT_LEASE_DIR}. */
  readonly leaseDir?: string;
}

/** A claim as the daemon keeps it. Times are ISO 8601 UTC on the host's clock. */
export interface HostRecord {
  readonly windowId: string;
  /** Who made it: `pulumi:project/stack/resource`, `cli:user@host`, or a caller-chosen label. */
  readonly owner: string;
  /** The agent socket path the claim was made through (as given); null for a libvirt domain. */
  readonly socketPath: string | null;
  /** The libvirt domain claimed (by UUID), with the URI and libvirt's socket; null for an agent socket. */
  readonly libvirt?: { readonly uri: string; readonly uuid: string; readonly name: string; readonly socket: string } | null;
  /** The socket's resolved path on the host: with dev and ino, the guest's identity. */
  readonly real: string;
  readonly dev: number;
  readonly ino: number;
  /** Guest mount points frozen (empty when everything was frozen). */
  readonly selection: readonly string[];
  readonly claimedAt: string;
  /** When the freeze was issued (the window armed); null while the claim is still being made. */
  readonly frozenAt: string | null;
  /** When the lease was armed, seconds since the epoch on the host's clock; null before. */
  readonly armedAt: number | null;
  /** The lease armed, in milliseconds; null before. */
  readonly leaseMs: number | null;
  /** The deadline, seconds since the epoch on the host's clock. */
  readonly deadline: number;
  /** Milliseconds left before the deadline, when the daemon answered. */
  readonly remainingMs: number;
  /** The daemon is ending the window (deadline, disconnect or release in progress, or a thaw being retried). */
  readonly ending: boolean;
  /** A live process holds it (thawOnDisconnect). */
  readonly held: boolean;
}

/** How a window ended, as the daemon recorded it. */
export interface EndedRecord {
  readonly windowId: string;
  /**
   * `released`: by its owner; `expired`: thawed at the deadline; `disconnected`: thawed because the process
   * holding it went away or fell silent; `vm-gone`: its agent socket vanished (the VM stopped, which ended the
   * freeze); `forced`: `quiesce thaw --force`.
   */
  readonly how: "released" | "expired" | "disconnected" | "vm-gone" | "forced";
  /** When (ISO 8601 UTC, the host's clock). */
  readonly at: string;
  readonly owner?: string;
  readonly frozenAt?: string | null;
  readonly heldMs?: number | null;
  readonly thawedCount?: number | null;
  readonly status?: string | null;
}

/** The agent's error reply, as qemu-ga sent it. */
export interface AgentErrorReply {
  readonly class: string;
  readonly desc: string;
}

/** What the daemon's thaw did. */
export interface DaemonThaw {
  /** The count the thaw returned; null when it replied an error, or was not needed. */
  readonly count: number | null;
  /** The error reply of a thaw that still left the guest thawed (a failing thaw hook, VSS that let writes resume). */
  readonly error: AgentErrorReply | null;
  /** The status after the thaw: `thawed`, or `gone` for a vanished socket. */
  readonly status: string | null;
  /** The status before the thaw (release only). */
  readonly before?: string | null;
  /** When the thaw's reply came, seconds since the epoch on the host's clock. */
  readonly at?: number;
}

/** The reply to `status`. */
export interface DaemonStatus {
  /** `frozen` / `thawed`; `gone` when the socket no longer exists; null when not asked (no socket, no window). */
  readonly agentStatus: "frozen" | "thawed" | "gone" | null;
  /** The record of whichever window holds the guest (or of the window asked about), if any. */
  readonly record: HostRecord | null;
  /** How the window asked about ended, if it did. */
  readonly ended: EndedRecord | null;
}

/** The reply to `release`. */
export interface DaemonRelease {
  /** `not-held`: no record of the window (see `ended`); `withdrawn`: claim removed untouched; else how it ended. */
  readonly outcome: "not-held" | "withdrawn" | EndedRecord["how"];
  readonly record?: HostRecord;
  readonly thaw?: DaemonThaw | null;
  readonly ended?: EndedRecord | null;
}

interface Pending {
  resolve(reply: Record<string, unknown>): void;
  reject(err: unknown): void;
  timer: NodeJS.Timeout;
}

/** Requests that change nothing, so may be sent again. */
const READ_ONLY_OPS = new Set(["hello", "status", "list"]);

/** Error codes the daemon may send that are also the package's own. */
const PASS_THROUGH = new Set<QuiesceErrorCode>([
  "SOCKET_MISSING",
  "SOCKET_NO_ACCESS",
  "SOCKET_NOT_A_SOCKET",
  "SOCKET_UNREACHABLE",
  "INVALID_INPUT",
  "NOT_HELD",
  "AGENT_TIMEOUT",
  "AGENT_COMMAND_FAILED",
  "LIBVIRT_UNAVAILABLE",
  "LIBVIRT_AUTH",
  "LIBVIRT_ERROR",
  "DOMAIN_NOT_RUNNING",
]);

/** A daemon reply that failed. Carries the daemon's own code (`HELD`, `THAW_FAILED`...) in `fields.daemonCode`. */
function replyError(label: string, op: string, reply: Record<string, unknown>): QuiesceError {
  const daemonCode = String(reply.code ?? "DAEMON_ERROR");
  const code: QuiesceErrorCode = PASS_THROUGH.has(daemonCode as QuiesceErrorCode)
    ? (daemonCode as QuiesceErrorCode)
    : daemonCode === "AGENT_BUSY"
      ? "AGENT_TIMEOUT"
      : daemonCode === "THAW_FAILED"
        ? "FREEZE_MISMATCH"
        : "WATCHDOG_UNAVAILABLE";
  const { id: _id, ok: _ok, code: _code, message, ...rest } = reply;
  return new QuiesceError(code, `${label}: ${String(message ?? daemonCode)}`, { ...rest, daemonCode, op, target: label });
}

/**
 * This process's link to one daemon. Get it with {@link daemonFor}; every request of the process to that host and
 * lease directory goes through it.
 */
export class DaemonClient {
  /** Human label, e.g. `root@hv1:22:/run/pulumi-quiesce`. */
  readonly label: string;
  readonly dir: string;
  private channel: Duplex | undefined;
  private opening: Promise<Duplex> | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  /** Windows this process holds through the control channel. */
  private readonly holds = new Set<string>();
  /** Windows whose hold was lost (the daemon ended them while this process was away): why. */
  private readonly lost = new Map<string, string>();
  private rearming: Promise<void> | undefined;
  private beat: NodeJS.Timeout | undefined;

  constructor(
    readonly address: DaemonAddress,
    private readonly pool: SshPool,
  ) {
    this.dir = address.leaseDir ?? DEFAULT_LEASE_DIR;
    this.label = address.connection ? `${sshLabel(address.connection)}:${this.dir}` : `local:${this.dir}`;
  }

  /** The daemon's control socket. */
  get socketPath(): string {
    return path.posix.join(this.dir, "daemon.sock");
  }

  /** Why this process's hold on `windowId` was lost, if it was (the daemon ended the window meanwhile). */
  lostHold(windowId: string): string | undefined {
    return this.lost.get(windowId);
  }

  /**
   * Sends one request and waits for its reply. Starts the daemon if none serves the directory.
   * @throws QuiesceError for a failed reply (the daemon's code in `fields.daemonCode`), WATCHDOG_UNAVAILABLE when
   *   the daemon cannot be reached or started, LEASE_DIR_REFUSED, ABORTED.
   */
  async request(
    op: string,
    body: Record<string, unknown> = {},
    options: {
      signal?: AbortSignal;
      timeoutMs?: number;
      /**
       * The request makes this channel the hold of that window (claim, attach): it is marked held before the
       * request is sent, so the channel stays open, and forgotten again if the daemon refuses.
       */
      holds?: string;
    } = {},
  ): Promise<Record<string, unknown>> {
    try {
      return await this.requestOnce(op, body, options);
    } catch (err) {
      // A read-only request that met a closing channel (the daemon restarted, a holder re-arming) is asked again,
      // once, on the next channel.
      if (!READ_ONLY_OPS.has(op) || !isQuiesceError(err, "WATCHDOG_UNAVAILABLE") || err.fields.daemonCode !== undefined) throw err;
      return this.requestOnce(op, body, options);
    }
  }

  private async requestOnce(
    op: string,
    body: Record<string, unknown>,
    options: { signal?: AbortSignal; timeoutMs?: number; holds?: string },
  ): Promise<Record<string, unknown>> {
    if (this.rearming) await this.rearming;
    if (options.holds) this.holding(options.holds);
    let channel: Duplex;
    try {
      channel = await this.control(options.signal);
    } catch (err) {
      if (options.holds) this.forget(options.holds);
      throw err;
    }
    const id = this.nextId++;
    const timeoutMs = options.timeoutMs ?? REQUEST_TIMEOUT_MS;
    const reply = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const onAbort = (): void => {
        this.settle(id);
        reject(abortError(options.signal as AbortSignal, { target: this.label }));
      };
      const timer = setTimeout(() => {
        this.settle(id);
        reject(new QuiesceError("WATCHDOG_UNAVAILABLE", `${this.label}: the host daemon did not answer ${op} within ${timeoutMs} ms`, { target: this.label, op }));
      }, timeoutMs);
      timer.unref();
      options.signal?.addEventListener("abort", onAbort, { once: true });
      this.pending.set(id, {
        resolve: (r) => {
          options.signal?.removeEventListener("abort", onAbort);
          resolve(r);
        },
        reject: (e) => {
          options.signal?.removeEventListener("abort", onAbort);
          reject(e);
        },
        timer,
      });
      channel.write(JSON.stringify({ ...body, id, op }) + "\n");
    }).finally(() => this.closeIfIdle());
    // No answer (thrown above): whether the daemon registered a hold is unknown, so it stays held, the safe side
    // (the window ends when this channel closes), and the caller withdraws the claim. A refusal registered nothing.
    if (reply.ok !== true && options.holds) this.holds.delete(options.holds);
    this.closeIfIdle();
    if (reply.ok !== true) throw replyError(this.label, op, reply);
    return reply;
  }

  /** Marks `windowId` as held by this process's control channel (the daemon registered it at claim or attach). */
  holding(windowId: string): void {
    this.holds.add(windowId);
    this.lost.delete(windowId);
    this.startBeat();
  }

  /** This process no longer holds `windowId` (released, or the hold handed off with `unhold`). */
  forget(windowId: string): void {
    this.holds.delete(windowId);
    this.closeIfIdle();
  }

  /**
   * Drops the control channel without releasing anything: the daemon ends every window this process holds
   * through it. For a process about to exit, and for tests of that fault.
   */
  drop(): void {
    this.holds.clear();
    this.channel?.destroy();
  }

  /**
   * Opens a relay onto the agent connection the daemon holds for `windowId`: a raw byte pipe, for an
   * {@link AgentSession}. Close it as soon as the step is done: the daemon serves one relay at a time.
   */
  async relay(windowId: string, options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<Duplex> {
    const stream = await this.openChannel(options.signal, 10_000);
    try {
      const first = await readLine(stream, `${this.label}: relay for ${windowId}`, options.timeoutMs ?? REQUEST_TIMEOUT_MS, options.signal, () =>
        stream.write(JSON.stringify({ id: 1, op: "relay", windowId }) + "\n"),
      );
      const reply = JSON.parse(first.line) as Record<string, unknown>;
      if (reply.ok !== true) throw replyError(this.label, "relay", reply);
      if (first.rest.length > 0) stream.unshift(first.rest);
      return stream;
    } catch (err) {
      stream.destroy();
      throw err;
    }
  }

  private settle(id: number): Pending | undefined {
    const p = this.pending.get(id);
    if (p) {
      clearTimeout(p.timer);
      this.pending.delete(id);
    }
    return p;
  }

  private startBeat(): void {
    if (this.beat) return;
    // A hung or crashed machine closes nothing: silence is how the daemon learns of it. Unref'd: a hold must not
    // be what keeps this process alive.
    this.beat = setInterval(() => {
      if (this.channel?.writable) this.channel.write('{"op":"beat"}\n');
    }, HOLD_BEAT_MS);
    this.beat.unref();
  }

  private closeIfIdle(): void {
    if (this.holds.size > 0 || this.pending.size > 0 || !this.channel) return;
    if (this.beat) clearInterval(this.beat);
    this.beat = undefined;
    const c = this.channel;
    this.channel = undefined;
    c.destroy();
  }

  /** The control channel, opened (and the daemon started) on first use. */
  private control(signal?: AbortSignal): Promise<Duplex> {
    // A channel still opening (its hello unanswered) is not handed out: wait for the version check.
    if (this.opening) return this.opening;
    if (this.channel && !this.channel.destroyed) return Promise.resolve(this.channel);
    this.opening ??= this.openControl(signal).finally(() => (this.opening = undefined));
    return this.opening;
  }

  private async openControl(signal?: AbortSignal): Promise<Duplex> {
    let stream: Duplex;
    try {
      stream = await this.openChannel(signal, 1_000);
    } catch (err) {
      // No socket, or nothing listening on it: no daemon runs for this directory yet.
      if (!isQuiesceError(err, "SOCKET_MISSING", "SOCKET_NOT_A_SOCKET", "SOCKET_UNREACHABLE")) throw err;
      await this.start(signal);
      stream = await this.openChannel(signal, 10_000);
    }
    let buffer = "";
    stream.on("data", (chunk: Buffer) => {
      buffer += chunk.toString("utf8");
      for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        let reply: Record<string, unknown>;
        try {
          reply = JSON.parse(line) as Record<string, unknown>;
        } catch (err) {
          process.stderr.write(`pulumi-quiesce: ${this.label}: ignoring a line from the host daemon that is not JSON: ${(err as Error).message}\n`);
          continue;
        }
        if (reply.event === "ended" && typeof reply.windowId === "string") {
          // The daemon ended a window this channel held (deadline, vanished VM, or this process's own release).
          if (this.holds.delete(reply.windowId)) this.lost.set(reply.windowId, `the host daemon ended it (${String(reply.how)})`);
          this.closeIfIdle();
          continue;
        }
        this.settle(Number(reply.id))?.resolve(reply);
      }
    });
    // An error on the control channel is handled as its close: pending requests fail, held windows re-arm.
    stream.on("error", (err: Error) => this.onControlClosed(stream, err));
    stream.once("close", () => this.onControlClosed(stream));
    this.channel = stream;
    const hello = await new Promise<Record<string, unknown>>((resolve, reject) => {
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.settle(id);
        reject(new QuiesceError("WATCHDOG_UNAVAILABLE", `${this.label}: the host daemon did not answer hello`, { target: this.label }));
      }, REQUEST_TIMEOUT_MS);
      timer.unref();
      this.pending.set(id, { resolve, reject, timer });
      stream.write(JSON.stringify({ id, op: "hello" }) + "\n");
    }).catch((err: unknown) => {
      // A channel whose daemon never said who it is is not used.
      if (this.channel === stream) this.channel = undefined;
      stream.destroy();
      throw err;
    });
    if (hello.version !== DAEMON_PROTOCOL_VERSION) {
      stream.destroy();
      throw new QuiesceError(
        "WATCHDOG_UNAVAILABLE",
        `${this.label}: the host daemon serving this lease directory speaks protocol ${String(hello.version)}, this client ${DAEMON_PROTOCOL_VERSION}. ` +
          "Another pulumi-quiesce version is using it: let its windows end (it exits when idle), or use another leaseDir.",
        { target: this.label, daemonVersion: String(hello.version) },
      );
    }
    return stream;
  }

  private onControlClosed(stream: Duplex, err?: Error): void {
    if (this.channel !== stream) return;
    this.channel = undefined;
    for (const id of [...this.pending.keys()]) {
      this.settle(id)?.reject(
        new QuiesceError(
          "WATCHDOG_UNAVAILABLE",
          `${this.label}: the host daemon's control channel closed${err ? ` (${err.message})` : ""} before it answered: the daemon ` +
            "restarted, or the SSH connection dropped. A window it held is ended by the daemon (thawOnDisconnect) or at its deadline. " +
            "Check with `quiesce status`, then retry.",
          { target: this.label },
        ),
      );
    }
    if (this.holds.size > 0) {
      this.rearming ??= this.rearm().finally(() => (this.rearming = undefined));
      // Its failure is recorded per window in `lost`; nobody awaits it but the next request.
      this.rearming.catch(() => undefined);
    } else if (this.beat) {
      clearInterval(this.beat);
      this.beat = undefined;
    }
  }

  /**
   * The control channel closed while this process held windows: the daemon died or the connection dropped.
   * Reconnects (restarting the daemon if needed: its records are on disk) and re-attaches every hold. A window the
   * daemon ended meanwhile is recorded in `lost`; the deadline held all along.
   */
  private async rearm(): Promise<void> {
    const windows = [...this.holds];
    let lastError: unknown;
    for (let attempt = 0; attempt < 5; attempt++) {
      // Paced retries (0, 0.2, 0.4, 0.8, 1.6 s): the daemon may be restarting (its supervisor brings it back in ms).
      if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** attempt).unref());
      try {
        const channel = await this.control();
        // Every attach at once, not one per round trip: a restarted daemon gives holders 15 s to come back.
        const replies = await Promise.all(
          windows.map((windowId) => {
            const id = this.nextId++;
            return new Promise<Record<string, unknown>>((resolve, reject) => {
              const timer = setTimeout(() => {
                this.settle(id);
                reject(new QuiesceError("WATCHDOG_UNAVAILABLE", `${this.label}: no answer to attach`, { target: this.label }));
              }, REQUEST_TIMEOUT_MS);
              timer.unref();
              this.pending.set(id, { resolve, reject, timer });
              channel.write(JSON.stringify({ id, op: "attach", windowId }) + "\n");
            });
          }),
        );
        replies.forEach((reply, i) => {
          if (reply.ok !== true) {
            this.holds.delete(windows[i]);
            this.lost.set(windows[i], String(reply.message ?? reply.code));
          }
        });
        process.stderr.write(`pulumi-quiesce: ${this.label}: the host daemon's channel closed; re-attached ${windows.filter((w) => this.holds.has(w)).length} of ${windows.length} window(s)\n`);
        this.closeIfIdle();
        return;
      } catch (err) {
        lastError = err;
      }
    }
    for (const windowId of windows) {
      this.holds.delete(windowId);
      this.lost.set(windowId, `the host daemon could not be reached again: ${(lastError as Error).message}`);
    }
    if (this.beat) clearInterval(this.beat);
    this.beat = undefined;
  }

  private async openChannel(signal: AbortSignal | undefined, busyTimeoutMs: number): Promise<Duplex> {
    const channel = this.address.connection
      ? await this.pool.openAgentChannel(this.address.connection, this.socketPath, { signal, diagnose: false, busyTimeoutMs })
      : await openLocalChannel(this.socketPath, { signal, busyTimeoutMs });
    return channel.stream;
  }

  /** Starts the daemon on the host and waits for its READY (printed once it listens). */
  private async start(signal?: AbortSignal): Promise<void> {
    const script = daemonScript();
    const result = this.address.connection
      ? await this.pool.exec(this.address.connection, startCommand(this.dir), {
          stdin: script,
          timeoutMs: START_TIMEOUT_MS,
          signal,
          purpose: "starting the host daemon",
        })
      : await startLocal(this.dir, script);
    const out = result.stdout;
    if (result.code === 0 && /^READY /m.test(out)) return;
    if (result.code === REFUSED_EXIT || /^REFUSED /m.test(out)) {
      const why = (/^REFUSED (.*)$/m.exec(out)?.[1] ?? out).trim();
      throw new QuiesceError("LEASE_DIR_REFUSED", `${this.label}: ${why}. Nothing was frozen.`, { target: this.label, leaseDir: this.dir });
    }
    if (result.code === NO_PYTHON_EXIT) {
      throw new QuiesceError(
        "WATCHDOG_UNAVAILABLE",
        `${this.label}: the host daemon that owns every freeze needs python3 (3.6 or later) on the host, and there is none. ` +
          "Install it on the hypervisor host (apt-get install python3-minimal, dnf install python3). Nothing was frozen.",
        { target: this.label },
      );
    }
    throw new QuiesceError(
      "WATCHDOG_UNAVAILABLE",
      `${this.label}: could not start the host daemon (exit ${result.code}): ${result.stderr.trim().split("\n").slice(-3).join(" | ")}. Nothing was frozen.`,
      { target: this.label, exitCode: result.code },
    );
  }
}

/** The daemon's source, shipped next to this module (copied into dist by the build). */
export function daemonScript(): string {
  return fs.readFileSync(path.join(__dirname, "daemon.py"), "utf8");
}

/**
 * The command that starts the daemon over SSH: a fixed POSIX sh program (the login shell only sees
 * `sh -c '…' quiesce-daemon 'DIR'`), which execs the first python it finds with the script on stdin (`-`): the
 * daemon never runs from a file, so no writable place holds code that runs as the SSH user.
 */
function startCommand(dir: string): string {
  const program =
    `umask 077; for p in ${INTERPRETERS.join(" ")}; do ` +
    `if command -v "$p" >/dev/null 2>&1; then exec "$p" - "$1"; fi; done; exit ${NO_PYTHON_EXIT}`;
  return `sh -c ${shellQuote(program)} quiesce-daemon ${shellQuote(dir)}`;
}

/** Starts the daemon on this machine, the script on stdin. */
async function startLocal(dir: string, script: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  for (const interpreter of INTERPRETERS) {
    const r = await new Promise<{ code: number | null; stdout: string; stderr: string } | undefined>((resolve, reject) => {
      const child = spawn(interpreter, ["-", dir], { stdio: ["pipe", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      let missing = false;
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      child.stdin.on("error", (err: NodeJS.ErrnoException) => {
        // EPIPE: the interpreter exited before reading the script; its exit code says why.
        if (err.code !== "EPIPE") reject(err);
      });
      child.on("error", (err: NodeJS.ErrnoException) => {
        if (err.code === "ENOENT") missing = true;
        else reject(err);
      });
      child.on("close", (code) => resolve(missing ? undefined : { code, stdout, stderr }));
      child.stdin.end(script);
    });
    if (r) return r;
  }
  return { code: NO_PYTHON_EXIT, stdout: "", stderr: "" };
}

/** Reads one line from a fresh channel (after `send`), keeping what follows it. */
function readLine(
  stream: Duplex,
  label: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  send: () => void,
): Promise<{ line: string; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    const cleanup = (): void => {
      clearTimeout(timer);
      stream.removeListener("data", onData);
      stream.removeListener("close", onClose);
      stream.removeListener("error", onError);
      signal?.removeEventListener("abort", onAbort);
    };
    const onData = (chunk: Buffer): void => {
      buffer = Buffer.concat([buffer, chunk]);
      const nl = buffer.indexOf(0x0a);
      if (nl < 0) return;
      cleanup();
      // Hold further data until the next reader attaches.
      stream.pause();
      resolve({ line: buffer.subarray(0, nl).toString("utf8"), rest: buffer.subarray(nl + 1) });
    };
    const onClose = (): void => {
      cleanup();
      reject(new QuiesceError("WATCHDOG_UNAVAILABLE", `${label}: the host daemon closed the channel`, { target: label }));
    };
    const onError = (err: Error): void => {
      cleanup();
      reject(new QuiesceError("WATCHDOG_UNAVAILABLE", `${label}: ${err.message}`, { target: label }, { cause: err }));
    };
    const onAbort = (): void => {
      cleanup();
      reject(abortError(signal as AbortSignal, { target: label }));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new QuiesceError("WATCHDOG_UNAVAILABLE", `${label}: the host daemon did not answer within ${timeoutMs} ms`, { target: label }));
    }, timeoutMs);
    timer.unref();
    stream.on("data", onData);
    stream.once("close", onClose);
    stream.once("error", onError);
    signal?.addEventListener("abort", onAbort, { once: true });
    send();
  });
}

const clients = new WeakMap<SshPool, Map<string, DaemonClient>>();
/** Every daemon client of this process, for {@link dropAllHolds}. */
const liveClients = new Set<DaemonClient>();

/** This process's client of the daemon at `address` (one per pool, host and lease directory). */
export function daemonFor(address: DaemonAddress, pool: SshPool = defaultSshPool): DaemonClient {
  let byLabel = clients.get(pool);
  if (!byLabel) clients.set(pool, (byLabel = new Map()));
  const probe = new DaemonClient(address, pool);
  const existing = byLabel.get(probe.label);
  if (existing) return existing;
  byLabel.set(probe.label, probe);
  liveClients.add(probe);
  return probe;
}

/**
 * Drops every control channel of this process (the daemons then thaw each window it held). For a process about
 * to exit, so that a held channel cannot keep it alive.
 */
export function dropAllHolds(): void {
  for (const c of liveClients) c.drop();
}
