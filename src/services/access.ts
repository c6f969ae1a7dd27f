import { DatabankError } from '../domain/errors.ts';
import type { Principal } from '../domain/types.ts';

/**
 * Customers see only their own data. A customer asking for another customer's resource gets the
 * same 404 as for a resource that does not exist, so ids do not leak.
 */
export function assertOwns(principal: Principal, customerId: number | undefined): void {
  if (customerId === undefined) throw new DatabankError('DATABANK_ERR_NOT_FOUND');
  if (principal.role === 'customer' && principal.customerId !== customerId) {
    throw new DatabankError('DATABANK_ERR_NOT_FOUND');
  }
}

/** Operations of the bank itself (deposits, fees, new customers) are for admin keys. */
export function assertAdmin(principal: Principal): void {
  if (principal.role !== 'admin') throw new DatabankError('DATABANK_ERR_FORBIDDEN');
}
