// The baseline for the reads benchmark: Fastify with nothing else (no auth, schemas, hooks or
// database), answering the same path with a constant customer. Started by bench/reads.ts as
// `node --import tsx bench/bare-server.ts` with PORT set.
import Fastify from 'fastify';

const CUSTOMER = { id: 1, name: 'Bench Customer 1', date_of_birth: '1980-01-01', balance: 1000 };

const app = Fastify({ logger: false });
app.get('/customers/:id', async () => CUSTOMER);
app.get('/readyz', async () => ({ status: 'ready' }));
await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT) });
process.on('SIGTERM', () => {
  void app.close().then(() => process.exit(0));
});
