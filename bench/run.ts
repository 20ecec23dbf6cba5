/**
 * `npm run bench`: runs the benchmarks (bench/index.ts), prints the markdown table and writes
 * bench/results/latest.json and bench/results/latest.md.
 *
 * Options (argv, or the BENCH_* environment variable named after each):
 *   --reps N              part 1 repetitions (BENCH_REPS, default 15)
 *   --fanout 10,200,500   part 2 sizes (BENCH_FANOUT)
 *   --fanout-reps N       part 2 repetitions on one connection (BENCH_FANOUT_REPS, default 5)
 *   --per-guest-reps N    part 2 repetitions with a connection per guest (BENCH_PER_GUEST_REPS, default 2)
 *   --per-guest-max N     connection-per-guest runs only up to this N (BENCH_PER_GUEST_MAX, default 500)
 *   --pulumi-runs N       part 3 runs (BENCH_PULUMI_RUNS, default 5)
 *   --group-members N     part 5 group size (BENCH_GROUP_MEMBERS, default 200), over --group-hosts N hosts (default 4)
 *   --group-reps N        part 5 repetitions (BENCH_GROUP_REPS, default 3)
 *   --sleep-ms N          the alternative's keep-stdin-open wait (BENCH_SLEEP_MS, default 200)
 *   --load                run the lab guest's write load (BENCH_LOAD=1)
 *   --smoke               tiny sizes (BENCH_SMOKE=1); explicit options still apply on top
 *   --render              measure nothing: re-render latest.md from latest.json (after editing report.ts or notes.ts)
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { DEFAULT_OPTIONS, SMOKE_OPTIONS, runBench, type BenchOptions, type BenchResults } from "./index";
import { buildNotes } from "./notes";
import { renderMarkdown } from "./report";
import { repoRoot } from "./common";

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

function positiveInt(value: string, name: string, min = 1): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer ≥ ${min}, got ${JSON.stringify(value)}`);
  return n;
}

/** Parses argv and BENCH_* variables into options (argv wins). */
export function parseOptions(argv: readonly string[], env: NodeJS.ProcessEnv): BenchOptions {
  const smoke = argv.includes("--smoke") || env.BENCH_SMOKE === "1";
  const options: Mutable<BenchOptions> = { ...(smoke ? SMOKE_OPTIONS : DEFAULT_OPTIONS) };
  const numeric: [string, string, keyof BenchOptions, number][] = [
    ["--reps", "BENCH_REPS", "reps", 1],
    ["--fanout-reps", "BENCH_FANOUT_REPS", "fanoutReps", 1],
    ["--per-guest-reps", "BENCH_PER_GUEST_REPS", "perGuestReps", 0],
    ["--per-guest-max", "BENCH_PER_GUEST_MAX", "perGuestMaxN", 0],
    ["--pulumi-runs", "BENCH_PULUMI_RUNS", "pulumiRuns", 1],
    ["--sleep-ms", "BENCH_SLEEP_MS", "altSleepMs", 1],
    ["--group-members", "BENCH_GROUP_MEMBERS", "groupMembers", 1],
    ["--group-hosts", "BENCH_GROUP_HOSTS", "groupHosts", 1],
    ["--group-reps", "BENCH_GROUP_REPS", "groupReps", 1],
  ];
  const valueOf = (flag: string, variable: string): string | undefined => {
    const i = argv.indexOf(flag);
    if (i >= 0) {
      const value = argv[i + 1];
      if (value === undefined) throw new Error(`${flag} needs a value`);
      return value;
    }
    return env[variable];
  };
  for (const [flag, variable, key, min] of numeric) {
    const value = valueOf(flag, variable);
    if (value !== undefined) (options[key] as number) = positiveInt(value, flag, min);
  }
  const sizes = valueOf("--fanout", "BENCH_FANOUT");
  if (sizes !== undefined) options.fanoutSizes = sizes.split(",").map((v) => positiveInt(v.trim(), "--fanout"));
  if (argv.includes("--load") || env.BENCH_LOAD === "1") options.load = true;
  const known = new Set(["--smoke", "--load", ...numeric.map(([flag]) => flag), "--fanout"]);
  argv.forEach((arg, i) => {
    const isValue = i > 0 && known.has(argv[i - 1]) && !["--smoke", "--load"].includes(argv[i - 1]);
    if (!isValue && !known.has(arg)) throw new Error(`unknown option ${arg} (see bench/run.ts)`);
  });
  return options;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const dir = path.join(repoRoot, "bench", "results");
  let results: BenchResults;
  if (argv.includes("--render")) {
    results = JSON.parse(fs.readFileSync(path.join(dir, "latest.json"), "utf8")) as BenchResults;
  } else {
    results = await runBench(parseOptions(argv, process.env));
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, "latest.json"), JSON.stringify(results, null, 2) + "\n");
  }
  const markdown = renderMarkdown(results, buildNotes(results));
  fs.writeFileSync(path.join(dir, "latest.md"), markdown);
  process.stdout.write(markdown);
  process.stderr.write(`bench: wrote ${argv.includes("--render") ? "" : "latest.json and "}${path.join(dir, "latest.md")}\n`);
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    if (err instanceof AggregateError) for (const e of err.errors) process.stderr.write(`  - ${(e as Error).message}\n`);
    process.exitCode = 1;
  });
}
