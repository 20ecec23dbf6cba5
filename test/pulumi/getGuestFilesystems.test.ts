/** getGuestFilesystems, plain and Output forms, against the fake agent on a local socket. */
import * as path from "node:path";
import { getGuestFilesystems, getGuestFilesystemsOutput } from "../../sdk";
import { FakeAgent } from "../fake/fakeAgent";
import { runProgram } from "./mocksRunner";

let agent: FakeAgent;
beforeAll(async () => {
  agent = await FakeAgent.start();
});
afterAll(async () => agent.stop());

test("the plain form lists filesystems with their disks", async () => {
  const fss = await getGuestFilesystems({ socketPath: agent.socketPath });
  expect(fss).toEqual([
    {
      mountpoint: "/data",
      type: "ext4",
      usedBytes: 1_000_000,
      totalBytes: 60_000_000,
      disks: [{ serial: "qdata1", dev: "/dev/vda", busType: "virtio", target: "virtio:0:0:0", pci: "0000:00:02.0" }],
    },
    {
      mountpoint: "/data2",
      type: "ext4",
      usedBytes: 1_000_000,
      totalBytes: 60_000_000,
      disks: [{ serial: "qdata2", dev: "/dev/vdb", busType: "virtio", target: "virtio:0:0:0", pci: "0000:00:03.0" }],
    },
  ]);
});

test("the Output form resolves inside a program", async () => {
  const run = await runProgram(() => ({ mounts: getGuestFilesystemsOutput({ socketPath: agent.socketPath }).apply((f) => f.map((x) => x.mountpoint).join(",")) }), {
    programDir: path.resolve(__dirname, "../.."),
  });
  expect(run.errors).toEqual([]);
  expect(run.outputs.mounts).toBe("/data,/data2");
});

test("a frozen guest cannot list filesystems: the error says so", async () => {
  agent.frozen.add("/data");
  try {
    await expect(getGuestFilesystems({ socketPath: agent.socketPath })).rejects.toThrow(/frozen/);
  } finally {
    agent.frozen.clear();
  }
});
