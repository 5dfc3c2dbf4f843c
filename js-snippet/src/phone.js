// Phone number matching and formatting. Pure functions, no DOM.

export const digits = s => String(s || '').replace(/\D/g, '');

// E.164 -> [country code, domestic trunk prefix, national number].
// +7: trunk "8" (8 495 ...); +1 (NANP): no trunk, "1" is the country code;
// others: 2-digit country code, trunk "0" (a best effort).
export const split = n => {
  const d = digits(n), c = d[0], k = c == 1 || c == 7 ? 1 : 2;
  return [d.slice(0, k), c == 7 ? '8' : c == 1 ? '' : '0', d.slice(k)];
};

// Up to 3 separators between digits: spaces (incl. nbsp), brackets, dots, dashes.
const S = '[\\s().\\u2013-]{0,3}';

// Regex matching one static number in any common formatting:
// optional "(", optional prefix (+CC / CC / trunk), the national digits with
// separators, and no digit right after. "No digit right before" is checked in
// the replacer (no lookbehind, so it runs on older engines too).
export const rx = n => {
  const [c, t, a] = split(n);
  return RegExp('\\(?(?:(?:\\+\\s*' + c + '|' + c + (t && '|' + t) + ')' + S + ')?' + a.split('').join(S) + '(?!\\d)', 'g');
};

// Is the digit string of h (e.g. a tel: href) one of the spellings of number n?
export const isNum = (h, n) => {
  const [c, t, a] = split(n), d = digits(h);
  return d == c + a || d == a || (!!t && d == t + a);
};

// Build [text(s) -> s', tel(href) -> new href | false] that replace any number
// of `list` (E.164 strings) by `num`. The replacement keeps the matched
// occurrence's formatting (same separators, same prefix style) when country
// and length agree, else falls back to `disp` (or +E164).
export const replacer = (list, num, disp) => {
  const [nc, , nn] = split(num), rs = list.map(n => [rx(n), split(n)]), e = '+' + digits(num);
  return [
    s => {
      rs.forEach(([re, [c, , a]]) => {
        s = s.replace(re, (m, o, z) => {
          if (/\d/.test(z[o - 1])) return m;
          if (c != nc || a.length != nn.length) return disp || e;
          const d = digits(m), r = d.slice(0, d.length - a.length) + nn;
          let i = 0;
          return m.replace(/\d/g, () => r[i++]);
        });
      });
      return s;
    },
    h => list.some(n => isNum(h, n)) && 'tel:' + e,
  ];
};
