/**
 * A libvirt RPC session over one byte stream (an ssh2 streamlocal channel to libvirt's socket, or a local UNIX
 * socket): calls matched to replies by serial, keepalive PINGs answered with PONGs, a timeout and an AbortSignal on
 * every call, and `remote_error` decoded into a {@link QuiesceError} that keeps libvirt's code, domain and message.
 * The wire format is ./codec.ts; the typed procedures are ./procedures.ts.
 */
import type { Duplex } from "node:stream";
import { QuiesceError, abortError } from "../errors";
import {
  encodeMessage,
  KeepaliveProc,
  MessageDecoder,
  MessageStatus,
  MessageType,
  PROGRAM,
  PROGRAM_VERSION,
  readRemoteError,
  XdrReader,
  type Message,
} from "./codec";

/** Default milliseconds a call may take. */
export const DEFAULT_CALL_TIMEOUT_MS = 30_000;

/** Options of {@link LibvirtSession}. */
export interface LibvirtSessionOptions {
  /** Label of the endpoint for messages, e.g. `root@hv1:22:/var/run/libvirt/libvirt-sock`. */
  readonly target?: string;
  /** Default timeout of a call, in ms. Default {@link DEFAULT_CALL_TIMEOUT_MS}. */
  readonly callTimeoutMs?: number;
}

/** Options of one call. */
export interface CallOptions {
  /** Timeout in ms; default the session's. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

interface Pending {
  readonly procName: string;
  resolve(payload: Buffer): void;
  reject(err: QuiesceError): void;
}

/** The error of a call that libvirt refused: libvirt's own code, domain and message are in `fields`. */
export function libvirtError(target: string, procName: string, payload: Buffer): QuiesceError {
  const e = readRemoteError(new XdrReader(payload, "remote_error"));
  return new QuiesceError("LIBVIRT_ERROR", `${target}: libvirt refused ${procName}: ${e.message ?? `error ${e.code}`}`, {
    target,
    procedure: procName,
    libvirtCode: e.code,
    libvirtDomain: e.domain,
    libvirtMessage: e.message ?? undefined,
    ...(e.str1 !== null ? { str1: e.str1 } : {}),
  });
}

/** One connection to libvirt's RPC server. Calls may be in flight together; each has its own serial. */
export class LibvirtSession {
  readonly target: string;
  private readonly decoder = new MessageDecoder();
  private readonly pending = new Map<number, Pending>();
  private nextSerial = 1;
  private closedReason: QuiesceError | undefined;
  private readonly callTimeoutMs: number;

  constructor(
    private readonly stream: Duplex,
    options: LibvirtSessionOptions = {},
  ) {
    this.target = options.target ?? "libvirt";
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    stream.on("data", (chunk: Buffer) => this.onData(chunk));
    stream.on("error", (err: Error) => this.fail(new QuiesceError("LIBVIRT_INTERRUPTED", `${this.target}: the connection to libvirt failed: ${err.message}`, { target: this.target }, { cause: err })));
    stream.on("close", () => this.fail(new QuiesceError("LIBVIRT_INTERRUPTED", `${this.target}: the connection to libvirt closed`, { target: this.target })));
    stream.on("end", () => this.close());
  }

  /** True once the connection closed or failed. */
  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /**
   * Calls procedure `proc` of program `prog` with an XDR `payload`; resolves with the reply's payload.
   * @throws QuiesceError LIBVIRT_ERROR (libvirt refused it), LIBVIRT_TIMEOUT, LIBVIRT_INTERRUPTED, LIBVIRT_PROTOCOL,
   *   ABORTED.
   */
  call(prog: number, proc: number, payload: Buffer, procName: string, options: CallOptions = {}): Promise<Buffer> {
    if (this.closedReason) return Promise.reject(this.closedReason);
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(abortError(signal, { target: this.target, procedure: procName }));
    const serial = this.nextSerial++;
    const timeoutMs = options.timeoutMs ?? this.callTimeoutMs;
    return new Promise<Buffer>((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.pending.delete(serial);
      };
      // A reply that comes after the timeout or the abort finds no pending call, and is dropped.
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new QuiesceError("LIBVIRT_TIMEOUT", `${this.target}: libvirt did not answer ${procName} within ${timeoutMs} ms`, {
            target: this.target,
            procedure: procName,
            timeoutMs,
          }),
        );
      }, timeoutMs);
      timer.unref();
      const onAbort = (): void => {
        cleanup();
        reject(abortError(signal as AbortSignal, { target: this.target, procedure: procName }));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.pending.set(serial, {
        procName,
        resolve: (p) => {
          cleanup();
          resolve(p);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      });
      this.stream.write(encodeMessage({ prog, vers: PROGRAM_VERSION, proc, type: MessageType.CALL, serial, status: MessageStatus.OK }, payload));
    });
  }

  /** Closes the connection; pending calls fail with LIBVIRT_INTERRUPTED. Idempotent. */
  close(): void {
    this.fail(new QuiesceError("LIBVIRT_INTERRUPTED", `${this.target}: the session was closed`, { target: this.target }));
    this.stream.destroy();
  }

  private fail(reason: QuiesceError): void {
    if (this.closedReason) return;
    this.closedReason = reason;
    for (const p of [...this.pending.values()]) p.reject(reason);
  }

  private onData(chunk: Buffer): void {
    let messages: Message[];
    try {
      messages = this.decoder.push(chunk);
    } catch (err) {
      // A corrupt stream cannot be resynchronised: fail every call and close.
      this.fail(err as QuiesceError);
      this.stream.destroy();
      return;
    }
    for (const m of messages) this.dispatch(m);
  }

  private dispatch(m: Message): void {
    const { header } = m;
    if (header.prog === PROGRAM.KEEPALIVE && header.type === MessageType.MESSAGE) {
      // libvirtd pings an idle client and closes it if no PONG comes back.
      if (header.proc === KeepaliveProc.PING && !this.closedReason) {
        this.stream.write(
          encodeMessage({ prog: PROGRAM.KEEPALIVE, vers: PROGRAM_VERSION, proc: KeepaliveProc.PONG, type: MessageType.MESSAGE, serial: 0, status: MessageStatus.OK }),
        );
      }
      return;
    }
    if (header.type !== MessageType.REPLY) return; // events and streams are not subscribed to: nothing to do
    const p = this.pending.get(header.serial);
    if (!p) return; // the reply to a call that timed out or was aborted
    if (header.status === MessageStatus.OK) {
      p.resolve(m.payload);
      return;
    }
    try {
      p.reject(libvirtError(this.target, p.procName, m.payload));
    } catch (err) {
      p.reject(err as QuiesceError);
    }
  }
}
