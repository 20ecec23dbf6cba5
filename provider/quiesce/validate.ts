/**
 * Pure validation of window inputs (DESIGN.md, "Check"): no I/O, one failure per bad field, and
 * tolerant of values not known yet (Pulumi preview passes an unknown sentinel; callers pass `isUnknown`).
 */

/** One failed field: `property` is a dotted path such as `connection.port`. */
export interface InputFailure {
  readonly property: string;
  readonly reason: string;
}

/** The sentinel Pulumi's dynamic-provider host uses for values unknown during preview. */
export const PULUMI_UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9";

function unknown(v: unknown): boolean {
  return v === PULUMI_UNKNOWN;
}

function present(v: unknown): boolean {
  return v !== undefined && v !== null;
}

function checkNumber(
  failures: InputFailure[],
  property: string,
  value: unknown,
  min: number,
  max: number,
  unit: string,
  integer = false,
): void {
  if (!present(value) || unknown(value)) return;
  if (typeof value !== "number" || !Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < min || value > max) {
    failures.push({
      property,
      reason: `${property} must be ${integer ? "a whole number" : "a number"} from ${min} to ${max} ${unit}; got ${JSON.stringify(value)}`,
    });
  }
}

function checkStringList(failures: InputFailure[], property: string, value: unknown, absolute: boolean): void {
  if (!present(value) || unknown(value)) return;
  if (!Array.isArray(value)) {
    failures.push({ property, reason: `${property} must be a list of strings; got ${JSON.stringify(value)}` });
    return;
  }
  const seen = new Set<string>();
  value.forEach((item: unknown, i: number) => {
    if (unknown(item)) return;
    const where = `${property}[${i}]`;
    if (typeof item !== "string" || item.trim() === "") {
      failures.push({ property: where, reason: `${where} must be a non-empty string; got ${JSON.stringify(item)}` });
    } else if (absolute && !isGuestMountpoint(item)) {
      failures.push({
        property: where,
        reason: `${where} must be an absolute guest path such as /data, or on a Windows guest a volume such as C:\\ or \\\\?\\Volume{…}\\; got ${JSON.stringify(item)}`,
      });
    } else if (seen.has(item)) {
      failures.push({ property: where, reason: `${where} repeats ${JSON.stringify(item)}; list each once` });
    } else seen.add(item);
  });
}

/**
 * A guest mount point: POSIX absolute (`/data`), or on Windows a drive path (`C:\`, `D:\mnt\db`, also `C:`) or a
 * volume GUID path (`\\?\Volume{…}\`), as VSS takes them (AGENT-FACTS.md, "Windows (VSS)").
 */
export function isGuestMountpoint(value: string): boolean {
  return value.startsWith("/") || /^[A-Za-z]:(\\.*)?$/.test(value) || /^\\\\\?\\Volume\{[0-9A-Fa-f-]+\}\\?$/.test(value);
}

/** Validates a connection object (also used for `connection.proxy`). */
export function validateConnection(value: unknown, property = "connection"): InputFailure[] {
  const failures: InputFailure[] = [];
  if (!present(value) || unknown(value)) return failures;
  if (typeof value !== "object" || Array.isArray(value)) {
    return [{ property, reason: `${property} must be an object with at least host` }];
  }
  const c = value as Record<string, unknown>;
  if (!unknown(c.host) && (typeof c.host !== "string" || c.host.trim() === "")) {
    failures.push({ property: `${property}.host`, reason: `${property}.host is required: the hypervisor host's name or address` });
  }
  checkNumber(failures, `${property}.port`, c.port, 1, 65535, "", true);
  checkNumber(failures, `${property}.dialErrorLimit`, c.dialErrorLimit, 1, 1000, "attempts", true);
  checkNumber(failures, `${property}.perDialTimeout`, c.perDialTimeout, 1, 3600, "seconds");
  for (const key of ["user", "password", "privateKey", "privateKeyPassword", "agentSocketPath", "hostKey", "knownHostsPath"]) {
    const v = c[key];
    if (present(v) && !unknown(v) && typeof v !== "string") {
      failures.push({ property: `${property}.${key}`, reason: `${property}.${key} must be a string` });
    }
  }
  for (const key of ["agentSocketPath", "knownHostsPath"]) {
    const v = c[key];
    if (typeof v === "string" && !unknown(v) && !v.startsWith("/") && !v.startsWith("~/")) {
      failures.push({ property: `${property}.${key}`, reason: `${property}.${key} must be an absolute path; got ${JSON.stringify(v)}` });
    }
  }
  const insecure = c.insecureSkipHostKeyCheck;
  if (present(insecure) && !unknown(insecure) && typeof insecure !== "boolean") {
    failures.push({ property: `${property}.insecureSkipHostKeyCheck`, reason: `${property}.insecureSkipHostKeyCheck must be true or false` });
  }
  if (insecure === true && present(c.hostKey)) {
    failures.push({
      property: `${property}.insecureSkipHostKeyCheck`,
      reason: `${property}: set either hostKey or insecureSkipHostKeyCheck, not both`,
    });
  }
  if (present(c.proxy)) failures.push(...validateConnection(c.proxy, `${property}.proxy`));
  return failures;
}

