/**
 * The soak: freeze → snapshot → release cycles against the real guest under its write load, on a guest of
 * its own (a reboot elsewhere would restart the guest's write counter). Every copy must be a consistent
 * filesystem, and the guest's own record of its writes must show nothing lost. QUIESCE_SOAK_CYCLES sets the
 * count (default and CI: 30; a full run: 200). Figures are printed for the README.
 */
import * as path from "node:path";
import { createWindow, releaseWindow, windowStatus, type AgentTarget } from "../../provider/quiesce/lifecycle";
import { SshPool, type SshConnectionConfig } from "../../provider/transport/ssh";
import { inspectDataImage } from "./lab";
import { useLab } from "./shared";

const lab = useLab({ guest: { load: true } });
const pool = new SshPool();
const figures: Record<string, number | string> = {};
afterAll(() => {
  pool.closeAll();
  console.log(`QUIESCE-SOAK-FIGURES ${JSON.stringify(figures)}`);
});

test("freeze → snapshot → release cycles under write load: no error, every copy consistent, no write lost", async () => {
  const cycles = Number(process.env.QUIESCE_SOAK_CYCLES ?? 30);
  const sshd = lab().sshd;
  const t: AgentTarget = {
    connection: { host: sshd.host, port: sshd.port, user: "root", privateKey: sshd.privateKey, knownHostsPath: sshd.knownHostsPath },
    socketPath: lab().guest.socketPath,
    leaseDir: path.join(lab().guest.runDir, "leases"),
  };
  const image = lab().guest.disk("/data").image;
  const copy = path.join(lab().guest.runDir, "soak-copy.img");
  const held: number[] = [];
  const freezes: number[] = [];
  let consistent = 0;
  for (let i = 0; i < cycles; i++) {
    const w = await createWindow({ target: t, mountpoints: ["/data"], maxDurationSeconds: 60 }, { pool });
    const cp = await pool.exec(t.connection as SshConnectionConfig, `cp --sparse=always '${image}' '${copy}'`);
    expect(cp.code).toBe(0);
    const r = await releaseWindow({ target: t, windowId: w.windowId }, { pool });
    expect(r.outcome).toBe("released");
    held.push(r.heldMs ?? 0);
    freezes.push(w.freezeMs);
    const report = await inspectDataImage(copy);
    const contiguous = report.loggedWrites.every((n, k) => n === report.loggedWrites[0] + k);
    if (!report.needsRecovery && report.fsck.exitCode === 0 && report.brokenFiles.length === 0 && contiguous && report.loggedWrites.length > 0) {
      consistent++;
    } else {
      console.log(`cycle ${i}: inconsistent copy ${JSON.stringify({ ...report, loggedWrites: report.loggedWrites.length, fsck: report.fsck.exitCode })}`);
    }
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  figures.soakCycles = cycles;
  figures.soakConsistent = `${consistent}/${cycles}`;
  figures.soakMedianFreezeMs = median(freezes);
  figures.soakMedianHeldMs = median(held);
  expect(consistent).toBe(cycles);
  const after = await windowStatus(t);
  expect(after).toMatchObject({ agentStatus: "thawed", lease: undefined });
}, 900_000);
