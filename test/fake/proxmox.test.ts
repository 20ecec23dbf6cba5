/**
 * Proxmox VE guests by VMID (issue 13): `proxmox: { vmid }` and `--proxmox-vmid N` reach the agent socket
 * qemu-server makes, /var/run/qemu-server/<vmid>.qga. A fake agent listens there (this machine runs no Proxmox).
 */
import { removeLeaseDir } from "./daemonFiles";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createWindowResource, deleteWindow } from "../../provider/dynamic/window";
import { validateWindowInputs } from "../../provider/quiesce/validate";
import { FakeAgent } from "./fakeAgent";

const dir = "/var/run/qemu-server";
const vmid = 900_000_000 + Math.floor(Math.random() * 99_999_999);
let createdDir = false;
let agent: FakeAgent;
let leaseDir: string;

beforeAll(async () => {
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(dir, { recursive: true });
    createdDir = true;
  }
  agent = await FakeAgent.start({ socketPath: path.join(dir, `${vmid}.qga`) });
  leaseDir = fs.mkdtempSync(path.join(os.tmpdir(), "leases-"));
});
afterAll(async () => {
  await agent?.stop();
  fs.rmSync(path.join(dir, `${vmid}.qga`), { force: true });
  if (createdDir) fs.rmSync(dir, { recursive: true, force: true });
  await removeLeaseDir(leaseDir);
});

test("a window by VMID freezes that guest, and records the socket it resolved to", async () => {
  const { id, outs } = await createWindowResource({ proxmox: { vmid }, leaseDir, mountpoints: ["/data"] });
  expect(outs).toMatchObject({ socketPath: `/var/run/qemu-server/${vmid}.qga`, frozenMountpoints: ["/data"] });
  expect(agent.status).toBe("frozen");
  await deleteWindow(id, outs);
  expect(agent.status).toBe("thawed");
});

test("the CLI's --proxmox-vmid reaches the same socket", async () => {
  // Not spawnSync: the fake agent answers from this process's event loop.
  const cli = path.resolve(__dirname, "../../dist/provider/cli/index.js");
  const r = await promisify(execFile)(process.execPath, [cli, "status", "--local", "--proxmox-vmid", String(vmid), "--lease-dir", leaseDir, "--json"]);
  expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, agentStatus: "thawed" });
  const both = await promisify(execFile)(process.execPath, [cli, "status", "--local", "--proxmox-vmid", "101", "--socket", "/run/x.sock", "--json"]).catch((e: { code: number }) => e);
  expect((both as { code: number }).code).toBe(2);
});

test("check: exactly one target, and a VMID in Proxmox's range", () => {
  expect(validateWindowInputs({ proxmox: { vmid: 101 } })).toEqual([]);
  expect(validateWindowInputs({ proxmox: { vmid: 101 }, socketPath: "/run/x.sock" }).map((f) => f.property)).toEqual(["proxmox"]);
  expect(validateWindowInputs({ proxmox: { vmid: 7 } }).map((f) => f.property)).toEqual(["proxmox.vmid"]);
  expect(validateWindowInputs({}).map((f) => f.property)).toEqual(["socketPath"]);
});
