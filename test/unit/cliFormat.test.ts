/** `quiesce fsinfo`'s table and `quiesce --version` (issue 14, items 8 and 10). */
import * as fs from "node:fs";
import * as path from "node:path";
import { filesystemTable } from "../../provider/cli/index";
import { DAEMON_PROTOCOL_VERSION } from "../../provider/host/daemon";
import { packageVersion } from "../../provider/version";
import type { GuestFilesystem } from "../../provider/agent/commands";

const disk = (dev: string, serial: string | undefined, slot: number) => ({
  busType: "virtio",
  bus: 0,
  target: 0,
  unit: 0,
  dev,
  ...(serial ? { serial } : {}),
  pciController: { domain: 0, bus: 0, slot, function: 0 },
});

test("one line per filesystem: mount point, type, used/total, and each disk's serial, device, libvirt target, bus target and PCI address", () => {
  const filesystems: GuestFilesystem[] = [
    { name: "vda", mountpoint: "/data", type: "ext4", usedBytes: 14_336, totalBytes: 52_685_824, disks: [disk("/dev/vda", "qdata1", 2)] },
    { name: "md0", mountpoint: "/srv/raid", type: "xfs", usedBytes: 3 * 1024 ** 3, totalBytes: 2 * 1024 ** 4, disks: [disk("/dev/vdb", undefined, 3), disk("/dev/vdc", "r2", 10)] },
    { name: "vdd", mountpoint: "/boot/efi", type: "vfat", disks: [] },
    // A libvirt domain's (GET_GUEST_INFO): no bus address, libvirt's target instead.
    { name: "vde", mountpoint: "/lv", type: "ext4", disks: [{ busType: "unknown", bus: 0, target: 0, unit: 0, dev: "/dev/vde", serial: "lv1", libvirtTarget: "vdb" }] },
  ];
  expect(filesystemTable(filesystems).split("\n")).toEqual([
    "MOUNTPOINT  TYPE  USED / TOTAL         DISKS (serial, device, libvirt target, bus target, PCI address)",
    "/data       ext4  14.0 KiB / 50.2 MiB  serial=qdata1 /dev/vda virtio:0:0:0 pci:0000:00:02.0",
    "/srv/raid   xfs   3.0 GiB / 2.0 TiB    /dev/vdb virtio:0:0:0 pci:0000:00:03.0; serial=r2 /dev/vdc virtio:0:0:0 pci:0000:00:0a.0",
    "/boot/efi   vfat  - / -                -",
    "/lv         ext4  - / -                serial=lv1 /dev/vde target=vdb",
  ]);
});

test("--version names the package version and the host daemon protocol, which the daemon speaks", () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, "../../package.json"), "utf8")) as { version: string };
  expect(packageVersion()).toBe(pkg.version);
  const source = fs.readFileSync(path.join(__dirname, "../../provider/host/daemon.py"), "utf8");
  expect(/^VERSION = "(\d+)"$/m.exec(source)?.[1]).toBe(DAEMON_PROTOCOL_VERSION);
});
