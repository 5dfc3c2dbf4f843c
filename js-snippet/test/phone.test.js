import test from 'node:test';
import assert from 'node:assert/strict';
import { digits, split, rx, isNum, replacer } from '../src/phone.js';

const RU = '+74950000000', US = '+14155550100';

const finds = (text, n) => {
  const [fx] = replacer([n], n === RU ? '+74951234567' : '+14155550199', 'DISPLAY');
  return fx(text) !== text;
};

test('digits and split', () => {
  assert.equal(digits('+7 (495) 123-45-67'), '74951234567');
  assert.equal(digits(null), '');
  assert.deepEqual(split('+74951234567'), ['7', '8', '4951234567']);
  assert.deepEqual(split('+14155550100'), ['1', '', '4155550100']);
  assert.deepEqual(split('+442071234567'), ['44', '0', '2071234567']);
  // The pattern of a number finds it in text, and not a neighbour.
  assert.ok(rx(RU).test('call +7 (495) 000-00-00 now'));
  assert.ok(!rx(RU).test('call +7 (495) 000-00-01 now'));
});

test('matches Russian numbers in common formats', () => {
  for (const s of [
    '+7 (495) 000-00-00', '+7(495)000-00-00', '8 495 000 00 00', '+7-495-000-00-00', '84950000000',
    '+74950000000', '8 (495) 000-00-00', '7 495 000 00 00', '(495) 000-00-00', '495.000.00.00',
    '+7\u00a0495\u00a0000\u201300\u201300', '+ 7 495 0000000', '8-495-000-0000',
  ]) assert.ok(finds('Call ' + s + ' now', RU), s);
});

test('matches NANP numbers in common formats', () => {
  for (const s of [
    '(415) 555-0100', '415.555.0100', '+1 415 555 0100', '1-415-555-0100', '415-555-0100',
    '+1 (415) 555-0100', '4155550100', '14155550100', '+14155550100', '1 (415) 555 0100',
  ]) assert.ok(finds('Call ' + s + ' now', US), s);
});

test('no false matches inside longer digit runs or other numbers', () => {
  for (const [s, n] of [
    ['94950000000', RU], ['849500000001', RU], ['order 1234950000000', RU], ['4950000001', RU],
    ['+7 (495) 000-00-01', RU], ['+7 (499) 000-00-00', RU], ['24155550100', US], ['41555501001', US],
    ['(415) 555-0101', US], ['415 555 010', US], ['', US], ['no digits', RU],
  ]) assert.ok(!finds(s, n), s);
});

test('replacement keeps the style of the matched occurrence', () => {
  const [fx] = replacer([RU], '+74951234567', '+7 (495) 123-45-67');
  const cases = {
    '+7 (495) 000-00-00': '+7 (495) 123-45-67',
    '8 495 000 00 00': '8 495 123 45 67',
    '+7-495-000-00-00': '+7-495-123-45-67',
    '84950000000': '84951234567',
    '8 (495) 000-00-00': '8 (495) 123-45-67',
    '(495) 000-00-00': '(495) 123-45-67',
    '+7\u00a0495\u00a0000\u201300\u201300': '+7\u00a0495\u00a0123\u201345\u201367',
  };
  for (const [a, b] of Object.entries(cases)) assert.equal(fx('Tel: ' + a + '.'), 'Tel: ' + b + '.', a);

  const [us] = replacer([US], '+14155550199', '(415) 555-0199');
  const uc = {
    '(415) 555-0100': '(415) 555-0199', '415.555.0100': '415.555.0199', '+1 415 555 0100': '+1 415 555 0199',
    '1-415-555-0100': '1-415-555-0199', '14155550100': '14155550199',
  };
  for (const [a, b] of Object.entries(uc)) assert.equal(us(a), b, a);
});

test('falls back to display when country or length differ', () => {
  const [fx] = replacer([US], '+74951234567', '+7 (495) 123-45-67');
  assert.equal(fx('Call (415) 555-0100!'), 'Call +7 (495) 123-45-67!');
  const [f2] = replacer([US], '+74951234567');
  assert.equal(f2('Call 415.555.0100'), 'Call +74951234567');
});

test('several numbers and several occurrences in one text', () => {
  const [fx] = replacer([RU, US], '+74951234567', 'D');
  assert.equal(
    fx('Moscow 8 (495) 000-00-00, +7 495 000 00 00; SF (415) 555-0100; other 8 (495) 000-00-01'),
    'Moscow 8 (495) 123-45-67, +7 495 123 45 67; SF D; other 8 (495) 000-00-01',
  );
  // running again is a no-op (the leased number is not in the list)
  const once = fx('8 (495) 000-00-00');
  assert.equal(fx(once), once);
});

test('tel: hrefs', () => {
  assert.ok(isNum('tel:+74950000000', RU));
  assert.ok(isNum('tel:84950000000', RU));
  assert.ok(isNum('tel:+7 (495) 000-00-00', RU));
  assert.ok(isNum('tel:4950000000', RU));
  assert.ok(isNum('tel:+1-415-555-0100', US));
  assert.ok(isNum('tel:4155550100', US));
  assert.ok(!isNum('tel:84950000001', RU));
  assert.ok(!isNum('tel:0014155550100', US));
  const [, tel] = replacer([RU, US], '+74951234567', 'D');
  assert.equal(tel('tel:8-495-000-00-00'), 'tel:+74951234567');
  assert.equal(tel('tel:+14155550100'), 'tel:+74951234567');
  assert.equal(tel('tel:+74959999999'), false);
});