/**
 * What is wrong with a libvirt URI for pulumi-quiesce, or undefined when nothing is. Only the QEMU driver's local
 * URIs (`qemu:///system`, `qemu:///session`), with libvirt's `?socket=/path` at most: the host is reached over
 * the pooled SSH connection (`connection`), never by libvirt's own remote transports. The host daemon checks the same (provider/host/daemon.py, LIBVIRT_URI).
 */
export function libvirtUriProblem(uri: string): string | undefined {
  if (/^qemu:\/\/\/(system|session)(\?socket=\/[A-Za-z0-9._/+-]{1,4000})?$/.test(uri)) return undefined;
  if (/^[a-z0-9+]+:\/\/[^/]/i.test(uri)) {
    return `libvirtUri ${JSON.stringify(uri)} names a remote host: give the host as the SSH connection (connection.host, --host) and the local URI (qemu:///system) here`;
  }
  return `libvirtUri ${JSON.stringify(uri)} is not qemu:///system or qemu:///session (optionally with ?socket=/absolute/path)`;
}

/** Validates QuiesceWindow inputs. Returns every failure, one per bad field. */
export function validateWindowInputs(inputs: Record<string, unknown>): InputFailure[] {
  const failures: InputFailure[] = [];
  const socketPath = inputs.socketPath;
  const proxmox = inputs.proxmox;
  const domain = inputs.domain;
  const given = (["socketPath", "proxmox", "domain"] as const).filter((k) => present(inputs[k]));
  const libvirtUri = inputs.libvirtUri;
  if (present(libvirtUri) && !unknown(libvirtUri)) {
    if (!present(domain)) failures.push({ property: "libvirtUri", reason: "libvirtUri goes with domain (a libvirt domain); give domain too, or leave libvirtUri out" });
    else if (typeof libvirtUri !== "string") failures.push({ property: "libvirtUri", reason: "libvirtUri must be a string such as qemu:///system" });
    else {
      const problem = libvirtUriProblem(libvirtUri);
      if (problem) failures.push({ property: "libvirtUri", reason: problem });
    }
  }
  if (given.length > 1) {
    failures.push({ property: given[1], reason: `give exactly one target: socketPath, proxmox or domain, not ${given.join(" and ")}` });
  } else if (present(domain)) {
    if (!unknown(domain) && (typeof domain !== "string" || domain.trim() === "")) {
      failures.push({ property: "domain", reason: "domain must be a libvirt domain's name or UUID (virsh list --all shows them)" });
    }
  } else if (present(proxmox)) {
    if (!unknown(proxmox)) {
      if (typeof proxmox !== "object" || Array.isArray(proxmox)) failures.push({ property: "proxmox", reason: "proxmox must be an object { vmid }" });
      else checkNumber(failures, "proxmox.vmid", (proxmox as Record<string, unknown>).vmid ?? NaN, 100, 999_999_999, "(a Proxmox VE VMID)", true);
    }
  } else if (!unknown(socketPath)) {
    if (typeof socketPath !== "string" || socketPath === "") {
      failures.push({
        property: "socketPath",
        reason: "a target is required: socketPath (the absolute path of the guest agent socket on the host), proxmox: { vmid }, or domain (a libvirt domain)",
      });
    } else if (!socketPath.startsWith("/")) {
      failures.push({
        property: "socketPath",
        reason: `socketPath must be absolute (e.g. /var/lib/libvirt/qemu/channel/target/domain-vm1/org.qemu.guest_agent.0); got ${JSON.stringify(socketPath)}`,
      });
    }
  }
  const onFailure = inputs.onQuiesceFailure;
  if (present(onFailure) && !unknown(onFailure) && onFailure !== "fail" && onFailure !== "crash-consistent") {
    failures.push({ property: "onQuiesceFailure", reason: `onQuiesceFailure must be "fail" or "crash-consistent"; got ${JSON.stringify(onFailure)}` });
  }
  checkStringList(failures, "mountpoints", inputs.mountpoints, true);
  checkStringList(failures, "disks", inputs.disks, false);
  checkNumber(failures, "maxDurationSeconds", inputs.maxDurationSeconds, 1, 86_400, "seconds");
  checkBoolean(failures, "thawOnDisconnect", inputs.thawOnDisconnect);
  for (const key of ["resourceName", "project", "stack"]) checkString(failures, key, inputs[key]);
  failures.push(...validateWindowReach(inputs));
  return failures;
}

