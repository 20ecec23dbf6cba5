/**
 * A QGA session over any Duplex (a UNIX socket, an SSH streamlocal channel, a test pipe).
 *
 * Rules (AGENT-FACTS.md, "The guest agent protocol"):
 * - The chardev keeps replies an earlier client left unread, so every session starts with
 *   0xFF + `guest-sync-delimited {id: fresh random}` and discards everything until `0xFF{"return": id}`.
 *   The 0xFF also produces a "JSON parse error, stray '\uFFFD'" reply, discarded the same way.
 * - One command in flight: replies carry no id, so a reply belongs to the one command written.
 *   Calls are queued and run one after another.
 * - An absent agent accepts writes and never answers: only a timeout detects it. After a timeout
 *   (or an abort) a late reply may still arrive, so the session is marked desynced and re-syncs
 *   before the next command; a late reply is never taken as the answer to the next command.
 * - When the stream closes, every pending call fails with AGENT_INTERRUPTED.
 */
import type { Duplex } from "node:stream";
import { randomInt } from "node:crypto";
import { QuiesceError, abortError } from "../errors";
import { AgentDecoder, DecodedEvent, AgentErrorBody, encodeCommand, encodeSyncDelimited } from "./codec";

/** Default timeout of one agent command, in milliseconds (10 s). */
export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
/** Default timeout of the sync handshake, in milliseconds (5 s). */
export const DEFAULT_SYNC_TIMEOUT_MS = 5_000;

/** Lifecycle of a session. `desynced`: the next call re-syncs first. `closed`: final. */
export type SessionState = "syncing" | "ready" | "busy" | "desynced" | "closed";

/** Options of {@link AgentSession.open}. */
export interface SessionOptions {
  /** Label of the endpoint for errors, e.g. `root@hv1:22:/run/qga/vm1.sock`. Default `"agent"`. */
  readonly target?: string;
  /** Default per-command timeout in milliseconds. Default {@link DEFAULT_COMMAND_TIMEOUT_MS}. */
  readonly commandTimeoutMs?: number;
  /** Timeout of each sync handshake in milliseconds. Default {@link DEFAULT_SYNC_TIMEOUT_MS}. */
  readonly syncTimeoutMs?: number;
  /** Longest accepted reply line in bytes; see {@link AgentDecoder}. */
  readonly maxLineBytes?: number;
  /** Aborts the opening handshake. */
  readonly signal?: AbortSignal;
}

/** Options of one {@link AgentSession.execute} call. */
export interface ExecuteOptions {
  /** Timeout of this command in milliseconds. Default: the session's `commandTimeoutMs`. */
  readonly timeoutMs?: number;
  /** Aborts this call; the session then re-syncs before its next command. */
  readonly signal?: AbortSignal;
}

interface Waiter {
  readonly kind: "sync" | "command";
  readonly command: string;
  readonly syncId?: number;
  sawSentinel: boolean;
  resolve(value: unknown): void;
  reject(err: QuiesceError): void;
}

/** Recognises the agent's refusal of a command while filesystems are frozen. */
export function isFrozenStateRefusal(body: AgentErrorBody): boolean {
  // qemu-ga 7.2: "Command X has been disabled: the agent is in frozen state";
  // newer agents: "...: the command is not allowed" (AGENT-FACTS.md).
  return /agent is in frozen state|the command is not allowed/i.test(body.desc);
}

/**
 * Maps an agent error reply to a QuiesceError: AGENT_FROZEN, FREEZE_HOOK_FAILED, VSS_WRITES_RESUMED,
 * VSS_VOLUME_REFUSED, or AGENT_COMMAND_FAILED.
 */
