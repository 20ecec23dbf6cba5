/**
 * The closing notes of the report: how to read the figures, and for each missed target why it was missed
 * and what would close it. Numbers come from the run; the explanations are what the instrumentation showed
 * when this benchmark was written (qemu-ga's idle poll, the watchdog's accept loop), stated as such.
 */
import type { BenchResults } from "./index";
import { ms, ratio } from "./stats";

/** Notes for a run. */
export function buildNotes(r: BenchResults): string[] {
  const s = r.single;
  const notes: string[] = [];
  const missed = (id: string): boolean => r.targets.some((t) => t.id === id && !t.met);
  const raw = s.totals.raw.median;
  const rawSplit = s.totals.rawSplit.median;
  const warm = s.totals.oursWarm.median;
  const w = s.oursWarm;

  notes.push(
    "Execs are measured at their cheapest: every lab sshd gives its sessions an empty HOME, which keeps bash from sourcing root's ~/.bashrc for each " +
      "exec. On these machines that file runs `pyenv init`, which makes every exec cost ~600 ms instead of the " +
      `${ms(s.totals.execTrue.median)} ms measured here; the alternative is not charged for it.`,
  );
  notes.push(
    "qemu-ga sleeps 100 ms whenever no client is connected to its port, so the first reply on a new connection waits 0–100 ms. " +
      `Here the sync that opens a session cost ${ms(s.raw.agentSyncMs.median)} ms (raw, one session) and ${ms(w.agentSyncMs.median)} ms in all ` +
      `(ours, two sessions). Every variant, and every release, is preceded by an uncounted idle pause of random length (100–200 ms) so that all ` +
      "meet that poll at a random phase; back to back, a release right after its create would always wait the full 100 ms. That wait is " +
      "uniform over 0–100 ms, so with 15 repetitions the median of a variant moves by about ±10 ms per session between runs, and so does " +
      "the margin of the first target.",
  );
  if (missed("single.warm-vs-raw")) {
    const extraCommands = Object.entries(w.perCommandMs)
      .filter(([key]) => /guest-ping|guest-info/.test(key))
      .reduce((sum, [, f]) => sum + f.median, 0);
    notes.push(
      `Why ours (warm) misses 1.1 × raw + 3 ms (${ms(warm)} ms against ${ms(1.1 * raw + 3)} ms): a window is two steps, create and, later, ` +
        `release (in Pulumi, other resources run between them, possibly another process does the release), so it needs two agent sessions; raw ` +
        `does it in one. Split the same way, raw itself costs ${ms(rawSplit)} ms (its two syncs ${ms(s.rawSplit.agentSyncMs.median)} ms, ours ` +
        `${ms(w.agentSyncMs.median)} ms: the poll's phase varies a lot between runs), and ours is ${ratio(warm / rawSplit)} that. The rest is work raw ` +
        `does not do: guest-ping and guest-info (${ms(extraCommands)} ms), the lease over SFTP (${ms(w.leaseMs.median)} ms, ${w.leaseOperations} ` +
        `operations), the watchdog ping/hold/disarm (${ms(w.watchdogMs.median)} ms), and ${ms(w.otherMs.median)} ms of JavaScript and channel ` +
        "handling. What would close it: keep one agent connection per guest open from create to release (for example held by the host's " +
        "watchdog, which would relay the release's commands), which removes the second sync and its 0–100 ms poll; fold ping and info into " +
        "the sync round trip; write the lease with one SFTP request instead of mkdir + open/write/close + rename.",
    );
  }
  const altMissed = missed("single.alt-vs-ours") || missed("single.alt-pooled-vs-ours");
  notes.push(
    `The alternative pays, per agent command, an exec (${ms(s.totals.execTrue.median)} ms on a connected connection; ` +
      `${ms(s.totals.sshTrue.median)} ms with the ssh client, which connects each time) plus a fixed wait, because socat cannot stop on ` +
      `the reply and QEMU drops a client that half-closes first. Without the waits it would still cost at least ${ms(s.altSshNoWait.median)} ms ` +
      `(ssh client) or ${ms(s.altPooledNoWait.median)} ms (pooled exec). ` +
      (altMissed
        ? `Ratios are bounded by the guest itself: ${ms(raw)} ms of a freeze and thaw is qemu-ga under TCG emulation (the freeze-list alone ` +
          `${ms(Object.entries(s.raw.perCommandMs).find(([k]) => k.endsWith("guest-fsfreeze-freeze-list"))?.[1].median ?? Number.NaN)} ms), ` +
          "which both sides pay; the lower ours goes toward raw, the higher the ratio."
        : "Both ratios are above 20 as measured."),
  );
  const at200 = r.fanout.sizes.find((x) => x.n === 200);
  const fanoutFailures = r.fanout.sizes.some((x) => [x.ours, x.oursWarm, x.perGuest].some((f) => f && f.failedWindows.max > 0));
  if (fanoutFailures) {
    const execFallbackFailed = r.fanout.sizes.some((x) =>
      [x.ours, x.oursWarm, x.perGuest].some((f) => f?.failures.some((m) => m.message.startsWith("SSH_CONNECT_FAILED"))),
    );
    notes.push(
      "**Fan-out windows failed** (see Failures): the SSH server could not connect to the lease directory's watchdog socket (sshd's log: " +
        "`connect to .../watchdog.sock failed: Resource temporarily unavailable`, i.e. EAGAIN, its accept queue full). watchdog.py listens " +
        "with a backlog of 128, accepts one connection per select() pass and rescans every lease file on each pass, so hundreds of concurrent " +
        "PING/HOLD opens overflow it; the client opens those channels with `diagnose: false`, which also skips the busy-socket retry that " +
        "agent channels get. Concurrent starts of the watchdog can also collide on `watchdog.py.new`. What would fix it: accept in a loop " +
        "until EAGAIN, scan on a timer rather than per message, a larger backlog, retry a refused watchdog channel like a busy agent socket, " +
        "and one watchdog ping per pooled connection rather than per window (DESIGN.md, 'Per-host cost')." +
        (execFallbackFailed
          ? " When its ping is refused, a window falls back to an exec to start the watchdog; hundreds of those at once exceed sshd's " +
            "MaxSessions (10), hence the SSH_CONNECT_FAILED ones (refused execs, and then even the SFTP session a window needs for its lease)."
          : ""),
    );
  }
  if (at200 && (missed("fanout.200.total") || missed("fanout.200.skew"))) {
    const l = at200.ours.lastStepMs;
    notes.push(
      `Why N = 200 misses the time targets: the last window passed its agent sync at ${ms(l["guest-sync-delimited"].median)} ms and fsinfo at ` +
        `${ms(l["guest-get-fsinfo"].median)} ms, but its watchdog PING only at ${ms(l.PING.median)} ms and HOLD at ${ms(l.HOLD.median)} ms, so ` +
        `freezes were issued over ${ms(at200.ours.freezeIssueSkewMs.median)} ms. Every window talks to the one watchdog process (ping, hold) and ` +
        "writes its lease through the one SFTP session before it may freeze; both are served one request at a time, and the watchdog rescans " +
        "the lease directory after every message. What would close it: ping the watchdog once per connection, hold all of a connection's " +
        "windows on one channel (one HOLD line each), and batch the lease writes, so that a fan-out reaches the freeze after a handful of " +
        "round trips instead of 2 × N.",
    );
  }
  notes.push(
    "Fan-out RSS is that of a separate client process running plain JavaScript (the benchmark transpiles the code first): under ts-node the " +
      "TypeScript compiler alone adds ~80 MB, which is not the product's.",
  );
  const p = r.pulumi;
  notes.push(
    `Under the Pulumi stand-in the guest stayed frozen ${ms(p.overheadMs.median)} ms longer than the snapshot command ran. While the guest ` +
      "is frozen, two new agent sessions are opened: HostSnapshot's check after its command that the window was held throughout (its " +
      "check before the command reads only the lease), then the release's own. Each opens within tens of ms of the previous session " +
      "closing, so each is expected to wait most of qemu-ga's 100 ms idle poll: that accounts for up to ~200 ms of the overhead (inferred " +
      "from part 1, not measured inside the providers); the rest is the freeze and its verification, lease reads and the engine " +
      "stand-in's scheduling. What would close it: keep one agent connection per guest from create to release (for example held by the " +
      "watchdog, which would answer 'still held' and relay the thaw). The quickstart uses the default lease directory /run/pulumi-quiesce; its watchdog " +
      "exits by itself after 60 s without leases.",
  );
  return notes;
}
