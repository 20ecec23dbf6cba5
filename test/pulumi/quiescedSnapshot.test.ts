/**
 * QuiescedSnapshot under mocks with the serialized providers running for real, against the fake agent on a
 * local socket: window → snapshots → release, in that order, and the guest thawed at the end.
 */
import { removeLeaseDir } from "../fake/daemonFiles";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { HostSnapshot, QuiescedSnapshot } from "../../sdk";
import { FakeAgent } from "../fake/fakeAgent";
import { runProgram } from "./mocksRunner";

const repoRoot = path.resolve(__dirname, "../..");

test("window, then the snapshots, then the release; the guest is thawed after", async () => {
  const agent = await FakeAgent.start();
  const leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "leases-"));
  try {
    const run = await runProgram(
      () => {
        new QuiescedSnapshot("nightly", {
          window: { socketPath: agent.socketPath, leaseDir, mountpoints: ["/data2"] },
          snapshots: (window, opts) => [
            new HostSnapshot("snap-a", { window, create: "echo a" }, opts),
            new HostSnapshot("snap-b", { window, create: "echo b" }, opts),
          ],
        });
      },
      { programDir: repoRoot },
    );
    expect(run.errors).toEqual([]);
    const order = run.resources.filter((r) => r.dynamic).map((r) => r.name);
    expect(order[0]).toBe("nightly-window");
    expect(order.slice(1, 3).sort()).toEqual(["snap-a", "snap-b"]);
    expect(order[3]).toBe("nightly-release");
    expect(run.resources.find((r) => r.name === "nightly-release")?.outputs).toMatchObject({ outcome: "released" });
    expect(agent.status).toBe("thawed");
    expect(agent.log.filter((c) => c === "guest-fsfreeze-freeze-list")).toHaveLength(1);
    await run.destroyAll();
  } finally {
    await agent.stop();
    await removeLeaseDir(leaseDir);
  }
});
