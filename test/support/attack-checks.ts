import type { Answer } from './attack-server.ts';

/**
 * Collects every answer that is not the expected refusal, so that one failing test lists all of
 * them (request and response) instead of stopping at the first.
 */
export class Refusals {
  readonly wrong: string[] = [];

  /** Expects `status` and, for a JSON error, `code`; also that the body is the catalog's shape. */
  expect(answer: Answer, status: number, code: string | null, what = ''): void {
    let actualCode: unknown = null;
    let shapeOk = true;
    try {
      const body = JSON.parse(answer.text) as Record<string, unknown>;
      actualCode = body.code;
      shapeOk = body.statusCode === answer.status && typeof body.message === 'string';
    } catch {
      shapeOk = code === null;
    }
    if (answer.status !== status || (code !== null && actualCode !== code) || !shapeOk || answer.status >= 500) {
      this.wrong.push(
        `${answer.method} ${answer.path}${what ? ` (${what})` : ''}: expected ${status}${code ? ` ${code}` : ''}, ` +
          `got ${answer.status} ${answer.text.slice(0, 300)}`,
      );
    }
  }

  /** Expects one of several statuses (never a 5xx), with the catalog's shape when it is JSON. */
  expectOneOf(answer: Answer, allowed: ReadonlyArray<readonly [number, string]>, what = ''): void {
    let actualCode: unknown = null;
    try {
      actualCode = (JSON.parse(answer.text) as Record<string, unknown>).code;
    } catch {
      // not JSON
    }
    if (!allowed.some(([status, code]) => status === answer.status && code === actualCode)) {
      this.wrong.push(
        `${answer.method} ${answer.path}${what ? ` (${what})` : ''}: expected one of ${allowed.map(([s, c]) => `${s} ${c}`).join(', ')}, ` +
          `got ${answer.status} ${answer.text.slice(0, 300)}`,
      );
    }
  }
}
