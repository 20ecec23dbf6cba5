/**
 * The one error tree of pulumi-quiesce.
 *
 * Every failure the package raises is a {@link QuiesceError} with a stable {@link QuiesceError.code}
 * and structured {@link QuiesceError.fields}. Callers branch on `code`, never on message text (the
 * message is for people: it says what happened, where, and what to do next). Underlying causes are
 * kept with `{ cause }`.
 *
 * Codes by layer:
 * - agent:     AGENT_TIMEOUT, AGENT_FROZEN, AGENT_COMMAND_FAILED, AGENT_PROTOCOL, AGENT_INTERRUPTED,
 *              AGENT_SESSION_STATE, AGENT_FSFREEZE_DISABLED
 * - transport: SSH_AUTH_FAILED, SSH_HOST_KEY_MISMATCH, SSH_HOST_KEY_UNKNOWN, SSH_HOST_KEY_REVOKED,
 *              SSH_HOST_KEY_UNVERIFIED, SSH_KEY_INVALID, SSH_KEY_PASSPHRASE, SSH_CONNECT_TIMEOUT, SSH_COMMAND_TIMEOUT,
 *              SSH_CONNECTION_REFUSED,
 *              SSH_CONNECTION_LOST, SSH_BASTION_FAILED, SSH_CONNECT_FAILED, SOCKET_MISSING, SOCKET_NO_ACCESS,
 *              SOCKET_NOT_A_SOCKET, STREAMLOCAL_REFUSED, SOCKET_UNREACHABLE
 * - lifecycle: INVALID_INPUT, UNKNOWN_MOUNTPOINT, UNKNOWN_DISK, AMBIGUOUS_DISK, ALREADY_FROZEN, FREEZE_MISMATCH,
 *              NOT_HELD, NOT_OWNER, LEASE_EXPIRED, WATCHDOG_UNAVAILABLE (the host daemon cannot be reached or
 *              started), LEASE_DIR_REFUSED (the lease directory fails the trust checks), LEASE_IO, HOST_COMMAND_FAILED,
 *              NOT_FREEZABLE, VSS_LEASE_TOO_LONG, FSINFO_UNAVAILABLE
 * - agent, per guest OS: FREEZE_HOOK_FAILED (qemu-ga -F), VSS_WRITES_RESUMED, VSS_VOLUME_REFUSED (Windows)
 * - libvirt:   LIBVIRT_PROTOCOL (a malformed or oversized RPC message), LIBVIRT_ERROR (libvirt refused a call:
 *              its code, domain and message in the fields), LIBVIRT_TIMEOUT, LIBVIRT_INTERRUPTED, LIBVIRT_UNAVAILABLE
 *              (libvirtd not running), LIBVIRT_AUTH, UNKNOWN_DOMAIN, DOMAIN_NOT_RUNNING, NO_GUEST_AGENT
 * - groups:    GROUP_FAILED (a QuiesceGroup's create failed: every member's failure in `fields.failures`, every
 *              member thawed), GROUP_NOT_HELD (a member was not held throughout)
 * - any:       ABORTED
 */