function checkBoolean(failures: InputFailure[], property: string, value: unknown): void {
  if (present(value) && !unknown(value) && typeof value !== "boolean") failures.push({ property, reason: `${property} must be true or false` });
}

function checkString(failures: InputFailure[], property: string, value: unknown): void {
  if (present(value) && !unknown(value) && typeof value !== "string") failures.push({ property, reason: `${property} must be a string` });
}

/**
 * What every resource has to reach a window's guest: the lease directory, the agent timeouts and the
 * connection (the socket path is checked by the window itself).
 */
function validateWindowReach(inputs: Record<string, unknown>): InputFailure[] {
  const failures: InputFailure[] = [];
  const leaseDir = inputs.leaseDir;
  if (present(leaseDir) && !unknown(leaseDir) && (typeof leaseDir !== "string" || !leaseDir.startsWith("/"))) {
    failures.push({ property: "leaseDir", reason: `leaseDir must be an absolute path on the host; got ${JSON.stringify(leaseDir)}` });
  }
  const t = inputs.timeouts;
  if (present(t) && !unknown(t)) {
    if (typeof t !== "object" || Array.isArray(t)) failures.push({ property: "timeouts", reason: "timeouts must be an object" });
    else {
      const timeouts = t as Record<string, unknown>;
      for (const key of ["agentSeconds", "freezeSeconds", "thawSeconds"]) {
        checkNumber(failures, `timeouts.${key}`, timeouts[key], 0.1, 3600, "seconds");
      }
    }
  }
  failures.push(...validateConnection(inputs.connection));
  return failures;
}

/** The window reference of a resource that acts on a window (WindowRelease, HostSnapshot). */
function validateWindowReference(inputs: Record<string, unknown>): InputFailure[] {
  const failures: InputFailure[] = [];
  const windowId = inputs.windowId;
  if (present(inputs.groupId)) {
    // A group's: its members name their windows and guests.
    const members = inputs.groupMembers;
    if (!unknown(members) && (!Array.isArray(members) || members.length === 0)) {
      failures.push({ property: "group", reason: "group is required: the QuiesceGroup this resource acts on (its members were not passed)" });
    }
    if (present(windowId)) failures.push({ property: "window", reason: "give either window or group, not both" });
  } else if (!unknown(windowId) && (typeof windowId !== "string" || windowId === "")) {
    failures.push({ property: "window", reason: "window (a QuiesceWindow) or group (a QuiesceGroup) is required: what this resource acts on" });
  }
  failures.push(...validateWindowReach(inputs));
  return failures;
}

/** Validates WindowRelease inputs. Returns every failure, one per bad field; unknowns pass. */
export function validateReleaseInputs(inputs: Record<string, unknown>): InputFailure[] {
  const failures = validateWindowReference(inputs);
  checkBoolean(failures, "allowExpired", inputs.allowExpired);
  return failures;
}

