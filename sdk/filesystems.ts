import * as pulumi from "@pulumi/pulumi";
import type { Connection, FilesystemSummary } from "./types";

/** Arguments of {@link getGuestFilesystems}. */
export interface GetGuestFilesystemsArgs {
  /** SSH connection to the host; omitted: the socket is on this machine. */
  connection?: Connection;
  /** Absolute path of the agent socket on the host. Exactly one of this, `proxmox` and `domain`. */
  socketPath?: string;
  /** A Proxmox VE guest by VMID (its socket is `/var/run/qemu-server/<vmid>.qga`). */
  proxmox?: { vmid: number };
  /** A libvirt domain by name or UUID (its filesystems come from libvirt's guest info, with disk serials). */
  domain?: string;
  /** The domain's libvirt URI, local to the host. Default `qemu:///system`. */
  libvirtUri?: string;
}

/** Arguments of {@link getGuestFilesystemsOutput}. */
export interface GetGuestFilesystemsOutputArgs {
  connection?: pulumi.Input<Connection>;
  socketPath?: pulumi.Input<string>;
  proxmox?: pulumi.Input<{ vmid: pulumi.Input<number> }>;
  domain?: pulumi.Input<string>;
  libvirtUri?: pulumi.Input<string>;
}

/**
 * Lists the guest's filesystems and their disks (guest-get-fsinfo), e.g. to choose `mountpoints` or `disks`.
 * Runs in the program's process at the time it is called (also during preview). Fails while the guest is frozen.
 *
 * @example
 * ```ts
 * const fss = await getGuestFilesystems({ socketPath: "/run/vm1/qga.sock" });
 * const data = fss.filter((f) => f.mountpoint.startsWith("/data")).map((f) => f.mountpoint);
 * ```
 */
export async function getGuestFilesystems(args: GetGuestFilesystemsArgs): Promise<FilesystemSummary[]> {
  // Loaded lazily so that importing the SDK stays light.
  const { listFilesystems } = require("pulumi-quiesce/provider/quiesce/lifecycle") as typeof import("../provider/quiesce/lifecycle");
  const { summarizeFilesystems, target } = require("pulumi-quiesce/provider/dynamic/window") as typeof import("../provider/dynamic/window");
  const filesystems = await listFilesystems(target({ ...args, connection: args.connection as never }));
  return summarizeFilesystems(filesystems);
}

/** The Output form of {@link getGuestFilesystems}: takes Inputs, returns an Output. */
export function getGuestFilesystemsOutput(args: GetGuestFilesystemsOutputArgs): pulumi.Output<FilesystemSummary[]> {
  return pulumi.output(args).apply((a) => getGuestFilesystems(a as unknown as GetGuestFilesystemsArgs));
}
