/**
 * The benchmarks (bench/, `npm run bench`) at the smallest size, so they cannot rot: every figure is produced
 * and is a finite number, and the one-pool fan-out uses exactly one SSH connection. Timing is never asserted.
 */
import type { Figure } from "../../bench/stats";
import { SMOKE_OPTIONS, runBench, type BenchResults } from "../../bench/index";
import { buildNotes } from "../../bench/notes";
import { renderMarkdown } from "../../bench/report";
import { SINGLE_VARIANTS } from "../../bench/single";
import { LIBVIRT_VARIANTS } from "../../bench/libvirt";

function isFigure(value: unknown): value is Figure {
  return typeof value === "object" && value !== null && "median" in value && "samples" in value;
}

/** Every Figure anywhere in the results, with its path. */
function figures(value: unknown, at = "results"): [string, Figure][] {
  if (isFigure(value)) return [[at, value]];
  if (typeof value !== "object" || value === null) return [];
  return Object.entries(value).flatMap(([key, child]) => figures(child, `${at}.${key}`));
}

let results: BenchResults;
const progress: string[] = [];

beforeAll(async () => {
  results = await runBench(SMOKE_OPTIONS, (line) => progress.push(line));
}, 600_000);

test("part 1 produces every variant and every part of the breakdown, as finite medians", () => {
  const { single } = results;
  expect(Object.keys(single.totals).sort()).toEqual([...SINGLE_VARIANTS].sort());
  for (const variant of SINGLE_VARIANTS) expect(single.totals[variant].n).toBe(SMOKE_OPTIONS.reps);
  expect(single.raw.agentCommands).toEqual([
    "guest-sync-delimited",
    "guest-fsfreeze-status",
    "guest-get-fsinfo",
    "guest-fsfreeze-freeze-list",
    "guest-fsfreeze-status",
    "guest-fsfreeze-thaw",
    "guest-fsfreeze-status",
  ]);
  expect(single.oursWarm.agentCommands).toContain("guest-fsfreeze-freeze-list");
  expect(single.oursWarm.daemonRequests).toBeGreaterThan(0);
  // The warm pool stayed connected; a cold window made its own connection.
  expect(single.warmConnectionsDuringReps).toBe(0);
  expect(single.coldConnectionsPerWindow).toBe(1);
});

test("every figure of every part is a finite number", () => {
  const all = figures(results);
  expect(all.length).toBeGreaterThan(50);
  const bad = all.filter(([, f]) => f.n === 0 || !f.samples.every(Number.isFinite) || !Number.isFinite(f.median)).map(([at]) => at);
  expect(bad).toEqual([]);
});

test("fan-out on one pool uses exactly one SSH connection, and every window is frozen and released", () => {
  expect(results.fanout.sizes.map((s) => s.n)).toEqual(SMOKE_OPTIONS.fanoutSizes);
  for (const size of results.fanout.sizes) {
    expect(size.ours.clientConnections).toBe(1);
    expect(size.ours.sshdConnections).toBe(1);
    expect(size.oursWarm.clientConnections).toBe(0);
    expect(size.oursWarm.sshdConnections).toBe(0);
    expect(size.perGuest?.clientConnections).toBe(size.n);
    expect(size.perGuest?.sshdConnections).toBe(size.n);
    for (const mode of [size.ours, size.oursWarm, size.perGuest]) {
      expect(mode?.failures).toEqual([]);
      expect(mode?.failedWindows.max).toBe(0);
    }
  }
});

test("the Pulumi stand-in run reports frozen time, command time and their difference", () => {
  const { pulumi } = results;
  expect(pulumi.runs).toBe(SMOKE_OPTIONS.pulumiRuns);
  expect(pulumi.overheadMs.median).toBeCloseTo(pulumi.heldMs.median - pulumi.commandMs.median, 6);
});

test("part 5 freezes the whole group with one SSH connection per host, and no member fails", () => {
  const g = results.group;
  expect(g?.connections).toBe(SMOKE_OPTIONS.groupHosts);
  expect(g?.failedMembers).toBe(0);
  expect(g?.skewMs.n).toBe(SMOKE_OPTIONS.groupReps);
});

test("part 4 measures every libvirt variant in every repetition, each freeze verified and thawed", () => {
  const l = results.libvirt;
  expect(l).toBeDefined();
  for (const variant of LIBVIRT_VARIANTS) {
    expect(l?.totals[variant].n).toBe(SMOKE_OPTIONS.reps);
    expect(l?.frozenBeyond[variant].n).toBe(SMOKE_OPTIONS.reps);
    expect(l?.frozenBeyond[variant].min).toBeGreaterThanOrEqual(0);
  }
});

test("the report has every section, a verdict per target, and notes", () => {
  expect(results.targets.map((t) => t.id)).toEqual([
    "single.warm-vs-raw",
    "single.alt-vs-ours",
    "single.alt-pooled-vs-ours",
    "pulumi.overhead",
    "libvirt.warm-vs-qemu+ssh",
    "libvirt.frozen-beyond-vs-socket",
    "group.skew",
    "group.connections",
    "group.failures",
  ]);
  for (const t of results.targets) {
    expect(Number.isFinite(t.measured)).toBe(true);
    expect(t.met || typeof t.missedBy === "string").toBe(true);
  }
  const markdown = renderMarkdown(results, buildNotes(results));
  for (const heading of ["### One window against the lab guest", "### Fan-out", "### Window overhead under the Pulumi stand-in", "### A libvirt domain", "### A group across hosts", "### Targets", "### Notes"]) {
    expect(markdown).toContain(heading);
  }
  expect(markdown).not.toMatch(/NaN|undefined|n\/a/);
});
