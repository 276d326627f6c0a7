-- The DNS-server resolver against a server that lies (tests/integration/forge_dns.py, started
-- by setup-forgedns.sh): replies with another transaction ID, for another question, from
-- another port, truncated, garbage. Each zone publishes p=reject; a forged or unusable reply
-- must never turn that into none or accept (RFC 5452 §9.1; RFC 9989 §11.5).
package.path = './lua/?.lua;./tests/lua/helpers/?.lua;' .. package.path
local env = require 'test_env'
local dio = require 'dmarc.io'

local SERVER = os.getenv('DMARC_TEST_FORGE_DNS')
local DATA = os.getenv('DMARC_TEST_FORGE_DATA')

-- The server makes its keys first (setup-forgedns.sh does not wait): at most 60 s.
local function setup_error()
  for _ = 1, 600 do
    local f = io.open(DATA .. '/ready', 'r')
    if f then f:close() return nil end
    os.execute('sleep 0.1')
  end
  local log = io.open(DATA .. '/server.log', 'r')
  local text = log and log:read('*a') or ''
  if log then log:close() end
  return 'forge_dns.py did not start: ' .. (text:match('([^\n]*)\n?$') or '')
end

local function check(msg)
  local out, status = env.run(env.dmarc_cmd('check --dns-server ' .. SERVER ..
    ' --dns-timeout 1 ' .. DATA .. '/msgs/' .. msg .. '.eml 2>&1'))
  assert.equal(0, status, out)
  return out
end

local function has(out, s) return out:find(s, 1, true) ~= nil end

-- The Decision line: never "accept" for a domain whose answer could not be trusted.
local function decision(out) return out:match('\nDecision: ([^\n]*)') or '' end

-- UDP queries logged by the server for @name: {port=, id=, payload=}.
local function udp_queries(name)
  local list = {}
  for line in env.read_file(DATA .. '/queries.log'):gmatch('[^\n]+') do
    local port, id, qname, payload = line:match('^udp (%d+) (%d+) (%S+) %S+ (%-?%d+)$')
    if qname == name then
      list[#list + 1] = { port = tonumber(port), id = tonumber(id), payload = tonumber(payload) }
    end
  end
  return list
end

describe('DNS server that forges (loopback)', function()
  if not SERVER then
    pending('DMARC_TEST_FORGE_DNS is not set: run through tests/integration/run')
    return
  end
  local err = setup_error()
  if err then
    it('has its DNS server', function() error(err) end)
    return
  end

  it('takes honest answers (the baseline the other cases differ from)', function()
    local out = check('honest-k')
    assert.truthy(has(out, 'dkim=pass header.d=honest.test'), out)
    assert.truthy(has(out, 'dmarc=pass (p=reject'), out)
    out = check('honest-unsigned')
    assert.truthy(has(out, 'dmarc=fail (p=reject'), out)
    assert.is_nil(decision(out):match('^accept'), out)
  end)

  it('ignores a reply with another transaction ID', function()
    local out = check('forged-id-unsigned')
    assert.truthy(has(out, 'dmarc=temperror header.from=forged-id.test'), out)
    assert.is_nil(decision(out):match('^accept'), out)
  end)

  it('ignores a reply to another question', function()
    local out = check('other-name-unsigned')
    assert.truthy(has(out, 'dmarc=temperror header.from=other-name.test'), out)
    assert.is_nil(decision(out):match('^accept'), out)
  end)

  it('ignores a reply from another port', function()
    local out = check('other-port-unsigned')
    assert.truthy(has(out, 'dmarc=temperror header.from=other-port.test'), out)
    assert.is_nil(decision(out):match('^accept'), out)
  end)

  it('waits past forged replies for the true one: p=reject is enforced', function()
    local out = check('forged-first-unsigned')
    assert.truthy(has(out, 'dmarc=fail (p=reject'), out)
    assert.truthy(decision(out):match('disposition quarantine') or
      decision(out):match('disposition reject'), out)
  end)

  it('asks again over TCP when the reply is truncated', function()
    local out = check('truncated-unsigned')
    assert.truthy(has(out, 'dmarc=fail (p=reject'), out)
    assert.is_nil(decision(out):match('^accept'), out)
    out = check('truncated-k')
    assert.truthy(has(out, 'dkim=pass header.d=truncated.test header.s=k'), out)
    out = check('truncated-big')
    assert.truthy(has(out, 'dkim=pass header.d=truncated.test header.s=big'), out)
  end)

  it('reports a garbage reply as malformed, not as a timeout', function()
    local out = check('garbage-k')
    assert.truthy(has(out, 'dkim=temperror (key lookup: malformed reply)'), out)
    assert.truthy(has(out, 'dmarc=temperror header.from=garbage.test'), out)
    assert.is_nil(decision(out):match('^accept'), out)
    local r = assert(dio.resolver{ server = SERVER, timeout = 1, retries = 0 })
    local q = r:query('_dmarc.garbage.test', 'TXT')
    assert.equal('servfail', q.rcode)
    assert.equal('malformed reply', q.problem)
  end)

  it('gets a 4096-bit key over UDP with EDNS0 (the server has no TCP)', function()
    local out = check('notcp-big')
    assert.truthy(has(out, 'dkim=pass header.d=notcp.test header.s=big'), out)
    local qs = udp_queries('big._domainkey.notcp.test')
    assert.truthy(#qs >= 1)
    for _, q in ipairs(qs) do assert.truthy(q.payload >= 1232, 'EDNS payload ' .. q.payload) end
  end)

  it('uses a random ID and source port for every query', function()
    local r = assert(dio.resolver{ server = SERVER, timeout = 1, retries = 0, cache = 0 })
    for _ = 1, 20 do assert.equal('noerror', (r:resolve('_dmarc.honest.test', 'TXT'))) end
    local qs = udp_queries('_dmarc.honest.test')
    assert.truthy(#qs >= 20)
    local ids, ports, nid, nport = {}, {}, 0, 0
    for i = #qs - 19, #qs do
      if not ids[qs[i].id] then ids[qs[i].id], nid = true, nid + 1 end
      if not ports[qs[i].port] then ports[qs[i].port], nport = true, nport + 1 end
    end
    -- 20 draws from 2^16 IDs and ~64500 ports: a repeat is rare, a sequence impossible.
    assert.truthy(nid >= 18, 'distinct IDs: ' .. nid)
    assert.truthy(nport >= 18, 'distinct ports: ' .. nport)
  end)
end)