export function agentCommandError(command: string, body: AgentErrorBody, target: string): QuiesceError {
  const fields = { target, command, errorClass: body.class, desc: body.desc };
  if (/agent is in frozen state/i.test(body.desc)) {
    return new QuiesceError(
      "AGENT_FROZEN",
      `${target}: the guest agent refused ${command} because the guest filesystems are frozen ` +
        `(agent said: ${body.desc}). Thaw the guest first (quiesce status/thaw), or find who froze it.`,
      fields,
    );
  }
  if (isFrozenStateRefusal(body)) {
    // Since qemu-ga 9.1 the same words answer a command refused while frozen and one an administrator
    // blocked (--block-rpcs / --allow-rpcs); guest-fsfreeze-status, never refused, tells them apart.
    return new QuiesceError(
      "AGENT_FROZEN",
      `${target}: the guest agent refused ${command} (agent said: ${body.desc}). Either the guest filesystems are ` +
        "frozen (check with `quiesce status`; thaw them first, or find who froze them), or an administrator blocked " +
        `${command} in the guest (qemu-ga --block-rpcs / --allow-rpcs, or /etc/qemu/qemu-ga.conf).`,
      fields,
    );
  }
  const hook = /fsfreeze hook (?:has failed with status (\d+)|has terminated abnormally)|can't access fsfreeze hook '([^']*)'/.exec(body.desc);
  if (hook) {
    // qga/commands-posix.c, execute_fsfreeze_hook: the hook (qemu-ga -F) runs before the freeze, and its
    // failure aborts it. The shipped dispatcher exits 0 even when a script in fsfreeze-hook.d fails; those
    // scripts log to /var/log/qga-fsfreeze-hook.log (AGENT-FACTS.md, "Freeze hooks").
    const where = hook[2] ? `'${hook[2]}'` : "(qemu-ga -F; by default /etc/qemu/fsfreeze-hook, /etc/qemu-ga/fsfreeze-hook on RHEL)";
    const what = hook[1] ? `failed with status ${hook[1]}` : hook[2] ? "cannot be run" : "was killed by a signal";
    const consequence =
      command === "guest-fsfreeze-thaw"
        ? `after the agent thawed (qemu-ga runs the hook with "thaw" once the filesystems are thawed) (agent said: ${body.desc}).`
        : `so the agent aborted ${command} (agent said: ${body.desc}). Nothing was frozen by it.`;
    return new QuiesceError(
      "FREEZE_HOOK_FAILED",
      `${target}: the guest's fsfreeze hook ${where} ${what}, ${consequence} Look at the hook's output in the guest: the ` +
        "shipped dispatcher runs the scripts in fsfreeze-hook.d and logs to /var/log/qga-fsfreeze-hook.log.",
      { ...fields, hookStatus: hook[1] ? Number(hook[1]) : undefined, hookPath: hook[2] },
    );
  }
  if (/couldn't hold writes/i.test(body.desc)) {
    // qga/vss-win32/requester.cpp: VSS holds writes for at most 10 s; the thaw after that reports this, and
    // qemu-ga clears its frozen flag anyway (AGENT-FACTS.md, "Windows (VSS)").
    return new QuiesceError(
      "VSS_WRITES_RESUMED",
      `${target}: the Windows guest's writes had already resumed before ${command}: VSS holds writes for at most 10 s, ` +
        `and released them while the agent still reported "frozen" (agent said: ${body.desc}). A snapshot taken after ` +
        "that is NOT CONSISTENT. Keep Windows windows under 10 s.",
      fields,
    );
  }
  if (/failed to add .* to snapshot set/i.test(body.desc)) {
    return new QuiesceError(
      "VSS_VOLUME_REFUSED",
      `${target}: VSS refused a volume (agent said: ${body.desc}), and a VSS freeze is all or none, so nothing was ` +
        "frozen. Select only NTFS or ReFS volumes (mountpoints such as C:\\).",
      fields,
    );
  }
  return new QuiesceError(
    "AGENT_COMMAND_FAILED",
    `${target}: guest agent command ${command} failed: ${body.class}: ${body.desc}`,
    fields,
  );
}

/** A synced connection to one guest agent. Create with {@link AgentSession.open}. */
export class AgentSession {
  /** Label of the endpoint used in errors. */
  readonly target: string;
  private readonly stream: Duplex;
  private readonly decoder: AgentDecoder;
  private readonly commandTimeoutMs: number;
  private readonly syncTimeoutMs: number;
  private currentState: SessionState = "syncing";
  private waiter: Waiter | undefined;
  private queue: Promise<void> = Promise.resolve();
  private closeReason: QuiesceError | undefined;

  private constructor(stream: Duplex, options: SessionOptions) {
    this.stream = stream;
    this.target = options.target ?? "agent";
    this.commandTimeoutMs = options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
    this.syncTimeoutMs = options.syncTimeoutMs ?? DEFAULT_SYNC_TIMEOUT_MS;
    this.decoder = new AgentDecoder({ maxLineBytes: options.maxLineBytes });
    stream.on("data", (chunk: Buffer | string) => this.onData(typeof chunk === "string" ? Buffer.from(chunk) : chunk));
    stream.on("error", (err: Error) => this.onClose(err));
    stream.on("close", () => this.onClose());
    // Answer the peer's end with end() so SSH channels close (AGENT-FACTS.md, "Channel events").
    stream.on("end", () => this.onClose());
  }

  /**
   * Syncs a new session over `stream`. On failure the stream is destroyed.
   * @throws QuiesceError AGENT_TIMEOUT (no agent answering), AGENT_INTERRUPTED, ABORTED.
   */
  static async open(stream: Duplex, options: SessionOptions = {}): Promise<AgentSession> {
    const session = new AgentSession(stream, options);
    try {
      await session.sync(options.signal);
    } catch (err) {
      session.close();
      throw err;
    }
    return session;
  }

  /** Current state; see {@link SessionState}. */
  get state(): SessionState {
    return this.currentState;
  }

  /**
   * Runs one command and returns its `return` value. Calls are queued: one command in flight.
   * If the session is desynced (an earlier call timed out or was aborted), it re-syncs first.
   * @throws QuiesceError AGENT_TIMEOUT, AGENT_FROZEN, AGENT_COMMAND_FAILED, AGENT_PROTOCOL,
   *   AGENT_INTERRUPTED, ABORTED.
   */
  execute(command: string, args?: Readonly<Record<string, unknown>>, options: ExecuteOptions = {}): Promise<unknown> {
    return this.exclusive(async () => {
      if (this.currentState === "desynced") await this.sync(options.signal);
      return this.roundTrip(
        { kind: "command", command },
        encodeCommand(command, args),
        options.timeoutMs ?? this.commandTimeoutMs,
        options.signal,
      );
    });
  }

  /** Re-syncs explicitly (normally done automatically after a timeout). */
  resync(signal?: AbortSignal): Promise<void> {
    return this.exclusive(() => this.sync(signal));
  }

  /** Closes the channel. Pending calls fail with AGENT_INTERRUPTED. Idempotent. */
  close(): void {
    this.onClose(undefined, "session closed by the client");
    this.stream.destroy();
  }

  private async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const previous = this.queue;
    let release!: () => void;
    this.queue = new Promise<void>((resolve) => (release = resolve));
    try {
      await previous;
      return await fn();
    } finally {
      release();
    }
  }

  private async sync(signal?: AbortSignal): Promise<void> {
    this.currentState = this.currentState === "closed" ? "closed" : "syncing";
    this.decoder.reset();
    // A fresh random id per handshake, so a stale sync reply left by an earlier client never matches.
    const syncId = randomInt(1, 2 ** 31 - 1);
    await this.roundTrip(
      { kind: "sync", command: "guest-sync-delimited", syncId },
      encodeSyncDelimited(syncId),
      this.syncTimeoutMs,
      signal,
    );
  }

  private roundTrip(
    spec: { kind: "sync" | "command"; command: string; syncId?: number },
    request: Buffer,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<unknown> {
    if (this.currentState === "closed") {
      return Promise.reject(this.interrupted(spec.command));
    }
    if (signal?.aborted) return Promise.reject(abortError(signal, { target: this.target, command: spec.command }));
    return new Promise<unknown>((resolve, reject) => {
      const onAbort = (): void => {
        if (!signal) return;
        this.desync();
        finish(() => reject(abortError(signal, { target: this.target, command: spec.command })));
      };
      const finish = (settle: () => void): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        if (this.waiter === waiter) this.waiter = undefined;
        settle();
      };
      const waiter: Waiter = {
        kind: spec.kind,
        command: spec.command,
        syncId: spec.syncId,
        sawSentinel: false,
        resolve: (value) =>
          finish(() => {
            this.currentState = "ready";
            resolve(value);
          }),
        reject: (err) => finish(() => reject(err)),
      };
      this.waiter = waiter;
      this.currentState = spec.kind === "sync" ? "syncing" : "busy";
      const timer = setTimeout(() => {
        this.desync();
        finish(() => reject(this.timeout(spec.command, timeoutMs, spec.kind)));
      }, timeoutMs);
      timer.unref();
      signal?.addEventListener("abort", onAbort, { once: true });
      this.stream.write(request);
    });
  }

  private desync(): void {
    if (this.currentState !== "closed") this.currentState = "desynced";
  }

  private onData(chunk: Buffer): void {
    for (const event of this.decoder.push(chunk)) this.dispatch(event);
  }

  private dispatch(event: DecodedEvent): void {
    const waiter = this.waiter;
    if (!waiter) {
      // Unsolicited: a late reply to a command that timed out. Ignore it, but make sure the next
      // command re-syncs so nothing else like it can be mistaken for an answer.
      this.desync();
      return;
    }
    if (waiter.kind === "sync") {
      // Discard everything (stale replies, the parser-reset error) until 0xFF{"return": id}.
      if (event.kind === "sentinel") waiter.sawSentinel = true;
      else if (event.kind === "return" && waiter.sawSentinel && event.value === waiter.syncId) waiter.resolve(undefined);
      else waiter.sawSentinel = false;
      return;
    }
    switch (event.kind) {
      case "return":
        waiter.resolve(event.value);
        return;
      case "error":
        this.currentState = "ready";
        waiter.reject(agentCommandError(waiter.command, event.error, this.target));
        return;
      case "protocol-error":
        this.desync();
        waiter.reject(
          new QuiesceError(
            "AGENT_PROTOCOL",
            `${this.target}: bad reply to ${waiter.command}: ${event.error.message}`,
            { target: this.target, command: waiter.command },
            { cause: event.error },
          ),
        );
        return;
      case "sentinel":
        this.desync();
        waiter.reject(
          new QuiesceError(
            "AGENT_PROTOCOL",
            `${this.target}: unexpected sync delimiter (0xFF) while waiting for the reply to ${waiter.command}`,
            { target: this.target, command: waiter.command },
          ),
        );
        return;
    }
  }

  private onClose(cause?: Error, why?: string): void {
    if (this.currentState === "closed") return;
    this.currentState = "closed";
    this.closeReason = new QuiesceError(
      "AGENT_INTERRUPTED",
      `${this.target}: agent channel closed${why ? ` (${why})` : cause ? `: ${cause.message}` : ""}`,
      { target: this.target },
      cause ? { cause } : undefined,
    );
    if (!this.stream.writableEnded) this.stream.end();
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(this.interrupted(waiter.command));
  }

  private interrupted(command: string): QuiesceError {
    return new QuiesceError(
      "AGENT_INTERRUPTED",
      `${this.target}: ${command} interrupted: the agent channel closed before a reply arrived. ` +
        "The command may or may not have run in the guest; check with `quiesce status`.",
      { target: this.target, command },
      this.closeReason ? { cause: this.closeReason } : undefined,
    );
  }

  private timeout(command: string, timeoutMs: number, kind: "sync" | "command"): QuiesceError {
    const hint =
      kind === "sync"
        ? "Nothing answered on the agent socket: is qemu-ga running in the guest (still booting? crashed?), " +
          "and is another client holding the socket (the chardev serves one client at a time)?"
        : "The agent stopped answering; the session will re-sync before its next command.";
    return new QuiesceError(
      "AGENT_TIMEOUT",
      `${this.target}: no reply to ${command} within ${timeoutMs} ms. ${hint}`,
      { target: this.target, command, timeoutMs },
    );
  }
}
