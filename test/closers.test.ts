import { describe, expect, it } from 'vitest';
import { Closers } from '../src/closers.ts';

describe('Closers', () => {
  it('closes newest first, once, and leaves its own order alone', async () => {
    const order: string[] = [];
    const closers = new Closers();
    for (const name of ['database', 'cache', 'http']) closers.add(name, async () => void order.push(name));
    await Promise.all([closers.close(), closers.close()]);
    await closers.close();
    expect(order).toEqual(['http', 'cache', 'database']);
  });

  it('runs every closer when one fails, then throws what failed', async () => {
    const order: string[] = [];
    const steps: string[] = [];
    const closers = new Closers();
    closers.add('database', async () => void order.push('database'));
    closers.add('cache', async () => {
      throw new Error('cache will not close');
    });
    closers.add('http', async () => void order.push('http'));
    await expect(closers.close({ onStep: (name, state) => steps.push(`${name}:${state}`) })).rejects.toThrow(
      'cache will not close',
    );
    expect(order).toEqual(['http', 'database']);
    expect(steps).toEqual(['http:start', 'http:done', 'cache:start', 'cache:failed', 'database:start', 'database:done']);
  });

  it('throws every failure together when several fail', async () => {
    const closers = new Closers();
    closers.add('a', async () => {
      throw new Error('a');
    });
    closers.add('b', async () => {
      throw new Error('b');
    });
    const err = await closers.close().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AggregateError);
    expect((err as AggregateError).errors.map((e: Error) => e.message)).toEqual(['b', 'a']);
  });
});
