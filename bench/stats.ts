/** Small statistics and formatting helpers for the benchmarks. */

/** A measured quantity over repeated runs. Every figure in the report is its `median`. */
export interface Figure {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  /** Number of samples. */
  readonly n: number;
  /** The samples, in the order they were taken. */
  readonly samples: readonly number[];
}

/** The median of `values` (the mean of the two middle values for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Summarises samples as a {@link Figure}. */
export function figure(samples: readonly number[]): Figure {
  return {
    median: median(samples),
    min: samples.length ? Math.min(...samples) : Number.NaN,
    max: samples.length ? Math.max(...samples) : Number.NaN,
    n: samples.length,
    samples: [...samples],
  };
}

/** Collects named series of samples. */
export class Samples {
  private readonly series = new Map<string, number[]>();

  add(name: string, value: number): void {
    const list = this.series.get(name) ?? [];
    list.push(value);
    this.series.set(name, list);
  }

  figure(name: string): Figure {
    return figure(this.series.get(name) ?? []);
  }
}

/** Milliseconds with a sensible precision: 0.42, 4.2, 42, 420. */
export function ms(value: number): string {
  if (!Number.isFinite(value)) return "n/a";
  const abs = Math.abs(value);
  return abs >= 100 ? value.toFixed(0) : abs >= 10 ? value.toFixed(1) : value.toFixed(2);
}

/** A ratio: 1.23×. */
export function ratio(value: number): string {
  return Number.isFinite(value) ? `${value >= 100 ? value.toFixed(0) : value.toFixed(value >= 10 ? 1 : 2)}×` : "n/a";
}

/** Monotonic milliseconds with sub-millisecond resolution. */
export function clock(): number {
  return performance.now();
}

/** Wall-clock epoch milliseconds with sub-millisecond resolution (for `now` in the lifecycle). */
export function wallClock(): number {
  return performance.timeOrigin + performance.now();
}
