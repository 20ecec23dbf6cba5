/** Peak resident memory of this process over a phase of a benchmark. */
import * as fs from "node:fs";
import * as v8 from "node:v8";
import * as vm from "node:vm";

let gcFunction: (() => void) | undefined;

/** Runs a full garbage collection (exposes V8's gc on first use), so a phase starts from a clean heap. */
export function collectGarbage(): void {
  if (!gcFunction) {
    v8.setFlagsFromString("--expose-gc");
    gcFunction = vm.runInNewContext("gc") as () => void;
  }
  gcFunction();
}

function statusField(name: string): number | undefined {
  const match = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(fs.readFileSync("/proc/self/status", "utf8"));
  return match ? Number(match[1]) * 1024 : undefined;
}

/**
 * Measures the peak RSS of this process between {@link PeakRss.start} and {@link PeakRss.stop}. On Linux the
 * kernel's high-water mark is reset (`/proc/self/clear_refs`, value 5) and read back (VmHWM), which is exact.
 * Where that is refused, RSS is sampled every 10 ms instead.
 */
export class PeakRss {
  private sampler: NodeJS.Timeout | undefined;
  private sampledPeak = 0;
  private exact = false;
  /** RSS at start, in bytes. */
  startRss = 0;
  /** How the peak was measured. */
  method: "VmHWM" | "sampled" = "sampled";

  start(): void {
    collectGarbage();
    this.startRss = process.memoryUsage.rss();
    try {
      fs.writeFileSync("/proc/self/clear_refs", "5");
      this.exact = statusField("VmHWM") !== undefined;
    } catch (err) {
      process.stderr.write(`bench: cannot reset the RSS high-water mark (${(err as Error).message}); sampling RSS instead\n`);
      this.exact = false;
    }
    this.method = this.exact ? "VmHWM" : "sampled";
    this.sampledPeak = this.startRss;
    if (!this.exact) {
      this.sampler = setInterval(() => {
        this.sampledPeak = Math.max(this.sampledPeak, process.memoryUsage.rss());
      }, 10);
      this.sampler.unref();
    }
  }

  /** Stops measuring; returns the peak RSS in bytes. */
  stop(): number {
    if (this.sampler) clearInterval(this.sampler);
    this.sampler = undefined;
    const now = process.memoryUsage.rss();
    if (this.exact) return Math.max(statusField("VmHWM") ?? 0, now);
    return Math.max(this.sampledPeak, now);
  }
}
