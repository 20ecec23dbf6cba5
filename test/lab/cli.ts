/**
 * `npm run lab`: builds the lab if needed, starts a guest (with the write load) and an sshd, prints how to
 * reach them, and stops both on Ctrl-C or SIGTERM.
 *
 * Options: --no-load (no write load), --port N (sshd port), --keep (keep the run dirs).
 */
import { startLab } from "./lab";

function parseArgs(argv: string[]): { load: boolean; port?: number; keep: boolean } {
  const parsed: { load: boolean; port?: number; keep: boolean } = { load: true, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--no-load") parsed.load = false;
    else if (arg === "--keep") parsed.keep = true;
    else if (arg === "--port") parsed.port = Number(argv[++i]);
    else throw new Error(`unknown option ${arg}; options: --no-load, --port N, --keep`);
  }
  return parsed;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const abort = new AbortController();
  process.stderr.write("starting the lab (builds on first use)...\n");
  const started = startLab({
    guest: { load: args.load, keepRunDir: args.keep, signal: abort.signal },
    sshd: { port: args.port, keepRunDir: args.keep },
  });
  let stopping = false;
  const stopAll = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`\n${signal}: stopping the lab\n`);
    abort.abort(new Error(signal));
    // A start that is aborted half-way stops what it had started itself.
    void started
      .then((lab) => lab.stop(), () => undefined)
      .then(
        () => process.exit(0),
        (error: unknown) => {
          process.stderr.write(`stopping failed: ${(error as Error).message}\n`);
          process.exit(1);
        },
      );
  };
  process.on("SIGINT", stopAll);
  process.on("SIGTERM", stopAll);
  const lab = await started.catch((error: unknown) => {
    if (stopping) return undefined;
    throw error;
  });
  if (!lab) return;
  const { guest, sshd } = lab;
  const ssh = `ssh -i ${sshd.privateKeyPath} -o UserKnownHostsFile=${sshd.knownHostsPath} -o IdentitiesOnly=yes -p ${sshd.port} root@127.0.0.1`;
  process.stdout.write(
    [
      `lab guest (QEMU pid ${guest.pid}) ready in ${guest.timings.agentReadyMs ?? guest.timings.bootMs} ms, write load ${guest.load ? "on" : "off"}`,
      `  agent socket : ${guest.socketPath}`,
      `  QMP socket   : ${guest.qmpSocketPath}`,
      `  console log  : ${guest.consoleLogPath}`,
      ...guest.disks.map((d) => `  disk ${d.mountpoint.padEnd(6)} : ${d.image} (serial ${d.serial ?? "none"}, guest ${d.guestDev ?? "?"})`),
      ``,
      `sshd (pid ${sshd.pid}) on 127.0.0.1:${sshd.port}, host key ${sshd.hostFingerprint}`,
      `  ${ssh} true`,
      `  key ${sshd.privateKeyPath}; encrypted key ${sshd.encryptedKeyPath} (passphrase ${sshd.passphrase})`,
      `  log ${sshd.logPath}`,
      ``,
      `talk to the agent directly (stdin must stay open: QEMU drops a client that half-closes, so keep it`,
      `open with sleep; replies left unread by earlier clients come first, then yours after 0xFF{"return":<id>}):`,
      `  { printf '\\xff{"execute":"guest-sync-delimited","arguments":{"id":'$RANDOM'}}\\n{"execute":"guest-get-fsinfo"}\\n'; sleep 1; } | socat - UNIX-CONNECT:${guest.socketPath}`,
      `or through sshd (streamlocal forwarding):`,
      `  ${ssh} -N -L /tmp/qga-fwd.sock:${guest.socketPath}   # then socat - UNIX-CONNECT:/tmp/qga-fwd.sock`,
      ``,
      `Ctrl-C stops everything.`,
      ``,
    ].join("\n"),
  );
}

main().catch((error: unknown) => {
  process.stderr.write(`lab failed: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
