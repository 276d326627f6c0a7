-- The override store against a real redis-server (tests/integration/run starts one and
-- exports DMARC_TEST_REDIS=127.0.0.1:PORT): `dmarc override add` entries honoured by a
-- decision, one round trip per decision (INFO commandstats), and a second server of this
-- spec's own that is killed mid-run (defaults apply, with a warning, never an error) and
-- restarted from its append-only file (the overrides are back).
local policy = require 'dmarc.site.policy'
local store = require 'dmarc.site.store'
local dlog = require 'dmarc.util.log'
local capture_log = require 'capture_log'
local redis = require 'dmarc.redis'

local addr = os.getenv('DMARC_TEST_REDIS') or ''
local host, port = addr:match('^([%d.]+):(%d+)$')
port = tonumber(port)
-- Keys of this spec live under their own prefix, apart from other suites on the server.
local PREFIX = 'it-policy:'

local function sh(cmd)
  local ok, how, code = os.execute(cmd)
  if type(ok) == 'number' then return ok == 0 end   -- Lua 5.1 convention
  return ok == true and how == 'exit' and code == 0
end

local function cli(args, redis_addr)
  local cmd = string.format('./bin/dmarc override %s --redis %s --redis-prefix %s >/dev/null 2>&1',
    args, redis_addr, PREFIX)
  return sh(cmd)
end

local function sleep(seconds) sh('sleep ' .. seconds) end

local function connect_retry(p, tries)
  for _ = 1, tries or 50 do
    local c = redis.connect{ host = '127.0.0.1', port = p, timeout = 0.5 }
    if c then return c end
    sleep(0.1)
  end
  return nil
end

local function fail_verdict(author, org)
  return {
    result = 'fail', author_domain = author, org_domain = org or author, policy_domain = org or author,
    policy = 'reject', applied = 'reject', spf_aligned = false, dkim_aligned = false,
    flags = {}, queries = {},
  }
end

local function commandstats(conn)
  local info = assert(conn:command('INFO', 'commandstats'))
  local calls = {}
  for name, n in info:gmatch('cmdstat_([%w|_]+):calls=(%d+)') do calls[name] = tonumber(n) end
  return calls
end

