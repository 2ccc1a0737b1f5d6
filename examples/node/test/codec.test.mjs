// The example encodes exactly as chatlog's Python codec: every event of the frozen test
// vectors of the schema version it writes (tests/vectors/ConversationEvent.v<N>.json,
// written by the Python codec) comes out byte for byte the same.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { encode, loadWriterSchema, messageAppended } from '../chatlog-event.mjs';

const schema = loadWriterSchema();
const vectorsFile = new URL(`../../../tests/vectors/ConversationEvent.v${schema.version}.json`, import.meta.url);
const vectors = JSON.parse(readFileSync(vectorsFile, 'utf8'));

// The vectors' JSON shape (pydantic's): times as ISO text, bytes as URL-safe base64.
function avroRecord({ payload_type: type, event }) {
  const bytes = (text) => Buffer.from(text, 'base64url');
  return {
    ...event,
    occurred_at: Date.parse(event.occurred_at),
    payload: { [`chatlog.events.${type}`]: event.payload },
    sealed: event.sealed && {
      key_id: event.sealed.key_id,
      fields: Object.fromEntries(Object.entries(event.sealed.fields).map(([k, v]) => [k, bytes(v)])),
    },
    redactions: event.redactions.map((r) => ({ ...r, mac: bytes(r.mac) })),
  };
}

test('the fingerprint is the one the Python codec writes', () => {
  assert.equal(schema.fingerprint.toString('hex'), vectors[0].bytes.slice(4, 20));
});

for (const [index, vector] of vectors.entries()) {
  test(`vector ${index} (${vector.payload_type}) encodes to the Python codec's bytes`, () => {
    assert.equal(encode(schema, avroRecord(vector)).toString('hex'), vector.bytes);
  });
}

test("messageAppended builds the Python producer's event", () => {
  const { event, bytes } = vectors.find((v) => v.event.payload.message_id === 'm-1');
  const record = messageAppended({
    sessionId: event.session_id,
    userId: event.user_id,
    content: event.payload.content,
    role: event.payload.role,
    messageId: event.payload.message_id,
    eventId: event.event_id,
    tenant: event.tenant,
    occurredAt: Date.parse(event.occurred_at),
    producer: event.producer,
  });
  assert.equal(encode(schema, record).toString('hex'), bytes);
});

test('bad input is refused with the field it concerns', () => {
  assert.throws(() => messageAppended({ sessionId: 'a:b', userId: 'u', content: 'x' }), /session_id "a:b"/);
  assert.throws(() => messageAppended({ sessionId: 's', userId: 'u', content: 'x', role: 'robot' }), /role/);
  const record = messageAppended({ sessionId: 's', userId: 'u', content: 'x' });
  record.payload['chatlog.events.MessageAppended'].content = 42;
  assert.throws(() => encode(schema, record), /payload\.chatlog\.events\.MessageAppended\.content = 42/);
});
