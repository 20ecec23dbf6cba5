// Several tiers run the built package (dist/): child processes that create windows, the CLI binary, and the
// serialized providers, which require("pulumi-quiesce/...") by name. `npm test` builds first (pretest); a tier
// run on its own (`npx jest test/fake`) gets the same guarantee here: dist/ is rebuilt when any source of it
// is newer than its stamp, so no tier ever tests a stale or missing build.
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.join(__dirname, "..");

function newestMtime(entry) {
  const stat = fs.statSync(entry);
  if (!stat.isDirectory()) return stat.mtimeMs;
  let newest = 0;
  for (const name of fs.readdirSync(entry)) {
    if (name === "__pycache__") continue;
    newest = Math.max(newest, newestMtime(path.join(entry, name)));
  }
  return newest;
}

/** What the lab tier runs, with the Debian package each comes from (.ci/install-lab-deps.sh installs them all). */
const LAB_NEEDS = [
  ["/usr/bin/qemu-system-x86_64", "qemu-system-x86"],
  ["/usr/sbin/qemu-ga", "qemu-guest-agent"],
  ["/bin/busybox", "busybox-static"],
  ["/usr/sbin/sshd", "openssh-server"],
  ["/usr/bin/ssh-keygen", "openssh-client"],
  ["/usr/bin/python3", "python3"],
  ["/usr/bin/setpriv", "util-linux"],
  ["/usr/sbin/mkfs.ext4", "e2fsprogs"],
  ["/usr/sbin/libvirtd", "libvirt-daemon"],
  ["/usr/bin/virsh", "libvirt-clients"],
  ["/etc/libvirt/qemu.conf", "the lab's qemu.conf (written by the install script)"],
];

/**
 * A run that includes the lab tier fails here, at once, when the lab's packages are missing: never halfway
 * through the suite.
 */
function checkLabNeeds(globalConfig) {
  const patterns = globalConfig && globalConfig.testPathPatterns;
  const selected = patterns && typeof patterns.isSet === "function" && patterns.isSet() ? patterns.patterns || [] : null;
  if (selected && !selected.some((p) => String(p).includes("lab"))) return;
  const missing = LAB_NEEDS.filter(([file]) => !fs.existsSync(file));
  if (missing.length === 0) return;
  throw new Error(
    `the lab tier needs what this machine lacks: ${missing.map(([file, pkg]) => `${file} (${pkg})`).join(", ")}.\n` +
      "Install it all with:  sudo bash .ci/install-lab-deps.sh   (Debian/Ubuntu; `npm run demo` runs it too),\n" +
      "or run the other tiers alone:  npx jest test/unit test/fake test/conformance test/pulumi",
  );
}

module.exports = async function globalSetup(globalConfig) {
  checkLabNeeds(globalConfig);
  const stamp = path.join(root, "dist/.built");
  const built = fs.existsSync(stamp) ? fs.statSync(stamp).mtimeMs : 0;
  const sources = ["provider", "sdk", "package.json", "tsconfig.json", "tsconfig.build.json"].map((p) => path.join(root, p));
  if (Math.max(...sources.map(newestMtime)) > built) {
    process.stderr.write("\ntest/globalSetup: dist/ is missing or older than its sources; building (npm run build)\n");
    execFileSync(process.execPath, [path.join(root, "scripts/build.js")], { cwd: root, stdio: "inherit" });
  }
};
