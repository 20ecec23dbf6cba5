/**
 * The lab: a real QEMU guest running the real qemu-ga, plus a real OpenSSH server on loopback, for the
 * tests that matter (DESIGN.md, "Tests in tiers"). Everything is built from Debian packages by
 * test/lab/build.sh into `.lab/` (or `$QUIESCE_LAB_DIR`); see AGENT-FACTS.md for what was measured.
 *
 * - {@link startGuest}: a TCG VM whose agent socket, QMP socket and disk images are files on this machine.
 * - {@link startSshd}: an sshd that reaches them by streamlocal forwarding, with throwaway keys.
 * - {@link startLab}: both. In jest, use `useLab()` from ./shared.
 *
 * Every process is stopped by its PID in `stop()`; an exit hook and the parent-death signal kill what a
 * crashed test leaves behind.
 */
import { LabGuest, StartGuestOptions, startGuest } from "./guest";
import { LabSshd, StartSshdOptions, startSshd } from "./sshd";

export type { LabBuild, LabDisk, LabGuest, StartGuestOptions } from "./guest";
export { ensureBuilt, startGuest } from "./guest";
export type { LabSshd, StartSshdOptions } from "./sshd";
export { startSshd } from "./sshd";
export type { DataImageReport } from "./image";
export { inspectDataImage } from "./image";
export type { JsonObject, LabGuestExecResult } from "./probes";
export { LabAgentCommandError, LabAgentProbe, qmpExecute, withAgentProbe } from "./probes";
export type { RunOptions } from "./process";
export { LabError, run, runCommand, spawnTracked, stopProcess } from "./process";
export { labDir } from "./rundir";

/** A running guest and sshd. */
export interface Lab {
  guest: LabGuest;
  sshd: LabSshd;
  /** Stops both (in parallel); idempotent. */
  stop(): Promise<void>;
}

/** Options of {@link startLab}. */
export interface StartLabOptions {
  guest?: StartGuestOptions;
  sshd?: StartSshdOptions;
}

/**
 * Starts a guest (with the write load, unless `guest.load` is false) and an sshd in parallel. If either
 * fails, the other is stopped and the failure is thrown.
 *
 * @example
 * const lab = await startLab();
 * // reach lab.guest.socketPath over ssh://root@127.0.0.1:lab.sshd.port with lab.sshd.privateKey
 * await lab.stop();
 */
export async function startLab(options: StartLabOptions = {}): Promise<Lab> {
  const [guest, sshd] = await Promise.allSettled([startGuest(options.guest), startSshd(options.sshd)]);
  if (guest.status === "rejected" || sshd.status === "rejected") {
    await Promise.all([
      guest.status === "fulfilled" ? guest.value.stop() : undefined,
      sshd.status === "fulfilled" ? sshd.value.stop() : undefined,
    ]);
    throw guest.status === "rejected" ? guest.reason : (sshd as PromiseRejectedResult).reason;
  }
  let stopped: Promise<void> | undefined;
  return {
    guest: guest.value,
    sshd: sshd.value,
    stop: () => (stopped ??= Promise.all([guest.value.stop(), sshd.value.stop()]).then(() => undefined)),
  };
}
