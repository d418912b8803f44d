// Integration test with the official TypeScript client
// (@durable-streams/client, pinned in package.json) against the server at
// DS_BASE_URL.
//
// For each content type and live mode: a reader tails a fresh stream live
// from the start while an IdempotentProducer appends messages in rounds,
// then closes the stream with a final message. The reader must see every
// message exactly once, in order, and must end by itself when the stream is
// closed. A catch-up read and a HEAD after the close must agree.
//
// Every wait is bounded, so a misbehaving server fails the test instead of
// hanging it.
import { describe, expect, test } from "vitest";
import { DurableStream, IdempotentProducer } from "@durable-streams/client";

const baseUrl = (process.env.DS_BASE_URL ?? "").replace(/\/+$/, "");
if (baseUrl === "") {
  throw new Error(
    "DS_BASE_URL is required (e.g. http://127.0.0.1:4437); run through `cargo xtask conformance`",
  );
}

/** Messages per append round, and number of rounds (plus one final message on close). */
const ROUND_SIZE = 10;
const ROUNDS = 4;
/** Upper bound on any single wait (live delivery of a round, end of the reader). */
const WAIT_MS = 10_000;

/** A stream URL no other test (or earlier run) uses. */
function uniqueStreamUrl(label) {
  const suffix = `${Date.now()}-${Math.random().toString(36).slice(2, 10)}`;
  return `${baseUrl}/v1/stream/client-test-${label}-${suffix}`;
}

/** Rejects with a descriptive error if `promise` does not settle within `ms`. */
async function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `predicate` every 10 ms until it holds, failing after `ms`; `what()` describes the wait. */
async function waitUntil(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * How messages are written to and read back from a stream of one content type.
 * `consume` iterates a live StreamResponse to its end, calling `onMessages`
 * with the messages decoded from each piece; it resolves once the response
 * stream is exhausted, i.e. after the last message has been handed over.
 * (`StreamResponse.closed` alone is not enough: it can resolve while the
 * final chunk is still queued for the consumer.)
 * `decodeAll` turns a catch-up read into the list of messages.
 */
const FORMATS = {
  json: {
    contentType: "application/json",
    encode: (msg) => JSON.stringify(msg),
    async consume(response, onMessages) {
      for await (const item of response.jsonStream()) {
        onMessages([item]);
      }
    },
    async decodeAll(response) {
      return response.json();
    },
  },
  text: {
    contentType: "text/plain",
    // Byte streams have no message framing: one message per line.
    encode: (msg) => `${JSON.stringify(msg)}\n`,
    async consume(response, onMessages) {
      // A chunk may end mid-line; carry the partial line to the next chunk.
      let partial = "";
      for await (const text of response.textStream()) {
        const lines = (partial + text).split("\n");
        partial = lines.pop() ?? "";
        onMessages(lines.map((line) => JSON.parse(line)));
      }
      if (partial !== "") {
        throw new Error(`stream ended with an unterminated line: ${JSON.stringify(partial)}`);
      }
    },
    async decodeAll(response) {
      const text = await response.text();
      expect(text.endsWith("\n")).toBe(true);
      return text
        .slice(0, -1)
        .split("\n")
        .map((line) => JSON.parse(line));
    },
  },
};

/** The message with number `n`; the payload makes reordering and duplication visible. */
function message(n) {
  return { n, body: `message ${n}`, final: false };
}

describe("official TypeScript client", () => {
  for (const [format, fmt] of Object.entries(FORMATS)) {
    for (const live of ["long-poll", "sse"]) {
      test(`${format} stream: idempotent producer appends, live ${live} reader tails to EOF`, async () => {
        const url = uniqueStreamUrl(`${format}-${live}`);
        const handle = await DurableStream.create({ url, contentType: fmt.contentType });
        expect(handle.contentType).toContain(fmt.contentType);

        // Start tailing before anything is written, so delivery is live.
        const response = await handle.stream({ offset: "-1", live });
        const received = [];
        const reader = fmt.consume(response, (items) => received.push(...items));
        // Surface a reader failure at once rather than as a delivery timeout.
        let readerError;
        reader.catch((error) => {
          readerError = error;
        });

        try {
          const producerErrors = [];
          const producer = new IdempotentProducer(handle, `client-test-${format}-${live}`, {
            epoch: 0,
            lingerMs: 2,
            maxInFlight: 4,
            onError: (error) => producerErrors.push(error),
          });

          const expected = [];
          let n = 0;
          for (let round = 0; round < ROUNDS; round += 1) {
            for (let i = 0; i < ROUND_SIZE; i += 1) {
              const msg = message(n);
              n += 1;
              expected.push(msg);
              producer.append(fmt.encode(msg));
            }
            await withTimeout(producer.flush(), WAIT_MS, `producer flush of round ${round}`);
            expect(producerErrors).toEqual([]);
            // Each round must reach the live reader before the next is written.
            await waitUntil(
              () => {
                if (readerError) throw readerError;
                return received.length >= expected.length;
              },
              WAIT_MS,
              () => `live delivery of round ${round} (${received.length}/${expected.length} messages received)`,
            );
          }

          // Close with a final message, atomically.
          const finalMsg = { n, body: "goodbye", final: true };
          expected.push(finalMsg);
          const closeResult = await withTimeout(producer.close(fmt.encode(finalMsg)), WAIT_MS, "producer close");
          expect(closeResult.finalOffset).toBeTruthy();
          expect(producerErrors).toEqual([]);

          // The reader ends on its own once it observes the closure.
          await withTimeout(reader, WAIT_MS, "the live reader to end after the stream was closed");
          await withTimeout(response.closed, WAIT_MS, "the stream response to settle");
          expect(response.streamClosed).toBe(true);
          expect(response.offset).toBe(closeResult.finalOffset);

          // Exactly once, in order.
          expect(received.map((m) => m.n)).toEqual(expected.map((m) => m.n));
          expect(received).toEqual(expected);

          // A fresh catch-up read sees the same content and the closure.
          const catchUp = await handle.stream({ offset: "-1", live: false });
          const all = await withTimeout(fmt.decodeAll(catchUp), WAIT_MS, "catch-up read");
          expect(all).toEqual(expected);
          expect(catchUp.streamClosed).toBe(true);

          const head = await handle.head();
          expect(head.exists).toBe(true);
          expect(head.streamClosed).toBe(true);
          expect(head.offset).toBe(closeResult.finalOffset);

          await handle.delete();
        } finally {
          // Stop the live reader if the test failed before it ended by itself.
          response.cancel();
        }
      });
    }
  }
});
