import type * as pulumi from "@pulumi/pulumi";

/**
 * How to reach the hypervisor host over SSH. Same shape as @pulumi/command's `remote.Connection`,
 * plus host key options. Host keys are always verified unless `insecureSkipHostKeyCheck` is set.
 */
export interface Connection {
  /** Host name or address. Required. */
  host: pulumi.Input<string>;
  /** SSH port. Default 22. */
  port?: pulumi.Input<number>;
  /** User. Default `"root"`. */
  user?: pulumi.Input<string>;
  /** Password. Pass it as a secret. */
  password?: pulumi.Input<string>;
  /** Private key text (OpenSSH or PEM). Pass it as a secret. */
  privateKey?: pulumi.Input<string>;
  /** Passphrase of an encrypted private key. Pass it as a secret. */
  privateKeyPassword?: pulumi.Input<string>;
  /** ssh-agent socket. Default `$SSH_AUTH_SOCK`. */
  agentSocketPath?: pulumi.Input<string>;
  /** Dial attempts before giving up (transient failures only). Default 10. */
  dialErrorLimit?: pulumi.Input<number>;
  /** Seconds per dial attempt, connect through authentication. Default 15. */
  perDialTimeout?: pulumi.Input<number>;
  /** Pinned host key (`ssh-ed25519 AAAA…`) or `SHA256:` fingerprint. Wins over known_hosts. */
  hostKey?: pulumi.Input<string>;
  /** known_hosts file. Default `~/.ssh/known_hosts` (hashed entries, `[host]:port`, `@revoked` supported). */
  knownHostsPath?: pulumi.Input<string>;
  /** Accept any host key. Explicit opt-in only. Default false. */
  insecureSkipHostKeyCheck?: pulumi.Input<boolean>;
  /** A bastion to connect through. */
  proxy?: pulumi.Input<Connection>;
}

/** Agent timeouts in seconds. */
export interface TimeoutsArgs {
  /** Sync and ordinary commands. Default 10. */
  agentSeconds?: number;
  /** The freeze command. Default 30. */
  freezeSeconds?: number;
  /** The thaw command. Default 30. */
  thawSeconds?: number;
}

/** A guest filesystem, as reported by the guest agent. */
export interface FilesystemSummary {
  /** Mount point in the guest. */
  mountpoint: string;
  /** Filesystem type, e.g. `ext4`. */
  type: string;
  /** Used bytes, when the agent reports them. */
  usedBytes?: number;
  /** Size in bytes, when the agent reports it. */
  totalBytes?: number;
  /**
   * Backing disks: serial (when set), guest device, bus type, bus target (`virtio:0:0:0`) and the controller's
   * PCI address (`0000:00:05.0`; select it as `pci:0000:00:05.0`). Every virtio-blk disk has bus target
   * `virtio:0:0:0`: tell them apart by serial, device or PCI address. For a libvirt domain: serial, guest device
   * and libvirt's target (`vda`, select it as is); libvirt reports no bus, so `busType` is `unknown` and
   * `target` empty.
   */
  disks: { serial?: string; dev?: string; busType: string; target: string; pci?: string; libvirtTarget?: string }[];
}
