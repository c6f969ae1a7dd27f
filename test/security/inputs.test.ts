import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Refusals } from '../support/attack-checks.ts';
import { Bank, expectOk, json, rawRequest, startAttackServer, type Answer, type AttackServer, type Client } from '../support/attack-server.ts';
import { ENGINES } from '../support/engines.ts';

/**
 * Mass assignment, type confusion and limits, against a real `databank serve` configured by its
 * environment: a balance ceiling just under 10^14, three accounts and three files (4 KiB) per
 * customer. Every refusal is checked for its exact status and code, and that nothing changed.
 */

const MAX_BALANCE = 99_999_999_999_999;
const MAX_ACCOUNTS = 3;
const MAX_FILES = 3;
const MAX_FILE_BYTES = 4096;

const VALIDATION = 'DATABANK_ERR_VALIDATION';
const MALFORMED = 'DATABANK_ERR_MALFORMED_BODY';

describe.each(ENGINES)('mass assignment, type confusion and limits on databank serve (%s)', (engine) => {
  let server: AttackServer;
  let bank: Bank;
  /** Customer M (the attacker) with one funded USD account; customer O (another) with one. */
  let m: { id: number; key: string; account: number };
  let o: { id: number; account: number };
  let asM: Client;

  beforeAll(async () => {
    server = await startAttackServer(engine, 'inputs', {
      DATABANK_MAX_BALANCE: String(MAX_BALANCE),
      DATABANK_MAX_ACCOUNTS_PER_CUSTOMER: String(MAX_ACCOUNTS),
      DATABANK_MAX_FILES_PER_CUSTOMER: String(MAX_FILES),
      DATABANK_MAX_FILE_BYTES_PER_CUSTOMER: String(MAX_FILE_BYTES),
      DATABANK_AUTH_FAILURE_LIMIT_PER_MINUTE: '100000',
      DATABANK_RATE_LIMIT_PER_MINUTE: '100000',
    });
    bank = new Bank(server);
    const mId = await bank.customer('Marta Massassign');
    const oId = await bank.customer('Otto Other');
    m = { id: mId, key: (await bank.key(mId)).key, account: await bank.account(mId) };
    o = { id: oId, account: await bank.account(oId) };
    await bank.deposit(m.account, 1_000);
    await bank.deposit(o.account, 50);
    asM = bank.as(m.key);
  });

  afterAll(async () => {
    if (server) expect(await server.close()).toBe(0);
  });

  /** Balances and ledger lengths of M's and O's accounts: a refused request changes none. */
  const money = async () => ({
    m: await bank.balance(m.account),
    o: await bank.balance(o.account),
    mEntries: await bank.entryCount(m.account),
    oEntries: await bank.entryCount(o.account),
  });

  describe('mass assignment', () => {
    it('PATCH /customers/:id takes only a name: balance, id, created_at and the rest are refused, nothing changes', async () => {
      const before = (await bank.admin.get(`/customers/${m.id}`)).text;
      const checks = new Refusals();
      const bodies: object[] = [
        { balance: 1_000_000_000 },
        { balances: { USD: 1_000_000_000 } },
        { id: o.id },
        { created_at: '2000-01-01T00:00:00Z' },
        { date_of_birth: '2001-01-01' },
        { customer_id: o.id },
        { name: 'Renamed', balance: 1 },
        { name: 'Renamed', id: o.id },
        { name: 'Renamed', role: 'admin' },
        { name: 'Renamed', api_key: 'dbk_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' },
      ];
      for (const client of [asM, bank.admin]) {
        for (const body of bodies) checks.expect(await client.call('PATCH', `/customers/${m.id}`, { body }), 400, VALIDATION, JSON.stringify(body));
        for (const raw of [
          '{"name":"Renamed","__proto__":{"balance":1}}',
          '{"name":"Renamed","constructor":{"prototype":{"balance":1}}}',
        ]) {
          checks.expect(await client.call('PATCH', `/customers/${m.id}`, { body: raw }), 400, MALFORMED, raw);
        }
      }
      expect(checks.wrong).toEqual([]);
      expect((await bank.admin.get(`/customers/${m.id}`)).text).toBe(before);
      // The route itself works: a name alone is taken, and nothing else moves.
      const renamed = expectOk<Record<string, unknown>>(await asM.call('PATCH', `/customers/${m.id}`, { body: { name: 'Marta Renamed' } }), 200);
      expect(renamed).toEqual({ ...(JSON.parse(before) as object), name: 'Marta Renamed' });
    });

    it('opening an account takes only account_type and currency: a balance or an owner is refused, nothing is opened', async () => {
      const mineBefore = (await bank.admin.get(`/customers/${m.id}/accounts`)).text;
      const otherBefore = (await bank.admin.get(`/customers/${o.id}/accounts`)).text;
      const checks = new Refusals();
      for (const body of [
        { account_type: 'savings', balance: 1_000_000 },
        { account_type: 'savings', customer_id: o.id },
        { account_type: 'savings', account_id: o.account },
        { account_type: 'savings', currency: 'USD', balance: 5 },
        { account_type: 'savings', created_at: '2000-01-01T00:00:00Z' },
        { account_type: 'savings', status: 'open', overdraft: 1_000_000 },
        { account_type: 'admin' },
        { account_type: 'savings', currency: 'BTC' },
        { account_type: 'savings', currency: 'usd' },
      ]) {
        checks.expect(await asM.post(`/customers/${m.id}/accounts`, body), 400, VALIDATION, JSON.stringify(body));
      }
      expect(checks.wrong).toEqual([]);
      expect((await bank.admin.get(`/customers/${m.id}/accounts`)).text).toBe(mineBefore);
      expect((await bank.admin.get(`/customers/${o.id}/accounts`)).text).toBe(otherBefore);
    });

    it('money movements, fees and new customers take only their own fields; nothing moves, nothing is made', async () => {
      const before = await money();
      const customersBefore = await bank.all<{ id: number }>('/customers');
      const checks = new Refusals();
      const extras = [
        { balance: 1_000_000_000 },
        { account_id: o.account },
        { currency: 'EUR' },
        { kind: 'withdrawal' },
        { created_at: '2000-01-01T00:00:00Z' },
        { transaction_id: 1 },
        { to_account_id: o.account },
      ];
      for (const extra of extras) {
        for (const kind of ['deposits', 'withdrawals']) {
          const body = { amount: 1, ...extra };
          checks.expect(await bank.admin.post(`/accounts/${m.account}/${kind}`, body), 400, VALIDATION, JSON.stringify(body));
        }
      }
      for (const extra of [{ fee: 0 }, { currency: 'USD' }, { from_customer_id: o.id }, { status: 'completed' }, { created_at: '2000-01-01T00:00:00Z' }]) {
        const body = { from_account_id: m.account, to_account_id: o.account, amount: 1, ...extra };
        checks.expect(await asM.post('/transfers', body), 400, VALIDATION, JSON.stringify(body));
      }
      for (const body of [
        { amount: 1, reference: 'ma-fee-1', accounts: [m.account] },
        { amount: 1, reference: 'ma-fee-2', customer_id: m.id },
        { amount: 1, reference: 'ma-fee-3', charged: [] },
      ]) {
        checks.expect(await bank.admin.post('/fees', body), 400, VALIDATION, JSON.stringify(body));
      }
      for (const extra of [{ balance: 1_000_000 }, { id: 1 }, { created_at: '2000-01-01T00:00:00Z' }, { accounts: [{ account_type: 'savings' }] }]) {
        const body = { name: 'Planted Customer', date_of_birth: '1990-01-01', ...extra };
        checks.expect(await bank.admin.post('/customers', body), 400, VALIDATION, JSON.stringify(body));
      }
      expect(checks.wrong).toEqual([]);
      expect(await money()).toEqual(before);
      expect(await bank.all<{ id: number }>('/customers')).toEqual(customersBefore);
    });

    it('POST /api-keys: a customer key gets 403 whatever it asks for; key material in a body is refused; nothing is made', async () => {
      const keys = async () => (await bank.all<{ id: number; revoked_at: string | null }>('/api-keys')).map((k) => [k.id, k.revoked_at]);
      const before = await keys();
      const checks = new Refusals();
      for (const body of [
        { role: 'admin' },
        { role: 'customer', customer_id: m.id },
        { role: 'customer', customer_id: o.id },
        { role: 'customer', customer_id: m.id, expires_at: null },
        { role: 'admin', customer_id: null, expires_at: '2999-01-01T00:00:00Z' },
      ]) {
        const res = await asM.post('/api-keys', body);
        checks.expect(res, 403, 'DATABANK_ERR_FORBIDDEN', JSON.stringify(body));
        expect(res.text).not.toContain('dbk_');
      }
      // An admin cannot choose the secret, the id or the prefix of a key either.
      for (const body of [
        { role: 'admin', key: `dbk_${'0'.repeat(16)}_${'A'.repeat(43)}` },
        { role: 'admin', id: 1 },
        { role: 'admin', prefix: '0000000000000000' },
        { role: 'admin', secret_hash: '00' },
        { role: 'admin', revoked_at: null, last_used_at: null },
        { role: 'superuser' },
        { role: 'customer' },
        { role: 'admin', customer_id: m.id },
      ]) {
        checks.expect(await bank.admin.post('/api-keys', body), 400, VALIDATION, JSON.stringify(body));
      }
      expect(checks.wrong).toEqual([]);
      expect(await keys()).toEqual(before);
    });
  });

  describe('type confusion', () => {
    /** Amount texts that are valid JSON but not a whole number from 1 to 10^14. */
    const BAD_AMOUNTS = [
      '"100"', '1.5', '0.1', '100.5', 'true', 'false', '[100]', '{"value":100}', 'null', '1e400', '-1e400', '"1e3"', '-0', '0', '-1',
      '9007199254740992', '9007199254740993', '18446744073709551616', '100000000000001', '1e15', '"0x64"', '""', '"  100"',
    ];
    /** Amount texts that are not JSON at all. */
    const NOT_JSON = ['NaN', 'Infinity', '-Infinity', '0x64', '1_000', '+1', '01', '.5', 'undefined', '100n', "'100'"];

    it('amounts as strings, floats, booleans, arrays, objects, null, 1e400, -0 and past 2^53: 400 DATABANK_ERR_VALIDATION; nothing moves', async () => {
      const before = await money();
      const checks = new Refusals();
      const send = async (amount: string, code: string) => {
        checks.expect(await bank.admin.post(`/accounts/${m.account}/deposits`, `{"amount":${amount}}`), 400, code, `deposit ${amount}`);
        checks.expect(await bank.admin.post(`/accounts/${m.account}/withdrawals`, `{"amount":${amount}}`), 400, code, `withdrawal ${amount}`);
        const transfer = `{"from_account_id":${m.account},"to_account_id":${o.account},"amount":${amount}}`;
        checks.expect(await asM.post('/transfers', transfer), 400, code, `transfer ${amount}`);
        checks.expect(await bank.admin.post('/fees', `{"amount":${amount},"reference":"type-confusion"}`), 400, code, `fee ${amount}`);
      };
      for (const amount of BAD_AMOUNTS) await send(amount, VALIDATION);
      for (const amount of NOT_JSON) await send(amount, MALFORMED);
      checks.expect(await bank.admin.post(`/accounts/${m.account}/deposits`, '{}'), 400, VALIDATION, 'no amount');
      checks.expect(await bank.admin.post(`/accounts/${m.account}/deposits`, '[{"amount":1}]'), 400, VALIDATION, 'an array body');
      checks.expect(await bank.admin.post(`/accounts/${m.account}/deposits`, '"{\\"amount\\":1}"'), 400, VALIDATION, 'a string body');
      checks.expect(await bank.admin.post(`/accounts/${m.account}/deposits`, 'null'), 400, VALIDATION, 'a null body');
      expect(checks.wrong).toEqual([]);
      expect(await money()).toEqual(before);
    });

    it('Idempotency-Key headers that are not 1 to 255 printable ASCII characters: 400, nothing moves', async () => {
      const before = await money();
      const checks = new Refusals();
      for (const key of ['', ' ', 'a b', 'x'.repeat(256), 'caf\u00e9', 'tab\there']) {
        const res = await rawPost(server.port, `/accounts/${m.account}/deposits`, server.adminKey, '{"amount":1}', `Idempotency-Key: ${key}\r\n`);
        checks.expect(res, 400, 'DATABANK_ERR_IDEMPOTENCY_KEY_INVALID', JSON.stringify(key));
      }
      // The header twice: Node joins the two values with ", ", which is not a valid key.
      const twice = await rawPost(server.port, `/accounts/${m.account}/deposits`, server.adminKey, '{"amount":1}', 'Idempotency-Key: a\r\nIdempotency-Key: b\r\n');
      checks.expect(twice, 400, 'DATABANK_ERR_IDEMPOTENCY_KEY_INVALID', 'twice');
      // DEL is not even valid HTTP: Node's parser refuses the request before any route.
      const del = await rawPost(server.port, `/accounts/${m.account}/deposits`, server.adminKey, '{"amount":1}', 'Idempotency-Key: a\u007fb\r\n');
      checks.expect(del, 400, VALIDATION, 'DEL');
      expect(checks.wrong).toEqual([]);
      expect(await money()).toEqual(before);
    });

    it('a body that is not application/json: 415, whatever it holds; nothing moves', async () => {
      const before = await money();
      const checks = new Refusals();
      for (const [type, body] of [
        ['text/plain', '{"amount":1}'],
        ['application/x-www-form-urlencoded', 'amount=1'],
        ['multipart/form-data; boundary=x', '--x\r\nContent-Disposition: form-data; name="amount"\r\n\r\n1\r\n--x--\r\n'],
        ['application/xml', '<amount>1</amount>'],
        ['application/jsonx', '{"amount":1}'],
      ] as const) {
        const res = await bank.admin.post(`/accounts/${m.account}/deposits`, body, { headers: { 'content-type': type } });
        checks.expect(res, 415, 'DATABANK_ERR_UNSUPPORTED_MEDIA_TYPE', type);
      }
      expect(checks.wrong).toEqual([]);
      expect(await money()).toEqual(before);
    });

    it('ids in bodies: 400 unless a whole number from 1 to 999999999999999', async () => {
      const before = await money();
      const checks = new Refusals();
      const ids = ['"1"', `"${o.account}"`, '1.5', 'true', 'null', '[1]', '{"id":1}', '-1', '0', '1e400', '9007199254740993', '1000000000000000', '"01"', '"0x1"'];
      for (const id of ids) {
        checks.expect(await asM.post('/transfers', `{"from_account_id":${m.account},"to_account_id":${id},"amount":1}`), 400, VALIDATION, `to ${id}`);
        checks.expect(await asM.post('/transfers', `{"from_account_id":${id},"to_account_id":${o.account},"amount":1}`), 400, VALIDATION, `from ${id}`);
        checks.expect(await bank.admin.post('/api-keys', `{"role":"customer","customer_id":${id}}`), 400, VALIDATION, `customer_id ${id}`);
      }
      expect(checks.wrong).toEqual([]);
      expect(await money()).toEqual(before);
    });

    it('ids in paths that are not the id pattern: 400; unknown ones 404; never 500', async () => {
      const checks = new Refusals();
      const invalid = [
        '01', '1.0', '0x1', '1e3', '-1', '0', '+1', '%201', '1%20', '1%00', 'abc', '99999999999999999999', '1000000000000000',
        '%EF%BC%91', '%D9%A3', '1;2', '1,2', '%5B1%5D', '1.', 'NaN', 'Infinity', 'null', 'true', '%2e%2e', '1%2f2', '1%5c2', '0001',
        '9007199254740993', '1' + '0'.repeat(400),
      ];
      const asAdmin = bank.admin;
      for (const id of invalid) {
        for (const [method, path, body] of [
          ['GET', `/customers/${id}`],
          ['GET', `/customers/${id}/accounts`],
          ['GET', `/accounts/${id}`],
          ['GET', `/accounts/${id}/entries`],
          ['GET', `/files/${id}`],
          ['GET', `/files/${id}/content`],
          ['DELETE', `/files/${id}`],
          ['PATCH', `/customers/${id}`, { name: 'Renamed Again' }],
          ['POST', `/accounts/${id}/deposits`, { amount: 1 }],
          ['DELETE', `/api-keys/${id}`],
        ] as const) {
          const res = await asAdmin.call(method, path, body ? { body } : {});
          checks.expect(res, 400, VALIDATION, `id ${id}`);
        }
      }
      // Within the pattern: the resource's own answer (15 digits is the largest id; none exists).
      for (const [path, status] of [
        ['/customers/999999999999999', 404],
        ['/accounts/999999999999999', 404],
        ['/files/999999999999999', 404],
        [`/customers/%3${String(m.id).slice(-1)}`, 200],
      ] as const) {
        const res = await asAdmin.get(path);
        if (status === 404) checks.expect(res, 404, 'DATABANK_ERR_NOT_FOUND');
        else if (res.status !== 200) checks.wrong.push(`GET ${path}: expected 200, got ${res.status} ${res.text}`);
      }
      expect(checks.wrong).toEqual([]);
      expect(server.running()).toBe(true);
    });

    it('query values are never coerced: 400 for anything but the documented shapes', async () => {
      const checks = new Refusals();
      const invalid = [
        'limit=0', 'limit=101', 'limit=1.5', 'limit=-1', 'limit=abc', 'limit=1e1', 'limit=01', 'limit=%201', 'limit=1&limit=2',
        'limit[]=1', 'limit=', 'born_after=1990-1-1', 'born_after=1990-01-01T00:00:00Z', 'born_after[]=1990-01-01', 'born_after=1990-01-01&born_after=1991-01-01',
        'cursor=!!!', 'cursor=' + 'A'.repeat(65), 'cursor=', 'unknown=1', '__proto__=1', 'constructor[prototype][x]=1',
      ];
      for (const query of invalid) checks.expect(await asM.get(`/customers?${query}`), 400, VALIDATION, query);
      checks.expect(await asM.get('/customers?born_after=2000-13-45'), 400, VALIDATION, 'an impossible date');
      const b64 = (text: string) => Buffer.from(text).toString('base64url');
      for (const cursor of ['AAAA', b64('id:-1'), b64('id:0'), b64('id:1 or 1=1'), b64('id:99999999999999999'), b64("id:1'--"), b64('{"id":1}')]) {
        checks.expect(await asM.get(`/customers?cursor=${cursor}`), 400, 'DATABANK_ERR_INVALID_CURSOR', `cursor ${cursor}`);
        checks.expect(await asM.get(`/customers/${m.id}/accounts?cursor=${cursor}`), 400, 'DATABANK_ERR_INVALID_CURSOR', `cursor ${cursor}`);
      }
      // A well-formed cursor the attacker made up pages only the caller's own data.
      const forged = json<{ result: Array<{ id: number }> }>(await asM.get(`/customers?cursor=${b64('id:1')}`));
      expect(forged.result.every((c) => c.id === m.id)).toBe(true);
      for (const query of ['content_type=text/html', 'content_type=', 'filename=x']) {
        checks.expect(await asM.get(`/customers/${m.id}/files?${query}`), 400, VALIDATION, query);
      }
      expect(checks.wrong).toEqual([]);
    });
  });

  describe('limits', () => {
    it('deposits toward DATABANK_MAX_BALANCE: 409 DATABANK_ERR_BALANCE_LIMIT and nothing moved; the balance stays exact in the raw JSON', async () => {
      const lId = await bank.customer('Lena Limit');
      const accounts = [await bank.account(lId), await bank.account(lId), await bank.account(lId)];
      const [l1, l2, l3] = accounts as [number, number, number];
      const deposit = (account: number, amount: number, headers?: Record<string, string>) =>
        bank.admin.post(`/accounts/${account}/deposits`, { amount }, { headers });
      const checks = new Refusals();

      expect(json(await deposit(l1, MAX_BALANCE - 1))).toMatchObject({ balance: MAX_BALANCE - 1 });
      checks.expect(await deposit(l1, 2), 409, 'DATABANK_ERR_BALANCE_LIMIT', 'one past the ceiling');
      expect(await bank.balance(l1)).toBe(MAX_BALANCE - 1);
      expect(json(await deposit(l1, 1))).toMatchObject({ balance: MAX_BALANCE });
      checks.expect(await deposit(l1, 1), 409, 'DATABANK_ERR_BALANCE_LIMIT', 'at the ceiling');
      // A refusal under an idempotency key is replayed as the same refusal, and still moves nothing.
      for (let i = 0; i < 2; i++) {
        const res = await deposit(l1, 1, { 'idempotency-key': 'limit-replay' });
        checks.expect(res, 409, 'DATABANK_ERR_BALANCE_LIMIT', `idempotent, attempt ${i + 1}`);
        if (i === 1) expect(res.headers['idempotent-replayed']).toBe('true');
      }
      // 10^14 is a valid amount for the schema, but past this deployment's ceiling for any account.
      checks.expect(await deposit(l2, 100_000_000_000_000), 409, 'DATABANK_ERR_BALANCE_LIMIT', '10^14 into an empty account');
      expect(await bank.balance(l2)).toBe(0);
      await bank.deposit(l2, MAX_BALANCE);
      await bank.deposit(l3, MAX_BALANCE);
      // A transfer into a full account: refused, the source keeps its money.
      const oBefore = await bank.balance(o.account);
      checks.expect(
        await bank.admin.post('/transfers', { from_account_id: o.account, to_account_id: l1, amount: 1 }),
        409,
        'DATABANK_ERR_BALANCE_LIMIT',
        'transfer into a full account',
      );
      expect(checks.wrong).toEqual([]);
      expect(await bank.balance(o.account)).toBe(oBefore);
      expect(await bank.entryCount(l1)).toBe(2);
      expect(await bank.entryCount(l2)).toBe(1);

      // 3 × (10^14 − 1): past 2^48, exact in the text (no exponent, no rounding, no string).
      const total = 3 * MAX_BALANCE;
      expect(total).toBe(299_999_999_999_997);
      const customer = (await bank.admin.get(`/customers/${lId}`)).text;
      expect(customer).toContain(`"balance":${total},`);
      expect(customer).toContain(`"balances":{"USD":${total}}`);
      const list = (await bank.admin.get(`/customers/${lId}/accounts`)).text;
      expect(list.split(`"balance":${MAX_BALANCE},`).length - 1).toBe(3);
      expect((await bank.admin.get(`/accounts/${l1}`)).text).toContain(`"balance":${MAX_BALANCE},`);
      expect(customer).not.toMatch(/e\+|\.\d|"balance":"/);
    });

    it('the (max+1)th account: 409 DATABANK_ERR_QUOTA_EXCEEDED naming the quota; nothing opened, also when opened all at once', async () => {
      const qId = await bank.customer('Quentin Quota');
      const asQ = bank.as((await bank.key(qId)).key);
      for (let i = 0; i < MAX_ACCOUNTS; i++) expect((await asQ.post(`/customers/${qId}/accounts`, { account_type: 'savings' })).status).toBe(201);
      const over = await asQ.post(`/customers/${qId}/accounts`, { account_type: 'savings' });
      expect(over.status).toBe(409);
      expect(json(over)).toMatchObject({ statusCode: 409, code: 'DATABANK_ERR_QUOTA_EXCEEDED' });
      expect(json<{ message: string }>(over).message).toContain('DATABANK_MAX_ACCOUNTS_PER_CUSTOMER');
      expect(json<{ result: unknown[] }>(await asQ.get(`/customers/${qId}/accounts`)).result).toHaveLength(MAX_ACCOUNTS);

      const rId = await bank.customer('Rita Race');
      const asR = bank.as((await bank.key(rId)).key);
      const all = await Promise.all(Array.from({ length: 8 }, () => asR.post(`/customers/${rId}/accounts`, { account_type: 'checking' })));
      expect(all.map((r) => r.status).sort()).toEqual([201, 201, 201, 409, 409, 409, 409, 409]);
      for (const r of all.filter((r) => r.status === 409)) expect(json(r).code).toBe('DATABANK_ERR_QUOTA_EXCEEDED');
      expect(json<{ result: unknown[] }>(await asR.get(`/customers/${rId}/accounts`)).result).toHaveLength(MAX_ACCOUNTS);
    });

    it('file quotas: the (max+1)th file and a file past the byte quota are 409 DATABANK_ERR_QUOTA_EXCEEDED, nothing kept', async () => {
      const fId = await bank.customer('Fiona Files');
      const asF = bank.as((await bank.key(fId)).key);
      const upload = (client: Client, customer: number, name: string, text: string | Buffer, chunked = false) =>
        chunked
          ? chunkedPost(server.base, `/customers/${customer}/files?filename=${name}`, client.key as string, 'text/plain', Buffer.from(text))
          : client.post(`/customers/${customer}/files?filename=${name}`, text, { headers: { 'content-type': 'text/plain' } });
      for (let i = 0; i < MAX_FILES; i++) expect((await upload(asF, fId, `f${i}.txt`, `file ${i}\n`)).status).toBe(201);
      const over = await upload(asF, fId, 'over.txt', 'one too many\n');
      expect([over.status, json(over).code]).toEqual([409, 'DATABANK_ERR_QUOTA_EXCEEDED']);
      expect(json<{ message: string }>(over).message).toContain('DATABANK_MAX_FILES_PER_CUSTOMER');
      expect(json<{ result: unknown[] }>(await asF.get(`/customers/${fId}/files`)).result).toHaveLength(MAX_FILES);

      const gId = await bank.customer('Gustav Bytes');
      const asG = bank.as((await bank.key(gId)).key);
      expect((await upload(asG, gId, 'big.txt', 'a'.repeat(3000))).status).toBe(201);
      for (const chunked of [false, true]) {
        const res = await upload(asG, gId, 'bigger.txt', 'b'.repeat(2000), chunked);
        expect([res.status, json(res).code], chunked ? 'chunked' : 'with Content-Length').toEqual([409, 'DATABANK_ERR_QUOTA_EXCEEDED']);
        expect(json<{ message: string }>(res).message).toContain('DATABANK_MAX_FILE_BYTES_PER_CUSTOMER');
      }
      const files = json<{ result: Array<{ filename: string }> }>(await asG.get(`/customers/${gId}/files`)).result;
      expect(files.map((f) => f.filename)).toEqual(['big.txt']);
    });

    it('JSON bodies over 64 KiB: 413 DATABANK_ERR_PAYLOAD_TOO_LARGE, declared or chunked; exactly 64 KiB is read', async () => {
      const body = (size: number) => {
        const text = `{"name":"${'x'.repeat(size - 11)}"}`;
        expect(Buffer.byteLength(text)).toBe(size);
        return text;
      };
      const before = (await bank.admin.get(`/customers/${m.id}`)).text;
      const checks = new Refusals();
      // Exactly the limit: parsed, and refused by the schema (the name is too long).
      checks.expect(await asM.call('PATCH', `/customers/${m.id}`, { body: body(65_536) }), 400, VALIDATION, '64 KiB');
      // Over it: sent over raw sockets, since the server may answer before it has read the rest.
      const tooLarge = (path: string, method: string, text: string, chunked: boolean) => {
        const payload = chunked
          ? `${[...text.matchAll(/[\s\S]{1,8192}/g)].map(([c]) => `${Buffer.byteLength(c).toString(16)}\r\n${c}\r\n`).join('')}0\r\n\r\n`
          : text;
        // A declared length past the limit is refused on the headers alone, before a byte of the
        // body is read: send none, so that the server's close cannot reset unread bytes (TCP may
        // then drop the answer before the client reads it).
        return rawAnswer(
          server.port,
          method,
          path,
          `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${m.key}\r\nContent-Type: application/json\r\n` +
            `${chunked ? 'Transfer-Encoding: chunked' : `Content-Length: ${Buffer.byteLength(text)}`}\r\nConnection: close\r\n\r\n${chunked ? payload : ''}`,
        );
      };
      const LARGE = 'DATABANK_ERR_PAYLOAD_TOO_LARGE';
      checks.expect(await tooLarge(`/customers/${m.id}`, 'PATCH', body(65_537), false), 413, LARGE, '64 KiB + 1');
      checks.expect(await tooLarge('/transfers', 'POST', body(1_048_576), false), 413, LARGE, '1 MiB');
      checks.expect(await tooLarge('/transfers', 'POST', body(200_000), true), 413, LARGE, 'chunked, 200 kB');
      checks.expect(await tooLarge(`/customers/${m.id}`, 'PATCH', body(65_537), true), 413, LARGE, 'chunked, 64 KiB + 1');
      expect(checks.wrong).toEqual([]);
      expect((await bank.as(null).get('/healthz')).status).toBe(200);
      expect((await bank.admin.get(`/customers/${m.id}`)).text).toBe(before);
    });

    it('JSON nested 10,000 deep: 400 DATABANK_ERR_MALFORMED_BODY, not 500, and the server still answers', async () => {
      const before = await money();
      const deep = 10_000;
      const checks = new Refusals();
      const bodies: Array<[string, string]> = [
        ['arrays', '['.repeat(deep) + ']'.repeat(deep)],
        ['objects', '{"a":'.repeat(deep) + '1' + '}'.repeat(deep)],
        ['under amount', `{"amount":${'['.repeat(deep)}${']'.repeat(deep)}}`],
        ['33 deep', '['.repeat(33) + ']'.repeat(33)],
        ['unterminated', '['.repeat(60_000)],
      ];
      for (const [what, text] of bodies) {
        checks.expect(await bank.admin.post(`/accounts/${m.account}/deposits`, text), 400, MALFORMED, what);
        checks.expect(await asM.post('/transfers', text), 400, MALFORMED, what);
      }
      // 32 deep is within the parser's bound: the schema refuses it.
      checks.expect(await bank.admin.post(`/accounts/${m.account}/deposits`, `{"amount":${'['.repeat(31)}${']'.repeat(31)}}`), 400, VALIDATION, '32 deep');
      expect(checks.wrong).toEqual([]);
      expect(server.running()).toBe(true);
      expect((await bank.as(null).get('/healthz')).status).toBe(200);
      expect(await money()).toEqual(before);
    });

    it('duplicate JSON keys: 400 DATABANK_ERR_MALFORMED_BODY whichever would win; nothing moves', async () => {
      const before = await money();
      const checks = new Refusals();
      for (const text of ['{"amount":1,"amount":100000}', '{"amount":100000,"amount":1}', '{"amount":1,"\\u0061mount":100000}', '{"amount":1,"__proto__":{"amount":5}}']) {
        checks.expect(await bank.admin.post(`/accounts/${m.account}/deposits`, text), 400, MALFORMED, text);
        checks.expect(await bank.admin.post(`/accounts/${m.account}/withdrawals`, text), 400, MALFORMED, text);
      }
      for (const text of [
        // The source named twice: the account checked for ownership must be the one debited.
        `{"from_account_id":${m.account},"to_account_id":${m.account},"amount":1,"from_account_id":${o.account}}`,
        `{"from_account_id":${o.account},"from_account_id":${m.account},"to_account_id":${o.account},"amount":1}`,
        `{"from_account_id":${m.account},"to_account_id":${o.account},"amount":1,"amount":1000}`,
      ]) {
        checks.expect(await asM.post('/transfers', text), 400, MALFORMED, text);
      }
      checks.expect(await bank.admin.post('/fees', '{"amount":1,"reference":"dup","reference":"dup2"}'), 400, MALFORMED, 'fee');
      checks.expect(await asM.call('PATCH', `/customers/${m.id}`, { body: '{"name":"A","name":"B"}' }), 400, MALFORMED, 'patch');
      expect(checks.wrong).toEqual([]);
      expect(await money()).toEqual(before);
    });
  });
});

/** A POST over a raw socket, with extra header lines as given (latin1), answered as an Answer. */
function rawPost(port: number, path: string, key: string, body: string, extra: string): Promise<Answer> {
  return rawAnswer(
    port,
    'POST',
    path,
    Buffer.from(
      `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\n${extra}Connection: close\r\n\r\n${body}`,
      'latin1',
    ),
  );
}

/** Sends a whole request over a raw socket; its answer as an Answer. */
async function rawAnswer(port: number, method: string, path: string, request: string | Buffer): Promise<Answer> {
  const res = await rawRequest(port, request);
  const text = res.body.toString();
  return { method, path, status: res.status ?? 0, headers: Object.fromEntries(res.headers), rawHeaders: res.headers, body: res.body, text };
}

/** A POST whose body goes out in chunks (`Transfer-Encoding: chunked`, no Content-Length), over a raw socket. */
function chunkedPost(base: string, path: string, key: string, type: string, payload: Buffer): Promise<Answer> {
  const chunks: Buffer[] = [];
  for (let i = 0; i < payload.length; i += 8192) {
    const part = payload.subarray(i, i + 8192);
    chunks.push(Buffer.from(`${part.length.toString(16)}\r\n`), part, Buffer.from('\r\n'));
  }
  const head = `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${key}\r\nContent-Type: ${type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`;
  return rawAnswer(Number(new URL(base).port), 'POST', path, Buffer.concat([Buffer.from(head), ...chunks, Buffer.from('0\r\n\r\n')]));
}
