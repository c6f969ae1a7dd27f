import type { StreamEvent } from '../stores/stream/port.ts';
import { movedMoney, type CachedReads } from './cached-reads.ts';

/**
 * The cache entries an event makes stale. The process that made the change invalidated them
 * already; this consumer does it in every other process, whose in-process caches would otherwise
 * serve the old value until their TTL.
 */
export function staleEntries(event: StreamEvent): Parameters<CachedReads['invalidate']>[0] {
  const p = event.payload as Record<string, unknown>;
  const num = (key: string) => Number(p[key]);
  switch (event.type) {
    case 'customer.registered':
    case 'customer.updated':
      return [['customer', num('customer_id')]];
    case 'account.opened':
    case 'money.deposited':
    case 'money.withdrawn':
    case 'fee.charged':
      return movedMoney([[num('account_id'), num('customer_id')]]);
    case 'transfer.completed':
      return [
        ['account', num('from_account_id')],
        ['account', num('to_account_id')],
        ...event.customer_ids.flatMap((c) => [['customer', c] as const, ['customer-accounts', c] as const]),
      ];
    default:
      return [];
  }
}

/** The applier of a process's cache group: invalidation is idempotent by nature. */
export function cacheInvalidation(cache: CachedReads) {
  return {
    async apply(events: readonly StreamEvent[]): Promise<void> {
      await cache.invalidate(events.flatMap(staleEntries));
    },
  };
}
