import { connect as amqpConnect } from 'amqplib';
import { connect as natsConnect, type NatsConnection } from 'nats';
import { REQUIRE_SERVICES } from './engines.ts';

/**
 * The message brokers of the server suites: RabbitMQ when AMQP_URL answers, NATS JetStream when
 * NATS_URL answers. With REQUIRE_SERVICES=1 a set URL that does not answer fails the run.
 */
export const AMQP_URL = process.env.AMQP_URL || null;
export const NATS_URL = process.env.NATS_URL || null;

async function amqpReachable(url: string): Promise<boolean> {
  try {
    const connection = await amqpConnect(url, { timeout: 3_000 });
    connection.on('error', () => undefined);
    await connection.close();
    return true;
  } catch {
    return false;
  }
}

async function natsReachable(url: string): Promise<boolean> {
  let nc: NatsConnection | undefined;
  try {
    nc = await natsConnect({ servers: url, timeout: 3_000, reconnect: false });
    await (await nc.jetstreamManager()).getAccountInfo();
    return true;
  } catch {
    return false;
  } finally {
    await nc?.close();
  }
}

export const AMQP_UP: boolean = AMQP_URL ? await amqpReachable(AMQP_URL) : false;
export const NATS_UP: boolean = NATS_URL ? await natsReachable(NATS_URL) : false;
if (REQUIRE_SERVICES && AMQP_URL && !AMQP_UP) throw new Error('REQUIRE_SERVICES=1 but RabbitMQ at AMQP_URL does not answer');
if (REQUIRE_SERVICES && NATS_URL && !NATS_UP) throw new Error('REQUIRE_SERVICES=1 but NATS at NATS_URL does not answer (JetStream enabled?)');

/** Removes what a test's deployment left on the brokers under `prefix`: the NATS stream and the RabbitMQ queues named. */
export async function cleanBrokers(prefix: string, queues: readonly string[]): Promise<void> {
  if (NATS_URL && NATS_UP) {
    const nc = await natsConnect({ servers: NATS_URL, timeout: 3_000 });
    try {
      const jsm = await nc.jetstreamManager();
      await jsm.streams.delete(`${prefix}_events`).catch(() => false);
    } finally {
      await nc.close();
    }
  }
  if (AMQP_URL && AMQP_UP) {
    const connection = await amqpConnect(AMQP_URL);
    connection.on('error', () => undefined);
    try {
      const channel = await connection.createChannel();
      channel.on('error', () => undefined);
      for (const q of queues) {
        for (const name of [`${prefix}.${q}`, `${prefix}.${q}.dlq`]) await channel.deleteQueue(name);
      }
      await channel.close();
    } finally {
      await connection.close();
    }
  }
}
