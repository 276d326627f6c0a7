-- Override store: key schema and validation, CIDR candidates, the memory store, the Redis
-- store's round trips / backoff / reconnect (against an in-process fake of the few Redis
-- commands it uses), the callback store, and `dmarc override` over a memory store.
local store = require 'dmarc.site.store'
local capture_log = require 'capture_log'

local unpack = table.unpack or unpack

-- {==================================================================
-- A fake Redis: the commands store.redis sends, with a switch to take it down.
-- ===================================================================
local function fake_redis()
  local server = { data = {}, expires = {}, zsets = {}, up = true, now = 1000, connects = 0,
    round_trips = 0, commands = {} }

  local function live(k)
    if server.expires[k] and server.expires[k] <= server.now then
      server.data[k], server.expires[k] = nil, nil
    end
    return server.data[k]
  end

  local function exec(cmd)
    local name = cmd[1]:upper()
    server.commands[#server.commands + 1] = name
    if name == 'GET' then return live(cmd[2]) or false end
    if name == 'MGET' then
      local out = {}
      for i = 2, #cmd do out[i - 1] = live(cmd[i]) or false end
      return out
    end
    if name == 'SET' then
      server.data[cmd[2]] = cmd[3]
      server.expires[cmd[2]] = cmd[4] == 'EX' and (server.now + tonumber(cmd[5])) or nil
      return { ok = 'OK' }
    end
    if name == 'DEL' then
      local had = live(cmd[2]) ~= nil
      server.data[cmd[2]], server.expires[cmd[2]] = nil, nil
      return had and 1 or 0
    end
    if name == 'TTL' then
      if not live(cmd[2]) then return -2 end
      return server.expires[cmd[2]] and (server.expires[cmd[2]] - server.now) or -1
    end
    local z = server.zsets[cmd[2]] or {}
    server.zsets[cmd[2]] = z
    if name == 'ZADD' then
      z[cmd[4]] = cmd[3] == '+inf' and math.huge or tonumber(cmd[3])
      return 1
    end
    if name == 'ZREM' then
      for i = 3, #cmd do z[cmd[i]] = nil end
      return 1
    end
    if name == 'ZREMRANGEBYSCORE' then
      local limit = tonumber((cmd[4]:gsub('^%(', '')))
      for m, s in pairs(z) do
        if s < limit then z[m] = nil end
      end
      return 1
    end
    if name == 'ZRANGEBYSCORE' then
      local out = {}
      for m, s in pairs(z) do
        if s >= tonumber(cmd[3]) then out[#out + 1] = m end
      end
      table.sort(out)
      return out
    end
    return { err = 'ERR unknown command ' .. name }
  end

  local function new_conn()
    local conn = { closed = false, generation = server.generation }
    local function broken()
      return not server.up or conn.generation ~= server.generation
    end
    function conn.command(_, ...)
      server.round_trips = server.round_trips + 1
      if broken() then return nil, 'Server closed the connection', 'io' end
      local r = exec{ ... }
      if type(r) == 'table' and r.err then return nil, r.err, 'redis' end
      return r
    end
    function conn.pipeline(_, cmds)
      server.round_trips = server.round_trips + 1
      if broken() then return nil, 'Server closed the connection', 'io' end
      local out, queue = {}, nil
      for i, c in ipairs(cmds) do
        local name = c[1]:upper()
        if name == 'MULTI' then
          queue = {}
          out[i] = { ok = 'OK' }
        elseif name == 'EXEC' then
          local res = {}
          for j, q in ipairs(queue or {}) do res[j] = exec(q) end
          queue = nil
          out[i] = res
        elseif queue then
          queue[#queue + 1] = c
          out[i] = { ok = 'QUEUED' }
        else
          out[i] = exec(c)
        end
      end
      return out
    end
    function conn.close() conn.closed = true end
    return conn
  end

  server.generation = 1
  function server.connect(conf)
    server.connects = server.connects + 1
    server.last_conf = conf
    if not server.up then return nil, 'Connection refused', 'io' end
    return new_conn()
  end
  -- A restart: data kept (AOF), every open connection now dead.
  function server.restart() server.generation = server.generation + 1 end
  return server
end
-- }==================================================================

describe('store keys', function()
  it('normalizes values into logical keys', function()
    assert.equal('domain:example.org', store.key('domain', 'Example.ORG.'))
    assert.equal('org:example.org', store.key('org', 'example.org'))
    assert.equal('rcpt:alice@example.com', store.key('rcpt', 'Alice@Example.COM'))
    assert.equal('rcpt_domain:example.com', store.key('rcpt_domain', 'EXAMPLE.com'))
    assert.equal('arc:lists.example.net', store.key('arc', 'lists.example.net'))
    assert.equal('list:dev.lists.example.net', store.key('list', 'Developers <Dev.Lists.Example.NET>'))
    assert.equal('ip:192.0.2.0/24', store.key('ip', '192.0.2.77/24'))
    assert.equal('set:score-only:alice@example.com', store.key('rcpt', 'alice@example.com', 'Score-Only'))
    assert.equal('set:score-only:example.com', store.key('rcpt_domain', 'example.com', 'score-only'))
  end)

  it('refuses values that would inject into a key', function()
    local bad_values = {
      { 'domain', 'example.org extra' },      -- space: a second argument on a command line
      { 'domain', 'example.org\r\nFLUSHALL' }, -- CR/LF
      { 'domain', 'ex{ample}.org' },           -- braces: the hash tag
      { 'domain', ('a'):rep(64) .. '.org' },   -- label over 63
      { 'domain', ('abcdefghi.'):rep(40) },    -- over the length limit
      { 'domain', 'bücher.example' },          -- not an A-label
      { 'rcpt', 'alice smith@example.com' },
      { 'rcpt', '"alice"@example.com' },
      { 'rcpt', 'no-at-sign' },
      { 'list', 'a b' },
      { 'ip', '192.0.2.1 ' },
      { 'ip', 'not-an-ip' },
      { 'domain', '' },
      { 'domain', 42 },
    }
    for _, case in ipairs(bad_values) do
      local key, msg, code = store.key(case[1], case[2])
      assert.is_nil(key, case[2])
      assert.equal('string', type(msg))
      assert.equal('invalid', code)
    end
  end)

  it('refuses unknown kinds, bad set names and set members of the wrong kind', function()
    assert.equal('invalid', select(3, store.key('sender', 'x.example')))
    assert.equal('invalid', select(3, store.key('rcpt', 'a@example.com', 'bad name')))
    assert.equal('invalid', select(3, store.key('rcpt', 'a@example.com', 'x{y}')))
    assert.equal('invalid', select(3, store.key('domain', 'example.com', 'score-only')))
  end)

  it('parses logical keys back, and only well-formed ones', function()
    assert.same({ 'rcpt', 'alice@example.com', 'score-only' },
      { store.parse_key('set:score-only:alice@example.com') })
    assert.same({ 'rcpt_domain', 'example.com', 'score-only' },
      { store.parse_key('set:score-only:example.com') })
    assert.same({ 'ip', '2001:db8::/32' }, { store.parse_key('ip:2001:db8::/32') })
    assert.is_nil(store.parse_key('domain:Example.org'))
    assert.is_nil(store.parse_key('domain:a b'))
    assert.is_nil(store.parse_key('nokind'))
  end)

  it('builds Redis keys with the prefix and a Cluster hash tag', function()
    assert.equal('dmarc:{ovr}:domain:example.org', store.redis_key('domain:example.org'))
    assert.equal('mail:{site1}:domain:example.org', store.redis_key('domain:example.org', 'mail:', 'site1'))
    assert.has_error(function() store.redis_key('domain:x', 'a b') end)
    assert.has_error(function() store.redis_key('domain:x', nil, 'x}y') end)
  end)
end)

describe('store CIDR', function()
  it('normalizes IPv4 and IPv6 prefixes, clearing host bits', function()
    assert.equal('192.0.2.0/24', store.normalize_cidr('192.0.2.200/24'))
    assert.equal('192.0.2.9/32', store.normalize_cidr('192.0.2.9'))
    assert.equal('10.0.0.0/8', store.normalize_cidr('10.255.1.2/8'))
    assert.equal('2001:db8::/32', store.normalize_cidr('2001:DB8:ffff::1/32'))
    assert.equal('2001:db8::1/128', store.normalize_cidr('2001:0db8:0000:0000:0000:0000:0000:0001'))
    assert.equal('2001:db8:0:1::/64', store.normalize_cidr('2001:db8:0:1:abcd::/64'))
    assert.equal('2001:0:0:1::1/128', store.normalize_cidr('2001:0:0:1:0:0:0:1'))
    -- An IPv4-mapped address is the IPv4 address.
    assert.equal('192.0.2.0/24', store.normalize_cidr('::ffff:192.0.2.1/120'))
  end)

  it('refuses prefixes a lookup never tries', function()
    assert.equal('invalid', select(3, store.normalize_cidr('10.0.0.0/7')))
    assert.equal('invalid', select(3, store.normalize_cidr('1.2.3.4/33')))
    assert.equal('invalid', select(3, store.normalize_cidr('2001:db8::/33')))
    assert.equal('invalid', select(3, store.normalize_cidr('2001:db8::/12')))
    assert.equal('invalid', select(3, store.normalize_cidr('1.2.3.256')))
    assert.equal('invalid', select(3, store.normalize_cidr('1:2:3:4:5:6:7:8:9')))
    assert.equal('invalid', select(3, store.normalize_cidr('fe80::1%eth0')))
  end)

  it('gives the candidate keys of an IPv4 address, /32 down to /8', function()
    local keys = store.ip_keys('198.51.100.9')
    assert.equal(25, #keys)
    assert.equal('ip:198.51.100.9/32', keys[1])
    assert.equal('ip:198.51.100.0/24', keys[9])
    assert.equal('ip:198.0.0.0/8', keys[25])
  end)

  it('gives the candidate keys of an IPv6 address, /128 down to /16 in steps of 4', function()
    local keys = store.ip_keys('2001:db8:1:2::5')
    assert.equal(29, #keys)
    assert.equal('ip:2001:db8:1:2::5/128', keys[1])
    assert.equal('ip:2001:db8:1:2::/64', keys[17])
    assert.equal('ip:2001::/16', keys[29])
  end)

  it('matches a stored CIDR through the candidates', function()
    local stored = store.key('ip', '2001:db8:1::/48')
    local hit = false
    for _, k in ipairs(store.ip_keys('2001:db8:1:ffff::1')) do
      if k == stored then hit = true end
    end
    assert.is_true(hit)
    assert.is_nil(store.ip_keys('192.0.2.1; DEL x'))
  end)
end)

describe('store.memory', function()
  local now, st
  before_each(function()
    now = 5000
    st = store.memory{ clock = function() return now end }
  end)

  it('adds, reads in one call, deletes', function()
    assert.is_true(st:add('domain:example.org', { at_most = 'none', comment = 'c' }))
    local found = st:get_many{ 'domain:example.org', 'org:example.org' }
    assert.same({ at_most = 'none', comment = 'c' }, found['domain:example.org'])
    assert.is_nil(found['org:example.org'])
    assert.is_true(st:del('domain:example.org'))
    assert.is_false(st:del('domain:example.org'))
  end)

  it('returns copies, not the stored table', function()
    local entry = { at_most = 'none' }
    st:add('domain:example.org', entry)
    entry.at_most = 'quarantine'
    local found = st:get_many{ 'domain:example.org' }
    found['domain:example.org'].at_most = 'x'
    assert.equal('none', st:get_many{ 'domain:example.org' }['domain:example.org'].at_most)
  end)

  it('expires entries after their TTL', function()
    st:add('domain:a.example', {}, 60)
    st:add('domain:b.example', {})
    now = now + 59
    assert.is_table(st:get_many{ 'domain:a.example' }['domain:a.example'])
    now = now + 1
    assert.is_nil(st:get_many{ 'domain:a.example' }['domain:a.example'])
    local items = st:list()
    assert.equal(1, #items)
    assert.equal('b.example', items[1].value)
  end)

  it('lists by kind with TTLs, sets included', function()
    st:add('domain:a.example', { comment = 'x' }, 100)
    st:add('ip:192.0.2.0/24', {})
    st:add(store.key('rcpt', 'alice@example.com', 'score-only'), {})
    local domains = st:list('domain')
    assert.equal(1, #domains)
    assert.equal('domain', domains[1].kind)
    assert.equal(100, domains[1].ttl)
    local sets = st:list('set')
    assert.equal(1, #sets)
    assert.equal('score-only', sets[1].set)
    assert.equal('rcpt', sets[1].kind)
    assert.equal(3, #st:list())
    assert.equal('invalid', select(3, st:list('nonsense')))
  end)

  it('refuses bad keys, TTLs and entries', function()
    assert.equal('invalid', select(3, st:add('domain:a b', {})))
    assert.equal('invalid', select(3, st:add('domain:a.example', {}, -1)))
    assert.equal('invalid', select(3, st:add('domain:a.example', {}, 1.5)))
    assert.equal('invalid', select(3, st:add('domain:a.example', 'not a table')))
    local huge = { comment = ('x'):rep(store.MAX_ENTRY_BYTES) }
    assert.equal('invalid', select(3, st:add('domain:a.example', huge)))
    assert.equal('invalid', select(3, st:get_many{ 'domain:a\r\nb' }))
    local many = {}
    for i = 1, store.MAX_KEYS + 1 do many[i] = 'domain:d' .. i .. '.example' end
    assert.equal('limit', select(3, st:get_many(many)))
  end)

  it('answers get_many_async before returning', function()
    st:add('domain:a.example', {})
    local calls, got = 0, nil
    st:get_many_async({ 'domain:a.example' }, function(found)
      calls = calls + 1
      got = found
    end)
    assert.equal(1, calls)
    assert.is_table(got['domain:a.example'])
  end)
end)

describe('store.redis', function()
  local server, now, st, logger, entries
  before_each(function()
    server = fake_redis()
    now = 1000
    logger, entries = capture_log()
    st = store.redis{ connect = server.connect, clock = function() return now end, log = logger,
      backoff = 10 }
  end)

  it('reads every key of a decision with one MGET under the hash tag', function()
    server.data['dmarc:{ovr}:domain:example.org'] = '{"at_most":"none"}'
    server.data['dmarc:{ovr}:ip:192.0.2.0/24'] = '{"at_most":"quarantine","comment":null}'
    local found = st:get_many{ 'domain:example.org', 'org:example.org', 'ip:192.0.2.0/24' }
    assert.equal(1, server.round_trips)
    assert.same({ 'MGET' }, server.commands)
    assert.same({ at_most = 'none' }, found['domain:example.org'])
    assert.same({ at_most = 'quarantine' }, found['ip:192.0.2.0/24'])   -- JSON null dropped
    assert.is_nil(found['org:example.org'])
  end)

  it('costs no round trip for no keys', function()
    assert.same({}, st:get_many{})
    assert.equal(0, server.connects)
  end)

  it('ignores entries that are not JSON objects, with a warning', function()
    server.data['dmarc:{ovr}:domain:example.org'] = 'garbage{'
    server.data['dmarc:{ovr}:org:example.org'] = '"a string"'
    local found = st:get_many{ 'domain:example.org', 'org:example.org' }
    assert.is_nil(next(found))
    assert.equal(2, #entries)
    assert.equal('warn', entries[1].level)
  end)

  it('adds with SET EX and an index entry in one transaction, lists and deletes', function()
    assert.is_true(st:add('domain:example.org', { at_most = 'none' }, 3600))
    assert.equal(1, server.round_trips)
    assert.same({ 'SET', 'ZADD' }, server.commands)
    assert.equal(now + 3600, server.expires['dmarc:{ovr}:domain:example.org'])
    assert.equal(now + 3600, server.zsets['dmarc:{ovr}:index']['domain:example.org'])
    assert.is_true(st:add('org:example.net', { at_most = 'quarantine' }))
    assert.equal(math.huge, server.zsets['dmarc:{ovr}:index']['org:example.net'])
    local items = st:list()
    assert.equal(2, #items)
    assert.equal('domain', items[1].kind)
    assert.equal(3600, items[1].ttl)
    assert.is_nil(items[2].ttl)
    assert.is_true(st:del('domain:example.org'))
    assert.is_false(st:del('domain:example.org'))
    assert.equal(1, #st:list())
  end)

  it('never lists an expired entry and cleans the index on read', function()
    st:add('domain:short.example', {}, 10)
    st:add('domain:long.example', {}, 1000)
    now, server.now = now + 20, server.now + 20
    local items = st:list('domain')
    assert.equal(1, #items)
    assert.equal('long.example', items[1].value)
    assert.is_nil(server.zsets['dmarc:{ovr}:index']['domain:short.example'])
  end)

  it('drops index members whose key vanished behind its back', function()
    st:add('domain:gone.example', {})
    server.data['dmarc:{ovr}:domain:gone.example'] = nil
    assert.equal(0, #st:list())
    assert.is_nil(server.zsets['dmarc:{ovr}:index']['domain:gone.example'])
  end)

  it('skips Redis for the backoff period after a failure, then retries', function()
    server.up = false
    local found, msg, code = st:get_many{ 'domain:example.org' }
    assert.is_nil(found)
    assert.equal('string', type(msg))
    assert.equal('io', code)
    assert.equal(1, server.connects)
    assert.equal(1, #entries)
    assert.equal('warn', entries[1].level)
    -- Within the backoff: no connection attempt, no timeout paid.
    now = now + 5
    assert.equal('unavailable', select(3, st:get_many{ 'domain:example.org' }))
    assert.equal(1, server.connects)
    server.up = true
    now = now + 6
    assert.is_table(st:get_many{ 'domain:example.org' })
    assert.equal(2, server.connects)
  end)

  it('retries once on a fresh connection when a reused one went stale', function()
    server.data['dmarc:{ovr}:domain:example.org'] = '{"at_most":"none"}'
    assert.is_table(st:get_many{ 'domain:example.org' }['domain:example.org'])
    server.restart()
    local found = st:get_many{ 'domain:example.org' }
    assert.is_table(found['domain:example.org'])
    assert.equal(2, server.connects)
  end)

  it('backs off when the server went away for good', function()
    assert.is_table(st:get_many{ 'domain:example.org' })
    server.up = false
    assert.is_nil(st:get_many{ 'domain:example.org' })
    local connects = server.connects
    assert.equal('unavailable', select(3, st:get_many{ 'domain:example.org' }))
    assert.equal(connects, server.connects)
  end)

  it('passes connection options through', function()
    local s2 = store.redis{ connect = server.connect, host = '127.0.0.1', port = 6380, db = 2,
      timeout = 0.25 }
    s2:get_many{ 'domain:x.example' }
    assert.equal(6380, server.last_conf.port)
    assert.equal(2, server.last_conf.db)
    assert.equal(0.25, server.last_conf.timeout)
  end)

  it('uses the configured prefix and tag', function()
    local s2 = store.redis{ connect = server.connect, prefix = 'mx1:', tag = 'policy' }
    s2:add('domain:example.org', {})
    assert.is_string(server.data['mx1:{policy}:domain:example.org'])
    assert.is_table(server.zsets['mx1:{policy}:index'])
  end)

  -- Redis Cluster: a store keeps every key in its {tag} slot, so a router (dmarc.redis.cluster)
  -- sends each MGET and each MULTI ... EXEC to one master.
  it('addresses one cluster slot with every command, transactions included', function()
    local cluster = require 'dmarc.redis.cluster'
    local sent = {}
    local function recording(conf)
      local conn = server.connect(conf)
      return {
        command = function(_, ...)
          sent[#sent + 1] = { { ... } }
          return conn:command(...)
        end,
        pipeline = function(_, cmds)
          sent[#sent + 1] = cmds
          return conn:pipeline(cmds)
        end,
        close = function() conn:close() end,
      }
    end
    local s2 = store.redis{ connect = recording, prefix = 'mx1:', tag = 'site',
      clock = function() return now end }
    assert.is_true(s2:add('domain:example.org', { at_most = 'none' }, 60))
    assert.is_true(s2:add('ip:192.0.2.0/24', { at_most = 'quarantine' }))
    s2:get_many{ 'domain:example.org', 'org:example.org', 'ip:192.0.2.0/24' }
    assert.equal(2, #assert(s2:list()))
    assert.is_true(s2:del('domain:example.org'))
    local slot = cluster.key_slot('{site}')
    local checked, transactions = 0, 0
    for _, batch in ipairs(sent) do
      local route = cluster.transaction_keys(batch)
      for i, cmd in ipairs(batch) do
        local key = route[i] or cluster.command_key(cmd)
        if cmd[1] == 'MULTI' or cmd[1] == 'EXEC' then
          transactions = transactions + 1
          assert.is_string(route[i])
        end
        assert.is_string(key)
        assert.equal(slot, cluster.key_slot(key))
        checked = checked + 1
      end
    end
    assert.equal(4, transactions) -- two adds: a MULTI and an EXEC each
    assert.is_true(checked >= 10)
  end)

  it('names the server as the caller says (a cluster has no one host:port)', function()
    local s2 = store.redis{ connect = server.connect, where = 'cluster 127.0.0.1:7000' }
    assert.equal('cluster 127.0.0.1:7000', s2:_where())
    assert.equal('127.0.0.1:6379', st:_where())
  end)

  it('reports a missing dmarc.redis module or a refused connection as data', function()
    local s2 = store.redis{ path = '/nonexistent/dmarc-test.sock', timeout = 0.1 }
    local found, msg, code = s2:get_many{ 'domain:example.org' }
    assert.is_nil(found)
    assert.equal('string', type(msg))
    assert.is_true(code == 'io' or code == 'unavailable')
  end)
end)

describe('store.callback', function()
  it('looks every key up with one asynchronous MGET', function()
    local calls, pending = 0, nil
    local st = store.callback{ mget = function(keys, done)
      calls = calls + 1
      assert.same({ 'dmarc:{ovr}:domain:example.org', 'dmarc:{ovr}:org:example.org' }, keys)
      pending = done
    end }
    local got, n = nil, 0
    st:get_many_async({ 'domain:example.org', 'org:example.org' }, function(found)
      n = n + 1
      got = found
    end)
    assert.equal(0, n)
    pending(nil, { '{"at_most":"none"}', false })
    pending(nil, { '{"at_most":"none"}', false })   -- a second answer is ignored
    assert.equal(1, calls)
    assert.equal(1, n)
    assert.same({ at_most = 'none' }, got['domain:example.org'])
  end)

  it('turns a lookup error or a raising transport into unavailable', function()
    local st = store.callback{ mget = function(_, done) done('connection refused') end }
    local code
    st:get_many_async({ 'domain:example.org' }, function(_, _, c) code = c end)
    assert.equal('unavailable', code)
    st = store.callback{ mget = function() error('boom') end }
    code = nil
    st:get_many_async({ 'domain:example.org' }, function(_, _, c) code = c end)
    assert.equal('unavailable', code)
  end)

  it('has no synchronous side', function()
    local st = store.callback{ mget = function() end }
    assert.equal('unsupported', select(3, st:get_many{}))
    assert.equal('unsupported', select(3, st:add('domain:a.example', {})))
  end)
end)

describe('dmarc.redis module', function()
  local ok, redis = pcall(require, 'dmarc.redis')

  it('is built and names itself', function()
    assert.is_true(ok, tostring(redis))
    assert.equal('dmarc.redis', redis._NAME)
  end)

  it('returns nil, message, io when it cannot connect', function()
    if not ok then return end
    local conn, msg, code = redis.connect{ path = '/nonexistent/dmarc-test.sock', timeout = 0.1 }
    assert.is_nil(conn)
    assert.equal('string', type(msg))
    assert.equal('io', code)
  end)

  it('raises on contract misuse', function()
    if not ok then return end
    assert.has_error(function() redis.connect('localhost') end)
    assert.has_error(function() redis.connect{ port = 70000 } end)
    assert.has_error(function() redis.connect{ timeout = -1 } end)
  end)
end)

describe('dmarc override (over a memory store)', function()
  local cli = require 'dmarc.cli.override'

  local function sink()
    local buf = {}
    return { write = function(self, ...)
      for _, s in ipairs{ ... } do buf[#buf + 1] = s end
      return self
    end, text = function() return table.concat(buf) end }
  end

  local function run(st, ...)
    local out, err = sink(), sink()
    local status = cli.run({ ... }, { stdout = out, stderr = err, store = st, getenv = function() end })
    return status, out.text(), err.text()
  end

  it('adds, lists and deletes entries', function()
    local st = store.memory()
    assert.equal(0, run(st, 'add', 'domain', 'Example.ORG', '--comment', 'partner', '--ttl', '2h'))
    assert.equal(0, run(st, 'add', 'ip', '192.0.2.7/24', '--action', 'score:3',
      '--reason', 'trusted_forwarder'))
    assert.equal(0, run(st, 'add', 'rcpt', 'alice@example.com', '--set', 'score-only'))
    local e = st:get_many{ 'domain:example.org', 'ip:192.0.2.0/24', 'set:score-only:alice@example.com' }
    assert.same({ at_most = 'none', reason = 'local_policy', comment = 'partner' }, e['domain:example.org'])
    assert.same({ treat = { action = 'score', score = 3 }, reason = 'trusted_forwarder' },
      e['ip:192.0.2.0/24'])
    assert.same({}, e['set:score-only:alice@example.com'])
    local status, out = run(st, 'list')
    assert.equal(0, status)
    local lines = 0
    for _ in out:gmatch('[^\n]+') do lines = lines + 1 end
    assert.equal(3, lines)
    status, out = run(st, 'list', 'ip', '--json')
    assert.equal(0, status)
    assert.equal('ip', require('cjson').decode(out:match('[^\n]+')).kind)
    assert.equal(0, run(st, 'del', 'domain', 'example.org'))
    assert.equal(1, run(st, 'del', 'domain', 'example.org'))
    assert.equal(0, run(st, 'del', 'rcpt', 'alice@example.com', '--set', 'score-only'))
  end)

  it('exits 2 on usage errors and invalid values, touching nothing', function()
    local st = store.memory()
    assert.equal(2, run(st))
    assert.equal(2, run(st, 'frobnicate'))
    assert.equal(2, run(st, 'add', 'domain'))
    assert.equal(2, run(st, 'add', 'domain', 'a b'))
    assert.equal(2, run(st, 'add', 'domain', 'x\r\ny'))
    assert.equal(2, run(st, 'add', 'nokind', 'x.example'))
    assert.equal(2, run(st, 'add', 'domain', 'x.example', '--reason', 'because'))
    assert.equal(2, run(st, 'add', 'domain', 'x.example', '--reason', 'other'))
    assert.equal(2, run(st, 'add', 'domain', 'x.example', '--action', 'explode'))
    assert.equal(2, run(st, 'add', 'domain', 'x.example', '--ttl', 'soon'))
    assert.equal(2, run(st, 'add', 'domain', 'x.example', '--set', 'score-only'))
    assert.equal(2, run(st, 'add', 'rcpt', 'a@x.example', '--set', 'score-only', '--action', 'quarantine'))
    assert.equal(2, run(st, 'add', 'domain', 'x.example', '--frob'))
    assert.equal(2, run(st, 'list', 'nokind'))
    assert.equal(0, #st:list())
  end)

  it('prints help with status 0', function()
    local status, out = run(store.memory(), '--help')
    assert.equal(0, status)
    assert.is_truthy(out:find('override add', 1, true))
  end)

  it('exits 1 when Redis cannot be reached', function()
    local out, err = sink(), sink()
    local status = cli.run({ 'list', '--redis', 'unix:/nonexistent/dmarc-test.sock',
                             '--redis-timeout', '0.1' },
      { stdout = out, stderr = err, getenv = function() end })
    assert.equal(1, status)
  end)

  it('parses Redis addresses', function()
    local connect = require 'dmarc.redis.connect'
    assert.same({ host = '127.0.0.1', port = 6380 }, connect.parse_address('127.0.0.1:6380'))
    assert.same({ host = '::1', port = 6379 }, connect.parse_address('[::1]:6379'))
    assert.same({ host = 'redis.local', port = 6379 }, connect.parse_address('redis.local'))
    assert.same({ path = '/run/redis.sock' }, connect.parse_address('unix:/run/redis.sock'))
    assert.is_nil(connect.parse_address('host:99999'))
    assert.is_nil(connect.parse_address('a b:1'))
    assert.is_nil(connect.parse_address(unpack{}))
  end)
end)
