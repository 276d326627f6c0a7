-- The shared vectors in tests/vectors, read here and by the C tests, so the
-- core and the binding agree on every case: records.tsv (record parsing),
-- from.tsv (From fields), eval.jsonl (whole evaluations, `dmarc eval`
-- objects). Each file documents its own format in its header.
local env = require 'test_env'
local core = require 'dmarc.core'
local dmarc = require 'dmarc'
local cjson = require 'cjson'

local VECTORS = env.root .. '/tests/vectors/'

local function open_vectors(name)
  return io.open(VECTORS .. name, 'rb')
end

-- The escapes of the vector files: \t \n \r \0 \\ and \xHH.
local SIMPLE_ESCAPES = { t = '\t', n = '\n', r = '\r', ['0'] = '\0', ['\\'] = '\\' }
local function unescape(s)
  local out, i = {}, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c ~= '\\' then
      out[#out + 1] = c
      i = i + 1
    else
      local e = s:sub(i + 1, i + 1)
      if e == 'x' then
        local hex = s:sub(i + 2, i + 3)
        assert(hex:find('^%x%x$'), 'bad \\x escape in ' .. s)
        out[#out + 1] = string.char(tonumber(hex, 16))
        i = i + 4
      else
        out[#out + 1] = assert(SIMPLE_ESCAPES[e], 'unknown escape in ' .. s)
        i = i + 2
      end
    end
  end
  return table.concat(out)
end

-- Data lines of a vector file: (line number, fields split on TAB).
local function data_lines(f)
  local rows, n = {}, 0
  for line in f:lines() do
    n = n + 1
    line = line:gsub('\r$', '')
    if line ~= '' and line:sub(1, 1) ~= '#' then
      local fields = {}
      for field in (line .. '\t'):gmatch('([^\t]*)\t') do fields[#fields + 1] = field end
      rows[#rows + 1] = { line = n, fields = fields, text = line }
    end
  end
  return rows
end

describe('unescape of the vector files', function()
  it('decodes every escape and leaves other bytes', function()
    assert.equal('a\tb\nc\r\0\\ \1\255x', unescape('a\\tb\\nc\\r\\0\\\\\\x20\\x01\\xffx'))
    assert.equal('\\x', unescape('\\\\x'))
  end)
end)

-- ---------------------------------------------------------------------------
-- records.tsv: MODE<TAB>RECORD<TAB>EXPECT

local BOOL_KEYS = {
  usable = 'usable', as_none = 'as_none', rf_afrf = 'rf_afrf',
  has_p = 'has_p', has_sp = 'has_sp', has_np = 'has_np', has_adkim = 'has_adkim',
  has_aspf = 'has_aspf', has_pct = 'has_pct', has_t = 'has_t', has_psd = 'has_psd',
  has_fo = 'has_fo', has_rf = 'has_rf', has_ri = 'has_ri', has_rua = 'has_rua',
  has_ruf = 'has_ruf', bad_p = 'bad_p', bad_sp = 'bad_sp', bad_np = 'bad_np',
}

-- A rua/ruf EXPECT value against the kept URIs: 'URI' or 'URI!BYTES' in
-- order, joined with ','; '-' for none. Sizes compare as Lua numbers: one
-- beyond lua_Integer (or 2^53 on LuaJIT) is the nearest float on both sides.
local function same_uris(want, uris)
  if want == '-' then return #uris == 0 end
  local i = 0
  for item in (want .. ','):gmatch('([^,]*),') do
    i = i + 1
    local u = uris[i]
    if not u then return false end
    local uri, size = item:match('^(.*)!(%d+)$')
    if not uri then uri, size = item, '0' end
    if u.uri ~= uri or u.max_size ~= tonumber(size) then return false end
  end
  return i == #uris
end

local function uri_list(uris)
  local parts = {}
  for i, u in ipairs(uris) do
    parts[i] = u.max_size > 0 and (u.uri .. '!' .. tostring(u.max_size)) or u.uri
  end
  return #parts == 0 and '-' or table.concat(parts, ',')
end

local function warning_list(warnings)
  if #warnings == 0 then return '-' end
  local parts = {}
  for i, w in ipairs(warnings) do parts[i] = w.code end
  return table.concat(parts, ',')
end

-- The value of one EXPECT key in a parsed record, as the file writes it.
local function record_value(r, key)
  if BOOL_KEYS[key] then return r[BOOL_KEYS[key]] and '1' or '0' end
  if key == 'p' or key == 'sp' or key == 'np' or key == 'psd' then return r[key] end
  if key == 'adkim' or key == 'aspf' then return r[key]:sub(1, 1) end -- relaxed -> r
  if key == 't' then return r.testing and 'y' or 'n' end
  if key == 'pct' or key == 'ri' then return string.format('%d', r[key]) end
  if key == 'dropped' then return string.format('%d', r.warnings_dropped) end
  if key == 'fo' then return r.fo_text end
  if key == 'warn' then return warning_list(r.warnings) end
  if key == 'diag' then return r.diag end
  error('records.tsv: unknown key ' .. key)
end

describe('tests/vectors/records.tsv', function()
  local f = open_vectors('records.tsv')
  if not f then
    pending('tests/vectors/records.tsv is not there')
    return
  end
  local rows = data_lines(f)
  f:close()

  it('has vectors', function()
    assert.is_true(#rows > 0)
  end)

  for _, row in ipairs(rows) do
    local mode, text, expect = row.fields[1], row.fields[2], row.fields[3]
    it(string.format('line %d: %s', row.line, row.text), function()
      assert.equal(3, #row.fields, 'three TAB-separated fields')
      local r, _, code = core.record_parse(unescape(text), mode)
      if expect == 'not_dmarc' then
        assert.is_nil(r)
        assert.equal('not_dmarc', code)
        return
      end
      assert.is_table(r, 'parsed (got code ' .. tostring(code) .. ')')
      for key, want in expect:gmatch('([%w_]+)=(%S+)') do
        want = unescape(want)
        if key == 'rua' or key == 'ruf' then
          assert.is_true(same_uris(want, r[key]), key .. ': want ' .. want .. ', got '
            .. uri_list(r[key]))
        else
          assert.equal(want, record_value(r, key), key)
        end
      end
    end)
  end
end)

-- ---------------------------------------------------------------------------
-- from.tsv: RAW<TAB>EXPECT

describe('tests/vectors/from.tsv', function()
  local f = open_vectors('from.tsv')
  if not f then
    pending('tests/vectors/from.tsv is not there')
    return
  end
  local rows = data_lines(f)
  f:close()

  it('has vectors', function()
    assert.is_true(#rows > 0)
  end)

  for _, row in ipairs(rows) do
    local raw, expect = row.fields[1], row.fields[2] or ''
    it(string.format('line %d: %s', row.line, row.text), function()
      local list, _, code = core.from_parse(unescape(raw))
      if expect == 'syntax_error' then
        assert.is_nil(list)
        assert.is_string(code)
        return
      end
      assert.is_table(list, 'parsed (got code ' .. tostring(code) .. ')')
      local got = {}
      for i, mb in ipairs(list) do got[i] = mb.domain or '-' end
      assert.equal(expect, table.concat(got, ','))
    end)
  end
end)

-- ---------------------------------------------------------------------------
-- eval.jsonl: one `dmarc eval` input object per line, with the expected
-- output fields under "expect" (JSON null: the field must be null).

local function plain(v)
  if v == cjson.null then return nil end
  if type(v) ~= 'table' then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = plain(x) end
  return t
end

describe('tests/vectors/eval.jsonl', function()
  local f = open_vectors('eval.jsonl')
  if not f then
    pending('tests/vectors/eval.jsonl is not there')
    return
  end
  local rows = {}
  local n = 0
  for line in f:lines() do
    n = n + 1
    if line:find('%S') and not line:find('^%s*#') and not line:find('^%s*//') then
      rows[#rows + 1] = { line = n, text = line }
    end
  end
  f:close()

  it('has vectors', function()
    assert.is_true(#rows > 0)
  end)

  -- The same vectors through the command line, in one run: the CLI must
  -- print what dmarc.evaluate returns, nulls as JSON null.
  it('gives the same answers through dmarc eval', function()
    local lines, expects = {}, {}
    for _, row in ipairs(rows) do
      local obj = cjson.decode(row.text)
      lines[#lines + 1] = cjson.encode(obj.input)
      expects[#expects + 1] = obj.expect
    end
    local tmp = env.tmpname()
    env.write_file(tmp, table.concat(lines, '\n') .. '\n')
    local out, status = env.run(env.dmarc_cmd('eval') .. ' < ' .. env.shell_quote(tmp))
    os.remove(tmp)
    assert.equal(0, status)
    local got = env.lines(out)
    assert.equal(#expects, #got)
    for i, expect in ipairs(expects) do
      local o = cjson.decode(got[i])
      for key, want in pairs(expect) do
        if type(want) == 'table' then
          assert.same(want, o[key], rows[i].line .. ': ' .. key)
        else
          assert.equal(want, o[key], rows[i].line .. ': ' .. key)
        end
      end
    end
  end)

  for _, row in ipairs(rows) do
    local ok, obj = pcall(cjson.decode, row.text)
    local name = string.format('line %d: %s', row.line,
      ok and type(obj) == 'table' and tostring(obj.id or obj.name or '') or row.text)
    it(name, function()
      assert.is_true(ok, 'valid JSON')
      local expect = obj.expect or obj.expected
      assert.is_table(expect, 'an "expect" object')
      local input = {}
      for k, v in pairs(obj.input or obj) do
        if k ~= 'expect' and k ~= 'expected' and k ~= 'comment' and k ~= 'name' then
          input[k] = (k == 'id') and v or plain(v)
        end
      end
      local out, err = dmarc.evaluate(input)
      if expect.error ~= nil and expect.error ~= cjson.null then
        assert.is_nil(out)
        return
      end
      assert.is_table(out, err)
      for key, want in pairs(expect) do
        local got = out[key]
        if want == cjson.null then
          assert.is_nil(got, key)
        elseif type(want) == 'table' then
          assert.same(plain(want), got, key)
        else
          assert.equal(want, got, key)
        end
      end
    end)
  end
end)
