/**
 * examples/quickstart as a real Pulumi program under pulumi.runtime.setMocks, where each resource's
 * serialized provider runs for real, against the lab guest with an in-guest write load: the copy taken
 * inside the window must be a consistent filesystem. The same copy without the window must not be, so the
 * check discriminates. And the private key, given as a secret, must never appear in plaintext.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { agentStatusAt } from "./agentStatus";
import { findPlaintext, runProgram } from "../pulumi/mocksRunner";
import { inspectDataImage } from "./lab";
import { useLab } from "./shared";

const lab = useLab({ guest: { load: true } });
const repoRoot = path.resolve(__dirname, "../..");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "quickstart-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function config(snapshotPath: string): Record<string, string> {
  const { sshd, guest } = lab();
  return {
    socketPath: guest.socketPath,
    diskImage: guest.disk("/data").image,
    snapshotPath,
    host: sshd.host,
    port: String(sshd.port),
    user: "root",
    privateKey: sshd.privateKey,
    knownHostsPath: sshd.knownHostsPath,
  };
}

const agentStatus = (): Promise<string> => agentStatusAt(lab().guest.socketPath);

test("quickstart: a consistent copy of a disk being written, the guest thawed after, no secret in plaintext", async () => {
  const snapshotPath = path.join(tmp, "data-copy.img");
  const run = await runProgram(path.join(repoRoot, "examples/quickstart/index.ts"), {
    project: "pulumi-quiesce-quickstart",
    stack: "lab",
    config: config(snapshotPath),
    secretConfigKeys: ["privateKey"],
    programDir: repoRoot,
    timeoutMs: 120_000,
  });
  expect(run.errors).toEqual([]);
  const types = run.resources.filter((r) => r.dynamic).map((r) => r.type);
  expect(types).toEqual([
    "pulumi-nodejs:dynamic/quiesce:QuiesceWindow",
    "pulumi-nodejs:dynamic/quiesce:HostSnapshot",
    "pulumi-nodejs:dynamic/quiesce:WindowRelease",
  ]);
  const window = run.resources.find((r) => r.type.endsWith(":QuiesceWindow"));
  expect(window?.outputs).toMatchObject({ frozenMountpoints: ["/data"], frozenCount: 1 });
  expect(run.outputs.heldMs).toBeGreaterThan(0);
  expect(await agentStatus()).toBe("thawed");

  const report = await inspectDataImage(snapshotPath);
  expect(report.needsRecovery).toBe(false);
  expect(report.fsck.exitCode).toBe(0);
  expect(report.loggedWrites.length).toBeGreaterThan(0);
  expect(report.brokenFiles).toEqual([]);

  // The private key never appears in plaintext: not in outputs, not in any __provider.
  const key = lab().sshd.privateKey;
  expect(findPlaintext(run, key)).toEqual([]);
  for (const r of run.resources) expect(r.providerText ?? "").not.toContain(key.split("\n")[1]);
  expect(window?.secretOutputPaths).toEqual(expect.arrayContaining(["connection"]));

  // pulumi destroy: the snapshot's delete command removes the copy; the window's delete has nothing to thaw.
  await run.destroyAll();
  expect(fs.existsSync(snapshotPath)).toBe(false);
  expect(await agentStatus()).toBe("thawed");
}, 180_000);

test("the same copy without the window is not consistent (the check discriminates)", async () => {
  // The quickstart with the window removed: the same command through the same host-command code path.
  const copyProvider: pulumi.dynamic.ResourceProvider = {
    create: async (inputs) => {
      // Serialized providers must require the package by name at run time (AGENT-FACTS.md).
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const impl = require("pulumi-quiesce/provider/dynamic/hostSnapshot") as typeof import("../../provider/dynamic/hostSnapshot");
      const r = await impl.runOnHost(inputs, 'cp --sparse=always "$IMAGE" "$SNAPSHOT"', inputs.environment, "unquiesced copy", { timeoutMs: 120_000 });
      if (r.code !== 0) throw new Error(`cp failed: ${r.stderr}`);
      return { id: inputs.environment.SNAPSHOT, outs: inputs };
    },
  };
  class UnquiescedCopy extends pulumi.dynamic.Resource {
    constructor(name: string, props: Record<string, unknown>) {
      super(copyProvider, name, props, undefined, "test", "UnquiescedCopy");
    }
  }
  const verdicts: boolean[] = [];
  // A copy taken while the guest writes needs journal replay (5 of 5 in AGENT-FACTS.md); allow 3 tries.
  for (let attempt = 0; attempt < 3 && !verdicts.includes(false); attempt++) {
    const snapshotPath = path.join(tmp, `unquiesced-${attempt}.img`);
    const cfg = config(snapshotPath);
    const run = await runProgram(
      () => {
        new UnquiescedCopy("data-copy", {
          connection: { host: cfg.host, port: Number(cfg.port), user: "root", privateKey: cfg.privateKey, knownHostsPath: cfg.knownHostsPath },
          environment: { IMAGE: cfg.diskImage, SNAPSHOT: snapshotPath },
        });
      },
      { project: "pulumi-quiesce-quickstart", stack: "lab", programDir: repoRoot, timeoutMs: 120_000 },
    );
    expect(run.errors).toEqual([]);
    const report = await inspectDataImage(snapshotPath);
    verdicts.push(!report.needsRecovery && report.fsck.exitCode === 0 && report.brokenFiles.length === 0);
  }
  expect(verdicts).toContain(false);
}, 240_000);
