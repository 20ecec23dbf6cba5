/**
 * LVM: a crash-consistent-plus-quiesced LVM snapshot of a VM's logical volume.
 * The guest's filesystems on that disk are frozen only for the `lvcreate -s`, which takes well under a second.
 *
 * Config: host, socketPath, vg, lv, snapshotSize (e.g. 5G), privateKey (secret), knownHostsPath.
 */
import * as pulumi from "@pulumi/pulumi";
import { HostSnapshot, QuiescedSnapshot } from "pulumi-quiesce";

const cfg = new pulumi.Config();
const vg = cfg.require("vg");
const lv = cfg.require("lv");
const stamp = cfg.get("stamp") ?? "nightly";
const size = cfg.get("snapshotSize") ?? "5G";

new QuiescedSnapshot("db", {
  window: {
    connection: {
      host: cfg.require("host"),
      privateKey: cfg.requireSecret("privateKey"),
      knownHostsPath: cfg.get("knownHostsPath"),
    },
    socketPath: cfg.require("socketPath"),
    // Select by disk serial so a guest-side renumbering of /dev/vdX cannot freeze the wrong disk.
    disks: cfg.getObject<string[]>("diskSerials"),
    maxDurationSeconds: 30,
    // Everything that makes a new snapshot makes a new window: a snapshot is only taken inside a fresh freeze.
    triggers: [stamp, vg, lv, size],
  },
  snapshots: (window, opts) => [
    new HostSnapshot(
      "lv-snap",
      {
        window,
        environment: { VG: vg, LV: lv, SNAP: `${lv}-snap-${stamp}`, SIZE: size },
        create: 'lvcreate --snapshot --name "$SNAP" --size "$SIZE" "$VG/$LV"',
        delete: 'lvremove --yes "$VG/$SNAP"',
      },
      opts,
    ),
  ],
});
