import { Type } from 'typebox';
import { isDatabankError } from '../../domain/errors.ts';
import { principalOf } from '../auth.ts';
import type { HttpDeps } from '../deps.ts';
import { idempotent } from '../idempotent.ts';
import { CURRENCIES } from '../../domain/money.ts';
import { Amount, COMMON_ERRORS, ErrorBody, IDEMPOTENCY_HEADERS, IdParams, IdValue, OneOf, Timestamp } from '../schemas.ts';
import type { TypedApp } from '../typed-app.ts';

const AmountBody = Type.Object({ amount: Amount }, { additionalProperties: false });
const TransferBody = Type.Object(
  { from_account_id: IdValue, to_account_id: IdValue, amount: Amount },
  { additionalProperties: false },
);
const FeeBody = Type.Object(
  {
    amount: Amount,
    reference: Type.String({
      minLength: 1,
      maxLength: 128,
      pattern: '^[\\x21-\\x7e]+$',
      description: '1 to 128 printable ASCII characters without spaces',
    }),
    currency: Type.Optional(OneOf(CURRENCIES)),
  },
  { additionalProperties: false },
);

const MovementResponse = Type.Object({
  transaction_id: Type.Integer(),
  account_id: Type.Integer(),
  kind: Type.String(),
  amount: Type.Integer(),
  balance: Type.Integer(),
  created_at: Timestamp,
});
const TransferResponse = Type.Object({
  transfer_id: Type.Integer(),
  from_account_id: Type.Integer(),
  to_account_id: Type.Integer(),
  amount: Type.Integer(),
  created_at: Timestamp,
});
const FeeResponse = Type.Object({
  reference: Type.String(),
  amount: Type.Integer(),
  currency: OneOf(CURRENCIES),
  transaction_id: Type.Union([Type.Integer(), Type.Null()], { description: 'the first batch\'s ledger transaction' }),
  transaction_ids: Type.Array(Type.Integer(), { description: 'one ledger transaction per batch that charged' }),
  charged: Type.Array(Type.Integer()),
  insufficient_funds: Type.Array(Type.Integer()),
  already_charged: Type.Array(Type.Integer()),
});

const MONEY_ERRORS = { ...COMMON_ERRORS, 403: ErrorBody, 409: ErrorBody, 422: ErrorBody };

/** Every route here moves money and accepts an `Idempotency-Key`. */
export async function moneyRoutes(app: TypedApp, deps: HttpDeps): Promise<void> {
  for (const kind of ['deposits', 'withdrawals'] as const) {
    app.post(
      `/accounts/:id/${kind}`,
      {
        schema: {
          tags: ['money'],
          params: IdParams,
          headers: IDEMPOTENCY_HEADERS,
          body: AmountBody,
          response: { 201: MovementResponse, ...MONEY_ERRORS },
        },
      },
      async (request, reply) => {
        const { id } = request.params;
        const { amount } = request.body;
        return idempotent(deps.idempotency, request, reply, 201, (claim) =>
          kind === 'deposits'
            ? deps.movements.deposit(principalOf(request), id, amount, claim)
            : deps.movements.withdraw(principalOf(request), id, amount, claim),
        );
      },
    );
  }

  app.post(
    '/transfers',
    {
      schema: {
        tags: ['money'],
        headers: IDEMPOTENCY_HEADERS,
        body: TransferBody,
        response: { 201: TransferResponse, ...MONEY_ERRORS },
      },
    },
    async (request, reply) => {
      const { body } = request;
      try {
        const sent = await idempotent(deps.idempotency, request, reply, 201, (claim) =>
          deps.transfers.transfer(principalOf(request), body, claim),
        );
        deps.metrics.transfers.inc({ outcome: 'completed' });
        return sent;
      } catch (err) {
        deps.metrics.transfers.inc({ outcome: isDatabankError(err) ? err.code : 'error' });
        throw err;
      }
    },
  );

  app.post(
    '/fees',
    {
      schema: {
        tags: ['money'],
        description:
          'Charge `amount` to every account in `currency` (default USD), in batches of accounts, each one ' +
          'transaction booked into `fee_income:<currency>`; a reference charges an account once',
        headers: IDEMPOTENCY_HEADERS,
        body: FeeBody,
        response: { 200: FeeResponse, ...MONEY_ERRORS },
      },
    },
    async (request, reply) => {
      const { amount, reference, currency } = request.body;
      return idempotent(deps.idempotency, request, reply, 200, (claim) =>
        deps.fees.charge(principalOf(request), amount, reference, claim, currency),
      );
    },
  );
}

