// DOM walk: rewrite text nodes and tel: hrefs under a root.
// fx(text) -> text, tel(href) -> new href or false (see phone.js replacer).

const SKIP = /^(script|style|textarea|input|select|noscript|template)$/i;
const NO = 'data-dialmark-noswap';

const walk = (n, fx, tel) => {
  if (n.nodeType == 3) {
    const v = n.nodeValue, x = /\d/.test(v) ? fx(v) : v;
    if (x != v) n.nodeValue = x;
    return;
  }
  if (n.nodeType == 1) {
    if (SKIP.test(n.tagName) || n.hasAttribute(NO)) return;
    const h = n.getAttribute('href'), t = h && /^tel:/i.test(h) && tel(h);
    if (t && t != h) n.setAttribute('href', t);
  }
  for (const c of n.childNodes || []) walk(c, fx, tel);
};

export const swap = (root, fx, tel) => {
  if (root && !(root.closest && root.closest('[' + NO + ']'))) walk(root, fx, tel);
};
