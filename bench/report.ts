/** Renders a run's results as the markdown that `npm run bench` prints and writes to bench/results/latest.md. */
import type { BenchResults } from "./index";
import type { FanoutFigures } from "./fanout";
import type { OursBreakdown, SingleVariant } from "./single";
import { ms, ratio, type Figure } from "./stats";

function cell(f: Figure): string {
  return ms(f.median);
}

function range(f: Figure): string {
  return f.n > 1 ? `${ms(f.min)}–${ms(f.max)}` : "";
}

function table(header: readonly string[], align: readonly ("l" | "r")[], rows: readonly (readonly string[])[]): string {
  const sep = align.map((a) => (a === "r" ? "---:" : "---"));
  return [header, sep, ...rows].map((r) => `| ${r.join(" | ")} |`).join("\n");
}

const VARIANT_TEXT: Record<SingleVariant, [string, (r: BenchResults) => string]> = {
  raw: ["raw (the physical limit)", () => "our agent session straight on the UNIX socket on this host: sync, status, fsinfo, freeze-list, status, thaw, status"],
  rawSplit: ["raw, split like a window", () => "the same commands in two sessions, as a window must (create; later, release): sync, status, fsinfo, freeze-list, status; then sync, status, thaw, status"],
  oursWarm: ["**ours, warm**", () => "`createWindow` + `releaseWindow` over an SshPool that is already connected"],
  oursCold: ["ours, cold", () => "the same with a new SshPool: new SSH connection"],
  altSsh: [
    "alternative: ssh client per command",
    (r) =>
      `${r.single.altExecs} × \`ssh host '(printf <sync+cmd>; sleep ${r.single.sleepMs / 1000}) \\| socat - UNIX-CONNECT:sock'\`` +
      " with the OpenSSH client (what one @pulumi/command `remote.Command` per agent command does)",
  ],
  altPooled: ["alternative: exec per command, pooled", (r) => `the same ${r.single.altExecs} shell commands as execs on one connected ssh2 connection`],
  execTrue: ["baseline: exec `true`", () => "one exec on a connected ssh2 connection"],
  sshTrue: ["baseline: `ssh host true`", () => "the OpenSSH client: connect, authenticate, exec"],
};

function singleSection(r: BenchResults): string {
  const s = r.single;
  const raw = s.totals.raw.median;
  const rows = (Object.keys(VARIANT_TEXT) as SingleVariant[]).map((v) => {
    const [name, what] = VARIANT_TEXT[v];
    const f = s.totals[v];
    return [name, what(r), cell(f), range(f), ratio(f.median / raw)];
  });
  const b = (w: OursBreakdown | undefined, pick: (x: OursBreakdown) => Figure): string => (w ? ms(pick(w).median) : "—");
  const w = s.oursWarm;
  const c = s.oursCold;
  const breakdown = table(
    ["where the time goes (ms)", "ours, warm", "ours, cold", "raw"],
    ["l", "r", "r", "r"],
    [
      ["opening relay / agent channels (cold: includes the SSH connect)", b(w, (x) => x.agentOpenMs), b(c, (x) => x.agentOpenMs), ms(s.raw.openMs.median)],
      [
        `agent round trips (ours ${w.agentRoundTrips}, raw ${s.raw.agentCommands.length})`,
        b(w, (x) => x.agentCommandsMs),
        b(c, (x) => x.agentCommandsMs),
        ms(s.raw.agentCommandsMs.median),
      ],
      ["  of which the sync that opens a session (ours: the relay's, raw: the socket's)", b(w, (x) => x.agentSyncMs), b(c, (x) => x.agentSyncMs), ms(s.raw.agentSyncMs.median)],
      [`host daemon: ${w.daemonRequests} requests (claim, relay, arm, release: its thaw and checks), control channel open`, b(w, (x) => x.daemonMs), b(c, (x) => x.daemonMs), "—"],
      ["other (JavaScript, scheduling, closing channels)", b(w, (x) => x.otherMs), b(c, (x) => x.otherMs), "—"],
      ["createWindow alone / releaseWindow alone", `${b(w, (x) => x.createMs)} / ${b(w, (x) => x.releaseMs)}`, `${b(c, (x) => x.createMs)} / ${b(c, (x) => x.releaseMs)}`, "—"],
    ],
  );
  // Pair each of our round trips with raw's round trip of the same command and occurrence.
  const occurrence = (keys: readonly string[], index: number): [string, number] => {
    const name = keys[index].slice(3);
    return [name, keys.slice(0, index).filter((k) => k.slice(3) === name).length];
  };
  const rawKeys = Object.keys(s.raw.perCommandMs);
  const oursKeys = Object.keys(w.perCommandMs);
  const perCommand = table(
    ["agent round trip (ms)", "ours, warm", "raw"],
    ["l", "r", "r"],
    oursKeys.map((key, i) => {
      const [name, nth] = occurrence(oursKeys, i);
      const rawKey = rawKeys.find((_k, j) => occurrence(rawKeys, j)[0] === name && occurrence(rawKeys, j)[1] === nth);
      return [key, ms(w.perCommandMs[key].median), rawKey ? ms(s.raw.perCommandMs[rawKey].median) : "—"];
    }),
  );
  return [
    "### One window against the lab guest",
    "",
    `Real qemu-ga 7.2 in a TCG guest (${r.meta.options.load ? "with" : "no"} write load), OpenSSH 9.2 sshd on loopback; freeze ${s.mountpoints.join(", ")}, verify, thaw, verify. ` +
      `${s.reps} repetitions, every variant in each repetition (order rotated). Medians; min–max over the repetitions.`,
    "",
    table(["variant", "what it does", "median ms", "min–max", "vs raw"], ["l", "l", "r", "r", "r"], rows),
    "",
    breakdown,
    "",
    `<details><summary>Each agent round trip (median ms)</summary>\n\n${perCommand}\n\n</details>`,
    "",
    `Alternative with its fixed waits subtracted (a lower bound, as if socat could end on the reply): ssh client ${ms(s.altSshNoWait.median)} ms, ` +
      `pooled exec ${ms(s.altPooledNoWait.median)} ms. The warm pool made ${s.warmConnectionsDuringReps} new SSH connections during the repetitions; ` +
      `a cold window made ${s.coldConnectionsPerWindow}.`,
  ].join("\n");
}

