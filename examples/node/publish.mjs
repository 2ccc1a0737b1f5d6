#!/usr/bin/env node
// Publish one chat message to chatlog's events topic from Node.js.
//
//   node publish.mjs --session session-42 --user alice --content "Where is my order 7731?"
//
// Prints one JSON line: the topic, partition and offset the broker stored the event at (a
// chatlog Position), the session and the event's ids. A projector (`chatlog run
// projector`) folds it into the session's view like any event of chatlog's own producer.
//
// What keeps a session whole is the key and the partitioner: the key is the session id's
// raw UTF-8 bytes, and the partition is Kafka's Java murmur2 of those bytes, sign bit
// cleared, modulo the partition count. @platformatic/kafka's `compatibilityPartitioner` is
// exactly that; its default partitioner is not (it takes the hash unsigned, which puts
// half of all sessions elsewhere whenever the partition count is not a power of two).

import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';

import { compatibilityPartitioner, Producer } from '@platformatic/kafka';

import { encode, loadWriterSchema, messageAppended, SCHEMA_DIR } from './chatlog-event.mjs';

const USAGE = `usage: node publish.mjs --session ID --user ID --content TEXT
                       [--role user|assistant|system|tool] [--message-id ID] [--tenant ID]
                       [--schemas DIR]
environment: CHATLOG_KAFKA_BOOTSTRAP (host:port[,host:port...]), CHATLOG_TOPIC (default chatlog.events)`;

const { version } = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8'));

function options() {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        session: { type: 'string' },
        user: { type: 'string' },
        content: { type: 'string' },
        role: { type: 'string', default: 'user' },
        'message-id': { type: 'string' },
        tenant: { type: 'string', default: 'default' },
        schemas: { type: 'string', default: SCHEMA_DIR },
        help: { type: 'boolean' },
      },
    }).values;
  } catch (error) {
    fail(`${error.message}\n${USAGE}`);
  }
  if (parsed.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const missing = ['session', 'user', 'content'].filter((name) => parsed[name] === undefined);
  if (missing.length > 0) {
    fail(`missing ${missing.map((name) => `--${name}`).join(', ')}\n${USAGE}`);
  }
  const bootstrap = process.env.CHATLOG_KAFKA_BOOTSTRAP;
  if (!bootstrap) {
    fail(
      'CHATLOG_KAFKA_BOOTSTRAP is not set: set it to the broker list chatlog uses (host:port); ' +
        'for the local stack run, in chatlog\'s repository: eval "$(.venv/bin/python -m dev.services env)"',
    );
  }
  return { ...parsed, bootstrap: bootstrap.split(','), topic: process.env.CHATLOG_TOPIC || 'chatlog.events' };
}

function fail(message) {
  console.error(`publish.mjs: ${message}`);
  process.exit(2);
}

async function main() {
  const opts = options();
  let schema, record, value;
  try {
    schema = loadWriterSchema(opts.schemas);
    record = messageAppended({
      sessionId: opts.session,
      userId: opts.user,
      content: opts.content,
      role: opts.role,
      messageId: opts['message-id'],
      tenant: opts.tenant,
      producer: { client: 'chatlog-node-example', version, host: hostname() },
    });
    value = encode(schema, record);
  } catch (error) {
    fail(`${error.message}; nothing was published`);
  }

  const producer = new Producer({
    clientId: 'chatlog-node-example',
    bootstrapBrokers: opts.bootstrap,
    // chatlog's own guarantees: no reordering or duplicates on retry, every replica.
    idempotent: true,
    acks: -1,
    partitioner: compatibilityPartitioner,
    // A missing topic is an operator's mistake (`chatlog topics create`), not something to
    // create here with the broker's defaults.
    autocreateTopics: false,
    retries: 5,
  });
  try {
    const result = await withDeadline(
      producer.send({
        messages: [
          {
            topic: opts.topic,
            key: Buffer.from(opts.session, 'utf8'),
            value,
            // chatlog writes occurred_at as the record's timestamp too.
            timestamp: BigInt(record.occurred_at),
          },
        ],
      }),
    );
    const [stored] = result.offsets;
    console.log(
      JSON.stringify({
        topic: stored.topic,
        partition: stored.partition,
        offset: Number(stored.offset),
        session_id: record.session_id,
        event_id: record.event_id,
        message_id: record.payload['chatlog.events.MessageAppended'].message_id,
        schema_version: schema.version,
      }),
    );
  } catch (error) {
    fail(explain(error, opts, record.payload['chatlog.events.MessageAppended'].message_id));
  } finally {
    await withDeadline(producer.close()).catch(() => {});
  }
}

const DEADLINE_MS = 30_000;

/** `promise`, or a rejection once DEADLINE_MS have passed: a publish never hangs. */
function withDeadline(promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${DEADLINE_MS / 1000} s`)), DEADLINE_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** What went wrong, and what to do about it. */
function explain(error, opts, messageId) {
  const where = `${opts.topic} at ${opts.bootstrap.join(',')}`;
  const causes = [...new Set((error.errors ?? []).map((e) => e.message))].join('; ');
  const reason = `${error.message}${causes ? ` (${causes})` : ''}`;
  if (/unknown topic/i.test(error.message)) {
    return `topic ${opts.topic} does not exist at ${opts.bootstrap.join(',')}: create it with \`chatlog topics create\` (or set CHATLOG_TOPIC); nothing was stored`;
  }
  if (/cannot connect/i.test(reason)) {
    return `no broker answered at ${opts.bootstrap.join(',')} (${reason}): check CHATLOG_KAFKA_BOOTSTRAP, then retry with --message-id ${messageId}`;
  }
  // A send whose acknowledgement was lost may be stored: retrying with the same message id
  // is safe, the projection keeps the message once.
  return `publishing to ${where} failed: ${reason}; the event may or may not be stored: retry with --message-id ${messageId}`;
}

await main();
