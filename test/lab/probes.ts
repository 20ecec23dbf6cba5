/**
 * Minimal, independent clients for the lab's own use: a QEMU guest agent probe and a QMP call.
 *
 * They deliberately share no code with provider/agent: the lab uses them to decide that a guest is ready
 * and tests use them as an oracle (what does the real agent say?) next to the product's client.
 */
import * as net from "node:net";
import { randomInt } from "node:crypto";
import { LabError, delay, withDeadline } from "./process";

/** A JSON object sent or received on the agent or QMP wire. */
export type JsonObject = { [key: string]: unknown };

/** The agent answered `{"error": {...}}`. */
export class LabAgentCommandError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`${command}: ${errorClass}: ${desc}`);
    this.name = "LabAgentCommandError";
  }
}

/** Result of {@link LabAgentProbe.exec}. */
export interface LabGuestExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout;
}

const SYNC_RESEND_MS = 1_000;

/**
 * One connection to a guest agent's chardev socket, synchronized as AGENT-FACTS.md prescribes (0xFF, then
 * guest-sync-delimited with a fresh id; discard everything up to `0xFF{"return": id}`).
 *
 * The agent serves one client at a time: always {@link close} it, or `using` it through
 * {@link withAgentProbe}.
 */
export class LabAgentProbe {
  private buffer = Buffer.alloc(0);
  private readonly pending: Pending[] = [];
  private closedError: Error | undefined;

  private constructor(private readonly socket: net.Socket) {
    socket.on("data", (chunk: Buffer) => this.onData(chunk));
    socket.on("error", (error) => this.fail(error));
    socket.on("close", () => this.fail(new LabError("agent socket closed", "LAB_AGENT_FAILED")));
  }

  /**
   * Connects and synchronizes. While the agent is not yet listening (guest booting) the sync is resent
   * every second with a new id; only the reply to the newest id counts, so older replies are discarded.
   */
  static async connect(
    socketPath: string,
    options: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<LabAgentProbe> {
    const timeoutMs = options.timeoutMs ?? 15_000;
    const socket = net.createConnection(socketPath);
    const connected = new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    try {
      await withDeadline(connected, { timeoutMs, signal: options.signal, what: `connect ${socketPath}` });
    } catch (error) {
      socket.destroy();
      throw new LabError(`cannot connect to the agent socket ${socketPath}`, "LAB_AGENT_FAILED", { cause: error });
    }
    const probe = new LabAgentProbe(socket);
    try {
      await withDeadline(probe.sync(), { timeoutMs, signal: options.signal, what: `guest-sync-delimited on ${socketPath}` });
    } catch (error) {
      probe.close();
      throw error;
    }
    return probe;
  }

  private syncWaiter: { id: number; resolve(): void } | undefined;

  private async sync(): Promise<void> {
    for (;;) {
      const id = randomInt(1, 2 ** 31);
      const matched = new Promise<void>((resolve) => {
        this.syncWaiter = { id, resolve };
      });
      this.socket.write(
        Buffer.concat([
          Buffer.from([0xff]),
          Buffer.from(JSON.stringify({ execute: "guest-sync-delimited", arguments: { id } }) + "\n"),
        ]),
      );
      const outcome = await Promise.race([matched.then(() => "synced" as const), delay(SYNC_RESEND_MS).then(() => "resend" as const)]);
      if (this.closedError) throw this.closedError;
      if (outcome === "synced") {
        this.syncWaiter = undefined;
        return;
      }
    }
  }

  private onData(chunk: Buffer): void {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    if (this.syncWaiter) {
      // Before the sync completes, only `0xFF{"return": id}` lines matter; drop everything else.
      for (;;) {
        const marker = this.buffer.indexOf(0xff);
        if (marker < 0) {
          this.buffer = Buffer.alloc(0);
          return;
        }
        const end = this.buffer.indexOf(0x0a, marker);
        if (end < 0) {
          this.buffer = this.buffer.subarray(marker);
          return;
        }
        const line = this.buffer.subarray(marker + 1, end).toString("utf8");
        this.buffer = this.buffer.subarray(end + 1);
        const reply = parseJson(line);
        if (reply && reply.return === this.syncWaiter.id) {
          const waiter = this.syncWaiter;
          this.syncWaiter = undefined;
          waiter.resolve();
          break;
        }
      }
    }
    for (;;) {
      const end = this.buffer.indexOf(0x0a);
      if (end < 0) return;
      const line = this.buffer.subarray(0, end).toString("utf8").trim();
      this.buffer = this.buffer.subarray(end + 1);
      if (line === "") continue;
      const pending = this.pending.shift();
      if (!pending) {
        this.fail(new LabError(`unsolicited agent reply: ${line}`, "LAB_AGENT_FAILED"));
        return;
      }
      clearTimeout(pending.timer);
      const reply = parseJson(line);
      const error = reply?.error as { class?: string; desc?: string } | undefined;
      if (reply && "return" in reply) pending.resolve(reply.return);
      else if (error) pending.reject(new LabAgentCommandError(pending.command, String(error.class), String(error.desc)));
      else pending.reject(new LabError(`${pending.command}: malformed reply ${line}`, "LAB_AGENT_FAILED"));
    }
  }

  private fail(error: Error): void {
    if (!this.closedError) this.closedError = error;
    for (const pending of this.pending.splice(0)) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.socket.destroy();
  }

  /**
   * Runs one agent command and returns its `return` value. Rejects with {@link LabAgentCommandError} on an
   * error reply. A timeout closes the probe, since a late reply would be taken for the next command's.
   */
  execute<T = unknown>(command: string, args?: JsonObject, timeoutMs = 10_000): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new LabError(`${command}: no reply within ${timeoutMs} ms`, "LAB_TIMEOUT"));
      }, timeoutMs);
      timer.unref();
      this.pending.push({ command, resolve: resolve as (value: unknown) => void, reject, timer });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
    });
  }

  /**
   * Runs a program in the guest with guest-exec and waits (polling guest-exec-status, bounded by
   * `timeoutMs`) for it to end. The guest's PATH is /bin:/usr/bin:/usr/sbin (busybox applets).
   */
  async exec(path: string, args: readonly string[] = [], timeoutMs = 20_000): Promise<LabGuestExecResult> {
    const deadline = Date.now() + timeoutMs;
    const { pid } = await this.execute<{ pid: number }>("guest-exec", { path, arg: [...args], "capture-output": true });
    for (;;) {
      const status = await this.execute<{ exited: boolean; exitcode?: number; signal?: number; "out-data"?: string; "err-data"?: string }>(
        "guest-exec-status",
        { pid },
      );
      if (status.exited) {
        return {
          exitCode: status.exitcode ?? 128 + (status.signal ?? 0),
          stdout: Buffer.from(status["out-data"] ?? "", "base64").toString("utf8"),
          stderr: Buffer.from(status["err-data"] ?? "", "base64").toString("utf8"),
        };
      }
      if (Date.now() > deadline) throw new LabError(`guest-exec ${path}: still running after ${timeoutMs} ms`, "LAB_TIMEOUT");
      await delay(50);
    }
  }

  /** Reads a whole guest file with guest-file-open/read/close. */
  async readFile(path: string): Promise<Buffer> {
    const handle = await this.execute<number>("guest-file-open", { path, mode: "r" });
    const parts: Buffer[] = [];
    try {
      for (;;) {
        const chunk = await this.execute<{ count: number; "buf-b64": string; eof: boolean }>("guest-file-read", {
          handle,
          count: 65536,
        });
        parts.push(Buffer.from(chunk["buf-b64"], "base64"));
        if (chunk.eof || chunk.count === 0) break;
      }
    } finally {
      await this.execute("guest-file-close", { handle });
    }
    return Buffer.concat(parts);
  }

  /** Closes the connection, so the next client of the agent can get in. */
  close(): void {
    this.fail(new LabError("probe closed", "LAB_AGENT_FAILED"));
  }
}

