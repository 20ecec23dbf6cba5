/**
 * An in-process peer for session tests: the client gets a Duplex; the test sees every request
 * (split at newlines, 0xFF reported as its own item) and decides what bytes to send back.
 */
import { Duplex } from "node:stream";

/** One request seen by the peer: a parsed command, or the 0xFF reset byte. */
export type PeerRequest = { kind: "reset" } | { kind: "command"; execute: string; arguments?: Record<string, unknown> };

export interface ScriptedPeer {
  /** The client's end. */
  readonly stream: Duplex;
  /** Every request received so far. */
  readonly requests: PeerRequest[];
  /** Sends raw bytes to the client. */
  send(bytes: Buffer | string): void;
  /** Sends `{"return": value}\n`. */
  sendReturn(value: unknown): void;
  /** Ends the peer side (the client sees end + close). */
  hangUp(): void;
}

/** Creates a peer; `onRequest` is called for each request as it arrives. */
export function scriptedPeer(onRequest: (request: PeerRequest, peer: ScriptedPeer) => void = () => undefined): ScriptedPeer {
  let buffer = "";
  const requests: PeerRequest[] = [];
  const stream = new Duplex({
    read() {
      /* data is pushed by send() */
    },
    write(chunk: Buffer, _encoding, callback) {
      for (const byte of chunk) {
        if (byte === 0xff) {
          buffer = "";
          deliver({ kind: "reset" });
        } else if (byte === 0x0a) {
          const parsed = JSON.parse(buffer) as { execute: string; arguments?: Record<string, unknown> };
          buffer = "";
          deliver({ kind: "command", ...parsed });
        } else buffer += String.fromCharCode(byte);
      }
      callback();
    },
    final(callback) {
      callback();
    },
  });
  const peer: ScriptedPeer = {
    stream,
    requests,
    send: (bytes) => {
      stream.push(typeof bytes === "string" ? Buffer.from(bytes) : bytes);
    },
    sendReturn: (value) => stream.push(Buffer.from(JSON.stringify({ return: value }) + "\n")),
    hangUp: () => {
      stream.push(null);
      stream.destroy();
    },
  };
  function deliver(request: PeerRequest): void {
    requests.push(request);
    // Answer asynchronously, like a real peer.
    setImmediate(() => onRequest(request, peer));
  }
  return peer;
}

/** A well-behaved responder: answers sync-delimited properly and delegates other commands. */
export function syncingResponder(
  onCommand: (execute: string, args: Record<string, unknown> | undefined, peer: ScriptedPeer) => void,
): (request: PeerRequest, peer: ScriptedPeer) => void {
  return (request, peer) => {
    if (request.kind === "reset") {
      peer.send(JSON.stringify({ error: { class: "GenericError", desc: "JSON parse error, stray '\uFFFD'" } }) + "\n");
      return;
    }
    if (request.execute === "guest-sync-delimited") {
      peer.send(Buffer.concat([Buffer.of(0xff), Buffer.from(JSON.stringify({ return: request.arguments?.id }) + "\n")]));
      return;
    }
    onCommand(request.execute, request.arguments, peer);
  };
}
