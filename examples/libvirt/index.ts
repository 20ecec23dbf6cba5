/**
 * A libvirt domain's disk-only external snapshot, taken while the guest's /data is frozen through libvirt.
 *
 * `virsh snapshot-create-as --disk-only` switches the domain's disk to a new overlay file: from then on the guest
 * writes there, and the original image stays exactly as it was at the freeze, a consistent point you back up at
 * leisure (the window is released at once). `pulumi destroy` commits the overlay back (blockcommit --pivot).
 * Do NOT pass virsh's own `--quiesce` inside a window: it freezes again, and the agent refuses a second freeze.
 *
 * Config (pulumi config set ...):
 *   domain          the libvirt domain (name or UUID)                              (required)
 *   overlayPath     where the overlay goes on the host                             (required)
 *   disk            the disk to snapshot, as libvirt names it (default vda)
 *   otherDisks      the domain's other disks, left out of the snapshot (comma-separated, e.g. vdb)
 *   libvirtUri      default qemu:///system
 *   host, port, user, knownHostsPath   SSH to the host; omit host when libvirt is on this machine
 *   privateKey      SSH private key text (set it with --secret)
 */
import * as pulumi from "@pulumi/pulumi";
import { HostSnapshot, QuiesceWindow, WindowRelease, type Connection } from "pulumi-quiesce";

const cfg = new pulumi.Config();
const host = cfg.get("host");
const connection: Connection | undefined = host
  ? { host, port: cfg.getNumber("port"), user: cfg.get("user"), privateKey: cfg.getSecret("privateKey"), knownHostsPath: cfg.get("knownHostsPath") }
  : undefined;
const domain = cfg.require("domain");
const libvirtUri = cfg.get("libvirtUri") ?? "qemu:///system";
const disk = cfg.get("disk") ?? "vda";

const window = new QuiesceWindow("vm", { connection, domain, libvirtUri, disks: [disk], maxDurationSeconds: 60 });

// Every value travels as an environment variable, quoted by the provider: never spliced into the command.
// The other disks are listed with snapshot=no (libvirt would otherwise snapshot them too).
const otherDisks = (cfg.get("otherDisks") ?? "").split(",").filter(Boolean);
const snapshot = new HostSnapshot(
  "disk-only",
  {
    window,
    environment: { URI: libvirtUri, DOMAIN: domain, DISK: disk, OVERLAY: cfg.require("overlayPath"), OTHER_DISKS: otherDisks.join(",") },
    create:
      // Split on commas only, with globbing off: a disk name is never a pattern.
      'set -ef; set --; IFS=","; for d in $OTHER_DISKS; do set -- "$@" --diskspec "$d,snapshot=no"; done; unset IFS; ' +
      'virsh -c "$URI" snapshot-create-as "$DOMAIN" --disk-only --no-metadata --atomic --diskspec "$DISK,file=$OVERLAY" "$@"',
    delete: 'virsh -c "$URI" blockcommit "$DOMAIN" "$DISK" --active --pivot --wait && rm -f "$OVERLAY"',
  },
  { dependsOn: window },
);

const release = new WindowRelease("vm-release", { window }, { dependsOn: snapshot });

export const windowId = window.windowId;
export const frozenMountpoints = window.frozenMountpoints;
export const heldMs = release.heldMs;
export const snapshotMs = snapshot.commandMs;
