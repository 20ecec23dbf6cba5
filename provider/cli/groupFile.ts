/**
 * The group file of `quiesce group ...` (README, "Groups"): YAML, parsed with the `yaml` package so that every
 * error gives the line and the field. Member fields are the CLI's TARGET flag names; `defaults` gives any of them
 * to every member; `ttl` is every member's lease.
 */
import { isAlias, isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Node, type Pair, type YAMLMap } from "yaml";

/** The TARGET options of one member, as the CLI's flags would give them. */
export interface MemberOptions {
  readonly host?: string;
  readonly port?: string;
  readonly user?: string;
  readonly identity?: string;
  readonly knownHosts?: string;
  readonly hostKey?: string;
  readonly jump?: string;
  readonly leaseDir?: string;
  readonly socket?: string;
  readonly proxmoxVmid?: string;
  readonly domain?: string;
  readonly libvirtUri?: string;
  readonly local?: boolean;
  readonly insecureSkipHostKeyCheck?: boolean;
}

/** One member of the file. */
export interface FileMember {
  readonly name: string;
  readonly options: MemberOptions;
  readonly mountpoints: string[];
  readonly disks: string[];
  /** Where the member starts in the file (1-based), for messages. */
  readonly line: number;
}

/** A parsed group file. */
export interface GroupFile {
  /** Lease of every member, in seconds. Default 300. */
  readonly ttl: number;
  readonly members: FileMember[];
}

/** A bad group file: every problem, each with its line. */
export class GroupFileError extends Error {
  constructor(
    readonly file: string,
    readonly problems: readonly { line: number; message: string }[],
  ) {
    super(`${file}: ${problems.length === 1 ? "" : `${problems.length} problems:\n  `}${problems.map((p) => `line ${p.line}: ${p.message}`).join("\n  ")}`);
    this.name = "GroupFileError";
  }
}

/** Text-valued member fields, by file name: the CLI flag each stands for. */
const TEXT_FIELDS: Readonly<Record<string, keyof MemberOptions>> = {
  host: "host",
  user: "user",
  identity: "identity",
  knownHosts: "knownHosts",
  hostKey: "hostKey",
  jump: "jump",
  leaseDir: "leaseDir",
  socket: "socket",
  domain: "domain",
  libvirtUri: "libvirtUri",
};
const BOOLEAN_FIELDS: Readonly<Record<string, keyof MemberOptions>> = { local: "local", insecureSkipHostKeyCheck: "insecureSkipHostKeyCheck" };
const NUMBER_FIELDS: Readonly<Record<string, keyof MemberOptions>> = { port: "port", proxmoxVmid: "proxmoxVmid" };
const LIST_FIELDS = ["mountpoints", "disks"] as const;
/** Every field a member (or `defaults`) takes. */
export const MEMBER_FIELDS: readonly string[] = ["name", ...Object.keys(TEXT_FIELDS), ...Object.keys(BOOLEAN_FIELDS), ...Object.keys(NUMBER_FIELDS), ...LIST_FIELDS];
const TOP_FIELDS = ["ttl", "defaults", "members"];
/** Fields of one kind: a member that sets any of them replaces all of the defaults' of that kind. */
const EXCLUSIVE: readonly (readonly (keyof MemberOptions)[])[] = [
  ["socket", "domain", "proxmoxVmid", "libvirtUri"],
  ["host", "local"],
  ["knownHosts", "hostKey", "insecureSkipHostKeyCheck"],
];

/** The closest known name, for "did you mean". */
function closest(word: string, known: readonly string[]): string | undefined {
  const distance = (a: string, b: string): number => {
    const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
    for (let j = 1; j <= b.length; j++) d[0][j] = j;
    for (let i = 1; i <= a.length; i++) for (let j = 1; j <= b.length; j++) d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    return d[a.length][b.length];
  };
  const best = [...known].sort((x, y) => distance(word.toLowerCase(), x.toLowerCase()) - distance(word.toLowerCase(), y.toLowerCase()))[0];
  return best !== undefined && distance(word.toLowerCase(), best.toLowerCase()) <= 2 ? best : undefined;
}

