--- Paths and process helpers shared by the busted specs.
local M = {}

--- The runtime running the specs, as a command name: 'luajit' or 'lua5.4'.
M.runtime = (type(jit) == 'table') and 'luajit' or 'lua5.4'

--- The repository root (busted runs from it: .busted sets ROOT relative to it).
M.root = os.getenv('PWD') or '.'

--- Where `make lua` put this runtime's modules (make check-lua sets DMARC_BUILD).
M.build = os.getenv('DMARC_BUILD') or (M.root .. '/build/' .. M.runtime)

-- Make sure the module built for this runtime is found first, also when
-- busted is run by hand without --cpath.
if not package.cpath:find(M.build, 1, true) then
  package.cpath = M.build .. '/?.so;' .. package.cpath
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.shell_quote = shell_quote

--- A fresh temporary file name (removed by the caller).
function M.tmpname()
  return os.tmpname()
end

function M.read_file(path)
  local f = assert(io.open(path, 'rb'))
  local s = f:read('*a')
  f:close()
  return s
end

function M.write_file(path, s)
  local f = assert(io.open(path, 'wb'))
  f:write(s)
  f:close()
end

--- Run a shell command; returns its stdout and exit status (a number).
function M.run(cmd)
  local p = assert(io.popen(cmd .. '; echo "__status=$?"', 'r'))
  local out = p:read('*a')
  p:close()
  local status = tonumber(out:match('__status=(%d+)%s*$'))
  out = out:gsub('__status=%d+%s*$', '')
  return out, status
end

--- The command line of `dmarc <args>` with this runtime and this build.
--- The dmarc script: bin/dmarc, or DMARC_TEST_BIN, the one a `luarocks make` tree installed
-- (tests/check-rockspec runs the suites against that tree, its paths in LUA_PATH/LUA_CPATH).
M.bin = os.getenv('DMARC_TEST_BIN') or './bin/dmarc'

function M.dmarc_cmd(args)
  return string.format('cd %s && DMARC_BUILD=%s %s %s %s', shell_quote(M.root),
    shell_quote(M.build), M.runtime, shell_quote(M.bin), args)
end

--- Lines of a string (without newlines).
function M.lines(s)
  local t = {}
  for line in s:gmatch('([^\n]*)\n') do t[#t + 1] = line end
  return t
end

--- Sleep a little (for polling a spawned process).
function M.nap()
  os.execute('sleep 0.05')
end

return M
