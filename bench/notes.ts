/**
 * The closing notes of the report: how to read the figures, and for each missed target why it was missed
 * and what would close it. Numbers come from the run; the explanations are what the instrumentation showed
 * when this benchmark was written (qemu-ga's idle poll, the host daemon's one process), stated as such.
 */
import type { BenchResults } from "./index";
import { ms } from "./stats";

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
      `Here the sync that opens a session cost ${ms(s.raw.agentSyncMs.median)} ms (raw) and ${ms(w.agentSyncMs.median)} ms (ours: the relay's sync, ` +
      "on the agent connection the host daemon opened at the claim). From claim to release the daemon keeps that connection, so nothing later in a " +
      "window (the held-throughout check, the thaw) meets the poll again. Every variant, and every release, is preceded by an uncounted idle pause " +
      "of random length (100–200 ms), so that each first connection meets the poll at a random phase.",
  );
  if (missed("single.warm-vs-raw")) {
    const extraCommands = Object.entries(w.perCommandMs)
      .filter(([key]) => /guest-ping|guest-info|guest-get-osinfo/.test(key))
      .reduce((sum, [, f]) => sum + f.median, 0);
    notes.push(
      `Why ours (warm) misses 1.1 × raw + 3 ms (${ms(warm)} ms against ${ms(1.1 * raw + 3)} ms): it does work raw does not: guest-ping, ` +
        `guest-info and guest-get-osinfo (${ms(extraCommands)} ms), the host daemon's requests (${w.daemonRequests}: claim, relay, arm, release; ` +
        `${ms(w.daemonMs.median)} ms with the channel opens), and ${ms(w.otherMs.median)} ms of JavaScript and channel handling. Split into a create ` +
        `and a later release, as a window must be, raw itself costs ${ms(rawSplit)} ms.`,
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
    notes.push("**Fan-out windows failed**: see Failures for each window's error.");
  }
  if (at200 && (missed("fanout.200.total") || missed("fanout.200.skew"))) {
    const l = at200.ours.lastStepMs;
    notes.push(
      `Where N = 200's time went: the last window passed its relay's sync at ${ms(l["guest-sync-delimited"].median)} ms and fsinfo at ` +
        `${ms(l["guest-get-fsinfo"].median)} ms, and its freeze replied at ${ms(l["guest-fsfreeze-freeze-list"].median)} ms; freezes were issued over ` +
        `${ms(at200.ours.freezeIssueSkewMs.median)} ms. Every window's claim, relay and arm go through the one daemon process, and the client's ` +
        "relays share one SSH connection (one sshd process on the host, on 2 cores with the fake agents).",
    );
  }
  notes.push(
    "Fan-out RSS is that of a separate client process running plain JavaScript (the benchmark transpiles the code first): under ts-node the " +
      "TypeScript compiler alone adds ~80 MB, which is not the product's.",
  );
  const p = r.pulumi;
  notes.push(
    `Under the Pulumi stand-in the guest stayed frozen ${ms(p.overheadMs.median)} ms longer than the snapshot command ran (frozen: from the ` +
      "freeze's reply to the daemon's verified thaw). What lies in it: the window's create returning (closing the relay, the result through the " +
      "engine stand-in), HostSnapshot's check before its command (a daemon request, answered on the held agent connection), its check after, the " +
      "release (one daemon request: status, thaw, status), and the engine stand-in's scheduling between the three resources. No new agent " +
      "connection is opened while the guest is frozen. The quickstart uses the default lease directory /run/pulumi-quiesce; its daemon exits by " +
      "itself after 60 s with nothing held.",
  );
  const l = r.libvirt;
  if (l) {
    notes.push(
      `On the libvirt domain, a warm verified window of ours took ${ms(l.totals.oursWarm.median)} ms against ${ms(l.totals.virshQemuSsh.median)} ms for ` +
        `virsh over qemu+ssh:// (freeze and thaw only, unverified: a new SSH connection and libvirt handshake per command), ` +
        `${ms(l.totals.sshVirsh.median)} ms for ssh host virsh, and ${ms(l.totals.localVirsh.median)} ms for virsh on the host itself. ` +
        (missed("libvirt.warm-vs-qemu+ssh")
          ? `The 10× target is bounded by the guest: under TCG the freeze alone takes ~40–60 ms and every agent command through libvirt ~5 ms ` +
            `(local virsh, which does nothing else, needs ${ms(l.totals.localVirsh.median)} ms), so 10× of qemu+ssh would be below what a freeze ` +
            "and a thaw cost here; the ratio grows with the SSH round trip, since ours pays it once per window and virsh once per command. "
          : "") +
        `Frozen beyond the command: ${ms(l.frozenBeyond.oursWarm.median)} ms on the domain against ${ms(l.frozenBeyond.socketWarm.median)} ms on an ` +
        "agent socket in the same run: the host daemon thaws through libvirt's RPC on the connection it holds for the window, so no process " +
        `starts while the guest is frozen (a virsh domfsthaw on the host took ${ms(l.frozenBeyond.localVirsh.median)} ms).`,
    );
  }
  const g = r.group;
  if (g && missed("group.skew")) {
    notes.push(
      `The group's skew is measured from the first member's freeze sent to the last member's freeze verified, so it includes a freeze itself ` +
        `(the fake agents take ${r.meta.options.freezeDelayMs} ms each) and the verifying status: ${ms(g.skewMs.median)} ms at ${g.members} members, with the ` +
        `freezes sent over ${ms(g.issueSpreadMs.median)} ms and verified over ${ms(g.verifySpreadMs.median)} ms. Every member's relay and status go ` +
        `through its host's one daemon process and one sshd process, and all ${g.members} fake agents run in one process, on 2 cores.`,
    );
  }
  return notes;
}
