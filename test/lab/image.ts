/**
 * Offline inspection of a copy of a lab data image: is it a consistent snapshot of the guest's writes?
 * This is how AGENT-FACTS.md ("Consistency, measured on a guest writing continuously") judged a copy.
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { LabError, run, runCommand } from "./process";

/** What {@link inspectDataImage} found in an image. */
export interface DataImageReport {
  /** No journal left to replay, e2fsck found nothing, and every logged write's file is whole. */
  consistent: boolean;
  /** `e2fsck -fn`: exit code 0 means no problem found; its output otherwise says what. */
  fsck: { exitCode: number; output: string };
  /** The journal still had to be replayed (`needs_recovery` in `dumpe2fs -h`): the copy caught a write mid-flight. */
  needsRecovery: boolean;
  /** Every N the guest's load recorded in /load/log (complete lines only), in order. */
  loggedWrites: number[];
  /** Number of load files f<N> present. */
  files: number;
  /**
   * Logged N whose file is missing or not whole (the load keeps only the newest 10 000 files, so only those
   * are checked). Empty for a consistent copy.
   */
  brokenFiles: number[];
}

const LOAD_KEEP = 10_000;

function sbin(tool: string): string {
  const found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map((dir) => path.join(dir, tool)).find((p) => fs.existsSync(p));
  if (!found) throw new LabError(`${tool} not found; install e2fsprogs (.ci/install-lab-deps.sh)`, "LAB_PROCESS_FAILED");
  return found;
}

/**
 * Inspects an image file that is not in use by a running guest (a copy taken with `cp --sparse=always`,
 * or the working image after the guest stopped). Nothing is written to the image.
 *
 * @example
 * await run("cp", ["--sparse=always", guest.disk("/data").image, copy]); // while frozen
 * const report = await inspectDataImage(copy);
 * expect(report).toMatchObject({ consistent: true, brokenFiles: [] });
 */
export async function inspectDataImage(image: string): Promise<DataImageReport> {
  // e2fsck exits non-zero when it finds problems; that is a result here, not a failure.
  const checked = await runCommand(sbin("e2fsck"), ["-fn", image], { timeoutMs: 60_000 });
  const fsck = { exitCode: checked.exitCode, output: checked.stdout + checked.stderr };
  const header = await run(sbin("dumpe2fs"), ["-h", image], { timeoutMs: 30_000 });
  const features = /^Filesystem features:\s*(.*)$/m.exec(header)?.[1] ?? "";
  const needsRecovery = features.split(/\s+/).includes("needs_recovery");

  const dumpDir = fs.mkdtempSync(path.join(os.tmpdir(), "quiesce-lab-image-"));
  try {
    // debugfs reads the image as it is, without replaying the journal: the view a snapshot consumer gets.
    await run(sbin("debugfs"), ["-R", `rdump /load ${dumpDir}`, image], { timeoutMs: 60_000 });
    const loadDir = path.join(dumpDir, "load");
    if (!fs.existsSync(loadDir)) {
      return { consistent: !needsRecovery && fsck.exitCode === 0, fsck, needsRecovery, loggedWrites: [], files: 0, brokenFiles: [] };
    }
    const logPath = path.join(loadDir, "log");
    const logText = fs.existsSync(logPath) ? fs.readFileSync(logPath, "utf8") : "";
    const completeLines = logText.slice(0, logText.lastIndexOf("\n") + 1).split("\n").filter((line) => line !== "");
    const loggedWrites = completeLines.map(Number);
    const names = fs.readdirSync(loadDir).filter((name) => /^f\d+$/.test(name));
    const newest = loggedWrites.length > 0 ? Math.max(...loggedWrites) : 0;
    const brokenFiles = loggedWrites.filter((n) => {
      if (!Number.isInteger(n)) return true;
      if (n <= newest - LOAD_KEEP) return false;
      const file = path.join(loadDir, `f${n}`);
      if (!fs.existsSync(file)) return true;
      const text = fs.readFileSync(file, "utf8");
      return !(text.startsWith(`quiesce-lab-load ${n}\n`) && text.endsWith(`\nend ${n}\n`));
    });
    const consistent = !needsRecovery && fsck.exitCode === 0 && brokenFiles.length === 0;
    return { consistent, fsck, needsRecovery, loggedWrites, files: names.length, brokenFiles };
  } finally {
    fs.rmSync(dumpDir, { recursive: true, force: true });
  }
}
