-- One command line: every command that talks to Redis takes the same Redis options and
-- documents them the same way in its --help, every command refuses an unknown option (exit
-- 2, one sentence, no traceback), `dmarc --help` gives one line per command, `dmarc --version`
-- the library's version, and the man pages are the --help text (tools/gen-man).
local env = require 'test_env'

local function dmarc(args)
  local errfile = env.tmpname()
  local out, status = env.run(env.dmarc_cmd(args) .. ' 2>' .. env.shell_quote(errfile) .. ' </dev/null')
  local err = env.read_file(errfile)
  os.remove(errfile)
  return out, err, status
end

local REDIS_COMMANDS = {
  'check', 'override list', 'report generate', 'report send', 'report ingest',
  'report summary', 'report serve',
}
local REDIS_OPTIONS = {
  '--redis ADDR', '--redis-cluster H:P[,H:P]', '--redis-prefix P', '--redis-db N',
  '--redis-timeout SECONDS', '--redis-password-file F',
}

describe('the dmarc command line', function()
  it('cli_common__every_redis_command_documents_the_same_redis_options', function()
    for _, cmd in ipairs(REDIS_COMMANDS) do
      local out, _, status = dmarc(cmd .. ' --help')
      assert.equal(0, status, cmd)
      for _, opt in ipairs(REDIS_OPTIONS) do
        assert.truthy(out:find(opt, 1, true), cmd .. ': ' .. opt)
      end
      assert.truthy(out:find('(default 2)', 1, true), cmd .. ': the same timeout default')
    end
  end)

  it('cli_common__help_is_per_subcommand', function()
    local gen = dmarc('report generate --help')
    local send = dmarc('report send --help')
    assert.truthy(gen:find('^usage: dmarc report generate'))
    assert.truthy(send:find('^usage: dmarc report send'))
    assert.is_nil(gen:find('--smtp HOST:PORT', 1, true)) -- send's options are not generate's
    assert.truthy(send:find('--smtp HOST:PORT', 1, true))
  end)

  it('cli_common__unknown_options_are_errors_everywhere', function()
    for _, cmd in ipairs({ 'check', 'eval', 'inspect example.com', 'override list', 'report generate',
                           'report send', 'report ingest', 'report summary', 'report serve' }) do
      local _, err, status = dmarc(cmd .. ' --no-such-option x')
      assert.equal(2, status, cmd)
      assert.truthy(err:find('^dmarc [%a ]+: unknown %a+ "?%-%-no%-such%-option'), cmd .. ': ' .. err)
      assert.is_nil(err:find('traceback', 1, true))
    end
  end)

  it('cli_common__old_redis_spellings_are_gone', function()
    for _, case in ipairs({ 'override list --prefix x:', 'override list --timeout 1', 'override list --db 1',
                            'report summary --domain example.com --prefix x:',
                            'report generate --cluster 127.0.0.1:1' }) do
      local _, err, status = dmarc(case)
      assert.equal(2, status, case)
      assert.truthy(err:find('unknown option', 1, true), case .. ': ' .. err)
    end
  end)

  it('cli_common__config_files_refuse_unknown_keys', function()
    local conf = env.tmpname()
    env.write_file(conf, "return { prefix = 'x:' }")
    local _, err, status = dmarc('report summary --domain example.com --config ' .. env.shell_quote(conf))
    assert.equal(2, status)
    assert.truthy(err:find('unknown key prefix', 1, true), err)
    _, err, status = dmarc('check --report-config ' .. env.shell_quote(conf) .. ' examples/pass.eml')
    assert.equal(2, status)
    assert.truthy(err:find('unknown key prefix', 1, true), err)
    os.remove(conf)
  end)

  it('cli_common__redis_option_errors_are_sentences', function()
    local _, err, status = dmarc('override list --redis-db x')
    assert.equal(2, status)
    assert.truthy(err:find('--redis-db must be a database number', 1, true), err)
    _, err, status = dmarc('report summary --domain example.com --redis 127.0.0.1:1 --redis-timeout 1')
    assert.equal(1, status)
    assert.truthy(err:find('cannot connect to Redis at 127.0.0.1:1: ', 1, true), err)
    _, err, status = dmarc('override list --redis-password-file /nonexistent/password')
    assert.equal(2, status)
    assert.truthy(err:find('cannot read the Redis password file', 1, true), err)
    assert.is_nil(err:find('(io)', 1, true))
  end)

  it('cli_common__top_level_help_and_version', function()
    local out, _, status = dmarc('--help')
    assert.equal(0, status)
    for _, name in ipairs({ 'check', 'eval', 'inspect', 'override', 'report' }) do
      assert.truthy(out:find('\n  ' .. name .. ' +%a'), name) -- one line: name, then what it does
    end
    out, _, status = dmarc('--version')
    assert.equal(0, status)
    assert.equal('dmarc ' .. require('dmarc.core')._VERSION .. '\n', out)
  end)

  it('cli_common__man_pages_are_the_help_text', function()
    local dir = env.tmpname()
    os.remove(dir)
    -- As `make man` runs it: bin/dmarc on Lua 5.4 with this tree's build.
    local _, status = env.run('cd ' .. env.shell_quote(env.root) .. ' && DMARC_BUILD=build/lua5.4'
      .. ' lua5.4 tools/gen-man bin/dmarc ' .. env.shell_quote(dir))
    assert.equal(0, status)
    local page = env.read_file(dir .. '/dmarc-report-send.1')
    assert.truthy(page:find('.SH NAME\ndmarc\\-report\\-send \\- ', 1, true))
    assert.truthy(page:find('\\-\\-redis\\-password\\-file F', 1, true))
    assert.truthy(env.read_file(dir .. '/dmarc.1'):find('.BR dmarc\\-check (1)', 1, true))
    os.execute('rm -rf ' .. env.shell_quote(dir))
  end)
end)