describe('override store on redis-server', function()
  if not port then
    pending('DMARC_TEST_REDIS is not set (run through tests/integration/run)')
    return
  end
  local redis_addr = host .. ':' .. port
  local admin
  local site

  setup(function()
    admin = assert(connect_retry(port))
    local keys = admin:command('KEYS', PREFIX .. '*')
    for _, k in ipairs(keys or {}) do admin:command('DEL', k) end
    site = assert(policy.load('examples/site.lua', { log = dlog.null() }))
  end)

  teardown(function()
    if admin then
      local keys = admin:command('KEYS', PREFIX .. '*')
      for _, k in ipairs(keys or {}) do admin:command('DEL', k) end
      admin:close()
    end
  end)

  it('speaks to the server through dmarc.redis', function()
    local c = assert(redis.connect{ host = host, port = port, timeout = 1 })
    assert.same({ ok = 'OK' }, c:command('SET', PREFIX .. 'probe', 'v'))
    assert.equal('v', c:command('GET', PREFIX .. 'probe'))
    local r, msg = c:command('GET', PREFIX .. 'absent')
    assert.is_nil(r)
    assert.is_nil(msg)
    local code
    r, msg, code = c:command('LPUSH', PREFIX .. 'probe', 'x')
    assert.is_nil(r)
    assert.equal('string', type(msg))
    assert.equal('redis', code)
    local replies = assert(c:pipeline{ { 'INCR', PREFIX .. 'n' }, { 'GET', PREFIX .. 'absent' },
      { 'LPUSH', PREFIX .. 'probe', 'x' }, { 'MGET', PREFIX .. 'probe', PREFIX .. 'absent' } })
    assert.equal(1, replies[1])
    assert.is_false(replies[2])
    assert.equal('string', type(replies[3].err))
    assert.same({ 'v', false }, replies[4])
    c:close()
    assert.has_error(function() c:command('PING') end)
  end)

  it('honours overrides added with `dmarc override add`', function()
    assert.is_true(cli('add domain spoofed-but-wanted.example --comment "newsletter via ESP"', redis_addr))
    assert.is_true(cli('add rcpt alice@example.com --set score-only --ttl 3600', redis_addr))
    assert.is_true(cli('add ip 203.0.113.0/24 --action quarantine --reason trusted_forwarder', redis_addr))
    assert.is_false(cli('add domain "bad domain"', redis_addr))
    local st = store.redis{ host = host, port = port, prefix = PREFIX, log = dlog.null() }

    local d = site:evaluate(fail_verdict('spoofed-but-wanted.example'), { rcpt = { 'bob@example.com' },
      evidence = 'rbl' }, st)
    assert.equal('accept', d.action)
    assert.equal('override', d.source)
    assert.equal('none', d.disposition)
    assert.same({ { type = 'local_policy', comment = 'newsletter via ESP' } }, d.reasons)

    d = site:evaluate(fail_verdict('other.example'), { rcpt = { 'alice@example.com' } }, st)
    assert.equal('score', d.action)
    assert.equal(6, d.score)

    d = site:evaluate(fail_verdict('other.example'), { rcpt = { 'bob@example.com' }, ip = '203.0.113.50',
      evidence = 'rbl' }, st)
    assert.equal('folder', d.action)
    assert.equal('quarantine', d.disposition)
    assert.equal('trusted_forwarder', d.reasons[1].type)

    assert.is_true(cli('del domain spoofed-but-wanted.example', redis_addr))
    d = site:evaluate(fail_verdict('spoofed-but-wanted.example'), { rcpt = { 'bob@example.com' },
      evidence = 'rbl' }, st)
    assert.equal('reject', d.action)
    st:close()
  end)

  it('lists entries with their TTL through the index', function()
    local st = store.redis{ host = host, port = port, prefix = PREFIX }
    assert.is_true(st:add('domain:short.example', { at_most = 'none' }, 1))
    local items = assert(st:list('set'))
    assert.equal(1, #items)
    assert.equal('score-only', items[1].set)
    assert.is_true(items[1].ttl > 0 and items[1].ttl <= 3600)
    sleep(2.1)
    for _, it in ipairs(assert(st:list('domain'))) do
      assert.is_not_equal('short.example', it.value)
    end
    st:close()
  end)

  it('fetches every key of a decision in one round trip', function()
    local st = store.redis{ host = host, port = port, prefix = PREFIX }
    local ctx = { rcpt = { 'alice@example.com', 'bob@example.com' }, ip = '2001:db8::25',
      list_id = '<dev.lists.example.net>' }
    local v = fail_verdict('news.example.org', 'example.org')
    local keys = site:lookups(v, ctx)
    assert.is_true(#keys > 30)
    assert(admin:command('CONFIG', 'RESETSTAT'))
    site:evaluate(v, ctx, st)
    local calls = commandstats(admin)
    assert.equal(1, calls.mget)
    local others = 0
    for name, n in pairs(calls) do
      if name ~= 'mget' and name ~= 'info' and not name:find('^config') then others = others + n end
    end
    -- The store's connection was opened by this evaluation: no AUTH/SELECT configured.
    assert.equal(0, others)
    st:close()
  end)
end)

describe('override store when Redis dies and comes back', function()
  local base = tonumber(os.getenv('DMARC_TEST_REDIS_PORT') or '')
  if not base then
    pending('DMARC_TEST_REDIS_PORT is not set (run through tests/integration/run)')
    return
  end
  -- A server of this spec's own, on a port beside the runner's, in a temporary directory.
  local own_port = base + 11
  local dir = os.tmpname()
  local pid

  local function start()
    -- A server killed with SIGKILL leaves its pid file behind: never read a stale one.
    os.remove(dir .. '/redis.pid')
    pid = nil
    local cmd = string.format("redis-server --bind 127.0.0.1 --port %d --dir %s --appendonly yes " ..
      "--appendfsync always --save '' --daemonize yes --pidfile %s/redis.pid --logfile %s/redis.log",
      own_port, dir, dir, dir)
    assert(sh(cmd))
    local c = assert(connect_retry(own_port), 'redis-server did not come up')
    -- Accepting connections is not serving: wait until the append-only file is loaded
    -- (a loaded machine took seconds; going on while loading made MGET fail -LOADING).
    -- INFO's loading:0 was seen before a data command stopped meeting -LOADING: wait
    -- for a data command to be answered.
    local loaded = false
    for _ = 1, 300 do
      local info = c:command('INFO', 'persistence')
      if type(info) == 'string' and info:find('loading:0', 1, true)
          and type(c:command('DBSIZE')) == 'number' then
        loaded = true
        break
      end
      sleep(0.1)
    end
    c:close()
    assert(loaded, 'redis-server still loading its append-only file after 30 s')
    -- The daemon may accept connections before its pid file is written.
    for _ = 1, 50 do
      local f = io.open(dir .. '/redis.pid')
      if f then
        pid = tonumber(f:read('*l') or '')
        f:close()
      end
      if pid then return end
      sleep(0.1)
    end
    error('redis-server wrote no pid file')
  end

  local function kill(signal)
    assert(sh(string.format('kill -%s %d', signal, pid)))
    for _ = 1, 100 do
      if not sh(string.format('kill -0 %d 2>/dev/null', pid)) then
        pid = nil
        return
      end
      sleep(0.1)
    end
    error('redis-server ' .. pid .. ' did not stop')
  end

  setup(function()
    os.remove(dir)
    assert(sh('mkdir -p ' .. dir))
    assert(redis.connect{ host = '127.0.0.1', port = own_port, timeout = 0.2 } == nil,
      'port ' .. own_port .. ' is already taken')
    start()
  end)

  teardown(function()
    if pid then kill('TERM') end
    sh('rm -rf ' .. dir)
  end)

  it('applies the site defaults with a warning while Redis is down, and the overrides after', function()
    local own = '127.0.0.1:' .. own_port
    assert.is_true(cli('add org example.org --comment "known forwarder"', own))
    local logger, entries = capture_log()
    local site = assert(policy.load('examples/site.lua', { log = logger }))
    local now = 1000000
    local connects = 0
    local st = store.redis{ host = '127.0.0.1', port = own_port, prefix = PREFIX, timeout = 2,
      backoff = 30, clock = function() return now end, log = logger,
      connect = function(conf)
        connects = connects + 1
        return redis.connect(conf)
      end }
    local v = fail_verdict('news.example.org', 'example.org')
    local ctx = { rcpt = { 'bob@example.com' }, evidence = 'rbl' }

    local d = site:evaluate(v, ctx, st)
    assert.equal('accept', d.action)
    assert.equal('override', d.source)

    kill('KILL')   -- a crash, mid-run
    local ok
    ok, d = pcall(site.evaluate, site, v, ctx, st)
    assert.is_true(ok)
    assert.equal('reject', d.action)           -- the site's own rules: evidence, so reject
    assert.equal(1, #d.warnings)
    local warned = false
    for _, e in ipairs(entries) do
      if e.level == 'warn' then warned = true end
    end
    assert.is_true(warned)

    -- Within the backoff no connection is tried, so a dead Redis costs no timeout per message.
    local before = connects
    d = site:evaluate(v, ctx, st)
    assert.equal('reject', d.action)
    assert.equal(before, connects)

    start()   -- same directory: the append-only file brings the entry back
    now = now + 31
    d = site:evaluate(v, ctx, st)
    -- The warnings say why, should the override not come back (seen once on a loaded machine).
    assert.equal('accept', d.action, table.concat(d.warnings or {}, '; '))
    assert.equal('override', d.source)
    assert.same({}, d.warnings)
    st:close()
  end)

  it('returns an io error, never SIGPIPE, when writing to a server that died', function()
    local c = assert(connect_retry(own_port))
    kill('KILL')
    -- Megabytes: the write continues after the peer's reset, which raises EPIPE.
    local r, msg, code = c:command('SET', PREFIX .. 'big', ('v'):rep(8 * 1024 * 1024))
    assert.is_nil(r)
    assert.equal('string', type(msg))
    assert.equal('io', code)
    assert.is_true(c:is_broken())
    c:close()
    start()
  end)

  it('makes `dmarc override` exit 1 when Redis is down', function()
    kill('TERM')
    assert.is_false(cli('list', '127.0.0.1:' .. own_port))
    start()
    assert.is_true(cli('list', '127.0.0.1:' .. own_port))
  end)
end)
