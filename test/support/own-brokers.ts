import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as amqpConnect } from 'amqplib';
import { connect as natsConnect, type NatsConnection } from 'nats';
import { freePort } from './cli.ts';
import { registerCleanup, spawnTracked, waitFor, type Spawned } from './processes.ts';

/**
 * A test's own message brokers, on free ports of 127.0.0.1 with their data in a temp dir, which
 * the test may stop and start again (same port, same data) without touching the machine's
 * RabbitMQ and NATS that other test files use meanwhile. Each runs in a process group of its own,
 * killed when the file ends (or the test process exits); its temp dir is removed then.
 */

export const NATS_SERVER = '/usr/sbin/nats-server';
/**
 * The RabbitMQ server script itself. Debian's `/usr/sbin/rabbitmq-server` wrapper is not used:
 * run as root it switches to the `rabbitmq` user with `su`, which starts a new session (out of
 * the test's process group) in `/var/lib/rabbitmq`, the machine node's home.
 */
export const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';
const ERL = '/usr/bin/erl';

export const HAVE_NATS_SERVER = existsSync(NATS_SERVER);
export const HAVE_RABBITMQ_SERVER = existsSync(RABBITMQ_SERVER) && existsSync(ERL);

/** How long a start may take: a RabbitMQ node's first boot takes ≈12 s on an idle 2-core machine. */
const START_MS = 90_000;
/** How long an orderly stop may take (a RabbitMQ node's takes ≈3 s) before the group is killed and the stop fails. */
const STOP_MS = 60_000;

/** Sends `signal` to the process group and waits for the leader's exit; past STOP_MS kills the group and throws. */
async function stopGroup(proc: Spawned, signal: 'SIGTERM' | 'SIGKILL', what: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), STOP_MS)));
  const outcome = await Promise.race([proc.kill(signal), late]);
  clearTimeout(timer);
  if (outcome === 'late') {
    await proc.kill('SIGKILL');
    throw new Error(`${what} did not exit within ${STOP_MS} ms of ${signal} and was killed:\n${proc.output()}`);
  }
}

function tempDir(kind: string): string {
  const dir = mkdtempSync(join(tmpdir(), `databank-test-${kind}-`));
  registerCleanup(() => rmSync(dir, { recursive: true, force: true }), 'file');
  return dir;
}

/** A `nats-server -js` of the test's own; its JetStream store survives a stop and start. */
export class OwnNatsServer {
  private proc: Spawned | null = null;

  private constructor(
    readonly port: number,
    readonly storeDir: string,
  ) {}

  /** Makes the server's port and store dir; `start` runs it. */
  static async create(): Promise<OwnNatsServer> {
    return new OwnNatsServer(await freePort(), tempDir('nats'));
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  running(): boolean {
    return this.proc?.running() ?? false;
  }

  /** Starts the server and resolves once JetStream answers. */
  async start(): Promise<void> {
    if (this.running()) throw new Error('nats-server is already running');
    const proc = spawnTracked(NATS_SERVER, ['-a', '127.0.0.1', '-p', String(this.port), '-js', '-sd', this.storeDir], {
      what: `nats-server on port ${this.port}`,
      lifetime: 'file',
    });
    this.proc = proc;
    await waitFor(
      `nats-server answers with JetStream on port ${this.port}`,
      async () => {
        if (!proc.running()) throw new Error(`nats-server exited at start:\n${proc.output()}`);
        let nc: NatsConnection | undefined;
        try {
          nc = await natsConnect({ servers: this.url, timeout: 1_000, reconnect: false });
          await (await nc.jetstreamManager({ timeout: 1_000 })).getAccountInfo();
          return true;
        } catch {
          return false;
        } finally {
          await nc?.close().catch(() => undefined);
        }
      },
      { timeoutMs: START_MS, everyMs: 50 },
    );
  }

  /** Sends `signal` (SIGTERM: an orderly stop; SIGKILL: a crash) and waits until it has exited. */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    this.proc = null;
    await stopGroup(proc, signal, `nats-server on port ${this.port}`);
  }
}

