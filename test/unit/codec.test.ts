import { AgentDecoder, DecodedEvent, decodeLine, encodeCommand, encodeSyncDelimited, SYNC_SENTINEL } from "../../provider/agent/codec";

function feedAll(decoder: AgentDecoder, chunks: Buffer[]): DecodedEvent[] {
  return chunks.flatMap((c) => decoder.push(c));
}

function splitEvery(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}

describe("encode", () => {
  test("a command is one JSON line, arguments omitted when undefined", () => {
    expect(encodeCommand("guest-ping").toString()).toBe('{"execute":"guest-ping"}\n');
    expect(encodeCommand("guest-fsfreeze-freeze-list", { mountpoints: ["/data"] }).toString()).toBe(
      '{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["/data"]}}\n',
    );
  });

  test("sync-delimited starts with the 0xFF parser reset", () => {
    const bytes = encodeSyncDelimited(42);
    expect(bytes[0]).toBe(SYNC_SENTINEL);
    expect(bytes.subarray(1).toString()).toBe('{"execute":"guest-sync-delimited","arguments":{"id":42}}\n');
  });
});

describe("decode", () => {
  test.each([
    ['{"return": {}}', { kind: "return", value: {} }],
    ['{"return": 3}', { kind: "return", value: 3 }],
    ['{"return": "thawed"}', { kind: "return", value: "thawed" }],
    ['{"error": {"class": "GenericError", "desc": "boom"}}', { kind: "error", error: { class: "GenericError", desc: "boom" } }],
  ])("%s", (line, expected) => {
    expect(decodeLine(Buffer.from(line))).toEqual(expected);
  });

  test.each([["not json"], ['{"foo": 1}'], ["[1,2]"], ['{"error": "x"}'], ['{"error": {"class": 1}}'], ["\u0000\u0001"]])(
    "garbage %j is a protocol error, not a crash",
    (line) => {
      const event = decodeLine(Buffer.from(line));
      expect(event?.kind).toBe("protocol-error");
      if (event?.kind === "protocol-error") expect(event.error.code).toBe("AGENT_PROTOCOL");
    },
  );

  test("blank lines yield nothing", () => {
    expect(new AgentDecoder().push(Buffer.from("\n\r\n  \n"))).toEqual([]);
  });

  test("many replies in one chunk come out in order", () => {
    const events = new AgentDecoder().push(Buffer.from('{"return": 1}\n{"return": 2}\n{"return": 3}\n'));
    expect(events).toEqual([1, 2, 3].map((value) => ({ kind: "return", value })));
  });

  test("a reply split at every byte, including inside a multi-byte UTF-8 sequence, decodes intact", () => {
    const text = '{"return": {"desc": "snowman \u2603 and emoji \u{1F600}"}}\n';
    const bytes = Buffer.from(text, "utf8");
    for (const size of [1, 2, 3, 5, 7]) {
      const events = feedAll(new AgentDecoder(), splitEvery(bytes, size));
      expect(events).toEqual([{ kind: "return", value: { desc: "snowman \u2603 and emoji \u{1F600}" } }]);
    }
  });

  test("0xFF yields a sentinel and drops the partial line before it", () => {
    const decoder = new AgentDecoder();
    const events = feedAll(decoder, [Buffer.from('{"return": "stale, cut'), Buffer.from([0xff]), Buffer.from('{"return": 7}\n')]);
    expect(events).toEqual([{ kind: "sentinel" }, { kind: "return", value: 7 }]);
  });

  test("sentinel in the middle of a chunk", () => {
    const chunk = Buffer.concat([Buffer.from('{"return": 1}\n'), Buffer.of(0xff), Buffer.from('{"return": 2}\n')]);
    expect(new AgentDecoder().push(chunk)).toEqual([
      { kind: "return", value: 1 },
      { kind: "sentinel" },
      { kind: "return", value: 2 },
    ]);
  });

  test("an over-long line is one protocol error, memory stays bounded, and the next line decodes", () => {
    const decoder = new AgentDecoder({ maxLineBytes: 1024 });
    const events: DecodedEvent[] = [];
    for (let i = 0; i < 100; i++) {
      events.push(...decoder.push(Buffer.alloc(512, 0x61)));
      expect(decoder.bufferedBytes).toBeLessThanOrEqual(1024);
    }
    events.push(...decoder.push(Buffer.from('aaa\n{"return": 5}\n')));
    expect(events.map((e) => e.kind)).toEqual(["protocol-error", "return"]);
    expect(events[1]).toEqual({ kind: "return", value: 5 });
  });

  test("a line of exactly the limit is accepted", () => {
    const line = '{"return": "' + "a".repeat(100) + '"}';
    const decoder = new AgentDecoder({ maxLineBytes: Buffer.byteLength(line) });
    expect(decoder.push(Buffer.from(line + "\n"))[0]?.kind).toBe("return");
  });
});
