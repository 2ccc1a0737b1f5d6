// chatlog's event contract in JavaScript: the Avro schema read from chatlog's repository,
// a MessageAppended event built as chatlog's Python producer builds one, and its bytes
// framed exactly as chatlog's codec frames them (chatlog/schemas/codec.py).
//
// No Kafka here: this module is pure, so its encoding can be checked byte for byte against
// the vectors the Python codec froze (test/codec.test.mjs), with no broker.
//
// The wire format, without a schema registry (chatlog's default):
//
//   C3 01 | CRC-64-AVRO fingerprint of the writer schema (8 bytes, little-endian) | body
//
// where the body is the Avro binary encoding of the record and the fingerprint is taken
// over the schema's Parsing Canonical Form. chatlog's decoder finds the writer schema by
// that fingerprint among the versions it ships, so the schema must be one of the files in
// schemas/avro, unchanged.

import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import avro from 'avsc';

/** chatlog's own schema folder, two levels up from this example: read, never copied. */
export const SCHEMA_DIR = fileURLToPath(new URL('../../schemas/avro/', import.meta.url));

export const SINGLE_OBJECT_MAGIC = Buffer.from([0xc3, 0x01]);

// The rules of chatlog.schemas.ids and chatlog.schemas.events, written again here because
// this is another language; a producer that skips them writes events the projector
// dead-letters (docs/event-schema.md).
const ID = /^[A-Za-z0-9_.@-]{1,128}$/;
export const MAX_CONTENT_CHARS = 256 * 1024;
const ROLES = new Set(['system', 'user', 'assistant', 'tool']);

/** The newest ConversationEvent.v<N>.avsc in `dir`, parsed, with its fingerprint. */
export function loadWriterSchema(dir = SCHEMA_DIR) {
  let files;
  try {
    files = readdirSync(dir);
  } catch (error) {
    throw new Error(
      `cannot read the Avro schemas in ${dir} (${error.code}): run this from chatlog's ` +
        'repository, or pass --schemas with the path of its schemas/avro folder',
    );
  }
  const versions = files
    .map((name) => /^ConversationEvent\.v(\d+)\.avsc$/.exec(name))
    .filter(Boolean)
    .map((match) => ({ version: Number(match[1]), file: join(dir, match[0]) }))
    .sort((a, b) => a.version - b.version);
  if (versions.length === 0) {
    throw new Error(`no ConversationEvent.v<N>.avsc in ${dir}; pass --schemas with chatlog's schemas/avro`);
  }
  const newest = versions[versions.length - 1];
  // 'auto' leaves a union of null and one type unwrapped (a field is null or its value)
  // and wraps the payload union, whose branches are all records, by the branch's full
  // name: { 'chatlog.events.MessageAppended': {...} }, as fastavro's named union tuples.
  const type = avro.Type.forSchema(JSON.parse(readFileSync(newest.file, 'utf8')), {
    wrapUnions: 'auto',
  });
  return { version: newest.version, file: newest.file, type, fingerprint: crc64Avro(canonicalForm(type)) };
}

/** The schema's Parsing Canonical Form (avsc's `schema()`, no docs, defaults or aliases). */
export function canonicalForm(type) {
  return JSON.stringify(type.schema());
}

// CRC-64-AVRO (the Rabin fingerprint of the Avro specification).
const EMPTY = 0xc15d213aa4d7a795n;
const TABLE = Array.from({ length: 256 }, (_, i) => {
  let fp = BigInt(i);
  for (let j = 0; j < 8; j += 1) {
    fp = (fp >> 1n) ^ (EMPTY & -(fp & 1n));
  }
  return fp;
});

/** CRC-64-AVRO of `text`'s UTF-8 bytes, as the 8 little-endian bytes a single object carries. */
export function crc64Avro(text) {
  let fp = EMPTY;
  for (const byte of Buffer.from(text, 'utf8')) {
    fp = (fp >> 8n) ^ TABLE[Number((fp ^ BigInt(byte)) & 0xffn)];
  }
  const out = Buffer.alloc(8);
  out.writeBigUInt64LE(fp);
  return out;
}

/**
 * A MessageAppended event, as the Avro record of the schema: the same envelope chatlog's
 * Python producer writes (a fresh event id, the time as epoch milliseconds), with
 * `sealed` null: this producer has no data keys, so the content travels in the clear.
 * A retry of the same message passes the same `messageId` (the projection keeps it once)
 * and may reuse the `eventId`.
 */
export function messageAppended({
  sessionId,
  userId,
  content,
  role = 'user',
  messageId = randomUUID(),
  eventId = randomUUID(),
  tenant = 'default',
  metadata = {},
  occurredAt = Date.now(),
  producer = { client: 'chatlog-node-example', version: '0', host: hostname() },
}) {
  checkId('session_id', sessionId);
  checkId('user_id', userId);
  checkId('tenant', tenant);
  checkId('message_id', messageId);
  if (!ROLES.has(role)) {
    throw new Error(`role must be one of ${[...ROLES].join(', ')}, got ${JSON.stringify(role)}`);
  }
  // Python's len(): code points, not UTF-16 units.
  const chars = [...content].length;
  if (chars > MAX_CONTENT_CHARS) {
    throw new Error(
      `content has ${chars} characters; the limit is ${MAX_CONTENT_CHARS} (MAX_CONTENT_CHARS): ` +
        'split the message',
    );
  }
  return {
    event_id: eventId,
    session_id: sessionId,
    user_id: userId,
    tenant,
    occurred_at: occurredAt,
    producer,
    payload: {
      'chatlog.events.MessageAppended': {
        message_id: messageId,
        role,
        content,
        name: null,
        tool_calls: [],
        tool_call_id: null,
        metadata,
      },
    },
    sealed: null,
    redactions: [],
    tokens: {},
  };
}

function checkId(field, value) {
  if (typeof value !== 'string' || !ID.test(value)) {
    throw new Error(
      `${field} ${JSON.stringify(value)} is not a chatlog id: use 1 to 128 of letters, digits ` +
        'and _ . @ -',
    );
  }
}

/** The record's bytes on the topic: single-object framing, then the Avro body. */
export function encode(schema, record) {
  const problems = [];
  schema.type.isValid(record, {
    errorHook: (path, value) => problems.push(`${path.join('.') || '(the record)'} = ${JSON.stringify(value)}`),
  });
  if (problems.length > 0) {
    throw new Error(`the event does not fit ConversationEvent v${schema.version}: ${problems.join('; ')}`);
  }
  return Buffer.concat([SINGLE_OBJECT_MAGIC, schema.fingerprint, schema.type.toBuffer(record)]);
}
