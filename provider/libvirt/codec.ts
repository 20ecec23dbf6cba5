/**
 * libvirt RPC wire format, no I/O (DESIGN.md, "provider/guest: libvirt/ codec"): message framing, the 24-byte header,
 * and XDR (RFC 4506) for the few structures pulumi-quiesce needs. From libvirt's `src/rpc/virnetprotocol.x` and
 * `src/remote/remote_protocol.x` (AGENT-FACTS.md, "libvirt RPC").
 *
 * Hand-written on purpose. The subset is small (int, unsigned, hyper, double, strings, optional values, fixed opaque,
 * counted arrays, one discriminated union), while `@stellar/js-xdr` (the maintained XDR package) declares Node ≥ 22
 * and brings a schema DSL larger than this file, and `js-xdr` is its unmaintained predecessor. No maintained Node
 * library speaks libvirt's RPC itself.
 */
import { QuiesceError } from "../errors";

/** RPC programs (`prog` in the header) and their versions. */
export const PROGRAM = { REMOTE: 0x20008086, QEMU: 0x20008087, KEEPALIVE: 0x6b656570 } as const;
/** Every program pulumi-quiesce uses is at version 1. */
export const PROGRAM_VERSION = 1;

/** Message types (`virNetMessageType`). */
export const MessageType = { CALL: 0, REPLY: 1, MESSAGE: 2, STREAM: 3 } as const;
/** Message status (`virNetMessageStatus`). */
export const MessageStatus = { OK: 0, ERROR: 1, CONTINUE: 2 } as const;

/** Procedures of the REMOTE program used here (remote_protocol.x). */
export const RemoteProc = {
  CONNECT_OPEN: 1,
  CONNECT_CLOSE: 2,
  DOMAIN_LOOKUP_BY_NAME: 23,
  DOMAIN_LOOKUP_BY_UUID: 24,
  AUTH_LIST: 66,
  AUTH_POLKIT: 70,
  DOMAIN_FSFREEZE: 335,
  DOMAIN_FSTHAW: 336,
  DOMAIN_GET_GUEST_INFO: 418,
  CONNECT_LIST_ALL_DOMAINS: 273,
} as const;
/** Procedures of the QEMU program (qemu_protocol.x). */
export const QemuProc = { DOMAIN_AGENT_COMMAND: 3 } as const;
/** Procedures of the KEEPALIVE program. */
export const KeepaliveProc = { PING: 1, PONG: 2 } as const;

/** Bytes of the length word plus the header. */
export const HEADER_BYTES = 28;
/**
 * The largest message accepted, in bytes (length word included): libvirt's VIR_NET_MESSAGE_MAX is 16 MiB in older
 * releases and 32 MiB in current ones; anything larger is a corrupt stream.
 */
export const MAX_MESSAGE_BYTES = 32 * 1024 * 1024 + 4;
/** The longest string accepted (REMOTE_STRING_MAX, 4 MiB in virnetprotocol.x: the larger of the two). */
export const MAX_STRING_BYTES = 4 * 1024 * 1024;
/** VIR_UUID_BUFLEN. */
export const UUID_BYTES = 16;

/** The header of every message. */
export interface MessageHeader {
  readonly prog: number;
  readonly vers: number;
  /** Signed in the protocol. */
  readonly proc: number;
  readonly type: number;
  readonly serial: number;
  readonly status: number;
}

/** One decoded message: its header and its XDR payload. */
export interface Message {
  readonly header: MessageHeader;
  readonly payload: Buffer;
}

function protocolError(message: string, fields: Record<string, unknown> = {}): QuiesceError {
  return new QuiesceError("LIBVIRT_PROTOCOL", `libvirt RPC: ${message}`, fields);
}

/** Serializes one message: length word, header, payload. */
export function encodeMessage(header: MessageHeader, payload: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.alloc(HEADER_BYTES + payload.length);
  out.writeUInt32BE(out.length, 0);
  out.writeUInt32BE(header.prog >>> 0, 4);
  out.writeUInt32BE(header.vers >>> 0, 8);
  out.writeInt32BE(header.proc, 12);
  out.writeInt32BE(header.type, 16);
  out.writeUInt32BE(header.serial >>> 0, 20);
  out.writeInt32BE(header.status, 24);
  payload.copy(out, HEADER_BYTES);
  return out;
}

/**
 * Splits a byte stream into messages. Feed it chunks as they arrive; it returns each message once complete.
 * @throws QuiesceError LIBVIRT_PROTOCOL for a length below the header size or above {@link MAX_MESSAGE_BYTES}.
 */
