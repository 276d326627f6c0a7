-- `dmarc eval`: the line contract, run as a separate process (bin/dmarc)
-- with this runtime and this build. Output is read back with cjson; the
-- encodings of null and [] are checked on the raw text.
local env = require 'test_env'
local cjson = require 'cjson'

local ZONE = { ['_dmarc.example.com'] = { 'v=DMARC1; p=reject' } }

local function line(t)
  return cjson.encode(t)
end

-- Runs `dmarc eval` over @input_text; returns output lines, status.
local function run_eval(input_text, args)
  local tmp = env.tmpname()
  env.write_file(tmp, input_text)
  local out, status = env.run(env.dmarc_cmd('eval ' .. (args or '')) .. ' < ' .. env.shell_quote(tmp)
    .. ' 2>/dev/null')
  os.remove(tmp)
  return env.lines(out), status, out
end

local function field_is_null(raw, key)
  return raw:find('"' .. key .. '":null', 1, true) ~= nil
end

describe('dmarc eval', function()
  it('answers one line per input line, in order', function()
    local input = {}
    for i = 1, 12 do
      input[#input + 1] = line({
        id = i, from = 'a@example.com', roll = 0, dns = ZONE,
        dkim = (i % 3 == 0) and { { result = 'pass', domain = 'example.com', selector = 's' } } or nil,
      })
    end
    local lines, status = run_eval(table.concat(input, '\n') .. '\n')
    assert.equal(0, status)
    assert.equal(12, #lines)
    for i, l in ipairs(lines) do
      local out = cjson.decode(l)
      assert.equal(i, out.id)
      assert.equal(i % 3 == 0 and 'pass' or 'fail', out.result)
    end
  end)

  it('writes every contract field, null and [] where empty', function()
    local lines, status = run_eval(line({ id = 'n', from = { }, dns = {} }) .. '\n')
    assert.equal(0, status)
    assert.equal(1, #lines)
    local raw = lines[1]
    local out = cjson.decode(raw)
    for _, key in ipairs({ 'id', 'result', 'author_domain', 'policy_domain', 'org_domain', 'policy',
      'applied', 'reason', 'spf_aligned', 'dkim_aligned', 'flags', 'queries' }) do
      assert.is_not_nil(out[key], key)
    end
    assert.equal('none', out.result)
    for _, key in ipairs({ 'author_domain', 'policy_domain', 'org_domain', 'policy', 'applied',
      'reason' }) do
      assert.is_true(field_is_null(raw, key), key)
    end
    assert.is_truthy(raw:find('"queries":[]', 1, true))
    assert.is_truthy(raw:find('"flags":["no_from"]', 1, true))
    assert.is_false(out.spf_aligned)
  end)

  it('writes flags as [] when there are none', function()
    local lines = run_eval(line({ id = 1, from = 'a@example.com', roll = 0, dns = ZONE }) .. '\n')
    assert.is_truthy(lines[1]:find('"flags":[]', 1, true))
    local out = cjson.decode(lines[1])
    assert.equal('reject', out.policy)
    assert.equal('reject', out.applied)
    assert.is_true(field_is_null(lines[1], 'reason'))
    assert.equal('_dmarc.example.com/TXT', out.queries[1])
  end)

  it('skips empty lines and answers bad lines with an error object', function()
    local text = table.concat({
      line({ id = 'a', from = 'a@example.com', dns = ZONE, roll = 0 }),
      '',
      '   ',
      '{"id": "b", "from": ',
      '[1, 2]',
      '"just a string"',
      line({ id = 'c', dns = ZONE }), -- from is required
      line({ id = 'd', from = 'a@example.com', roll = 500 }),
      line({ id = 'e', from = 'a@example.com', dns = { x = 42 } }),
      line({ id = 'f', from = 'a@example.com', dns = ZONE, roll = 0 }),
    }, '\n') .. '\n'
    local lines, status = run_eval(text)
    assert.equal(0, status)
    assert.equal(8, #lines)
    local outs = {}
    for i, l in ipairs(lines) do outs[i] = cjson.decode(l) end
    assert.equal('a', outs[1].id)
    assert.equal('fail', outs[1].result)
    for i = 2, 4 do
      assert.equal(cjson.null, outs[i].id, i)
      assert.equal('string', type(outs[i].error), i)
      assert.is_nil(outs[i].result, i)
    end
    assert.equal('c', outs[5].id)
    assert.equal('string', type(outs[5].error))
    assert.equal('d', outs[6].id)
    assert.equal('string', type(outs[6].error))
    assert.equal('e', outs[7].id)
    assert.equal('string', type(outs[7].error))
    assert.equal('f', outs[8].id)
    assert.equal('fail', outs[8].result)
  end)

  it('echoes ids of every JSON type, and null for none', function()
    local text = table.concat({
      '{"id": 17, "from": []}',
      '{"id": "x-1", "from": []}',
      '{"id": null, "from": []}',
      '{"from": []}',
      '{"id": 2.5, "from": []}',
      '{"id": true, "from": []}',
    }, '\n') .. '\n'
    local lines = run_eval(text)
    assert.equal(6, #lines)
    assert.matches('^{"id":17,', lines[1])
    assert.matches('^{"id":"x%-1",', lines[2])
    assert.matches('^{"id":null,', lines[3])
    assert.matches('^{"id":null,', lines[4])
    assert.equal(2.5, cjson.decode(lines[5]).id)
    assert.is_true(cjson.decode(lines[6]).id)
  end)

  it('reads CRLF lines and a last line without a newline', function()
    local text = line({ id = 1, from = {} }) .. '\r\n' .. line({ id = 2, from = {} })
    local lines = run_eval(text)
    assert.equal(2, #lines)
    assert.equal(2, cjson.decode(lines[2]).id)
  end)

  it('treats null fields as absent, but from stays required', function()
    local lines = run_eval('{"id": 1, "from": "a@example.com", "spf": null, "dkim": null, '
      .. '"roll": null, "mode": null, "dns": null}\n{"id": 2, "from": null}\n')
    local first = cjson.decode(lines[1])
    assert.equal('none', first.result)
    assert.equal('_dmarc.example.com/TXT', first.queries[1])
    assert.equal('string', type(cjson.decode(lines[2]).error))
  end)

  it('flushes each answer before reading the next line', function()
    local fifo = env.tmpname()
    os.remove(fifo)
    local outfile = env.tmpname()
    assert.equal(0, select(2, env.run('mkfifo ' .. env.shell_quote(fifo))))
    os.execute(env.dmarc_cmd('eval') .. ' < ' .. env.shell_quote(fifo) .. ' > '
      .. env.shell_quote(outfile) .. ' 2>/dev/null &')
    local w = assert(io.open(fifo, 'w'))
    w:write(line({ id = 1, from = {} }), '\n')
    w:flush()
    -- The first answer must appear while the input is still open.
    local text = ''
    for _ = 1, 200 do
      text = env.read_file(outfile)
      if text:find('\n') then break end
      env.nap()
    end
    assert.equal(1, #env.lines(text))
    w:write(line({ id = 2, from = {} }), '\n')
    w:close()
    for _ = 1, 200 do
      text = env.read_file(outfile)
      if #env.lines(text) == 2 then break end
      env.nap()
    end
    assert.equal(2, #env.lines(text))
    os.remove(fifo)
    os.remove(outfile)
  end)

  it('exits non-zero when standard output fails', function()
    local tmp = env.tmpname()
    env.write_file(tmp, line({ id = 1, from = {} }) .. '\n')
    local _, status = env.run(env.dmarc_cmd('eval') .. ' < ' .. env.shell_quote(tmp)
      .. ' > /dev/full 2>/dev/null')
    os.remove(tmp)
    assert.is_not.equal(0, status)
  end)

  it('prints usage with --help and exits 0; exits 2 on an unknown argument', function()
    local out, status = env.run(env.dmarc_cmd('eval --help') .. ' </dev/null')
    assert.equal(0, status)
    assert.matches('usage: dmarc eval', out)
    local _, bad = env.run(env.dmarc_cmd('eval --bogus') .. ' </dev/null 2>/dev/null')
    assert.equal(2, bad)
  end)

  it('runs the bundled examples', function()
    local lines, status = run_eval(env.read_file(env.root .. '/examples/eval.jsonl'))
    assert.equal(0, status)
    assert.is_true(#lines >= 5)
    local results = {}
    for _, l in ipairs(lines) do
      local out = cjson.decode(l)
      assert.is_nil(out.error)
      results[out.result] = true
    end
    assert.is_true(results.pass)
    assert.is_true(results.fail)
    assert.is_true(results.temperror)
  end)
end)

-- Inputs an attacker or a careless publisher chooses must never turn a spoof of a p=reject
-- domain into "no DMARC" (RFC 9989 §4.8, §4.10, §11.5). Exact output lines.
describe('dmarc eval fails closed', function()
  local REJECT = { ['_dmarc.example.com'] = { 'v=DMARC1; p=reject' } }
  local function eval_one(t)
    local lines, status = run_eval(line(t) .. '\n')
    assert.equal(0, status)
    assert.equal(1, #lines)
    return lines[1], cjson.decode(lines[1])
  end
  local function harmless(n)
    local t = {}
    for i = 0, n - 1 do t[#t + 1] = 'u@h' .. i .. '.example' end
    return t
  end

  it('reads V=DMARC1 as a record in both modes (the name v is case-insensitive)', function()
    local raw = eval_one({ id = 'v', from = 'ceo@example.com',
      dns = { ['_dmarc.example.com'] = { 'V=DMARC1; p=reject' } } })
    assert.equal('{"id":"v","result":"fail","author_domain":"example.com",' ..
      '"policy_domain":"example.com","org_domain":null,"policy":"reject","applied":"reject",' ..
      '"reason":null,"spf_aligned":false,"dkim_aligned":false,"flags":[],' ..
      '"queries":["_dmarc.example.com/TXT"]}', raw)
    local _, out = eval_one({ id = 'v7', mode = 'rfc7489', from = 'ceo@example.com',
      dns = { ['_dmarc.example.com'] = { 'V = DMARC1 ; p=reject' } } })
    assert.equal('reject', out.applied)
    _, out = eval_one({ id = 'lc', from = 'ceo@example.com',
      dns = { ['_dmarc.example.com'] = { 'V=dmarc1; p=reject' } } })
    assert.equal('none', out.result)
  end)

  it('never reports the author domain as its own Org Domain without a walk', function()
    local raw = eval_one({ id = 'org', from = 'ceo@mail.contoso.net',
      dns = { ['_dmarc.mail.contoso.net'] = { 'v=DMARC1; p=reject' },
              ['_dmarc.contoso.net'] = { 'v=DMARC1; p=none' } } })
    assert.equal('{"id":"org","result":"fail","author_domain":"mail.contoso.net",' ..
      '"policy_domain":"mail.contoso.net","org_domain":null,"policy":"reject","applied":"reject",' ..
      '"reason":null,"spf_aligned":false,"dkim_aligned":false,"flags":[],' ..
      '"queries":["_dmarc.mail.contoso.net/TXT"]}', raw)
    local _, out = eval_one({ id = 'pass', from = 'a@example.com', dns = REJECT,
      dkim = { { result = 'pass', domain = 'example.com', selector = 's' } } })
    assert.equal('pass', out.result)
    assert.equal(cjson.null, out.org_domain)
  end)

  it('counts distinct domains: 65 addresses of one aligned domain pass', function()
    local from = {}
    for i = 1, 65 do from[i] = 'u' .. i .. '@example.com' end
    local raw = eval_one({ id = 65, from = table.concat(from, ', '), dns = REJECT,
      dkim = { { result = 'pass', domain = 'example.com', selector = 's' } } })
    assert.equal('{"id":65,"result":"pass","author_domain":"example.com",' ..
      '"policy_domain":"example.com","org_domain":null,"policy":"reject","applied":"none",' ..
      '"reason":null,"spf_aligned":false,"dkim_aligned":true,"flags":[],' ..
      '"queries":["_dmarc.example.com/TXT"]}', raw)
  end)

  it('enforces a p=reject domain placed after eight harmless ones, naming the bound', function()
    local from = harmless(8)
    from[#from + 1] = 'ceo@example.com'
    local raw, out = eval_one({ id = 9, from = table.concat(from, ', '), dns = REJECT })
    local _
    assert.equal('fail', out.result)
    assert.equal('example.com', out.author_domain)
    assert.equal('reject', out.applied)
    assert.equal('too_many_domains', out.reason)
    assert.is_true(field_is_null(raw, 'policy_domain'))
    -- Past the mailbox bound and the From field bound: the same.
    from = {}
    for i = 1, 64 do from[i] = 'u' .. i .. '@example.com' end
    from[#from + 1] = 'ceo@evil.example'
    _, out = eval_one({ id = 'mb', from = table.concat(from, ', '), dns = REJECT,
      dkim = { { result = 'pass', domain = 'example.com', selector = 's' } } })
    assert.same({ 'fail', 'reject', 'too_many_mailboxes' }, { out.result, out.applied, out.reason })
    local fields = harmless(8)
    fields[#fields + 1] = 'ceo@example.com'
    _, out = eval_one({ id = 'ff', from = fields, dns = REJECT })
    assert.same({ 'fail', 'reject', 'too_many_from_fields' }, { out.result, out.applied, out.reason })
  end)

  it('evaluates a From a mail reader still shows, flagged, never better than fail', function()
    local deep = string.rep('(', 33) .. string.rep(')', 33) .. ' ceo@example.com'
    for _, from in ipairs({ 'CEO\r <ceo@example.com>', deep, '<ceo@example.com> CEO',
                            'ceo@example.com (CEO' }) do
      local raw = eval_one({ id = 'x', from = from, dns = REJECT })
      assert.equal('{"id":"x","result":"fail","author_domain":"example.com",' ..
        '"policy_domain":"example.com","org_domain":null,"policy":"reject","applied":"reject",' ..
        '"reason":null,"spf_aligned":false,"dkim_aligned":false,' ..
        '"flags":["from_syntax","from_lenient"],"queries":["_dmarc.example.com/TXT"]}', raw)
    end
    local _, out = eval_one({ id = 'a', from = 'ceo@example.com (CEO', dns = REJECT,
      dkim = { { result = 'pass', domain = 'example.com', selector = 's' } } })
    assert.equal('fail', out.result)
    _, out = eval_one({ id = 'amb', from = '"ceo@example.com" <x@evil.example', dns = REJECT })
    assert.equal('none', out.result)
    assert.same({ 'no_author_domain', 'from_syntax', 'from_unread' }, out.flags)
  end)
end)
