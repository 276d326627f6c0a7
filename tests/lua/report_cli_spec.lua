-- `dmarc report`: dispatch, usage errors (exit 2, no traceback), the
-- pluggable subcommand table. Runs bin/dmarc; needs no Redis (usage errors
-- come before connecting; a dead Redis is exit 1).
local files = require 'dmarc.util.files'

local ROOT = os.getenv('PWD') or '.'
local BIN = os.getenv('DMARC_TEST_BIN') or (ROOT .. '/bin/dmarc') -- a luarocks tree's: tests/check-rockspec
local RUNTIME = type(jit) == 'table' and 'luajit' or 'lua5.4'

local function run(args, env)
  local p = io.popen((env or '') .. ' ' .. RUNTIME .. ' ' .. BIN .. ' report ' .. args
                     .. ' 2>&1; echo "__status=$?"')
  local out = p:read('*a')
  p:close()
  return tonumber(out:match('__status=(%d+)%s*$')), out
end

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  os.execute('mkdir -p ' .. p)
  return p
end

describe('dmarc report command', function()
  it('report_cli__help_and_usage', function()
    local st, out = run('--help')
    assert.equal(0, st)
    assert.truthy(out:find('generate', 1, true))
    st = run('')
    assert.equal(2, st)
  end)

  it('report_cli__help_lists_the_loaded_subcommands', function()
    local st, out = run('--help')
    assert.equal(0, st)
    for _, name in ipairs({ 'generate', 'send', 'ingest', 'summary', 'serve' }) do
      -- one line each: the name at the start of a line, then its description
      assert.truthy(out:find('\n  ' .. name .. ' +%a'), name)
    end
    assert.is_nil(out:find('not installed', 1, true))
    local common = require 'dmarc.cli.common'
    for _, sub in ipairs(common.REPORT_LOADED) do
      assert.is_table(require('dmarc.cli.report.' .. sub.name), sub.name)
    end
  end)

  it('report_cli__unknown_subcommand', function()
    local st, out = run('frobnicate')
    assert.equal(2, st)
    assert.is_nil(out:find('traceback', 1, true))
    assert.equal(2, (run('"../x"')))
  end)

  it('report_cli__usage_errors_come_before_redis', function()
    local dir = tmpdir()
    local id = ' --org-name R --email d@r.example --submitter r.example --redis 127.0.0.1:1'
    assert.equal(2, (run('generate' .. id)))                                   -- no --out
    assert.equal(2, (run('generate --out ' .. dir .. id .. ' --date 2025-13-40')))
    assert.equal(2, (run('generate --out ' .. dir .. id .. ' --from 2025-11-21 --to 2025-11-21')))
    assert.equal(2, (run('generate --out ' .. dir .. id .. ' --date 2025-11-21 --format xml')))
    assert.equal(2, (run('generate --out ' .. dir .. ' --date 2025-11-21 --redis 127.0.0.1:1')))
    -- a period that is not over yet
    assert.equal(2, (run('generate --out ' .. dir .. id .. ' --date 2999-01-01')))
    assert.equal(2, (run('generate --out ' .. dir .. id .. ' --date')))         -- value missing
    -- valid usage, Redis unreachable: a runtime error
    local st, out = run('generate --out ' .. dir .. id .. ' --date 2025-11-21')
    assert.equal(1, st)
    assert.is_nil(out:find('traceback', 1, true))
  end)

  it('report_cli__config_file_supplies_options', function()
    local dir = tmpdir()
    local conf = dir .. '/report.lua'
    assert(files.write(conf, "return { org_name = 'R', email = 'd@r.example', submitter = 'r.example',"
                          .. " redis = '127.0.0.1:1', out = '" .. dir .. "/out' }"))
    -- everything comes from the file: only Redis is missing
    assert.equal(1, (run('generate --date 2025-11-21 --config ' .. conf)))
    assert(files.write(conf, 'return 42'))
    assert.equal(2, (run('generate --date 2025-11-21 --config ' .. conf)))
    assert(files.write(conf, 'os.exit(3)'))
    assert.equal(2, (run('generate --date 2025-11-21 --config ' .. conf))) -- no globals in configs
  end)

  it('report_cli__other_subcommands_load_from_modules', function()
    local dir = tmpdir()
    os.execute('mkdir -p ' .. dir .. '/dmarc/cli/report')
    assert(files.write(dir .. '/dmarc/cli/report/hello.lua',
                          "return { run = function(args) print('hello ' .. (args[1] or '')) return 7 end }"))
    local lua_path = dir .. '/?.lua;' .. (os.getenv('LUA_PATH') or ';')
    local st, out = run('hello world', 'LUA_PATH="' .. lua_path .. '"')
    assert.equal(7, st)
    assert.truthy(out:find('hello world', 1, true))
  end)

  it('report_cli__parse_time', function()
    local cli = require 'dmarc.cli.common'
    assert.equal(1763683200, cli.parse_time('2025-11-21'))
    assert.equal(1763683200, cli.parse_time('1763683200'))
    assert.is_nil(cli.parse_time('21/11/2025'))
  end)
end)