/** Validates HostSnapshot inputs. Returns every failure, one per bad field; unknowns pass, whole maps included. */
export function validateHostSnapshotInputs(inputs: Record<string, unknown>): InputFailure[] {
  const failures = validateWindowReference(inputs);
  if (present(inputs.groupId) && !unknown(inputs.member)) {
    const members = inputs.groupMembers;
    const names = Array.isArray(members) ? members.map((m: unknown) => (m && typeof m === "object" ? (m as Record<string, unknown>).name : undefined)).filter((n) => typeof n === "string" && !unknown(n)) : [];
    if (typeof inputs.member !== "string" || inputs.member === "") {
      failures.push({ property: "member", reason: `a group's HostSnapshot needs member: the member on whose host its commands run${names.length ? ` (one of ${names.join(", ")})` : ""}` });
    } else if (names.length > 0 && !names.includes(inputs.member)) {
      failures.push({ property: "member", reason: `the group has no member ${JSON.stringify(inputs.member)}: it has ${names.join(", ")}` });
    }
  }
  const create = inputs.create;
  if (!unknown(create) && (typeof create !== "string" || create.trim() === "")) {
    failures.push({ property: "create", reason: "create is required: the shell command that takes the snapshot on the host" });
  }
  const del = inputs.delete;
  if (present(del) && !unknown(del) && typeof del !== "string") {
    failures.push({ property: "delete", reason: "delete must be a shell command (a string)" });
  }
  const environment = inputs.environment;
  if (present(environment) && !unknown(environment)) {
    if (typeof environment !== "object" || Array.isArray(environment)) {
      failures.push({ property: "environment", reason: "environment must be a map of variable names to string values" });
    } else {
      for (const [name, value] of Object.entries(environment as Record<string, unknown>)) {
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
          failures.push({ property: `environment.${name}`, reason: `environment variable name ${JSON.stringify(name)} is not a shell identifier` });
        } else if (!unknown(value) && typeof value !== "string") {
          // The value may be a secret: say only what type it is.
          failures.push({ property: `environment.${name}`, reason: `environment.${name} must be a string; got a ${value === null ? "null" : Array.isArray(value) ? "list" : typeof value}` });
        }
      }
    }
  }
  return failures;
}

/** The fields a group member takes: a name, a target (as a window's), and a selection. */
export const GROUP_MEMBER_FIELDS = ["name", "connection", "socketPath", "proxmox", "domain", "libvirtUri", "leaseDir", "mountpoints", "disks"] as const;

/**
 * Validates QuiesceGroup inputs: a non-empty list of members, each with a unique name, exactly one target and a
 * valid selection (checked as a window's, with `members[i].` before each property), and the group's lease.
 */
export function validateGroupInputs(inputs: Record<string, unknown>): InputFailure[] {
  const failures: InputFailure[] = [];
  const members = inputs.members;
  if (!unknown(members)) {
    if (!Array.isArray(members) || members.length === 0) {
      failures.push({ property: "members", reason: "members must be a non-empty list of { name, socketPath | domain | proxmox, connection?, mountpoints?, disks? }" });
    } else {
      const names = new Map<string, number>();
      members.forEach((m: unknown, i: number) => {
        const at = `members[${i}]`;
        if (unknown(m)) return;
        if (typeof m !== "object" || m === null || Array.isArray(m)) {
          failures.push({ property: at, reason: `${at} must be an object { name, socketPath | domain | proxmox, ... }` });
          return;
        }
        const member = m as Record<string, unknown>;
        const name = member.name;
        if (!unknown(name)) {
          if (typeof name !== "string" || name.trim() === "") failures.push({ property: `${at}.name`, reason: `${at}.name is required: a name for the member, unique in the group` });
          else if (names.has(name)) failures.push({ property: `${at}.name`, reason: `member name ${JSON.stringify(name)} is used twice (members[${names.get(name)}] and ${at}): names must be unique` });
          else names.set(name, i);
        }
        for (const key of Object.keys(member)) {
          if (!(GROUP_MEMBER_FIELDS as readonly string[]).includes(key)) {
            failures.push({ property: `${at}.${key}`, reason: `${at}: unknown field ${JSON.stringify(key)}; a member takes ${GROUP_MEMBER_FIELDS.join(", ")}` });
          }
        }
        const { name: _name, ...window } = member;
        const label = typeof name === "string" && name ? `member ${name}: ` : "";
        for (const f of validateWindowInputs(window)) failures.push({ property: `${at}.${f.property}`, reason: `${label}${f.reason}` });
      });
    }
  }
  // The group's own keys, checked as a window's (with a stand-in target, whose checks are the members').
  const own = validateWindowInputs({ socketPath: "/", maxDurationSeconds: inputs.maxDurationSeconds, thawOnDisconnect: inputs.thawOnDisconnect, timeouts: inputs.timeouts });
  failures.push(...own);
  return failures;
}
