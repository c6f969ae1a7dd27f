import { InvalidArgumentError, Option, type Command } from 'commander';
import type { Config } from '../config.ts';
import type { ApiKeysService, CreatedKey, KeyInfo } from '../services/api-keys.ts';
import type { SqlStore } from '../stores/sql/index.ts';
import { configOrExit, withStore } from './context.ts';
import { printResult, type JsonOption } from './output.ts';
import { answers, callServer, serverBase, withServerOptions, type ServerOptions } from './server-client.ts';

/**
 * `databank keys create|list|revoke|rotate`: API keys, printed once and stored only as a hash.
 *
 * `create` writes to the database itself. `list`, `revoke` and `rotate` ask the running server
 * (`--url`, or HOST:PORT when something answers there), as `cache` does: on PGlite the server
 * holds the database, and its revocation reaches the cache every instance reads. With no server
 * they open the database (and the Redis cache, to invalidate the key there) themselves.
 */

interface CreateOptions extends JsonOption {
  readonly role: 'admin' | 'customer';
  readonly customer?: number;
}

/** The operator of the CLI holds the database: an admin. */
const OPERATOR = { role: 'admin', keyId: 0 } as const;

/** Registers `keys` and its subcommands. */
export function register(program: Command): void {
  const keys = program.command('keys').description('API keys');
  keys
    .command('create')
    .description('create an API key; it is printed once and stored only as a hash')
    .addOption(new Option('--role <role>', 'what the key may do').choices(['admin', 'customer']).makeOptionMandatory())
    .option('--customer <id>', 'the customer a customer key is bound to', positiveInt)
    .option('--json', 'print {"key","role","customer_id","id","expires_at"}')
    .action((opts: CreateOptions) =>
      withStore(async (store) => {
        if ((opts.role === 'customer') !== (opts.customer !== undefined)) {
          throw new InvalidArgumentError('--customer is required with --role customer and not allowed with --role admin');
        }
        const created = await (await directKeys(store)).service.create(opts.role, opts.customer ?? null);
        printResult(opts, created, created.key);
      }),
    );
  withServerOptions(keys.command('list').description('every key, revoked and expired ones included, without secrets')).action(
    async (opts: ServerOptions) => {
      const result = await viaServer(opts, listOnServer, async (service) => listAll((cursor) => service.list(OPERATOR, { limit: 100, cursor })));
      printResult(opts, { result }, () => listing(result));
    },
  );
  withServerOptions(keys.command('revoke').description('revoke a key: every instance refuses it from its next request on'))
    .argument('<id>', 'the key id (see keys list)', positiveInt)
    .action(async (id: number, opts: ServerOptions) => {
      await viaServer(opts, () => revokeOnServer(opts, id), (service) => service.revoke(OPERATOR, id));
      printResult(opts, { revoked: id }, `revoked key ${id}`);
    });
  withServerOptions(
    keys.command('rotate').description('a new key with the same role, customer and expiry; the old one is revoked at once'),
  )
    .argument('<id>', 'the key id (see keys list)', positiveInt)
    .action(async (id: number, opts: ServerOptions) => {
      const created = await viaServer(
        opts,
        async () => (await callServer(opts, 'POST', `/api-keys/${id}/rotate`)) as CreatedKey,
        (service) => service.rotate(OPERATOR, id),
      );
      printResult(opts, created, created.key);
    });
}

/**
 * Runs `server` when a server is named (`--url`) or answers at HOST:PORT, else `direct` on the
 * database this process opens.
 */
async function viaServer<T>(opts: ServerOptions, server: (opts: ServerOptions) => Promise<T>, direct: (service: ApiKeysService) => Promise<T>): Promise<T> {
  if (opts.url || (await answers(serverBase(opts, configOrExit())))) return server(opts);
  return withStore(async (store, config) => {
    const keys = await directKeys(store, config);
    try {
      return await direct(keys.service);
    } finally {
      await keys.close();
    }
  });
}

