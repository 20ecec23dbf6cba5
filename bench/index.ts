/**
 * The benchmarks of pulumi-quiesce (issues 7, 10, 11): {@link runBench} runs the four parts and evaluates the targets.
 * `npm run bench` (bench/run.ts) runs it at full size and writes bench/results/latest.{json,md};
 * test/lab/bench.smoke.test.ts runs it at tiny size so it cannot rot.
 */
import * as os from "node:os";
import { startLab } from "../test/lab/lab";
import { stderrLog, type Log } from "./common";
import { benchFanout, type FanoutResult } from "./fanout";
import { benchPulumi, type PulumiResult } from "./pulumi";
import { benchSingleWindow, type SingleWindowResult } from "./single";
import { benchLibvirt, type LibvirtResult } from "./libvirt";
import { benchGroup, type GroupResult } from "./group";
import { evaluateTargets, type TargetCheck } from "./targets";

/** What to run, and how much. */
export interface BenchOptions {
  /** Part 1 repetitions. Default 15. */
  readonly reps: number;
  /** Part 2 sizes. Default [10, 200, 1000]. */
  readonly fanoutSizes: readonly number[];
  /** Part 2 repetitions of the one-connection runs. Default 5. */
  readonly fanoutReps: number;
  /** Part 2 repetitions of the connection-per-guest runs. Default 2. */
  readonly perGuestReps: number;
  /** Part 2: connection-per-guest runs only up to this N. Default 500. */
  readonly perGuestMaxN: number;
  /** Part 3 runs. Default 5. */
  readonly pulumiRuns: number;
  /** The alternative's keep-stdin-open wait per command, in ms. Default 200. */
  readonly altSleepMs: number;
  /** Run the lab guest's write load on /data during parts 1 and 3. Default false (quieter figures). */
  readonly load: boolean;
  /** Fake agents' freeze latency, in ms. Default 30. */
  readonly freezeDelayMs: number;
  /** Part 5: members of the group, hosts they are spread over, repetitions. Default 200, 4, 3. */
  readonly groupMembers: number;
  readonly groupHosts: number;
  readonly groupReps: number;
  /** True for the tiny smoke-size run. */
  readonly smoke: boolean;
}

/** Full-size defaults. */
export const DEFAULT_OPTIONS: BenchOptions = {
  reps: 15,
  fanoutSizes: [10, 200, 1000],
  fanoutReps: 5,
  perGuestReps: 2,
  perGuestMaxN: 500,
  pulumiRuns: 5,
  altSleepMs: 200,
  load: false,
  freezeDelayMs: 30,
  groupMembers: 200,
  groupHosts: 4,
  groupReps: 3,
  smoke: false,
};

/** Smoke-size options: every figure is produced, at the smallest size. */
export const SMOKE_OPTIONS: BenchOptions = {
  ...DEFAULT_OPTIONS,
  reps: 2,
  fanoutSizes: [3],
  fanoutReps: 1,
  perGuestReps: 1,
  perGuestMaxN: 3,
  pulumiRuns: 1,
  // The alternative's socat pipeline waits a fixed time for each reply; on a loaded CI machine 200 ms is too
  // short for a freeze, and the smoke run checks behaviour, not speed.
  altSleepMs: 1500,
  groupMembers: 8,
  groupReps: 1,
  smoke: true,
};

/** Everything one run measured. */
export interface BenchResults {
  readonly meta: {
    readonly startedAt: string;
    readonly durationSeconds: number;
    readonly node: string;
    readonly platform: string;
    readonly cpus: number;
    readonly cpuModel: string;
    readonly memoryGB: number;
    /** 1-minute load average at the start and the end (the machine is shared). */
    readonly loadAverage: { readonly start: number; readonly end: number };
    readonly options: BenchOptions;
  };
  readonly single: SingleWindowResult;
  readonly fanout: FanoutResult;
  readonly pulumi: PulumiResult;
  /** Part 4: a libvirt domain (absent in results written before it existed). */
  readonly libvirt?: LibvirtResult;
  /** Part 5: a group of fake agents across several hosts (absent in results written before it existed). */
  readonly group?: GroupResult;
  readonly targets: readonly TargetCheck[];
}

/**
 * Runs all four parts. Parts 1, 3 and 4 share one lab (guest + sshd; part 4 adds a libvirtd and its domain); part 2
 * starts its own sshd and fake agents.
 */
export async function runBench(options: BenchOptions, log: Log = stderrLog): Promise<BenchResults> {
  const startedAt = new Date();
  const loadStart = os.loadavg()[0];
  log(`starting the lab (guest ${options.load ? "with" : "without"} write load)`);
  const lab = await startLab({ guest: { load: options.load } });
  let single: SingleWindowResult;
  let pulumi: PulumiResult;
  let libvirt: LibvirtResult;
  try {
    single = await benchSingleWindow(lab, { reps: options.reps, sleepMs: options.altSleepMs, log });
    pulumi = await benchPulumi(lab, { runs: options.pulumiRuns, log });
    libvirt = await benchLibvirt(lab, { reps: options.reps, log });
  } finally {
    await lab.stop();
  }
  const fanout = await benchFanout({
    sizes: options.fanoutSizes,
    reps: options.fanoutReps,
    perGuestReps: options.perGuestReps,
    perGuestMaxN: options.perGuestMaxN,
    freezeDelayMs: options.freezeDelayMs,
    log,
  });
  const group = await benchGroup({ members: options.groupMembers, hosts: options.groupHosts, reps: options.groupReps, freezeDelayMs: options.freezeDelayMs, log });
  const cpus = os.cpus();
  return {
    meta: {
      startedAt: startedAt.toISOString(),
      durationSeconds: (Date.now() - startedAt.getTime()) / 1000,
      node: process.version,
      platform: `${os.type()} ${os.release()} ${os.arch()}`,
      cpus: cpus.length,
      cpuModel: cpus[0]?.model ?? "unknown",
      memoryGB: Math.round(os.totalmem() / 1e9),
      loadAverage: { start: loadStart, end: os.loadavg()[0] },
      options,
    },
    single,
    fanout,
    pulumi,
    libvirt,
    group,
    targets: evaluateTargets(single, fanout, pulumi, libvirt, group),
  };
}
