// The baseline for the reads and cache benchmarks: Fastify with nothing else (no auth, schemas,
// hooks, cache or database), answering the same paths with a constant customer or account.
// Started by bench/reads.ts and bench/cache.ts as `node --import tsx bench/bare-server.ts` with
// PORT set.
import Fastify from 'fastify';

const CUSTOMER = { id: 1, name: 'Bench Customer 1', date_of_birth: '1980-01-01', balance: 1000 };
const ACCOUNT = { account_id: 1, account_type: 'checking', balance: 1000, customer_id: 1, currency: 'USD' };

const app = Fastify({ logger: false });
app.get('/customers/:id', async () => CUSTOMER);
app.get('/accounts/:id', async () => ACCOUNT);
app.get('/readyz', async () => ({ status: 'ready' }));
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT) });
process.on('SIGTERM', () => {
  void app.close().then(() => process.exit(0));
});