/**
 * The keys service on this process's own connection. With `config`, revocations go to the shared
 * cache (Redis), and a failure to tell it is an error: the database has the revocation, but
 * servers might accept the key until its cache entry expires.
 */
async function directKeys(store: SqlStore, config?: Config): Promise<{ service: ApiKeysService; close(): Promise<void> }> {
  const { ApiKeysService } = await import('../services/api-keys.ts');
  const { primaryOnly } = await import('../stores/sql/port.ts');
  const db = primaryOnly(store.db);
  if (config?.cache.store.kind !== 'redis') {
    if (config?.cache.store.kind === 'memory' && store.kind === 'postgres') {
      process.stderr.write(
        `databank: no server answered at ${serverBase({}, config)}; if one runs elsewhere, its in-process cache may ` +
          `accept a revoked key for up to ${config.cache.ttlSeconds} s: pass --url to go through it\n`,
      );
    }
    return { service: new ApiKeysService(db), close: async () => undefined };
  }
  const { openCacheStore } = await import('../stores/cache/index.ts');
  const { CachedReads } = await import('../services/cached-reads.ts');
  let failure: unknown = null;
  const cacheStore = await openCacheStore(config.cache.store, (err) => (failure ??= err));
  const cache = new CachedReads(
    cacheStore,
    { prefix: config.cache.prefix, ttlMs: config.cache.ttlSeconds * 1000, negativeTtlMs: 2_000, tombstoneMs: 30_000 },
    { hit: () => undefined, miss: () => undefined, error: (_family, err) => (failure ??= err) },
  );
  return {
    service: new ApiKeysService(db, { cache }),
    async close() {
      await cacheStore?.close();
      if (failure !== null) {
        throw new Error(
          `the database has the change, but the Redis cache could not be told (${String(failure)}): servers may ` +
            `accept the old key for up to ${config.cache.ttlSeconds} s; run \`databank cache flush --prefix api-key:\` once Redis answers`,
        );
      }
    },
  };
}

/** Every page of the list. */
async function listAll(page: (cursor: string | undefined) => Promise<{ result: readonly KeyInfo[]; next_cursor?: string }>): Promise<KeyInfo[]> {
  const all: KeyInfo[] = [];
  let cursor: string | undefined;
  do {
    const body = await page(cursor);
    all.push(...body.result);
    cursor = body.next_cursor;
  } while (cursor !== undefined);
  return all;
}

function listOnServer(opts: ServerOptions): Promise<KeyInfo[]> {
  return listAll(async (cursor) => {
    const query = cursor === undefined ? '' : `?cursor=${encodeURIComponent(cursor)}`;
    return (await callServer(opts, 'GET', `/api-keys${query}`)) as { result: KeyInfo[]; next_cursor?: string };
  });
}

/** `DELETE /api-keys/:id` on the running server; it answers 204 without a body. */
async function revokeOnServer(opts: ServerOptions, id: number): Promise<void> {
  await callServer(opts, 'DELETE', `/api-keys/${id}`);
}

/** One line per key, in columns. */
function listing(keys: readonly KeyInfo[]): string {
  if (keys.length === 0) return 'no keys';
  const now = Date.now();
  const rows = [
    ['id', 'role', 'customer', 'status', 'last used', 'expires', 'key'],
    ...keys.map((k) => [
      String(k.id),
      k.role,
      k.customer_id === null ? '-' : String(k.customer_id),
      k.revoked_at !== null ? 'revoked' : k.expires_at !== null && Date.parse(k.expires_at) <= now ? 'expired' : 'active',
      k.last_used_at ?? 'never',
      k.expires_at ?? 'never',
      `dbk_${k.prefix}_…`,
    ]),
  ];
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

function positiveInt(value: string): number {
  if (!/^[1-9][0-9]{0,14}$/.test(value)) throw new InvalidArgumentError('expected a positive integer');
  return Number(value);
}