function fanoutRow(n: number, mode: string, f: FanoutFigures): string[] {
  return [
    String(n),
    mode,
    `${f.clientConnections} / ${f.sshdConnections}`,
    cell(f.totalMs),
    cell(f.freezePhaseMs),
    cell(f.thawPhaseMs),
    cell(f.freezeSkewMs),
    f.peakRssMB.median.toFixed(0),
    f.failedWindows.max > 0 ? `**${f.failedWindows.median} of ${n}**` : "0",
    String(f.runs),
  ];
}

function fanoutSection(r: BenchResults): string {
  const f = r.fanout;
  const rows = f.sizes.flatMap((s) => [
    fanoutRow(s.n, "ours: one pool, connect included", s.ours),
    fanoutRow(s.n, "ours: one pool, already connected", s.oursWarm),
    ...(s.perGuest ? [fanoutRow(s.n, "a connection per guest", s.perGuest)] : []),
  ]);
  const steps = f.sizes.map((s) => {
    const l = s.ours.lastStepMs;
    return `N=${s.n}: sync ${ms(l["guest-sync-delimited"].median)}, fsinfo ${ms(l["guest-get-fsinfo"].median)}, freeze reply ${ms(l["guest-fsfreeze-freeze-list"].median)}`;
  });
  const failures = f.sizes.flatMap((s) =>
    (["ours", "oursWarm", "perGuest"] as const).flatMap((mode) =>
      (s[mode]?.failures ?? []).map((x) => `- N=${s.n}, ${mode}: ${x.count} × ${x.message}`),
    ),
  );
  return [
    "### Fan-out: N guests behind one sshd",
    "",
    `Fake agents (each freeze takes ${f.freezeDelayMs} ms) on UNIX sockets, reached through one lab sshd; freeze all concurrently, then thaw all, ` +
      "through `createWindow`/`releaseWindow` (each window: claim, relay, sync, ping, status, info, fsinfo, arm, freeze-list, status; the release is one " +
      "host daemon request: status, thaw, status, record). The measured client and the agents run in separate processes; " +
      `RSS is the client's peak. Where windows failed, the other figures cover the windows that worked. sshd: \`${f.sshdConfig}\`.`,
    "",
    table(
      ["N", "mode", "SSH connections (client / sshd)", "total ms", "freeze phase ms", "thaw phase ms", "freeze skew ms", "peak RSS MB", "failed windows", "runs"],
      ["r", "l", "r", "r", "r", "r", "r", "r", "r", "r"],
      rows,
    ),
    "",
    "When the last window got past each step of its create (ms from the start, one pool, connect included): " + steps.join("; ") + ".",
    ...(failures.length ? ["", "Failures (all runs):", ...failures] : []),
  ].join("\n");
}

function pulumiSection(r: BenchResults): string {
  const p = r.pulumi;
  return [
    "### Window overhead under the Pulumi stand-in",
    "",
    "examples/quickstart (QuiesceWindow → HostSnapshot `cp --sparse=always` of the 64 MiB /data image on the host → WindowRelease) through " +
      "test/pulumi/mocksRunner.ts, with the real serialized providers, against the lab guest over SSH. Frozen time is WindowRelease.heldMs minus the " +
      "window's freezeMs: from the freeze's reply (the guest frozen) to the host daemon's verified thaw; the snapshot's own time is HostSnapshot.commandMs " +
      "(its exec included).",
    "",
    table(
      ["runs", "frozen (heldMs)", "snapshot command (commandMs)", "overhead (frozen − command)", "min–max overhead", "whole program run"],
      ["r", "r", "r", "r", "r", "r"],
      [[String(p.runs), cell(p.heldMs), cell(p.commandMs), `**${cell(p.overheadMs)}**`, range(p.overheadMs), cell(p.programMs)]],
    ),
  ].join("\n");
}

