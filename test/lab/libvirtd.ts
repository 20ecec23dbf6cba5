/**
 * A real libvirtd for the lab, run by hand without systemd (AGENT-FACTS.md, "libvirt"), with its sockets in a run
 * directory of its own, and the lab guest defined and started as a libvirt domain whose agent channel libvirt owns.
 * Every virsh call is an argv, never a shell string.
 */
import type { ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { LibvirtSession } from "../../provider/libvirt/session";
import { authList, connectOpen, domainAgentCommand, lookupDomainByName } from "../../provider/libvirt/procedures";
import { isQuiesceError } from "../../provider/errors";
import { waitForPath } from "../fake/waitForFile";
import { ensureBuilt } from "./guest";
import { LabError, run, spawnTracked, stopProcess } from "./process";
import { createRunDir } from "./rundir";

/** A running libvirtd with the lab guest as a running domain. */
export interface LabLibvirt {
  /** libvirtd's read-write socket. */
  readonly socketPath: string;
  /** The URI virsh uses for it. */
  readonly uri: string;
  /** The domain's name. */
  readonly domain: string;
  /** The domain's /data disk image (libvirt target vda, serial qdata1) on the host. */
  readonly dataImage: string;
  readonly runDir: string;
  /** Opens an RPC session to libvirtd (CONNECT_OPEN done). Close it when done. */
  session(): Promise<LibvirtSession>;
  /** Runs virsh against this libvirtd; resolves with its stdout. */
  virsh(args: readonly string[]): Promise<string>;
  /**
   * Defines another domain booting the lab kernel, without data disks (undefined again by stop()); `agent: false`
   * keeps qemu-ga from starting in it, while its channel is still there.
   */
  defineDomain(name: string, options: { agent: boolean; start: boolean }): Promise<void>;
  /** Destroys and undefines the domain, then stops libvirtd. */
  stop(): Promise<void>;
}

const QEMU_CONF = "/etc/libvirt/qemu.conf";

/** Starts libvirtd and the lab guest as a domain; resolves once the guest agent answers through libvirt. */
export async function startLibvirt(
  options: {
    bootTimeoutMs?: number;
    /** Run the guest's write load on /data (default false). */
    load?: boolean;
    /** Let this group use libvirtd's socket (0770), as a host's `libvirt` group is; default root only (0700). */
    socketGroup?: string;
  } = {},
): Promise<LabLibvirt> {
  for (const binary of ["/usr/sbin/libvirtd", "/usr/bin/virsh"]) {
    if (!fs.existsSync(binary)) throw new LabError(`${binary} is missing: run .ci/install-lab-deps.sh as root`, "LAB_BUILD_FAILED");
  }
  const conf = fs.existsSync(QEMU_CONF) ? fs.readFileSync(QEMU_CONF, "utf8") : "";
  if (!/^\s*security_driver\s*=\s*"none"/m.test(conf) || !/^\s*dynamic_ownership\s*=\s*0/m.test(conf)) {
    throw new LabError(
      `${QEMU_CONF} must set security_driver = "none" and dynamic_ownership = 0 (and user/group root, stdio_handler = "file") ` +
        "for the lab's libvirtd: .ci/install-lab-deps.sh writes it where none exists.",
      "LAB_BUILD_FAILED",
    );
  }
  const build = await ensureBuilt();
  const runDir = createRunDir("libvirt");
  const sockDir = path.join(runDir, "sock");
  fs.mkdirSync(sockDir, { mode: 0o700 });
  if (options.socketGroup) {
    await run("chgrp", [options.socketGroup, sockDir], { timeoutMs: 10_000 });
    fs.chmodSync(sockDir, 0o750);
  }
  const socketPath = path.join(sockDir, "libvirt-sock");
  const uri = `qemu:///system?socket=${socketPath}`;
  const domain = `quiesce-lab-${path.basename(runDir).split("-").slice(1).join("-")}`;
  const confPath = path.join(runDir, "libvirtd.conf");
  fs.writeFileSync(
    confPath,
    [
      `unix_sock_dir = "${sockDir}"`,
      ...(options.socketGroup ? [`unix_sock_group = "${options.socketGroup}"`, 'unix_sock_rw_perms = "0770"'] : ['unix_sock_rw_perms = "0700"']),
      'auth_unix_rw = "none"',
      'auth_unix_ro = "none"',
      `log_outputs = "3:file:${path.join(runDir, "libvirtd.log")}"`,
    ].join("\n") + "\n",
  );
  let libvirtd: ChildProcess | undefined;
  let defined = false;
  const extra: string[] = [];
  const virsh = (args: readonly string[]): Promise<string> => run("virsh", ["-c", uri, ...args], { timeoutMs: 60_000 });
  const stop = async (): Promise<void> => {
    for (const name of extra) {
      await virsh(["destroy", name]).catch(() => undefined); // most are not running: "domain is not running" is expected
      await virsh(["undefine", name]).catch((err: unknown) => process.stderr.write(`lab: virsh undefine ${name}: ${(err as Error).message}\n`));
    }
    if (defined) {
      await virsh(["destroy", domain]).catch((err: unknown) => process.stderr.write(`lab: virsh destroy: ${(err as Error).message}\n`));
      await virsh(["undefine", domain]).catch((err: unknown) => process.stderr.write(`lab: virsh undefine: ${(err as Error).message}\n`));
    }
    if (libvirtd) await stopProcess(libvirtd);
    // libvirtd keeps a log per domain in its system log directory: ours go with the run.
    for (const name of [domain, ...extra]) fs.rmSync(path.join("/var/log/libvirt/qemu", `${name}.log`), { force: true });
    fs.rmSync(runDir, { recursive: true, force: true });
  };
  try {
    libvirtd = spawnTracked("/usr/sbin/libvirtd", ["-f", confPath, "-p", path.join(runDir, "libvirtd.pid")], {
      cwd: runDir,
      stdio: ["ignore", "ignore", fs.openSync(path.join(runDir, "libvirtd.stderr"), "w")],
    });
    await waitForPath(socketPath, 30_000);
    for (const [i, image] of build.images.entries()) await run("cp", ["--sparse=always", image, path.join(runDir, `data${i + 1}.img`)], { timeoutMs: 60_000 });
    const xml = path.join(runDir, "domain.xml");
    fs.writeFileSync(xml, domainXml(domain, build.kernel, build.initramfs, runDir, { agent: true, disks: true, load: options.load ?? false }));
    await virsh(["define", xml]);
    defined = true;
    await virsh(["start", domain]);
    const session = async (): Promise<LibvirtSession> => {
      const sock = net.createConnection(socketPath);
      await new Promise<void>((resolve, reject) => {
        sock.once("connect", () => resolve());
        sock.once("error", reject);
      });
      const s = new LibvirtSession(sock, { target: `local:${socketPath}` });
      await authList(s);
      await connectOpen(s, "qemu:///system");
      return s;
    };
    // The guest is up when its agent answers through libvirt; until then libvirt says the agent is not connected.
    const s = await session();
    try {
      const dom = await lookupDomainByName(s, domain);
      // Bounded: libvirt answers each attempt at once while the agent is not up yet.
      const deadline = Date.now() + (options.bootTimeoutMs ?? 120_000);
      for (;;) {
        try {
          await domainAgentCommand(s, dom, '{"execute":"guest-ping"}', 2);
          break;
        } catch (err) {
          // VIR_ERR_AGENT_UNRESPONSIVE (86), or "not connected" (55), while the guest boots.
          if (!isQuiesceError(err, "LIBVIRT_ERROR") || Date.now() > deadline) {
            throw new LabError(`the libvirt domain's guest agent did not answer: ${(err as Error).message}`, "LAB_TIMEOUT", { cause: err });
          }
          await new Promise((resolve) => setTimeout(resolve, 250));
        }
      }
    } finally {
      s.close();
    }
    const defineDomain = async (name: string, o: { agent: boolean; start: boolean }): Promise<void> => {
      const file = path.join(runDir, `${name}.xml`);
      fs.writeFileSync(file, domainXml(name, build.kernel, build.initramfs, runDir, { agent: o.agent, disks: false, load: false }));
      await virsh(["define", file]);
      extra.push(name);
      if (o.start) await virsh(["start", name]);
    };
    return { socketPath, uri, domain, dataImage: path.join(runDir, "data1.img"), runDir, session, virsh, defineDomain, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

function domainXml(name: string, kernel: string, initramfs: string, runDir: string, o: { agent: boolean; disks: boolean; load: boolean }): string {
  const disk = (i: number, dev: string, serial: string): string =>
    `<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/><source file='${path.join(runDir, `data${i}.img`)}'/>` +
    `<target dev='${dev}' bus='virtio'/><serial>${serial}</serial></disk>`;
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>${kernel}</kernel><initrd>${initramfs}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 quiesce.load=${o.load ? 1 : 0} quiesce.agent=${o.agent ? 1 : 0}</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    ${o.disks ? disk(1, "vda", "qdata1") : ""}
    ${o.disks ? disk(2, "vdb", "qdata2") : ""}
    <serial type='file'><source path='${path.join(runDir, `${name}.console.log`)}'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>
`;
}
