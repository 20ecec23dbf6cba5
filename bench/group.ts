/**
 * Part 5: groups (issue 12). 200 fake agents (each freeze takes `freezeDelayMs`) behind 4 lab sshd "hosts", 50 per
 * host, frozen as one QuiesceGroup (createGroup: every member claimed and planned, then every freeze at once), then
 * released (releaseGroup). Measured: the whole create, the skew (first member's freeze issued to last member's
 * freeze verified), the release, and the SSH connections made (one per host is the target: members on one host share
 * the pooled connection and that host's daemon).
 */
import * as path from "node:path";
import { createGroup, releaseGroup, type GroupMember } from "../provider/quiesce/group";
import { startSshd, type LabSshd } from "../test/lab/lab";
import { startFleet } from "./fleet";
import { SshPool } from "../provider/transport/ssh";
import { Samples, type Figure } from "./stats";
import { connectionFor, removeLeaseDir, stderrLog, tempDir, type Log } from "./common";

/** What part 5 measured (medians over the repetitions, in ms). */
export interface GroupResult {
  readonly members: number;
  readonly hosts: number;
  readonly reps: number;
  readonly createMs: Figure;
  readonly skewMs: Figure;
  /** Spread of the moments the freezes were sent (first to last), and of the moments they were verified. */
  readonly issueSpreadMs: Figure;
  readonly verifySpreadMs: Figure;
  readonly releaseMs: Figure;
  /** SSH connections made per run (the most seen in any run). */
  readonly connections: number;
  /** Members that failed, over every run. */
  readonly failedMembers: number;
}

/** Runs part 5. */
export async function benchGroup(options: { members: number; hosts: number; reps: number; freezeDelayMs: number; log?: Log }): Promise<GroupResult> {
  const log = options.log ?? stderrLog;
  log(`part 5: a group of ${options.members} fake agents behind ${options.hosts} sshd hosts, ${options.reps} repetitions`);
  const dir = tempDir("group");
  const fleet = await startFleet(options.members, options.freezeDelayMs);
  const hosts: LabSshd[] = await Promise.all(Array.from({ length: options.hosts }, () => startSshd({ extraConfig: "MaxSessions 2000\nMaxStartups 100" })));
  const samples = new Samples();
  let connections = 0;
  let failedMembers = 0;
  const leaseDirs = hosts.map((_, h) => path.join(dir, `leases-${h}`));
  try {
    const members: GroupMember[] = fleet.sockets.map((socketPath, i) => ({
      name: `m${i}`,
      target: { connection: connectionFor(hosts[i % hosts.length]), socketPath, leaseDir: leaseDirs[i % hosts.length] },
      mountpoints: ["/data"],
    }));
    for (let rep = 0; rep <= options.reps; rep++) {
      const pool = new SshPool({ idleTimeoutMs: 600_000 });
      try {
        const started = performance.now();
        const g = await createGroup({ members }, { pool });
        const createMs = performance.now() - started;
        const releaseStart = performance.now();
        const r = await releaseGroup(g.members.map((m, i) => ({ name: m.name, target: members[i].target, windowId: m.windowId })), {}, { pool });
        const releaseMs = performance.now() - releaseStart;
        if (rep === 0) continue; // warm-up: daemons started, caches filled
        failedMembers += r.failures.length + r.members.filter((m) => m.outcome !== "released").length;
        samples.add("createMs", createMs);
        samples.add("skewMs", g.skewMs);
        const spread = (xs: number[]): number => Math.max(...xs) - Math.min(...xs);
        samples.add("issueSpreadMs", spread(g.members.map((m) => m.freezeIssuedAtMs)));
        samples.add("verifySpreadMs", spread(g.members.map((m) => m.verifiedAtMs)));
        samples.add("releaseMs", releaseMs);
        connections = Math.max(connections, pool.connectionsMade);
      } finally {
        pool.closeAll();
      }
    }
    return {
      members: options.members,
      hosts: options.hosts,
      reps: options.reps,
      createMs: samples.figure("createMs"),
      skewMs: samples.figure("skewMs"),
      issueSpreadMs: samples.figure("issueSpreadMs"),
      verifySpreadMs: samples.figure("verifySpreadMs"),
      releaseMs: samples.figure("releaseMs"),
      connections,
      failedMembers,
    };
  } finally {
    for (const d of leaseDirs) removeLeaseDir(d);
    await Promise.all(hosts.map((h) => h.stop()));
    await fleet.stop();
  }
}