export class MessageDecoder {
  private buffer: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Message[] {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    const messages: Message[] = [];
    while (this.buffer.length >= 4) {
      const length = this.buffer.readUInt32BE(0);
      if (length < HEADER_BYTES || length > MAX_MESSAGE_BYTES) {
        throw protocolError(`a message of ${length} bytes (the stream is not libvirt RPC, or is corrupt)`, { length });
      }
      if (this.buffer.length < length) break;
      const header: MessageHeader = {
        prog: this.buffer.readUInt32BE(4),
        vers: this.buffer.readUInt32BE(8),
        proc: this.buffer.readInt32BE(12),
        type: this.buffer.readInt32BE(16),
        serial: this.buffer.readUInt32BE(20),
        status: this.buffer.readInt32BE(24),
      };
      messages.push({ header, payload: Buffer.from(this.buffer.subarray(HEADER_BYTES, length)) });
      this.buffer = this.buffer.subarray(length);
    }
    return messages;
  }

  /** Bytes received that do not yet make a whole message. */
  get pending(): number {
    return this.buffer.length;
  }
}

function pad(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** Builds an XDR payload. */
export class XdrWriter {
  private readonly parts: Buffer[] = [];

  int(value: number): this {
    if (!Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) throw new RangeError(`XDR int out of range: ${value}`);
    const b = Buffer.alloc(4);
    b.writeInt32BE(value);
    this.parts.push(b);
    return this;
  }

  uint(value: number): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`XDR unsigned int out of range: ${value}`);
    const b = Buffer.alloc(4);
    b.writeUInt32BE(value);
    this.parts.push(b);
    return this;
  }

  hyper(value: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(value);
    this.parts.push(b);
    return this;
  }

  /** A non-null string: length, UTF-8 bytes, padding to 4. */
  string(value: string): this {
    const bytes = Buffer.from(value, "utf8");
    if (bytes.length > MAX_STRING_BYTES) throw new RangeError(`XDR string of ${bytes.length} bytes is too long`);
    this.uint(bytes.length);
    this.parts.push(bytes, Buffer.alloc(pad(bytes.length)));
    return this;
  }

  /** A string that may be null (`remote_string`): a 0/1 flag, then the string. */
  optionalString(value: string | null | undefined): this {
    if (value === null || value === undefined) return this.uint(0);
    return this.uint(1).string(value);
  }

  /** Fixed-length opaque data (no length word), padded to 4. */
  fixedOpaque(value: Buffer, length: number): this {
    if (value.length !== length) throw new RangeError(`XDR opaque[${length}] given ${value.length} bytes`);
    this.parts.push(value, Buffer.alloc(pad(length)));
    return this;
  }

  /** A counted array: the count, then each item. */
  array<T>(items: readonly T[], write: (w: this, item: T) => void): this {
    this.uint(items.length);
    for (const item of items) write(this, item);
    return this;
  }

  bytes(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/**
 * Reads an XDR payload. Every read is bounds-checked.
 * @throws QuiesceError LIBVIRT_PROTOCOL when the payload is shorter than its structure says, or a count or length
 *   exceeds its limit.
 */
export class XdrReader {
  private offset = 0;

  constructor(
    private readonly buffer: Buffer,
    private readonly what = "payload",
  ) {}

  private take(n: number): Buffer {
    if (this.offset + n > this.buffer.length) {
      throw protocolError(`${this.what} ends after ${this.buffer.length} bytes, ${this.offset + n} needed`, { what: this.what });
    }
    const out = this.buffer.subarray(this.offset, this.offset + n);
    this.offset += n;
    return out;
  }

  int(): number {
    return this.take(4).readInt32BE(0);
  }

  uint(): number {
    return this.take(4).readUInt32BE(0);
  }

  hyper(): bigint {
    return this.take(8).readBigInt64BE(0);
  }

  uhyper(): bigint {
    return this.take(8).readBigUInt64BE(0);
  }

  double(): number {
    return this.take(8).readDoubleBE(0);
  }

  /** XDR bool: any value but 0 or 1 is a protocol error. */
  bool(): boolean {
    const v = this.uint();
    if (v > 1) throw protocolError(`${this.what}: a bool of ${v}`);
    return v === 1;
  }

  string(max = MAX_STRING_BYTES): string {
    const length = this.uint();
    if (length > max) throw protocolError(`${this.what}: a string of ${length} bytes (at most ${max})`, { length });
    const s = this.take(length).toString("utf8");
    this.take(pad(length));
    return s;
  }

  optionalString(): string | null {
    return this.bool() ? this.string() : null;
  }

  fixedOpaque(length: number): Buffer {
    const b = Buffer.from(this.take(length));
    this.take(pad(length));
    return b;
  }

  array<T>(read: (r: this) => T, max: number): T[] {
    const count = this.uint();
    if (count > max) throw protocolError(`${this.what}: an array of ${count} items (at most ${max})`, { count });
    const items: T[] = [];
    for (let i = 0; i < count; i++) items.push(read(this));
    return items;
  }

  /** Fails unless the whole payload was read: a longer payload is a structure we do not understand. */
  end(): void {
    if (this.offset !== this.buffer.length) {
      throw protocolError(`${this.what} has ${this.buffer.length - this.offset} bytes left over`, { what: this.what });
    }
  }
}

/** `remote_nonnull_domain`: what every domain call passes. */
export interface DomainRef {
  readonly name: string;
  /** 16 bytes. */
  readonly uuid: Buffer;
  /** The running domain's id; -1 when it is not running. */
  readonly id: number;
}

export function writeDomain(w: XdrWriter, d: DomainRef): void {
  w.string(d.name).fixedOpaque(d.uuid, UUID_BYTES).int(d.id);
}

export function readDomain(r: XdrReader): DomainRef {
  return { name: r.string(), uuid: r.fixedOpaque(UUID_BYTES), id: r.int() };
}

/** virErrorNumber values pulumi-quiesce tells apart (libvirt's include/libvirt/virterror.h). */
export const VirErr = {
  INTERNAL_ERROR: 1,
  NO_DOMAIN: 42,
  AUTH_FAILED: 45,
  OPERATION_INVALID: 55,
  /** "Timed out during operation: cannot acquire state change lock": a domain's job stayed busy. */
  OPERATION_TIMEOUT: 68,
  ARGUMENT_UNSUPPORTED: 74,
  AUTH_CANCELLED: 79,
  AGENT_UNRESPONSIVE: 86,
  AUTH_UNAVAILABLE: 94,
  AGENT_COMMAND_TIMEOUT: 112,
  AGENT_COMMAND_FAILED: 113,
} as const;

/** `remote_error`: what a failed call returns. */
export interface RemoteError {
  /** virErrorNumber, e.g. 42 (VIR_ERR_NO_DOMAIN), 86 (VIR_ERR_AGENT_UNRESPONSIVE). */
  readonly code: number;
  /** virErrorDomain: which part of libvirt raised it. */
  readonly domain: number;
  readonly message: string | null;
  readonly level: number;
  readonly dom: DomainRef | null;
  readonly str1: string | null;
  readonly str2: string | null;
  readonly str3: string | null;
  readonly int1: number;
  readonly int2: number;
}

export function readRemoteError(r: XdrReader): RemoteError {
  const code = r.int();
  const domain = r.int();
  const message = r.optionalString();
  const level = r.int();
  const dom = r.bool() ? readDomain(r) : null;
  const str1 = r.optionalString();
  const str2 = r.optionalString();
  const str3 = r.optionalString();
  const int1 = r.int();
  const int2 = r.int();
  // remote_network, unused by libvirt: a name and a uuid when present.
  if (r.bool()) {
    r.string();
    r.fixedOpaque(UUID_BYTES);
  }
  return { code, domain, message, level, dom, str1, str2, str3, int1, int2 };
}

/** Typed parameter types (virTypedParameterType). */
export const TypedParamType = { INT: 1, UINT: 2, LLONG: 3, ULLONG: 4, DOUBLE: 5, BOOLEAN: 6, STRING: 7 } as const;

/** A typed parameter's value: 64-bit integers as bigint, booleans as boolean. */
export type TypedParamValue = number | bigint | boolean | string;

/** The most typed parameters a reply may carry (REMOTE_DOMAIN_GUEST_INFO_PARAMS_MAX is 2048). */
export const MAX_TYPED_PARAMS = 2048;

/** `remote_typed_param<>`: a counted array of `{field, value}` with a discriminated union value. */
export function readTypedParams(r: XdrReader, max = MAX_TYPED_PARAMS): Map<string, TypedParamValue> {
  const params = new Map<string, TypedParamValue>();
  for (const [field, value] of r.array((x) => readTypedParam(x), max)) params.set(field, value);
  return params;
}

function readTypedParam(r: XdrReader): [string, TypedParamValue] {
  const field = r.string();
  const type = r.int();
  switch (type) {
    case TypedParamType.INT:
      return [field, r.int()];
    case TypedParamType.UINT:
      return [field, r.uint()];
    case TypedParamType.LLONG:
      return [field, r.hyper()];
    case TypedParamType.ULLONG:
      return [field, r.uhyper()];
    case TypedParamType.DOUBLE:
      return [field, r.double()];
    case TypedParamType.BOOLEAN:
      return [field, r.int() !== 0];
    case TypedParamType.STRING:
      return [field, r.string()];
    default:
      throw protocolError(`typed parameter ${JSON.stringify(field)} has unknown type ${type}`, { field, type });
  }
}

/** A UUID's 16 bytes from its text form (`8-4-4-4-12` hex, dashes optional); undefined if it is not one. */
export function parseUuid(text: string): Buffer | undefined {
  if (!/^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/.test(text)) return undefined;
  return Buffer.from(text.replace(/-/g, ""), "hex");
}

/** A UUID's text form, as libvirt prints it (lowercase, dashed). */
export function formatUuid(bytes: Buffer): string {
  const h = bytes.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
