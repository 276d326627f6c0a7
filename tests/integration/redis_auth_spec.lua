-- Every command against a redis-server that requires a password (`requirepass`), with the
-- same Redis options everywhere: the password from --redis-password-file or
-- $DMARC_REDIS_PASSWORD reaches `check`, `override` and each `report` subcommand, and
-- without it each fails with a sentence naming the server, never silently.
local h = dofile('tests/integration/report_helpers.lua')
local socket = require 'socket'
local files = require 'dmarc.util.files'
local util_text = require 'dmarc.util.text'

local PORT = 16393
local ADDR = '127.0.0.1:' .. PORT
local PASSWORD = 'it-auth-secret'
local PREFIX = 'itauth:'
local IDENTITY = ' --org-name "Example Receiver" --email dmarc@receiver.example'
  .. ' --submitter receiver.example'
local function q(s) return util_text.shell_quote(s) end

describe('every command against a Redis that requires a password', function()
  local dir, pid, pwfile, opts

  -- `dmarc ARGS` with the Redis options; status, stdout and stderr together.
  local function dmarc(args, env)
    return h.run((env or '') .. ' ' .. h.BIN .. ' ' .. args .. ' 2>&1')
  end

  setup(function()
    dir = h.tmpdir()
    pid = h.start_redis(PORT, dir .. '/redis', '--requirepass ' .. PASSWORD)
    pwfile = dir .. '/password'
    assert(files.write(pwfile, PASSWORD .. '\n'))
    opts = ' --redis ' .. ADDR .. ' --redis-prefix ' .. PREFIX .. ' --redis-password-file ' .. q(pwfile)
  end)

  teardown(function()
    h.stop(pid)
    os.execute('rm -rf ' .. q(dir))
  end)

  it('without the password every command fails and says why', function()
    local bare = ' --redis ' .. ADDR .. ' --redis-prefix ' .. PREFIX
    for _, args in ipairs({ 'override list' .. bare,
                            'report generate --quiet --force --date 2025-11-21 --out ' .. q(dir .. '/x')
                              .. IDENTITY .. bare,
                            'report send --quiet --sendmail true --out ' .. q(dir .. '/x') .. IDENTITY
                              .. bare,
                            'report summary --domain example.com' .. bare,
                            'report ingest tests/fixtures/reports/rfc9990.xml' .. bare }) do
      local status, out = dmarc(args, 'env -u DMARC_REDIS_PASSWORD')
      assert.are_not.equal(0, status, args)
      assert.truthy(out:lower():find('auth', 1, true), args .. ': ' .. out)
      assert.is_nil(out:find('traceback', 1, true), out)
      assert.is_nil(out:find('(io)', 1, true), out)
    end
  end)

  it('dmarc check writes its report row with the password from the file', function()
    local status, out = dmarc('check --zone examples/example.zone --roll 0 --ip 203.0.113.200'
      .. ' --mail-from ceo@example.com --time 1763683300' .. opts .. ' examples/spoofed.eml')
    assert.is_true(status ~= 2 and status ~= 70, out) -- the decision's status, not an error
    assert.is_nil(out:find('Redis', 1, true), out) -- no "Redis is down" warning
    local _, keys = h.run('redis-cli -p ' .. PORT .. ' -a ' .. PASSWORD .. ' --no-auth-warning'
      .. ' --scan --pattern ' .. q(PREFIX .. '*'))
    assert.truthy(keys:find(PREFIX, 1, true), 'no key written: ' .. keys)
  end)

  it('dmarc override adds and lists with --redis-password-file and with $DMARC_REDIS_PASSWORD', function()
    local status, out = dmarc('override add domain auth.example --reason local_policy' .. opts)
    assert.equal(0, status, out)
    status, out = dmarc('override list --redis ' .. ADDR .. ' --redis-prefix ' .. PREFIX,
                        'DMARC_REDIS_PASSWORD=' .. PASSWORD)
    assert.equal(0, status, out)
    assert.truthy(out:find('auth.example', 1, true), out)
  end)

  it('dmarc report generate, send, ingest and summary authenticate', function()
    local out_dir = dir .. '/out'
    local status, out = dmarc('report generate --quiet --force --date 2025-11-21 --out ' .. q(out_dir)
      .. IDENTITY .. opts)
    assert.equal(0, status, out)
    local dns = dir .. '/dns.json'
    assert(files.write(dns, '{}'))
    status, out = dmarc('report send --quiet --sendmail "cat >/dev/null" --dns-json ' .. q(dns)
      .. ' --out ' .. q(out_dir) .. IDENTITY .. opts)
    assert.equal(0, status, out)
    status, out = dmarc('report ingest --quiet --json tests/fixtures/reports/rfc9990.xml' .. opts)
    assert.equal(0, status, out)
    status, out = dmarc('report summary --json --domain example.com' .. opts)
    assert.equal(0, status, out)
  end)

  it('dmarc report serve reads the ingested reports with the password', function()
    local port = 16394
    local spid = h.spawn('exec ' .. h.BIN .. ' report serve --quiet --listen 127.0.0.1:' .. port
      .. ' --max-requests 2' .. opts)
    assert.is_true(h.wait_port(port), 'serve did not listen')
    local c = assert(socket.connect('127.0.0.1', port))
    c:settimeout(10)
    c:send('GET / HTTP/1.0\r\nHost: 127.0.0.1:' .. port .. '\r\n\r\n')
    local status_line = c:receive('*l')
    c:close()
    h.stop(spid)
    assert.truthy(status_line and status_line:find(' 200 ', 1, true), tostring(status_line))
  end)
end)