export type QuiesceErrorCode =
  | "AGENT_TIMEOUT"
  | "AGENT_FROZEN"
  | "AGENT_COMMAND_FAILED"
  | "AGENT_PROTOCOL"
  | "AGENT_INTERRUPTED"
  | "AGENT_SESSION_STATE"
  | "AGENT_FSFREEZE_DISABLED"
  | "SSH_AUTH_FAILED"
  | "SSH_HOST_KEY_MISMATCH"
  | "SSH_HOST_KEY_UNKNOWN"
  | "SSH_HOST_KEY_REVOKED"
  | "SSH_HOST_KEY_UNVERIFIED"
  | "SSH_KEY_INVALID"
  | "SSH_KEY_PASSPHRASE"
  | "SSH_CONNECT_TIMEOUT"
  | "SSH_COMMAND_TIMEOUT"
  | "SSH_CONNECTION_REFUSED"
  | "SSH_CONNECTION_LOST"
  | "SSH_BASTION_FAILED"
  | "SSH_CONNECT_FAILED"
  | "SOCKET_MISSING"
  | "SOCKET_NO_ACCESS"
  | "SOCKET_NOT_A_SOCKET"
  | "STREAMLOCAL_REFUSED"
  | "SOCKET_UNREACHABLE"
  | "INVALID_INPUT"
  | "UNKNOWN_MOUNTPOINT"
  | "UNKNOWN_DISK"
  | "AMBIGUOUS_DISK"
  | "ALREADY_FROZEN"
  | "FREEZE_MISMATCH"
  | "NOT_HELD"
  | "NOT_OWNER"
  | "LEASE_EXPIRED"
  | "WATCHDOG_UNAVAILABLE"
  | "LEASE_DIR_REFUSED"
  | "LIBVIRT_PROTOCOL"
  | "LIBVIRT_ERROR"
  | "LIBVIRT_TIMEOUT"
  | "LIBVIRT_INTERRUPTED"
  | "LIBVIRT_UNAVAILABLE"
  | "LIBVIRT_AUTH"
  | "UNKNOWN_DOMAIN"
  | "DOMAIN_NOT_RUNNING"
  | "NO_GUEST_AGENT"
  | "LEASE_IO"
  | "HOST_COMMAND_FAILED"
  | "NOT_FREEZABLE"
  | "FREEZE_HOOK_FAILED"
  | "FSINFO_UNAVAILABLE"
  | "VSS_WRITES_RESUMED"
  | "VSS_VOLUME_REFUSED"
  | "VSS_LEASE_TOO_LONG"
  | "GROUP_FAILED"
  | "GROUP_NOT_HELD"
  | "ABORTED";

/** Structured context of an error. Every field is optional; layers add what they know. */
export interface QuiesceErrorFields {
  /** Human label of the agent endpoint, e.g. `root@hv1:22:/run/qga/vm1.sock` or `local:/run/qga.sock`. */
  readonly target?: string;
  /** The QGA command being executed, e.g. `guest-fsfreeze-freeze-list`. */
  readonly command?: string;
  /** The agent's error class, e.g. `GenericError` or `CommandNotFound`. */
  readonly errorClass?: string;
  /** The agent's error description, verbatim. */
  readonly desc?: string;
  /** A timeout that elapsed, in milliseconds. */
  readonly timeoutMs?: number;
  /** Anything else a layer wants to record (field name of a bad input, fingerprints, ...). */
  readonly [key: string]: unknown;
}

/** Base class of every error pulumi-quiesce raises. Branch on {@link QuiesceError.code}. */
export class QuiesceError extends Error {
  /** Stable machine-readable code; see {@link QuiesceErrorCode}. */
  readonly code: QuiesceErrorCode;
  /** Structured context (target, command, agent error class, ...). */
  readonly fields: QuiesceErrorFields;

  constructor(code: QuiesceErrorCode, message: string, fields: QuiesceErrorFields = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.fields = fields;
  }

  /** A plain-object form for `--json` output and logs. */
  toJSON(): { name: string; code: QuiesceErrorCode; message: string; fields: QuiesceErrorFields } {
    return { name: this.name, code: this.code, message: this.message, fields: this.fields };
  }
}

/** True when `err` is a {@link QuiesceError}, optionally with one of the given codes. */
export function isQuiesceError(err: unknown, ...codes: QuiesceErrorCode[]): err is QuiesceError {
  return err instanceof QuiesceError && (codes.length === 0 || codes.includes(err.code));
}

/** The error thrown when an AbortSignal fires; its `cause` is the signal's reason. */
export function abortError(signal: AbortSignal, fields: QuiesceErrorFields = {}): QuiesceError {
  return new QuiesceError("ABORTED", `operation aborted${fields.command ? ` during ${fields.command}` : ""}`, fields, {
    cause: signal.reason,
  });
}