/** Parses and validates a group file's text. @throws GroupFileError with every problem and its line. */
export function parseGroupFile(text: string, file: string): GroupFile {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true });
  const lineOf = (node: Node | Pair | null | undefined): number => {
    const range = !node ? undefined : isPair(node) ? (node.key as Node | null)?.range : node.range;
    return range ? lines.linePos(range[0]).line : 1;
  };
  const problems: { line: number; message: string }[] = [];
  const problem = (at: Node | Pair | null | undefined, message: string): void => void problems.push({ line: lineOf(at), message });
  for (const e of doc.errors) problems.push({ line: e.linePos?.[0]?.line ?? 1, message: `not valid YAML: ${e.message.split("\n")[0]}` });
  if (problems.length) throw new GroupFileError(file, problems);
  const root = doc.contents;
  if (!isMap(root)) throw new GroupFileError(file, [{ line: lineOf(root as Node), message: "the file must be a map with members: (and optionally ttl:, defaults:)" }]);

  const keyOf = (pair: Pair): string => (isScalar(pair.key) ? String(pair.key.value) : String(pair.key));
  for (const pair of root.items) {
    const key = keyOf(pair);
    if (!TOP_FIELDS.includes(key)) {
      const guess = closest(key, TOP_FIELDS);
      problem(pair, `unknown field ${JSON.stringify(key)}${guess ? ` (did you mean ${guess}?)` : ""}; the file takes ${TOP_FIELDS.join(", ")}`);
    }
  }
  let ttl = 300;
  const ttlNode = root.get("ttl", true) as Node | undefined;
  if (ttlNode !== undefined) {
    const v = isScalar(ttlNode) ? ttlNode.value : undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 86_400) problem(ttlNode, `ttl must be a whole number of seconds from 1 to 86400; got ${JSON.stringify(ttlNode.toJSON())}`);
    else ttl = v;
  }

  /** Reads one member map (or `defaults`); `where` names it in messages. */
  const readFields = (map: YAMLMap, where: string, isDefaults: boolean): { options: Record<string, unknown>; name?: string; mountpoints?: string[]; disks?: string[] } => {
    const options: Record<string, unknown> = {};
    const out: { options: Record<string, unknown>; name?: string; mountpoints?: string[]; disks?: string[] } = { options };
    for (const pair of map.items) {
      const key = keyOf(pair);
      const value = pair.value as Node | null;
      const field = `${where}.${key}`;
      if (isAlias(value)) {
        problem(value, `${field}: YAML aliases (*${value.source}) are not taken here; write the value out`);
        continue;
      }
      const plain = value === null ? null : value.toJSON();
      if (key === "name") {
        if (isDefaults) problem(pair, `${field}: a name belongs to one member, not to defaults`);
        else if (typeof plain !== "string" || plain.trim() === "") problem(value ?? pair, `${field} must be a non-empty text`);
        else out.name = plain;
      } else if (key in TEXT_FIELDS) {
        if (typeof plain !== "string" || plain === "") problem(value ?? pair, `${field} must be a non-empty text; got ${JSON.stringify(plain)}`);
        else options[TEXT_FIELDS[key]] = plain;
      } else if (key in BOOLEAN_FIELDS) {
        if (typeof plain !== "boolean") problem(value ?? pair, `${field} must be true or false; got ${JSON.stringify(plain)}`);
        else options[BOOLEAN_FIELDS[key]] = plain;
      } else if (key in NUMBER_FIELDS) {
        if (typeof plain !== "number" || !Number.isInteger(plain)) problem(value ?? pair, `${field} must be a whole number; got ${JSON.stringify(plain)}`);
        else options[NUMBER_FIELDS[key]] = String(plain);
      } else if ((LIST_FIELDS as readonly string[]).includes(key)) {
        if (!isSeq(value) || !value.items.every((i) => isScalar(i) && typeof i.value === "string" && i.value !== "")) {
          problem(value ?? pair, `${field} must be a list of texts, e.g. [/data] or [vdb]; got ${JSON.stringify(plain)}`);
        } else {
          out[key as "mountpoints" | "disks"] = value.items.map((i) => String((i as { value: unknown }).value));
        }
      } else {
        const guess = closest(key, MEMBER_FIELDS);
        problem(pair, `${where}: unknown field ${JSON.stringify(key)}${guess ? ` (did you mean ${guess}?)` : ""}; a member takes ${MEMBER_FIELDS.join(", ")}`);
      }
    }
    return out;
  };

  let defaults: ReturnType<typeof readFields> = { options: {} };
  const defaultsNode = root.get("defaults", true) as Node | undefined;
  if (defaultsNode !== undefined) {
    if (!isMap(defaultsNode)) problem(defaultsNode, "defaults must be a map of member fields (host:, user:, identity: ...)");
    else defaults = readFields(defaultsNode, "defaults", true);
  }
  const membersNode = root.get("members", true) as Node | undefined;
  const members: FileMember[] = [];
  if (membersNode === undefined) problem(root, "members: is required: a list of { name, socket | domain | proxmoxVmid, ... }");
  else if (!isSeq(membersNode) || membersNode.items.length === 0) problem(membersNode, "members must be a non-empty list of { name, socket | domain | proxmoxVmid, ... }");
  else {
    const seen = new Map<string, number>();
    membersNode.items.forEach((item, i) => {
      const where = `members[${i}]`;
      if (!isMap(item)) {
        problem(item as Node, `${where} must be a map { name, socket | domain | proxmoxVmid, ... }`);
        return;
      }
      const m = readFields(item, where, false);
      const line = lineOf(item);
      if (m.name === undefined) {
        if (!item.has("name")) problem(item, `${where}: name is required (unique in the group)`);
        return;
      }
      if (seen.has(m.name)) problem(item.get("name", true) as Node, `${where}: the name ${JSON.stringify(m.name)} is used twice (first at line ${seen.get(m.name)}): names must be unique`);
      seen.set(m.name, line);
      // A member field replaces the defaults of its kind: its own target (and URI), where it is reached (host or
      // local), how its host key is verified; libvirtUri only goes with a domain.
      const inherited: Record<string, unknown> = { ...defaults.options };
      for (const kind of EXCLUSIVE) if (kind.some((k) => m.options[k] !== undefined)) for (const k of kind) delete inherited[k];
      const resolved = { ...inherited, ...m.options } as MemberOptions;
      if (resolved.domain === undefined && m.options.libvirtUri === undefined) delete (resolved as Record<string, unknown>).libvirtUri;
      const targets = (["socket", "domain", "proxmoxVmid"] as const).filter((k) => resolved[k] !== undefined);
      if (targets.length === 0) problem(item, `member ${m.name} (${where}): a target is required: socket (the agent socket's path on the host), domain (a libvirt domain) or proxmoxVmid`);
      if (targets.length > 1) problem(item, `member ${m.name} (${where}): give one target, not ${targets.join(" and ")}`);
      if (resolved.host === undefined && resolved.local !== true) problem(item, `member ${m.name} (${where}): give host (the hypervisor to reach over SSH), or local: true`);
      // The selection too: a member's mountpoints or disks replace both of the defaults'.
      const ownSelection = m.mountpoints !== undefined || m.disks !== undefined;
      members.push({
        name: m.name,
        options: resolved,
        mountpoints: (ownSelection ? m.mountpoints : defaults.mountpoints) ?? [],
        disks: (ownSelection ? m.disks : defaults.disks) ?? [],
        line,
      });
    });
  }
  if (problems.length) throw new GroupFileError(file, problems.sort((a, b) => a.line - b.line));
  return { ttl, members };
}
