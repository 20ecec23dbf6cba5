/** The targets of issues 7 and 10, checked against the medians of a run. */
import type { FanoutResult } from "./fanout";
import type { PulumiResult } from "./pulumi";
import type { SingleWindowResult } from "./single";
import type { LibvirtResult } from "./libvirt";
import type { GroupResult } from "./group";
import { ms, ratio } from "./stats";

/** One target and how the run did against it. */
export interface TargetCheck {
  /** Short stable id, e.g. `single.warm-vs-raw`, `fanout.200.total`. */
  readonly id: string;
  /** The target in words. */
  readonly target: string;
  readonly measured: number;
  readonly limit: number;
  readonly comparison: "≤" | "≥" | "=";
  readonly measuredText: string;
  readonly limitText: string;
  readonly met: boolean;
  /** When missed: by how much. */
  readonly missedBy?: string;
}

function check(
  id: string,
  target: string,
  measured: number,
  comparison: TargetCheck["comparison"],
  limit: number,
  format: (value: number) => string,
): TargetCheck {
  const met = comparison === "≤" ? measured <= limit : comparison === "≥" ? measured >= limit : measured === limit;
  let missedBy: string | undefined;
  if (!met) {
    if (!Number.isFinite(measured)) missedBy = "not measured";
    else if (comparison === "=") missedBy = `${format(measured)} instead of ${format(limit)}`;
    else if (comparison === "≤") missedBy = `${format(measured - limit)} over (${ratio(measured / limit)} the limit)`;
    else missedBy = `${format(limit - measured)} short (${Math.round((measured / limit) * 100)}% of the limit)`;
  }
  return { id, target, measured, limit, comparison, measuredText: format(measured), limitText: format(limit), met, ...(missedBy ? { missedBy } : {}) };
}

const inMs = (v: number): string => `${ms(v)} ms`;
const times = (v: number): string => ratio(v);
const megabytes = (v: number): string => `${v.toFixed(0)} MB`;
const count = (v: number): string => String(v);

/**
 * Checks every target the run has figures for. Fan-out targets are checked at N = 200, and for failures at N = 1000,
 * when those sizes were run.
 */
export function evaluateTargets(single: SingleWindowResult, fanout: FanoutResult, pulumi?: PulumiResult, libvirt?: LibvirtResult, group?: GroupResult): TargetCheck[] {
  const raw = single.totals.raw.median;
  const warm = single.totals.oursWarm.median;
  const checks: TargetCheck[] = [
    check("single.warm-vs-raw", "one window, ours warm ≤ 1.1 × raw + 3 ms", warm, "≤", 1.1 * raw + 3, inMs),
    check("single.alt-vs-ours", "alternative (ssh client + socat per command) / ours warm ≥ 20", single.totals.altSsh.median / warm, "≥", 20, times),
    check(
      "single.alt-pooled-vs-ours",
      "alternative on one pooled connection (exec + socat per command) / ours warm ≥ 20",
      single.totals.altPooled.median / warm,
      "≥",
      20,
      times,
    ),
  ];
  const at200 = fanout.sizes.find((s) => s.n === 200);
  if (at200) {
    const f = at200.ours;
    checks.push(
      check("fanout.200.total", "N = 200, freeze all + thaw all (new pool, connect included) ≤ 300 ms", f.totalMs.median, "≤", 300, inMs),
      check("fanout.200.skew", "N = 200, skew between first and last freeze ≤ 10 ms", f.freezeSkewMs.median, "≤", 10, inMs),
      check("fanout.200.connections", "N = 200, SSH connections = 1", Math.max(f.clientConnections, f.sshdConnections), "=", 1, count),
      check("fanout.200.rss", "N = 200, peak RSS ≤ 150 MB", f.peakRssMB.median, "≤", 150, megabytes),
      check("fanout.200.failures", "N = 200, every window frozen and released (failed windows = 0)", f.failedWindows.max, "=", 0, count),
    );
  }
  const at1000 = fanout.sizes.find((s) => s.n === 1000);
  if (at1000) {
    checks.push(check("fanout.1000.failures", "N = 1000 on one host, every window frozen and released (failed windows = 0)", at1000.ours.failedWindows.max, "=", 0, count));
  }
  if (pulumi) {
    checks.push(
      check("pulumi.overhead", "frozen time beyond the snapshot command under the Pulumi stand-in ≤ 15 ms", pulumi.overheadMs.median, "≤", 15, inMs),
    );
  }
  if (libvirt) {
    const warm = libvirt.totals.oursWarm.median;
    checks.push(
      check("libvirt.warm-vs-qemu+ssh", "libvirt domain: virsh over qemu+ssh:// per command / a warm verified window of ours ≥ 10", libvirt.totals.virshQemuSsh.median / warm, "≥", 10, times),
      check(
        "libvirt.frozen-beyond-vs-socket",
        "libvirt domain: frozen time beyond the command ≤ a socket target's (same run) + 5 ms",
        libvirt.frozenBeyond.oursWarm.median,
        "≤",
        libvirt.frozenBeyond.socketWarm.median + 5,
        inMs,
      ),
    );
  }
  if (group) {
    const n = `${group.members} fake agents across ${group.hosts} hosts`;
    checks.push(
      check("group.skew", `a group of ${n}: skew (first freeze issued to last freeze verified) ≤ 25 ms`, group.skewMs.median, "≤", 25, inMs),
      check("group.connections", `a group of ${n}: SSH connections = hosts (${group.hosts})`, group.connections, "=", group.hosts, count),
      check("group.failures", `a group of ${n}: every member frozen and released (failed members = 0)`, group.failedMembers, "=", 0, count),
    );
  }
  return checks;
}
