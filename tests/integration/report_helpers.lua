-- Helpers for the report integration specs: servers of their own on
-- loopback ports (redis-server, a Redis Cluster, the test SMTP server),
-- started here and stopped by PID; paths; running the CLI.
local socket = require 'socket'
local files = require 'dmarc.util.files'
local text = require 'dmarc.util.text'

local M = {}

M.ROOT = os.getenv('PWD') or '.'
M.BIN = M.ROOT .. '/bin/dmarc'
M.SCHEMAS = M.ROOT .. '/tests/fixtures/schemas'

function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  os.execute('mkdir -p ' .. p)
  return p
end

function M.wait_port(port, tries)
  for _ = 1, tries or 100 do
    local s = socket.tcp()
    s:settimeout(0.2)
    local ok = s:connect('127.0.0.1', port)
    s:close()
    if ok then return true end
    socket.sleep(0.1)
  end
  return false
end

function M.wait_closed(port, tries)
  for _ = 1, tries or 100 do
    local s = socket.tcp()
    s:settimeout(0.2)
    local ok = s:connect('127.0.0.1', port)
    s:close()
    if not ok then return true end
    socket.sleep(0.1)
  end
  return false
end

-- Run a shell command; status (0 = success) and its standard output.
function M.run(cmd)
  local p = io.popen(cmd .. '; echo "__status=$?"')
  local out = p:read('*a')
  p:close()
  local status = tonumber(out:match('__status=(%d+)%s*$'))
  return status, (out:gsub('__status=%d+%s*$', ''))
end

-- Start a background process; its PID.
function M.spawn(cmd)
  local _, out = M.run('(' .. cmd .. ') >/dev/null 2>&1 & echo $!')
  return tonumber(out:match('(%d+)'))
end

function M.stop(pid)
  if not pid then return end
  os.execute('kill -TERM ' .. pid .. ' 2>/dev/null')
  for _ = 1, 100 do
    if os.execute('kill -0 ' .. pid .. ' 2>/dev/null') ~= true
        and os.execute('kill -0 ' .. pid .. ' 2>/dev/null') ~= 0 then
      return
    end
    socket.sleep(0.1)
  end
  os.execute('kill -KILL ' .. pid .. ' 2>/dev/null')
end

--- A redis-server of our own with AOF (fsync always, so a restart keeps
-- every acknowledged write). Returns its PID.
function M.start_redis(port, dir, extra)
  os.execute('mkdir -p ' .. dir)
  local pidfile = dir .. '/redis.pid'
  os.remove(pidfile)
  local status = M.run('redis-server --bind 127.0.0.1 --port ' .. port .. ' --dir ' .. dir
                       .. ' --appendonly yes --appendfsync always --save "" --daemonize yes'
                       .. ' --logfile ' .. dir .. '/redis.log --pidfile ' .. pidfile
                       .. ' ' .. (extra or ''))
  assert(status == 0, 'redis-server did not start')
  assert(M.wait_port(port), 'redis-server not listening on ' .. port)
  local pid
  for _ = 1, 50 do
    pid = tonumber((files.read(pidfile) or ''):match('%d+'))
    if pid then break end
    socket.sleep(0.1)
  end
  return pid
end

function M.start_smtpd(port, maildir, cert, key, auth)
  local cmd = '/usr/bin/python3 ' .. M.ROOT .. '/tests/integration/report_smtpd.py ' .. port .. ' '
    .. maildir
  if cert then cmd = cmd .. ' ' .. cert .. ' ' .. key end
  if auth then cmd = cmd .. ' ' .. auth end
  local pid = M.spawn('exec ' .. cmd)
  assert(M.wait_port(port), 'test SMTP server not listening on ' .. port)
  return pid
end

--- The RFC 7489 schema with the two fixes it needs to compile and to accept
-- IPv4 (see tests/lua/report_xml_spec.lua).
function M.schema_7489(dir)
  local src = files.read(M.SCHEMAS .. '/dmarc-0.1-rfc7489.xsd')
  src = src:gsub('targetNamespace="http://dmarc.org/dmarc%-xml/0.1">',
                 'targetNamespace="http://dmarc.org/dmarc-xml/0.1" xmlns="http://dmarc.org/dmarc-xml/0.1">')
  src = src:gsub('(<xs:pattern value=")([^"]*)(")', function(a, v, b) return a .. v:gsub('%s+', '') .. b end)
  local path = dir .. '/rfc7489-fixed.xsd'
  assert(files.write(path, src))
  return path
end

function M.xmllint(schema, file)
  local status = M.run('xmllint --noout --schema ' .. text.shell_quote(schema) .. ' '
                       .. text.shell_quote(file) .. ' 2>&1')
  return status == 0
end

--- Decompress a .xml.gz to text.
function M.gunzip(path)
  local _, out = M.run('gzip -dc ' .. text.shell_quote(path))
  return out
end

--- Files of a directory matching a Lua pattern, sorted.
function M.ls(dir, pattern)
  local out = {}
  local p = io.popen('ls -1 ' .. text.shell_quote(dir) .. ' 2>/dev/null')
  for name in p:lines() do
    if not pattern or name:match(pattern) then out[#out + 1] = name end
  end
  p:close()
  table.sort(out)
  return out
end

return M
