/**
 * The one rule for diff and update, shared by every resource (DESIGN.md, "Diff"; issue 14):
 * - diff: a change to a key the resource lists in `replaces` means a new resource, deleted first (freezes do
 *   not nest); a change to any other input is an update. An input left out and the same input set to its
 *   default are the same. An unknown value (preview) in a replacing key is a replace: it may change.
 * - update: the state afterwards is the new inputs plus the resource's own outputs from the old state. An input
 *   the user removed is gone (the engine sends no key for it, so `{...olds, ...news}` would keep the old value
 *   forever: a removed HostSnapshot `delete` command would still run at destroy).
 *
 * Resources declare their keys; nothing else decides.
 */
import { PULUMI_UNKNOWN } from "../quiesce/validate";

/** How one resource's inputs and outputs behave across a change. */
export interface ResourceRules {
  /** Input paths whose change replaces the resource: a top-level key, or `connection.host` for a nested one. */
  readonly replaces: readonly string[];
  /** Defaults by input path: left out and set to this are the same value. */
  readonly defaults: Readonly<Record<string, unknown>>;
  /** Output keys computed by create (not inputs): they survive an update. */
  readonly outputs: readonly string[];
  /**
   * For a replacing key: the part of its value that decides a replace (the group's members without their
   * credentials); a change in the rest is an update. Default: the whole value.
   */
  readonly replaceOn?: Readonly<Record<string, (value: unknown) => unknown>>;
  /** Derives inputs that are spelled more than one way (a Proxmox VMID is a socket path), before comparing. */
  readonly normalize?: (props: Readonly<Record<string, unknown>>) => Readonly<Record<string, unknown>>;
}

/** What the dynamic provider returns from diff. */
export interface DiffResult {
  readonly changes: boolean;
  readonly replaces: string[];
  readonly deleteBeforeReplace: boolean;
}

/** Keys that are the engine's or the provider's own, never user inputs. */
const NOT_INPUTS = new Set(["__provider"]);

function valueAt(props: Readonly<Record<string, unknown>>, path: string, defaults: Readonly<Record<string, unknown>>): unknown {
  let value: unknown = props;
  for (const part of path.split(".")) {
    value = value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>)[part] : undefined;
  }
  return value ?? defaults[path];
}

/** JSON with object keys sorted: the engine does not promise to keep a map's key order. */
function canonical(value: unknown): string {
  return JSON.stringify(value ?? null, (_k, v: unknown) =>
    v !== null && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)))
      : v,
  );
}

/** Equal values; an unknown (preview) equals nothing, since it may change. */
function same(a: unknown, b: unknown): boolean {
  if (a === PULUMI_UNKNOWN || b === PULUMI_UNKNOWN) return false;
  return canonical(a) === canonical(b);
}

/** The input keys of a set of properties: everything but the resource's outputs and the engine's keys. */
function inputKeys(props: Readonly<Record<string, unknown>>, rules: ResourceRules): string[] {
  return Object.keys(props).filter((k) => !NOT_INPUTS.has(k) && !rules.outputs.includes(k));
}

/** Diff by the rule. `olds` is the old state (inputs and outputs), `news` the new checked inputs. */
function diffByRules(rules: ResourceRules, oldProps: Readonly<Record<string, unknown>>, newProps: Readonly<Record<string, unknown>>): DiffResult {
  const olds = rules.normalize ? rules.normalize(oldProps) : oldProps;
  const news = rules.normalize ? rules.normalize(newProps) : newProps;
  const decides = (path: string, value: unknown): unknown => (rules.replaceOn?.[path] ? rules.replaceOn[path](value) : value);
  const replaces = rules.replaces.filter(
    (path) => !same(decides(path, valueAt(olds, path, rules.defaults)), decides(path, valueAt(news, path, rules.defaults))),
  );
  const covered = (key: string): boolean => rules.replaces.includes(key);
  const keys = new Set([...inputKeys(olds, rules), ...inputKeys(news, rules)]);
  let updates = 0;
  for (const key of keys) {
    if (covered(key)) {
      // A replacing key whose deciding part is the same may still have changed in the rest: an update.
      if (!replaces.includes(key) && !same(valueAt(olds, key, rules.defaults), valueAt(news, key, rules.defaults))) updates++;
      continue;
    }
    const nested = rules.replaces.filter((p) => p.startsWith(`${key}.`));
    if (nested.length > 0) {
      // A nested object with replacing keys (the connection): its other keys update, and its presence replaces.
      const o = olds[key];
      const n = news[key];
      if ((o === undefined) !== (n === undefined)) replaces.push(key);
      else if (!same(stripPaths(o, key, nested, rules.defaults), stripPaths(n, key, nested, rules.defaults))) updates++;
    } else if (!same(valueAt(olds, key, rules.defaults), valueAt(news, key, rules.defaults))) updates++;
  }
  return { changes: replaces.length + updates > 0, replaces, deleteBeforeReplace: true };
}

/**
 * `value` (the object at `key`) as compared for an update: its nested defaults filled in, and without its
 * replacing keys (they are compared on their own).
 */
function stripPaths(value: unknown, key: string, paths: readonly string[], defaults: Readonly<Record<string, unknown>>): unknown {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return value;
  const copy: Record<string, unknown> = { ...(value as Record<string, unknown>) };
  for (const [path, fallback] of Object.entries(defaults)) {
    if (path.startsWith(`${key}.`)) copy[path.slice(key.length + 1)] ??= fallback;
  }
  for (const p of paths) delete copy[p.slice(key.length + 1)];
  return copy;
}

/** Update by the rule: the new inputs, plus this resource's outputs from the old state. */
function updateByRules<T>(rules: ResourceRules, olds: Readonly<Record<string, unknown>>, newProps: Readonly<Record<string, unknown>>): T {
  // Derived inputs stay derived (a Proxmox window keeps the socket path its releases and snapshots reach).
  const news = rules.normalize ? rules.normalize(newProps) : newProps;
  const outs: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(news)) if (!NOT_INPUTS.has(k) && v !== undefined) outs[k] = v;
  for (const k of rules.outputs) if (olds[k] !== undefined) outs[k] = olds[k];
  return outs as T;
}

/** A resource's diff and update under its rules, typed by its inputs and outputs. */
export function ruleMethods<I extends object, O extends I>(rules: ResourceRules): {
  diff(id: string, olds: O, news: I): Promise<DiffResult>;
  update(id: string, olds: O, news: I): Promise<{ outs: O }>;
} {
  const props = (v: object): Readonly<Record<string, unknown>> => v as Readonly<Record<string, unknown>>;
  return {
    diff: async (_id, olds, news) => diffByRules(rules, props(olds), props(news)),
    update: async (_id, olds, news) => ({ outs: updateByRules<O>(rules, props(olds), props(news)) }),
  };
}