/** Connects a {@link LabAgentProbe}, runs `body`, and always closes the probe. */
export async function withAgentProbe<T>(
  socketPath: string,
  body: (probe: LabAgentProbe) => Promise<T>,
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<T> {
  const probe = await LabAgentProbe.connect(socketPath, options);
  try {
    return await body(probe);
  } finally {
    probe.close();
  }
}

function parseJson(line: string): JsonObject | undefined {
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as JsonObject) : undefined;
  } catch (error) {
    if (error instanceof SyntaxError) return undefined;
    throw error;
  }
}

/**
 * Runs one QMP command on a QEMU monitor socket (greeting, qmp_capabilities, the command; events are
 * skipped) and returns its `return` value. For example `qmpExecute(guest.qmpSocketPath, "stop")` pauses
 * the VM, so its agent stops answering.
 */
export async function qmpExecute<T = unknown>(
  socketPath: string,
  command: string,
  args?: JsonObject,
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<T> {
  const socket = net.createConnection(socketPath);
  let buffer = "";
  const lines: JsonObject[] = [];
  let wake: (() => void) | undefined;
  let failure: Error | undefined;
  socket.setEncoding("utf8");
  socket.on("data", (chunk: string) => {
    buffer += chunk;
    let end: number;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const parsed = parseJson(buffer.slice(0, end));
      buffer = buffer.slice(end + 1);
      if (parsed && !("event" in parsed)) lines.push(parsed);
    }
    wake?.();
  });
  socket.on("error", (error) => {
    failure = error;
    wake?.();
  });
  socket.on("close", () => {
    failure ??= new LabError("QMP socket closed", "LAB_QMP_FAILED");
    wake?.();
  });
  const next = async (): Promise<JsonObject> => {
    for (;;) {
      const line = lines.shift();
      if (line) return line;
      if (failure) throw failure;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  };
  const conversation = async (): Promise<T> => {
    const greeting = await next();
    if (!("QMP" in greeting)) throw new LabError(`unexpected QMP greeting ${JSON.stringify(greeting)}`, "LAB_QMP_FAILED");
    socket.write(JSON.stringify({ execute: "qmp_capabilities" }) + "\n");
    await next();
    socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + "\n");
    const reply = await next();
    if ("error" in reply) throw new LabError(`QMP ${command}: ${JSON.stringify(reply.error)}`, "LAB_QMP_FAILED");
    return reply.return as T;
  };
  try {
    return await withDeadline(conversation(), {
      timeoutMs: options.timeoutMs ?? 10_000,
      signal: options.signal,
      what: `QMP ${command}`,
    });
  } finally {
    socket.destroy();
  }
}
