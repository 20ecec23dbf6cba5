/**
 * The guest agent of a libvirt domain, as the typed QGA commands (../agent/commands) see it: each command goes
 * through libvirt's DOMAIN_AGENT_COMMAND (libvirt owns the agent's socket). libvirt has no freeze-status API, so
 * guest-fsfreeze-status, guest-info and guest-get-osinfo go this way; it marks the domain tainted
 * `custom-ga-command` (README, "libvirt"). The freeze and thaw themselves use libvirt's own APIs.
 */
import { QuiesceError, isQuiesceError } from "../errors";
import { agentCommandError, type ExecuteOptions } from "../agent/session";
import type { AgentExecutor, GuestFilesystem } from "../agent/commands";
import { VirErr, type DomainRef } from "./codec";
import { domainAgentCommand, domainFsFreeze, domainGetGuestInfo } from "./procedures";
import type { LibvirtSession } from "./session";
import { filesystemsFromGuestInfo } from "./guest";


/** Default timeout of a command, in ms, when the call gives none. */
const DEFAULT_COMMAND_MS = 10_000;

/**
 * Maps a libvirt error of an agent call to the agent client's errors: the agent's own error reply (libvirt
 * wraps it: "unable to execute QEMU agent command 'X': DESC") as the agent client maps it, a timeout or an
 * unresponsive agent as AGENT_TIMEOUT; anything else unchanged.
 */
export function libvirtAgentError(command: string, err: unknown, target: string): unknown {
  if (isQuiesceError(err, "LIBVIRT_TIMEOUT")) {
    return new QuiesceError("AGENT_TIMEOUT", `${target}: ${command} through libvirt got no answer in time (${err.message})`, { target, command }, { cause: err });
  }
  if (!isQuiesceError(err, "LIBVIRT_ERROR")) return err;
  const code = err.fields.libvirtCode;
  const message = String(err.fields.libvirtMessage ?? err.message);
  if (code === VirErr.AGENT_COMMAND_TIMEOUT || code === VirErr.AGENT_UNRESPONSIVE || code === VirErr.OPERATION_TIMEOUT) {
    return new QuiesceError("AGENT_TIMEOUT", `${target}: the guest agent did not answer ${command} through libvirt: ${message}`, { target, command, libvirtCode: code }, { cause: err });
  }
  const wrapped = /unable to execute QEMU agent command '[^']*': ([\s\S]*)$/.exec(message);
  if (wrapped && (code === VirErr.INTERNAL_ERROR || code === VirErr.AGENT_COMMAND_FAILED)) {
    const mapped = agentCommandError(command, { class: "GenericError", desc: wrapped[1] }, target);
    return new QuiesceError(mapped.code, mapped.message, { ...mapped.fields, libvirtCode: code }, { cause: err });
  }
  return err;
}

/** The agent of `domain` through `session`'s DOMAIN_AGENT_COMMAND. */
export class LibvirtAgent implements AgentExecutor {
  constructor(
    private readonly session: LibvirtSession,
    private readonly domain: DomainRef,
    /** Label for messages. */
    readonly target: string,
  ) {}

  async execute(command: string, args?: Readonly<Record<string, unknown>>, options: ExecuteOptions = {}): Promise<unknown> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_COMMAND_MS;
    const request = JSON.stringify(args ? { execute: command, arguments: args } : { execute: command });
    let reply: string | null;
    try {
      // libvirt's own timeout (whole seconds) first; ours, a little later, catches libvirt itself not answering.
      reply = await domainAgentCommand(this.session, this.domain, request, Math.max(1, Math.ceil(timeoutMs / 1000)), {
        signal: options.signal,
        timeoutMs: timeoutMs + 5_000,
      });
    } catch (err) {
      throw libvirtAgentError(command, err, this.target);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(reply ?? "null");
    } catch (err) {
      throw new QuiesceError("AGENT_PROTOCOL", `${this.target}: libvirt passed on a reply to ${command} that is not JSON`, { target: this.target, command }, { cause: err });
    }
    if (typeof parsed !== "object" || parsed === null || !("return" in parsed)) {
      throw new QuiesceError("AGENT_PROTOCOL", `${this.target}: the reply to ${command} has no "return"`, { target: this.target, command });
    }
    return (parsed as { return: unknown }).return;
  }

  /** The guest's filesystems, from DOMAIN_GET_GUEST_INFO (with disk serials and libvirt's disk targets). */
  async filesystems(options: ExecuteOptions = {}): Promise<GuestFilesystem[]> {
    try {
      const info = await domainGetGuestInfo(this.session, this.domain, undefined, { signal: options.signal, timeoutMs: (options.timeoutMs ?? DEFAULT_COMMAND_MS) + 5_000 });
      return filesystemsFromGuestInfo(info).map((f) => ({
        name: f.name,
        mountpoint: f.mountpoint,
        type: f.type,
        ...(f.totalBytes !== undefined ? { totalBytes: f.totalBytes } : {}),
        ...(f.usedBytes !== undefined ? { usedBytes: f.usedBytes } : {}),
        // libvirt reports no bus address: "unknown" keeps those fields out of matching and messages.
        disks: f.disks.map((d) => ({
          busType: "unknown",
          bus: 0,
          target: 0,
          unit: 0,
          ...(d.device ? { dev: d.device } : {}),
          ...(d.serial ? { serial: d.serial } : {}),
          ...(d.alias ? { libvirtTarget: d.alias } : {}),
        })),
      }));
    } catch (err) {
      throw libvirtAgentError("guest-get-fsinfo", err, this.target);
    }
  }

  /**
   * DOMAIN_FSFREEZE of `mountpoints` (none: everything). Returns the count the agent returned. The call blocks as
   * long as libvirt's agent timeout for the domain says (by default with no limit); `timeoutMs` bounds our wait.
   */
  async freeze(mountpoints: readonly string[], options: ExecuteOptions = {}): Promise<number> {
    try {
      return await domainFsFreeze(this.session, this.domain, mountpoints, { signal: options.signal, timeoutMs: options.timeoutMs });
    } catch (err) {
      throw libvirtAgentError(mountpoints.length ? "guest-fsfreeze-freeze-list" : "guest-fsfreeze-freeze", err, this.target);
    }
  }
}
