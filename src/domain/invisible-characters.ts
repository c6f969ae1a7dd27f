/**
 * Characters that change how the text around them is shown without being seen themselves: the
 * bidirectional controls (the Arabic letter mark, the left-to-right and right-to-left marks,
 * embeddings, overrides and isolates) and the zero-width ones (spaces, joiners, the word joiner,
 * invisible operators, the byte order mark). In a name they make `invoice\u202Egpj.exe` look like
 * `invoiceexe.jpg`, or two names that look the same differ. Names refuse them; names stored
 * before that rule lose them where they are sent back as a download name.
 */

/** The characters as the body of a regular expression class, for JSON Schema patterns too. */
export const INVISIBLE_CLASS = '\\u061c\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u2069\\ufeff';

const INVISIBLE = new RegExp(`[${INVISIBLE_CLASS}]`, 'u');
const INVISIBLE_ALL = new RegExp(`[${INVISIBLE_CLASS}]`, 'gu');

/** The first invisible character of `text` written `U+` and four hex digits (`U+202E`), or null when there is none. */
export function firstInvisible(text: string): string | null {
  const found = INVISIBLE.exec(text)?.[0];
  return found === undefined ? null : `U+${(found.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}`;
}

/** `text` without its invisible characters. */
export function withoutInvisible(text: string): string {
  return text.replace(INVISIBLE_ALL, '');
}

/** What a value holding an invisible character must not do, or null when it holds none. */
export function invisibleRule(text: string): string | null {
  const found = firstInvisible(text);
  return found === null ? null : `must not contain ${found} (an invisible bidirectional or zero-width character)`;
}
