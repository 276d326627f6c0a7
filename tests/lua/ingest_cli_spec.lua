-- `dmarc report ingest|summary|serve` as processes, without a Redis server:
-- help, usage errors (exit 2, one clear line, nothing on stdout), and an
-- unreachable Redis (exit 1). Runs against real Redis in
-- tests/integration/ingest_redis_spec.lua.
local env = require 'test_env'

-- Port 1 on loopback: nothing listens there, the connection is refused.
local DEAD = '--redis 127.0.0.1:1 '

local function dmarc(args)
  local errfile = env.tmpname()
  local out, status = env.run(env.dmarc_cmd(args) .. ' 2>' .. env.shell_quote(errfile)
                              .. ' </dev/null')
  local err = env.read_file(errfile)
  os.remove(errfile)
  return out, err, status
end

local function usage_error(args, what)
  local out, err, status = dmarc(args)
  assert.equal(2, status)
  assert.equal('', out)
  assert.truthy(err:find('^dmarc report %a+: '), err)
  assert.falsy(err:find('traceback', 1, true))
  if what then assert.truthy(err:find(what, 1, true), err) end
end

describe('dmarc report ingest (no server)', function()
  it('prints its help', function()
    local out, _, status = dmarc('report ingest --help')
    assert.equal(0, status)
    assert.truthy(out:find('usage: dmarc report ingest', 1, true))
  end)

  it('refuses bad usage with exit 2', function()
    usage_error('report ingest', 'no PATH')
    usage_error('report ingest --bogus x', 'unknown option')
    usage_error('report ingest --own "example.com,exa*mple.com" x', 'invalid domain')
    usage_error('report ingest --retention-days 0 x', 'retention')
    usage_error('report ingest --redis-prefix "a*b" x', 'prefix')
    usage_error('report ingest --hash-envelope-to x', 'salt')
  end)

  it('exits 1 when Redis cannot be reached', function()
    local _, err, status = dmarc('report ingest ' .. DEAD .. 'tests/fixtures/reports/rfc9990.xml')
    assert.equal(1, status)
    assert.truthy(err:find('Redis', 1, true))
  end)
end)

describe('dmarc report summary (no server)', function()
  it('refuses bad usage with exit 2', function()
    usage_error('report summary', '--domain')
    usage_error('report summary --domain "{x}"', '--domain')
    usage_error('report summary --domain example.com --days 0', '--days')
    usage_error('report summary --domain example.com --until 22-11-2025', '--until')
    usage_error('report summary --domain example.com --source nope', '--source')
  end)

  it('exits 1 when Redis cannot be reached', function()
    local _, _, status = dmarc('report summary ' .. DEAD .. '--domain example.com')
    assert.equal(1, status)
  end)
end)

describe('dmarc report serve (no server)', function()
  it('refuses bad usage with exit 2', function()
    usage_error('report serve --listen nowhere', '--listen')
    usage_error('report serve --days -1', '--days')
    usage_error('report serve extra', 'unexpected')
  end)
end)