/**
 * A RabbitMQ node of the test's own (`<unique>@localhost`): its own AMQP and distribution ports,
 * Mnesia, logs, config, Erlang cookie (its HOME) and no plugins, all in a temp dir; the machine's
 * `/etc/rabbitmq` files are not read. It registers with the machine's epmd (port 4369, started by
 * the machine's node), which forgets it when it stops. A stopped node started again recovers its
 * durable queues and persistent messages from its Mnesia dir.
 */
export class OwnRabbitNode {
  private proc: Spawned | null = null;

  private constructor(
    readonly port: number,
    readonly distPort: number,
    readonly dir: string,
    readonly nodeName: string,
  ) {}

  /** Makes the node's ports and files; `start` runs it. */
  static async create(): Promise<OwnRabbitNode> {
    const port = await freePort();
    let distPort = await freePort();
    while (distPort === port) distPort = await freePort();
    const dir = tempDir('rabbitmq');
    mkdirSync(join(dir, 'home'), { mode: 0o700 });
    // Without a config of its own the node would read /etc/rabbitmq (the machine node's listener).
    writeFileSync(join(dir, 'rabbitmq.conf'), 'disk_free_limit.absolute = 10MB\n');
    writeFileSync(join(dir, 'rabbitmq-env.conf'), '');
    writeFileSync(join(dir, 'enabled_plugins'), '[].\n');
    return new OwnRabbitNode(port, distPort, dir, `databank-test-${process.pid}-${randomBytes(3).toString('hex')}@localhost`);
  }

  get url(): string {
    return `amqp://guest:guest@127.0.0.1:${this.port}`;
  }

  running(): boolean {
    return this.proc?.running() ?? false;
  }

  private env(): NodeJS.ProcessEnv {
    const { dir } = this;
    return {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: join(dir, 'home'),
      RABBITMQ_CONF_ENV_FILE: join(dir, 'rabbitmq-env.conf'),
      RABBITMQ_CONFIG_FILE: join(dir, 'rabbitmq.conf'),
      RABBITMQ_ADVANCED_CONFIG_FILE: join(dir, 'advanced.config'),
      RABBITMQ_ENABLED_PLUGINS_FILE: join(dir, 'enabled_plugins'),
      RABBITMQ_PLUGINS_EXPAND_DIR: join(dir, 'plugins-expand'),
      RABBITMQ_NODENAME: this.nodeName,
      RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
      RABBITMQ_NODE_PORT: String(this.port),
      RABBITMQ_DIST_PORT: String(this.distPort),
      RABBITMQ_MNESIA_BASE: join(dir, 'mnesia'),
      RABBITMQ_LOG_BASE: join(dir, 'log'),
      RABBITMQ_PID_FILE: join(dir, 'pid'),
      // Distribution on loopback only, as the machine's node; an epmd it would have to start listens there too.
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
      ERL_EPMD_ADDRESS: '127.0.0.1',
    };
  }

  /** Starts the node and resolves once it accepts an AMQP connection. */
  async start(): Promise<void> {
    if (this.running()) throw new Error('the RabbitMQ node is already running');
    const proc = spawnTracked(RABBITMQ_SERVER, [], {
      env: this.env(),
      cwd: this.dir,
      what: `rabbitmq-server ${this.nodeName} on port ${this.port}`,
      lifetime: 'file',
    });
    this.proc = proc;
    await waitFor(
      `RabbitMQ node ${this.nodeName} accepts AMQP connections on port ${this.port}`,
      async () => {
        if (!proc.running()) throw new Error(`rabbitmq-server exited at start:\n${proc.output()}`);
        try {
          const connection = await amqpConnect(this.url, { timeout: 1_000 });
          connection.on('error', () => undefined);
          await connection.close();
          return true;
        } catch {
          return false;
        }
      },
      { timeoutMs: START_MS, everyMs: 100 },
    );
  }

  /**
   * SIGTERM (the script hands it to the VM, which stops the node in order) or SIGKILL to the
   * node's process group, and waits until the script has exited (after the VM, on SIGTERM).
   */
  async stop(signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
    const proc = this.proc;
    if (!proc) return;
    this.proc = null;
    await stopGroup(proc, signal, `RabbitMQ node ${this.nodeName}`);
  }
}
