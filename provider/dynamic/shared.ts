/**
 * What the resources acting on a window share: where its guest is, and how to say what a release found.
 * (Kept apart from window.ts so that release.ts and hostSnapshot.ts need not import the window's module.)
 */
import { QuiesceError } from "../errors";
import type { SshConnectionConfig } from "../transport/ssh";
import { proxmoxSocketPath, type AgentTarget } from "../quiesce/lifecycle";

/** How a resource names its window's guest. */
export interface GuestReference {
  readonly connection?: SshConnectionConfig;
  readonly socketPath?: string;
  readonly proxmox?: { readonly vmid: number };
  /** A libvirt domain (name or UUID), in place of a socket. */
  readonly domain?: string;
  /** Its libvirt URI (default qemu:///system). */
  readonly libvirtUri?: string;
  readonly leaseDir?: string;
}

/** The agent socket of a window's guest: `socketPath`, or the Proxmox VMID's socket. */
export function socketPathOf(inputs: Pick<GuestReference, "socketPath" | "proxmox">): string {
  if (inputs.socketPath) return inputs.socketPath;
  if (inputs.proxmox) return proxmoxSocketPath(inputs.proxmox.vmid);
  throw new QuiesceError("INVALID_INPUT", "a target is required: socketPath, or proxmox.vmid", { field: "socketPath" });
}

/** Where a window's guest is, from the inputs of any resource that acts on it. */
export function target(inputs: GuestReference): AgentTarget {
  if (inputs.domain) return { connection: inputs.connection, domain: inputs.domain, libvirtUri: inputs.libvirtUri, leaseDir: inputs.leaseDir };
  return { connection: inputs.connection, socketPath: socketPathOf(inputs), leaseDir: inputs.leaseDir };
}

/** Writes a diagnostic line to stderr (shown by the engine with the resource's output). */
export function note(message: string): void {
  process.stderr.write(`pulumi-quiesce: ${message}\n`);
}

/** Why a release or delete touched nothing, in words. */
export function describeOutcome(outcome: string, leaseOwner: string | undefined): string {
  switch (outcome) {
    case "not-held":
      return "the guest is thawed and holds no lease of this window: already released, or thawed at its deadline";
    case "thawed-outside":
      return "the lease was this window's but the guest was thawed by someone else, or rebooted";
    case "other-window":
      return `the guest's freeze belongs to another window (${leaseOwner ?? "unknown owner"}); it was left alone`;
    case "frozen-outside":
      return "the guest is frozen by something outside pulumi-quiesce; it was left alone";
    case "expired":
      return "the window's lease deadline passed and the guest was thawed then (by the host daemon, or now)";
    case "already-released":
      return "the window had already been released by its owner";
    case "disconnected":
      return "the process that held the window went away and the host daemon thawed the guest (thawOnDisconnect)";
    case "vm-gone":
      return "the guest agent's socket no longer exists on the host (or its libvirt domain is no longer running): the VM stopped or was deleted, which ended the freeze";
    default:
      return outcome;
  }
}

