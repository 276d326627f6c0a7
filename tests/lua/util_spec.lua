-- dmarc.util.*: the toolkit the command-line and report modules share. The outputs here are
-- contracts of those commands (`--json` is read by scripts, `dmarc eval` lines are fixed), so
-- the tests pin exact bytes.
local common = require 'dmarc.cli.common'
local config = require 'dmarc.util.config'
local connect = require 'dmarc.redis.connect'
local files = require 'dmarc.util.files'
local json = require 'dmarc.util.json'
local options = require 'dmarc.util.options'
local text = require 'dmarc.util.text'
local time = require 'dmarc.util.time'

-- A stream that keeps what is written to it.
local function sink()
  local s = { text = '' }
  function s.write(self, ...)
    self.text = self.text .. table.concat({ ... })
    return self
  end
  return s
end

local function tmpname()
  local path = os.tmpname()
  os.remove(path)
  return path
end

describe('dmarc.util.* text', function()
  it('util__split_keeps_empty_pieces', function()
    local cases = {
      { '', ',', {} },
      { 'a', ',', { 'a' } },
      { 'a,,b,', ',', { 'a', '', 'b', '' } },
      { '|x', '|', { '', 'x' } },
      -- the separator is plain text, not a pattern
      { 'a.b', '.', { 'a', 'b' } },
      { 'a%b%c', '%', { 'a', 'b', 'c' } },
    }
    for _, c in ipairs(cases) do assert.same(c[3], text.split(c[1], c[2])) end
  end)

  it('util__escape_atom_leaves_no_separator', function()
    local all = {}
    for b = 0, 255 do all[#all + 1] = string.char(b) end
    local raw = table.concat(all)
    local atom = text.escape_atom(raw)
    assert.falsy(atom:find('[|,;:!{}\r\n]'))
    assert.equal(raw, text.unescape_atom(atom))
    local escaped = { -- value, atom
      { 'a|b:c', 'a%7Cb%3Ac' }, { 'Example.COM_@+= -', 'Example.COM_@+= -' }, { nil, '' },
      { 42, '42' },
    }
    for _, c in ipairs(escaped) do assert.equal(c[2], text.escape_atom(c[1])) end
    -- both cases of hex digits decode; a lone % stays
    assert.equal('|:|', text.unescape_atom('%7C%3a%7c'))
    assert.equal('100%', text.unescape_atom('100%'))
  end)

  it('util__shown_escapes_every_unprintable_byte', function()
    local cases = { -- value, as shown
      { 'a\27[31m\n', 'a\\x1B[31m\\x0A' }, { '\195\169 ~', '\\xC3\\xA9 ~' }, { nil, '' },
      { 12, '12' },
    }
    for _, c in ipairs(cases) do assert.equal(c[2], text.shown(c[1])) end
    assert.falsy(text.shown('\0\127\255'):find('[^ -~]'))
  end)

  it('util__sanitize_text_keeps_utf8_and_line_breaks', function()
    local cases = { -- text, sanitized
      { 'plain text', 'plain text' },
      { 'tab\tlf\ncr\r', 'tab\tlf\ncr\r' },
      { '\195\169 \226\130\172 \240\159\152\128', '\195\169 \226\130\172 \240\159\152\128' },
      { 'a\0b\27c\127', 'a?b?c?' },
      -- not UTF-8: a stray continuation, an overlong form, a cut sequence (each byte), a byte
      -- that never starts one, a lead byte followed by ASCII
      { '\128', '?' }, { '\192\175', '??' }, { '\226\130', '??' }, { '\245x', '?x' },
      { '\226\40', '?(' },
    }
    for _, c in ipairs(cases) do assert.equal(c[2], text.sanitize(c[1])) end
  end)

  it('util__shell_quote_survives_quotes', function()
    assert.equal("'a b'", text.shell_quote('a b'))
    assert.equal("'it'\\''s'", text.shell_quote("it's"))
    local f = io.popen('printf %s ' .. text.shell_quote("x'; echo y $HOME"))
    local out = f:read('*a')
    f:close()
    assert.equal("x'; echo y $HOME", out)
  end)

  it('util__percent_decode', function()
    assert.equal('a b/c', text.percent_decode('a%20b%2fc'))
    assert.equal('100%+%zz', text.percent_decode('100%+%zz'))
  end)
end)

describe('dmarc.util.* files', function()
  it('util__write_then_read_file', function()
    local path = tmpname()
    assert.is_true(files.write(path, 'one\0two\r\n'))
    assert.equal('one\0two\r\n', files.read(path))
    os.remove(path)
    local data, err = files.read(path)
    assert.is_nil(data)
    assert.is_string(err)
    assert.is_nil((files.write('/nonexistent-dir/x', 'x')))
  end)

  it('util__directory_is_an_error_not_a_crash', function()
    local data, err = files.read('.')
    assert.is_nil(data)
    assert.is_string(err)
    local conf, cerr = config.load('.')
    assert.is_nil(conf)
    assert.is_string(cerr)
  end)
end)

describe('dmarc.util.* json', function()
  it('util__json_sorts_keys_and_tells_arrays_apart', function()
    assert.equal('{"a":1,"b":[],"c":{},"d":[1,"x",true]}',
      json.encode({ d = { 1, 'x', true }, c = {}, b = json.array(), a = 1 }))
    -- a sequence is an array without a mark; keys other than strings are dropped
    assert.equal('[[1,2],{"k":false}]', json.encode({ { 1, 2 }, { k = false, [5] = 1 } }))
    assert.equal('{"x":1}', json.encode({ 1, 2, x = 1 }))
  end)

  it('util__json_numbers_are_the_same_on_both_runtimes', function()
    assert.equal('[0,1,-7,2.5,0.10000000000000001,null,null,null,9007199254740991]',
      json.encode({ 0, 1.0, -7, 2.5, 0.1, 0 / 0, math.huge, -math.huge, 2 ^ 53 - 1 }))
    assert.equal('[1e+20]', json.encode({ 1e20 }))
    assert.equal('[0.333333]', json.encode({ 1 / 3 }, { number = '%.6g' }))
  end)

  it('util__json_escapes_strings', function()
    assert.equal('"q\\"b\\\\n\\n\\r\\t\\b\\f\\u0001\\u001f\\u007f/é"',
      json.encode('q"b\\n\n\r\t\b\f\1\31\127/é'))
    -- with utf8, text from outside becomes valid UTF-8 first (keys too)
    assert.equal('"a?\\n\195\169?"', json.encode('a\27\n\195\169\255', { utf8 = true }))
    assert.equal('{"k?":"v"}', json.encode({ ['k\255'] = 'v' }, { utf8 = true }))
    assert.equal('"k\\u001b"', json.encode('k\27'))
  end)

  it('util__json_null_for_what_json_cannot_carry', function()
    local cjson = require 'cjson'
    assert.equal('null', json.encode(nil))
    assert.equal('[null,null]', json.encode(json.array({ cjson.null, print })))
    assert.equal('{"a":null}', json.encode({ a = cjson.null, b = nil }))
  end)

  it('util__json_array_keys_make_empty_tables_arrays', function()
    local opts = { array_keys = { list = true } }
    assert.equal('{"list":[],"map":{}}', json.encode({ list = {}, map = {} }, opts))
    assert.equal('{"list":[]}', json.encode({ list = { x = 1 } }, opts))
  end)

  it('util__json_depth_is_bounded', function()
    local deep = {}
    local t = deep
    for _ = 1, json.MAX_DEPTH + 5 do
      t.next = {}
      t = t.next
    end
    local out = json.encode(deep)
    local _, levels = out:gsub('{', '')
    assert.equal(json.MAX_DEPTH + 1, levels)
    assert.truthy(out:find('"next":null', 1, true))
    assert.has_error(function() json.encode(deep, { strict = true }) end)
    -- a cycle ends at the bound instead of looping
    local cycle = {}
    cycle.self = cycle
    assert.truthy(json.encode(cycle):find('null', 1, true))
    assert.equal('{"a":{"b":1}}', json.encode({ a = { b = 1 } }, { strict = true }))
  end)
end)

describe('dmarc.util.* parse_options', function()
  local CHECK = { values = { ip = true, zone = true }, flags = { json = true },
                  repeated = { rcpt = true }, max_repeats = 2, once = true,
                  max_operands = 1, too_many_operands = 'one FILE only' }
  local REPORT = { style = 'report', flags = { quiet = true }, values = { redis = true } }

  it('util__parse_options_values_flags_and_operands', function()
    local opts, operands = options.parse(
      { '--ip', '192.0.2.1', '--zone=z=1', '--json', '--rcpt', 'a', '--rcpt=b', 'file' }, CHECK)
    assert.same({ ip = '192.0.2.1', zone = 'z=1', json = true, rcpt = { 'a', 'b' } }, opts)
    assert.same({ 'file' }, operands)
    opts = options.parse({}, CHECK)
    assert.same({ rcpt = {} }, opts)
    assert.is_true(options.parse({ '-h' }, CHECK).help)
    assert.is_true(options.parse({ '--help' }, REPORT).help)
    -- '-' is standard input unless the command says otherwise
    assert.same({ '-' }, select(2, options.parse({ '-' }, CHECK)))
    assert.is_nil(options.parse({ '-' }, { dash_operand = false }))
  end)

  it('util__parse_options_problems_in_the_command_wording', function()
    local function err(args, spec) return select(2, options.parse(args, spec)) end
    assert.equal('--ip needs a value', err({ '--ip' }, CHECK))
    assert.equal('--ip given twice', err({ '--ip', 'a', '--ip=b' }, CHECK))
    assert.equal('too many --rcpt', err({ '--rcpt', 'a', '--rcpt', 'b', '--rcpt', 'c' }, CHECK))
    assert.equal('unknown option "--json=1"', err({ '--json=1' }, CHECK))
    assert.equal('unknown option "--bogus=x"', err({ '--bogus=x' }, CHECK))
    assert.equal('unknown option "-x"', err({ '-x' }, CHECK))
    assert.equal('unknown option "--"', err({ '--', 'f' }, CHECK))
    assert.equal('one FILE only', err({ 'a', 'b', '--bogus' }, CHECK))
    -- without once, the last value counts
    assert.same({ ip = 'b' }, options.parse({ '--ip', 'a', '--ip', 'b' }, { values = { ip = true } }))
  end)

  it('util__parse_options_report_style', function()
    local function err(args, spec) return select(2, options.parse(args, spec)) end
    assert.equal('option --redis needs a value', err({ '--redis' }, REPORT))
    assert.equal('option --quiet takes no value', err({ '--quiet=1' }, REPORT))
    assert.equal('unknown option --bogus', err({ '--bogus=1' }, REPORT))
    assert.equal('unknown option -x', err({ '-x' }, REPORT))
    -- '--' ends the options
    local opts, operands = options.parse({ '--quiet', '--', '--redis', '-' }, REPORT)
    assert.same({ quiet = true }, opts)
    assert.same({ '--redis', '-' }, operands)
    -- the bound on operands holds after '--' too
    local one = { style = 'report', max_operands = 1, too_many_operands = 'one PATH only' }
    assert.equal('one PATH only', select(2, options.parse({ 'a', '--', 'b' }, one)))
    assert.equal('one PATH only', select(2, options.parse({ '--', 'a', 'b' }, one)))
    assert.same({ 'a' }, select(2, options.parse({ '--', 'a' }, one)))
  end)

  it('util__parse_options_lenient', function()
    local spec = { style = 'report', lenient = true, flags = { force = true } }
    local opts, operands = options.parse(
      { '--force=no', '--date', 'd', '--other=x', '-x', '--', 'rest' }, spec)
    assert.same({ force = true, date = 'd', other = 'x' }, opts)
    assert.same({ '-x', '--', 'rest' }, operands)
    assert.equal('option --date needs a value', select(2, options.parse({ '--date' }, spec)))
  end)
end)

describe('dmarc.util.* settings', function()
  it('util__load_config_runs_without_globals', function()
    local path = tmpname()
    assert(files.write(path, "return { org_name = 'R', max_rows = 5 }"))
    assert.same({ org_name = 'R', max_rows = 5 }, config.load(path))
    assert(files.write(path, 'return os.exit(3)'))
    local conf, err = config.load(path)
    assert.is_nil(conf)
    assert.is_string(err)
    assert(files.write(path, 'return 42'))
    assert.is_nil((config.load(path)))
    assert(files.write(path, 'return {'))
    assert.is_nil((config.load(path)))
    os.remove(path)
    assert.is_nil((config.load(path)))
  end)

  it('util__setting_command_line_then_config_then_default', function()
    local conf = { max_rows = 7, redis = 'conf' }
    assert.equal('cli', options.setting({ redis = 'cli' }, conf, 'redis'))
    assert.equal(7, options.setting({}, conf, 'max-rows', 1))
    assert.equal(1, options.setting({}, {}, 'max-rows', 1))
    assert.is_false(options.setting({ force = false }, { force = true }, 'force'))
  end)

  it('util__parse_day', function()
    assert.equal(1763683200, time.parse_day('2025-11-21'))
    assert.is_nil(time.parse_day('2025-11-21x'))
    assert.is_nil(time.parse_day('2025-13-01'))
    assert.is_nil(time.parse_day(nil))
  end)

  it('util__hash_reply_from_flat_or_map_replies', function()
    assert.same({ a = '1', b = '2' }, connect.hash_reply({ 'a', '1', 'b', '2' }))
    assert.same({ a = '1' }, connect.hash_reply({ 'a', '1', 'odd' }))
    assert.same({ a = '1' }, connect.hash_reply({ a = '1' }))
    assert.same({}, connect.hash_reply(nil))
    assert.same({}, connect.hash_reply('ERR'))
  end)

  it('util__connect_redis_without_a_server', function()
    -- Port 1 on loopback: nothing listens, the connection is refused at once.
    local conn, err = connect.from_options({ redis = '127.0.0.1:1', ['redis-timeout'] = '0.5' }, {})
    assert.is_nil(conn)
    assert.is_string(err)
  end)
end)

describe('dmarc.util.* error lines', function()
  it('util__fail_writes_one_line_and_returns_the_status', function()
    local err = sink()
    assert.equal(1, common.fail('dmarc x', 'broken', nil, err))
    assert.equal(75, common.fail('dmarc x', 'locked', 75, err))
    assert.equal('dmarc x: broken\ndmarc x: locked\n', err.text)
  end)

  it('util__usage_fail_points_at_help', function()
    local err = sink()
    assert.equal(2, common.usage_fail('dmarc x', 'bad option', err))
    assert.equal('dmarc x: bad option\nrun "dmarc x --help" for usage\n', err.text)
  end)
end)
