/**
 * The demo's driver (run by scripts/demo.sh): boots the lab, takes a quiesced copy of the guest's /data
 * disk image with the built `quiesce run` CLI over SSH, verifies the copy, prints a report, cleans up.
 */
import { spawn } from "node:child_process";
import * as path from "node:path";
import { inspectDataImage, startLab, type Lab } from "../test/lab/lab";

function runCli(args: string[]): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(__dirname, "../dist/provider/cli/index.js"), ...args], { stdio: ["ignore", "pipe", "inherit"] });
    let stdout = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout }));
  });
}

async function main(): Promise<number> {
  const started = Date.now();
  process.stderr.write("demo: booting a throwaway guest (qemu-ga, write load on /data) and a local sshd...\n");
  const lab: Lab = await startLab({ guest: { load: true } });
  try {
    const { guest, sshd } = lab;
    const copy = path.join(guest.runDir, "data-snapshot.img");
    process.stderr.write(`demo: guest up in ${guest.timings.bootMs} ms; taking a quiesced snapshot of /data...\n`);
    const r = await runCli([
      "run", "--host", sshd.host, "--port", String(sshd.port), "--user", "root",
      "--identity", sshd.privateKeyPath, "--known-hosts", sshd.knownHostsPath,
      "--socket", guest.socketPath, "--lease-dir", path.join(guest.runDir, "leases"),
      "--mountpoint", "/data", "--ttl", "60", "--json",
      "--", "cp", "--sparse=always", guest.disk("/data").image, copy,
    ]);
    const result = JSON.parse(r.stdout.trim() || "{}") as { ok?: boolean; freezeMs?: number; heldMs?: number; commandMs?: number; frozenMountpoints?: string[]; outcome?: string };
    const report = await inspectDataImage(copy);
    const consistent = !report.needsRecovery && report.fsck.exitCode === 0 && report.brokenFiles.length === 0 && report.loggedWrites.length > 0;
    const ok = r.code === 0 && result.ok === true && consistent;
    const lines = [
      "",
      "pulumi-quiesce demo: a quiesced snapshot of a running guest",
      `  selection        ${(result.frozenMountpoints ?? []).join(", ") || "-"} (guest agent over SSH streamlocal)`,
      `  freeze took      ${result.freezeMs ?? "-"} ms`,
      `  window held      ${result.heldMs ?? "-"} ms (the snapshot command: ${result.commandMs ?? "-"} ms)`,
      `  release          ${result.outcome ?? "failed"}`,
      `  snapshot         journal replay needed: ${report.needsRecovery ? "YES" : "no"}; e2fsck -fn: ${report.fsck.exitCode === 0 ? "clean" : `exit ${report.fsck.exitCode}`}`,
      `  guest's writes   ${report.loggedWrites.length} recorded before the freeze, ${report.brokenFiles.length} missing or torn`,
      `  verdict          ${ok ? "CONSISTENT" : "NOT CONSISTENT"}`,
      `  total            ${((Date.now() - started) / 1000).toFixed(1)} s`,
      "",
    ];
    process.stdout.write(lines.join("\n"));
    return ok ? 0 : 1;
  } finally {
    // Stops QEMU and sshd by PID and removes their run directories (the copy lives in one).
    await lab.stop();
  }
}

main().then(
  (code) => (process.exitCode = code),
  (err: unknown) => {
    process.stderr.write(`demo: failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
