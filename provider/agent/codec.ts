/**
 * QGA wire codec. Pure: no I/O, no timers. Fed bytes, it returns decoded events.
 *
 * Wire format (AGENT-FACTS.md, "The guest agent protocol"): newline-delimited JSON both ways.
 * Requests are `{"execute": CMD, "arguments": {...}}`; replies are `{"return": ...}` or
 * `{"error": {"class": C, "desc": D}}`. The agent sends no greeting and no events.
 * `guest-sync-delimited` replies are preceded by the byte 0xFF, which never occurs in UTF-8 text;
 * a client sends 0xFF itself to reset the agent's parser.
 */
import { QuiesceError } from "../errors";

/** The byte that resets the agent's parser and precedes a `guest-sync-delimited` reply. */
export const SYNC_SENTINEL = 0xff;

/** Default bound on one reply line, in bytes (4 MiB). fsinfo of a large guest is a few KiB. */
export const DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024;

/** The error object of a failed command, as the agent sent it. */
export interface AgentErrorBody {
  /** QAPI error class, e.g. `GenericError`, `CommandNotFound`. */
  readonly class: string;
  /** Human-readable description, verbatim. */
  readonly desc: string;
}

/** One decoded item from the agent's byte stream. */
export type DecodedEvent =
  /** A 0xFF byte: the next message is the reply to a `guest-sync-delimited`. */
  | { readonly kind: "sentinel" }
  /** A successful reply: the value of `return`. */
  | { readonly kind: "return"; readonly value: unknown }
  /** A failed command: the agent's `error` object. */
  | { readonly kind: "error"; readonly error: AgentErrorBody }
  /** Something that is not a valid reply (bad JSON, wrong shape, line too long). The stream goes on. */
  | { readonly kind: "protocol-error"; readonly error: QuiesceError };

/** Encodes one command as a request line (JSON plus `\n`). `args` is omitted when undefined. */
export function encodeCommand(execute: string, args?: Readonly<Record<string, unknown>>): Buffer {
  const request = args === undefined ? { execute } : { execute, arguments: args };
  return Buffer.from(JSON.stringify(request) + "\n", "utf8");
}

/** Encodes the sync handshake: 0xFF (parser reset) followed by `guest-sync-delimited {id}`. */
export function encodeSyncDelimited(id: number): Buffer {
  return Buffer.concat([Buffer.of(SYNC_SENTINEL), encodeCommand("guest-sync-delimited", { id })]);
}

/** Options of {@link AgentDecoder}. */
export interface DecoderOptions {
  /** Longest accepted line in bytes, newline excluded. Default {@link DEFAULT_MAX_LINE_BYTES}. */
  readonly maxLineBytes?: number;
}

/**
 * Incremental decoder. Chunks may split anywhere, including inside a multi-byte UTF-8 sequence
 * (lines are decoded only when complete), and one chunk may hold many replies.
 *
 * A line longer than `maxLineBytes` yields one protocol-error event; the rest of that line is
 * discarded as it arrives, so an endless line costs bounded memory.
 */
export class AgentDecoder {
  private readonly maxLineBytes: number;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** True while discarding the remainder of an over-long line. */
  private skipping = false;

  constructor(options: DecoderOptions = {}) {
    this.maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  }

  /** Feeds bytes; returns the events completed by them, in order. */
  push(chunk: Buffer): DecodedEvent[] {
    const events: DecodedEvent[] = [];
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i];
      if (byte === SYNC_SENTINEL) {
        // 0xFF cannot occur in UTF-8, so whatever partial line precedes it is a stale fragment
        // from an earlier client; drop it (AGENT-FACTS.md: stale replies arrive).
        this.reset();
        events.push({ kind: "sentinel" });
        start = i + 1;
      } else if (byte === 0x0a) {
        this.append(chunk.subarray(start, i), events);
        if (!this.skipping) {
          const line = Buffer.concat(this.pending, this.pendingBytes);
          const event = decodeLine(line);
          if (event) events.push(event);
        }
        this.reset();
        start = i + 1;
      }
    }
    this.append(chunk.subarray(start), events);
    return events;
  }

  /** Drops any partial line (used when the session re-syncs). */
  reset(): void {
    this.pending = [];
    this.pendingBytes = 0;
    this.skipping = false;
  }

  /** Bytes of the current partial line held in memory. */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }

  private append(part: Buffer, events: DecodedEvent[]): void {
    if (part.length === 0 || this.skipping) return;
    if (this.pendingBytes + part.length > this.maxLineBytes) {
      events.push({
        kind: "protocol-error",
        error: new QuiesceError(
          "AGENT_PROTOCOL",
          `agent sent a line longer than ${this.maxLineBytes} bytes; discarding it. ` +
            "Is the socket really a QEMU guest agent channel?",
          { maxLineBytes: this.maxLineBytes },
        ),
      });
      this.pending = [];
      this.pendingBytes = 0;
      this.skipping = true;
      return;
    }
    this.pending.push(Buffer.from(part));
    this.pendingBytes += part.length;
  }
}

/** Decodes one complete line. Blank lines (the agent may send bare newlines) yield nothing. */
export function decodeLine(line: Buffer): DecodedEvent | undefined {
  const text = line.toString("utf8").trim();
  if (text === "") return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    return protocolError(`agent sent a line that is not JSON: ${preview(text)}`, err);
  }
  if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
    const message = parsed as Record<string, unknown>;
    if ("return" in message) return { kind: "return", value: message.return };
    const error = message.error;
    if (typeof error === "object" && error !== null) {
      const body = error as Record<string, unknown>;
      if (typeof body.class === "string" && typeof body.desc === "string") {
        return { kind: "error", error: { class: body.class, desc: body.desc } };
      }
    }
  }
  return protocolError(`agent sent JSON that is neither a return nor an error reply: ${preview(text)}`);
}

function protocolError(message: string, cause?: unknown): DecodedEvent {
  return {
    kind: "protocol-error",
    error: new QuiesceError("AGENT_PROTOCOL", message, {}, cause === undefined ? undefined : { cause }),
  };
}

function preview(text: string): string {
  return JSON.stringify(text.length > 120 ? text.slice(0, 120) + "…" : text);
}
