/**
 * A scripted libvirt RPC peer on a real UNIX socket, for the session and procedure tests: it hands each call to
 * `onCall`, which may answer with `reply`, and records every message it received.
 */
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { encodeMessage, MessageDecoder, MessageStatus, MessageType, type Message } from "../../provider/libvirt/codec";

/** Wire bytes written as hex, one field per line, `#` starting a comment (for tests that assemble messages by hand). */
export function wireHex(s: string): Buffer {
  const digits = s.replace(/#[^\n]*/g, "").replace(/\s+/g, "");
  if (!/^([0-9a-f]{2})*$/.test(digits)) throw new Error(`not hex: ${digits}`);
  return Buffer.from(digits, "hex");
}

/** A peer that hands each call to `onCall`, which may answer with `reply`, and records what it received. */
export class LibvirtPeer {
  readonly received: Message[] = [];
  private server!: net.Server;
  private socket!: net.Socket;
  readonly path: string;
  onCall: (m: Message) => void = () => undefined;

  constructor() {
    this.path = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "libvirt-peer-")), "libvirt-sock");
  }

  async start(): Promise<net.Socket> {
    const connected = new Promise<void>((resolve) => {
      this.server = net.createServer((s) => {
        this.socket = s;
        const d = new MessageDecoder();
        s.on("data", (c: Buffer) => {
          for (const m of d.push(c)) {
            this.received.push(m);
            if (m.header.type === MessageType.CALL) this.onCall(m);
          }
        });
        resolve();
      });
    });
    await new Promise<void>((resolve) => this.server.listen(this.path, resolve));
    const client = net.createConnection(this.path);
    await connected;
    return client;
  }

  reply(call: Message, payload: Buffer, status: number = MessageStatus.OK): void {
    this.socket.write(encodeMessage({ ...call.header, type: MessageType.REPLY, status }, payload));
  }

  send(buf: Buffer): void {
    this.socket.write(buf);
  }

  async stop(): Promise<void> {
    this.socket?.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    fs.rmSync(path.dirname(this.path), { recursive: true, force: true });
  }
}

