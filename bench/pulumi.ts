/**
 * Part 3: window overhead under the Pulumi stand-in. examples/quickstart (QuiesceWindow → HostSnapshot
 * copying the guest's /data image on the host → WindowRelease) runs through test/pulumi/mocksRunner.ts, which
 * executes the real serialized providers (from the built dist, through node_modules/pulumi-quiesce) against
 * the lab guest over SSH.
 *
 * Overhead = the time the guest was frozen (WindowRelease's heldMs, from the arming of the lease just before the
 * freeze command to the host daemon's verified thaw, minus the window's freezeMs, the freeze command itself) minus
 * the snapshot command's own time (HostSnapshot's commandMs, which includes starting its exec on the host).
 */
import * as fs from "node:fs";
import Module from "node:module";
import * as path from "node:path";
import { runProgram } from "../test/pulumi/mocksRunner";
import type { Lab } from "../test/lab/lab";
import { Samples, type Figure } from "./stats";
import { repoRoot, stderrLog, tempDir, type Log } from "./common";

/** Options of {@link benchPulumi}. */
export interface PulumiOptions {
  /** Runs of the quickstart. */
  readonly runs: number;
  readonly log?: Log;
}

/** Result of part 3 (ms). */
export interface PulumiResult {
  readonly runs: number;
  /** Frozen time: WindowRelease.heldMs − QuiesceWindow.freezeMs. */
  readonly heldMs: Figure;
  /** HostSnapshot.commandMs: the snapshot command's own time. */
  readonly commandMs: Figure;
  /** heldMs − commandMs per run. */
  readonly overheadMs: Figure;
  /** The whole program run (registrations, the three creates), for scale. */
  readonly programMs: Figure;
}

const programFile = path.join(repoRoot, "examples", "quickstart", "index.ts");

/**
 * Loads the quickstart afresh, so it registers its resources again. The runner caches program files (a
 * program module runs once per require cache); outside jest the cache entry is dropped, so each call
 * executes it again. Under jest's module registry a second call would return the cached module: it is
 * detected and refused.
 */
let lastExports: unknown;
function loadQuickstart(): unknown {
  const resolved = require.resolve(programFile);
  const cache = require.cache as Record<string, unknown> | undefined;
  if (cache) delete cache[resolved];
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- a Pulumi program is a CommonJS module, loaded as the language host does
  const exported: unknown = require(resolved);
  if (exported === lastExports) throw new Error("the quickstart module was not re-executed (module cache); run it once per process here");
  lastExports = exported;
  return exported;
}

/** The process-wide SSH pool of the built dist, which the serialized providers use (in Node's main realm). */
function closeProviderPool(): void {
  const requireFromRepo = Module.createRequire(path.join(repoRoot, "package.json"));
  const ssh = requireFromRepo("pulumi-quiesce/provider/transport/ssh") as { defaultSshPool: { closeAll(): void } };
  ssh.defaultSshPool.closeAll();
}

function numberOutput(value: unknown, name: string): number {
  if (typeof value !== "number" || !Number.isFinite(value)) throw new Error(`quickstart: output ${name} is ${JSON.stringify(value)}, not a number`);
  return value;
}

/** Runs part 3 against a running lab. Needs the built dist (`npm run build`). */
export async function benchPulumi(lab: Lab, options: PulumiOptions): Promise<PulumiResult> {
  const log = options.log ?? stderrLog;
  const dir = tempDir("pulumi");
  const samples = new Samples();
  try {
    for (let i = 0; i < options.runs; i++) {
      const snapshotPath = path.join(dir, `data-copy-${i}.img`);
      const started = performance.now();
      const run = await runProgram(loadQuickstart, {
        project: "pulumi-quiesce-quickstart",
        stack: "bench",
        config: {
          socketPath: lab.guest.socketPath,
          diskImage: lab.guest.disk("/data").image,
          snapshotPath,
          host: lab.sshd.host,
          port: String(lab.sshd.port),
          user: lab.sshd.user,
          privateKey: lab.sshd.privateKey,
          knownHostsPath: lab.sshd.knownHostsPath,
        },
        secretConfigKeys: ["privateKey"],
        programDir: repoRoot,
        timeoutMs: 180_000,
      });
      const programMs = performance.now() - started;
      try {
        if (run.errors.length > 0) throw new AggregateError(run.errors, `quickstart run ${i + 1} failed: ${run.errors[0].message}`);
        const heldMs = numberOutput(run.outputs.heldMs, "heldMs") - numberOutput(run.outputs.freezeMs, "freezeMs");
        const commandMs = numberOutput(run.outputs.copyMs, "copyMs (HostSnapshot.commandMs)");
        samples.add("heldMs", heldMs);
        samples.add("commandMs", commandMs);
        samples.add("overheadMs", heldMs - commandMs);
        samples.add("programMs", programMs);
        log(`pulumi stand-in: run ${i + 1}/${options.runs}: held ${heldMs} ms, snapshot command ${commandMs} ms`);
      } finally {
        // pulumi destroy: removes the copy; the window has nothing left to thaw.
        await run.destroyAll();
      }
    }
    return {
      runs: options.runs,
      heldMs: samples.figure("heldMs"),
      commandMs: samples.figure("commandMs"),
      overheadMs: samples.figure("overheadMs"),
      programMs: samples.figure("programMs"),
    };
  } finally {
    closeProviderPool();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
