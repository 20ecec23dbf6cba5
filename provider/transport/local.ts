/**
 * The `local` transport: the agent socket is a UNIX socket on this machine.
 */
import * as net from "node:net";
import { QuiesceError, abortError } from "../errors";
import { busyBackoff, DEFAULT_BUSY_TIMEOUT_MS, type AgentChannel, type AgentDialer, type OpenOptions } from "./types";

/** Default time to wait for a local connect, in milliseconds (5 s). */
export const DEFAULT_LOCAL_CONNECT_TIMEOUT_MS = 5_000;

/**
 * Opens the UNIX socket `socketPath` on this machine, retrying while its accept queue is full (EAGAIN).
 * Errors: SOCKET_MISSING (ENOENT: proven absent), SOCKET_NO_ACCESS, SOCKET_NOT_A_SOCKET, SOCKET_UNREACHABLE.
 */
export const openLocalChannel: AgentDialer = async (socketPath: string, options: OpenOptions = {}): Promise<AgentChannel> => {
  const deadline = Date.now() + (options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS);
  for (let attempt = 0; ; attempt++) {
    try {
      return await connectOnce(socketPath, options);
    } catch (err) {
      const busy = err instanceof QuiesceError && err.fields.errno === "EAGAIN";
      if (!busy || !(await busyBackoff(attempt, deadline, options.signal))) throw err;
    }
  }
};

function connectOnce(socketPath: string, options: OpenOptions): Promise<AgentChannel> {
  const target = `local:${socketPath}`;
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(abortError(signal, { target }));
  return new Promise<AgentChannel>((resolve, reject) => {
    const socket = net.createConnection({ path: socketPath });
    const timer = setTimeout(() => {
      fail(
        new QuiesceError(
          "SOCKET_UNREACHABLE",
          `${target}: connect did not complete within ${DEFAULT_LOCAL_CONNECT_TIMEOUT_MS} ms`,
          { target, timeoutMs: DEFAULT_LOCAL_CONNECT_TIMEOUT_MS },
        ),
      );
    }, DEFAULT_LOCAL_CONNECT_TIMEOUT_MS);
    timer.unref();
    const onAbort = (): void => fail(abortError(signal as AbortSignal, { target }));
    signal?.addEventListener("abort", onAbort, { once: true });
    const cleanup = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      socket.removeListener("error", onError);
    };
    function fail(err: QuiesceError): void {
      cleanup();
      socket.destroy();
      reject(err);
    }
    function onError(err: NodeJS.ErrnoException): void {
      fail(localSocketError(target, socketPath, err));
    }
    socket.once("error", onError);
    socket.once("connect", () => {
      cleanup();
      socket.setNoDelay?.(true);
      resolve({ stream: socket, target });
    });
  });
}

function localSocketError(target: string, socketPath: string, err: NodeJS.ErrnoException): QuiesceError {
  const fields = { target, socketPath, errno: err.code };
  switch (err.code) {
    case "ENOENT":
      return new QuiesceError(
        "SOCKET_MISSING",
        `${target}: no agent socket at ${socketPath}. Check the path of the guest's ` +
          "org.qemu.guest_agent.0 chardev (-chardev socket,path=...) and that the VM is running.",
        fields,
        { cause: err },
      );
    case "EACCES":
      return new QuiesceError(
        "SOCKET_NO_ACCESS",
        `${target}: permission denied reaching ${socketPath}: this user cannot search a directory on the way, or may ` +
          "not write to the socket. Run as a user that can reach it (root, or the VM's owner).",
        fields,
        { cause: err },
      );
    case "ECONNREFUSED":
    case "ENOTSOCK":
      return new QuiesceError(
        "SOCKET_NOT_A_SOCKET",
        `${target}: ${socketPath} exists but nothing listens on it (${err.code}). ` +
          "Is it a stale socket of a stopped VM, or not a socket at all?",
        fields,
        { cause: err },
      );
    case "EAGAIN":
      return new QuiesceError(
        "SOCKET_UNREACHABLE",
        `${target}: ${socketPath} keeps refusing connections: its accept queue is full, so other clients are using ` +
          "the guest agent (it serves one at a time). Try again when they are done.",
        fields,
        { cause: err },
      );
    default:
      return new QuiesceError("SOCKET_UNREACHABLE", `${target}: cannot connect to ${socketPath}: ${err.message}`, fields, {
        cause: err,
      });
  }
}