function libvirtSection(r: BenchResults): string {
  const l = r.libvirt;
  if (!l) return "";
  const label: Record<string, string> = {
    oursWarm: "ours, warm (domain, verified)",
    oursCold: "ours, cold (new SSH connection)",
    socketWarm: "ours, warm, on an agent socket (part 1's target)",
    virshQemuSsh: "virsh -c qemu+ssh:// per command",
    sshVirsh: "ssh host virsh ... per command",
    localVirsh: "virsh on the host",
  };
  const warm = l.totals.oursWarm.median;
  return [
    "### A libvirt domain",
    "",
    `The lab guest as a libvirt domain under a real libvirtd, /data frozen and thawed; ${l.reps} repetitions, every variant in each (order rotated). ` +
      "Ours verifies before and after (status, count, status); virsh runs domfsfreeze then domfsthaw and verifies nothing. " +
      "Frozen beyond the command: ours, from the freeze's reply to create's return plus from release's call to the thaw's reply; " +
      "virsh, the thaw command alone (a lower bound).",
    "",
    table(
      ["variant", "freeze + thaw", "× ours warm", "frozen beyond the command"],
      ["l", "r", "r", "r"],
      (Object.keys(l.totals) as (keyof typeof l.totals)[]).map((v) => [label[v] ?? v, cell(l.totals[v]), ratio(l.totals[v].median / warm), cell(l.frozenBeyond[v])]),
    ),
    "",
    `Warm, on the domain: createWindow ${cell(l.createMs)}, releaseWindow ${cell(l.releaseMs)}.`,
  ].join("\n");
}

function groupSection(r: BenchResults): string {
  const g = r.group;
  if (!g) return "";
  return [
    "### A group across hosts",
    "",
    `${g.members} fake agents (each freeze ${r.meta.options.freezeDelayMs} ms) behind ${g.hosts} lab sshd hosts, frozen as one QuiesceGroup (createGroup: ` +
      "every member claimed and planned, then every freeze at once, each verified), then released; a new SSH pool each run.",
    "",
    table(
      ["runs", "create (connect included)", "skew (first sent → last verified)", "freezes sent over", "verified over", "release", "SSH connections", "failed members"],
      ["r", "r", "r", "r", "r", "r", "r", "r"],
      [[String(g.reps), cell(g.createMs), `**${cell(g.skewMs)}**`, cell(g.issueSpreadMs), cell(g.verifySpreadMs), cell(g.releaseMs), String(g.connections), String(g.failedMembers)]],
    ),
  ].join("\n");
}

function targetsSection(r: BenchResults): string {
  return [
    "### Targets",
    "",
    table(
      ["target", "measured", "limit", "verdict"],
      ["l", "r", "r", "l"],
      r.targets.map((t) => [t.target, t.measuredText, `${t.comparison} ${t.limitText}`, t.met ? "met" : `**missed**: ${t.missedBy ?? ""}`]),
    ),
  ].join("\n");
}

/** The whole report. `notes` are appended verbatim (see notes.ts). */
export function renderMarkdown(r: BenchResults, notes: readonly string[]): string {
  const m = r.meta;
  return [
    "## Performance",
    "",
    `\`npm run bench\` on ${m.startedAt.slice(0, 10)}: ${m.cpus} × ${m.cpuModel}, ${m.memoryGB} GB, ${m.platform}, Node ${m.node}; ` +
      `a shared machine (1-minute load average ${m.loadAverage.start.toFixed(1)} at the start, ${m.loadAverage.end.toFixed(1)} at the end). ` +
      `Every figure is a median. Run took ${Math.round(m.durationSeconds)} s${m.options.smoke ? " (smoke size: figures are not meaningful)" : ""}.`,
    "",
    singleSection(r),
    "",
    fanoutSection(r),
    "",
    pulumiSection(r),
    "",
    ...(r.libvirt ? [libvirtSection(r), ""] : []),
    ...(r.group ? [groupSection(r), ""] : []),
    targetsSection(r),
    ...(notes.length ? ["", "### Notes", "", ...notes.map((n) => `- ${n}`)] : []),
    "",
    "Reproduce: `npm run bench` (options: `--reps N`, `--fanout 10,200,500`, `--fanout-reps N`, `--per-guest-reps N`, `--per-guest-max N`, " +
      "`--pulumi-runs N`, `--sleep-ms N`, `--load`, `--smoke`; or the same as BENCH_* environment variables). Results: bench/results/latest.{json,md}.",
    "",
  ].join("\n");
}
