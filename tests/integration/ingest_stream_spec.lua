-- Streamed ingest against a real redis-server: each form a report arrives in (a .zip, gzip
-- inside gzip, an e-mail with a base64 attachment, that e-mail in an mbox, standard input)
-- near the 64 MiB input limit is ingested by a child process whose peak RSS (VmHWM) stays
-- under 64 MB: no form holds the input, or the XML inside it, whole. Memory is what is
-- asserted, never time. Skipped under ASan and valgrind (their own memory is counted).
local redis = require 'dmarc.redis'

local REDIS = os.getenv('DMARC_TEST_REDIS') or '127.0.0.1:16379'
local HOST, PORT = REDIS:match('^(.+):(%d+)$')
local ROOT = os.getenv('PWD') or '.'
local MB = 1024 * 1024
local LIMIT_KB = 64 * 1000 -- 64 MB

local function sh(cmd)
  local ok = os.execute(cmd)
  assert(ok == true or ok == 0, cmd)
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- A report of about `bytes` of XML: records carrying a long reason comment (kept clipped),
-- so the size is reached with few records and the parse stays quick.
local function write_report(path, bytes)
  local f = assert(io.open(path, 'wb'))
  f:write('<?xml version="1.0" encoding="UTF-8"?>\n<feedback xmlns="urn:ietf:params:xml:ns:'
          .. 'dmarc-2.0"><report_metadata><org_name>Big Receiver</org_name><email>r@example.net'
          .. '</email><report_id>stream-1</report_id><date_range><begin>1763683200</begin><end>'
          .. '1763769599</end></date_range></report_metadata><policy_published><domain>'
          .. 'example.com</domain><p>reject</p></policy_published>\n')
  -- Comments that do not repeat within deflate's 32 KiB window: the report compresses
  -- about as a real one does, far from the 200:1 bomb ratio.
  local pool, hex = {}, '0123456789abcdef'
  for i = 1, 64 do
    local c = {}
    for j = 1, 3000 do
      local k = (i * 7919 + j * j * 31 + j * i) % 16 + 1
      c[j] = hex:sub(k, k)
    end
    pool[i] = table.concat(c)
  end
  local size, n = 0, 0
  -- Bound: stops at the size asked for.
  while size < bytes do
    n = n + 1
    local r = string.format('<record><row><source_ip>10.%d.%d.%d</source_ip><count>%d</count>'
      .. '<policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>fail</spf>'
      .. '<reason><type>other</type><comment>%s</comment></reason></policy_evaluated></row>'
      .. '<identifiers><header_from>example.com</header_from></identifiers><auth_results>'
      .. '<dkim><domain>example.com</domain><result>pass</result></dkim><spf><domain>'
      .. 'example.com</domain><result>fail</result></spf></auth_results></record>\n',
      math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256, n % 9 + 1, pool[n % 64 + 1])
    f:write(r)
    size = size + #r
  end
  f:write('</feedback>\n')
  f:close()
  return n
end

local function write_email(path, attachment, name, ctype)
  local out = assert(io.open(path, 'wb'))
  out:write('From: reports@example.net\r\nTo: dmarc@example.com\r\nSubject: Report\r\n'
            .. 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XyZ"\r\n\r\n'
            .. '--XyZ\r\nContent-Type: text/plain\r\n\r\nA report.\r\n--XyZ\r\nContent-Type: '
            .. ctype .. '; name="' .. name .. '"\r\nContent-Transfer-Encoding: base64\r\n'
            .. 'Content-Disposition: attachment; filename="' .. name .. '"\r\n\r\n')
  out:close()
  sh('base64 -w 76 ' .. q(attachment) .. " | sed 's/$/\\r/' >> " .. q(path))
  out = assert(io.open(path, 'ab'))
  out:write('--XyZ--\r\n')
  out:close()
end

-- Ingests `input` (a path, or '-' with stdin from `stdin`) in a child process; its stats and
-- peak RSS in kB.
local function ingest_child(input, stdin, prefix)
  local script = os.tmpname()
  local f = assert(io.open(script, 'wb'))
  f:write(string.format([[
    local redis = require 'dmarc.redis'
    local ingest = require 'dmarc.owner.ingest'
    local conn = assert(redis.connect { host = %q, port = %s, timeout = 60 })
    local stats = ingest.ingest_files(conn, { %q }, { prefix = %q, now = 1763800000 })
    local s = assert(io.open('/proc/self/status')):read('a')
    io.write(stats.stored, ' ', stats.records, ' ', stats.errors, ' ',
             tostring((stats.failures[1] or {}).message), ' ', s:match('VmHWM:%%s*(%%d+)'), '\n')
  ]], HOST, PORT, input, prefix))
  f:close()
  local p = assert(io.popen(string.format('cd %s && %s %s%s 2>&1', q(ROOT),
    (type(jit) == 'table') and 'luajit' or 'lua5.4', q(script),
    stdin and (' < ' .. q(stdin)) or '')))
  local out = p:read('a')
  p:close()
  os.remove(script)
  local stored, records, errors, msg, hwm = out:match('^(%d+) (%d+) (%d+) (.-) (%d+)\n$')
  assert(stored, out)
  return { stored = tonumber(stored), records = tonumber(records), errors = tonumber(errors),
           message = msg, hwm_kb = tonumber(hwm) }
end

local instrumented = (os.getenv('LD_PRELOAD') or ''):find('asan') or os.getenv('DMARC_VALGRIND')

describe('ingest in bounded memory (real redis-server): a 64 MiB input of each form', function()
  local dir, records
  local conn
  setup(function()
    dir = os.tmpname()
    os.remove(dir)
    sh('mkdir -m 700 ' .. q(dir))
    -- 46 MiB of XML: 62 MiB as a base64 attachment, under the 64 MiB input limit.
    records = write_report(dir .. '/r.xml', 46 * MB)
    conn = assert(redis.connect { host = HOST, port = tonumber(PORT), timeout = 5 })
  end)
  teardown(function()
    sh('rm -rf ' .. q(dir))
    if conn then conn:close() end
  end)

  local n = 0
  local function check(what, input, stdin)
    if instrumented then
      pending('peak RSS is not measured under ASan or valgrind')
      return
    end
    n = n + 1
    local prefix = string.format('it:stream%d:%d:', n, os.time() % 100000)
    local r = ingest_child(input, stdin, prefix)
    assert.equal(0, r.errors, what .. ': ' .. tostring(r.message))
    assert.equal(1, r.stored, what)
    assert.equal(records, r.records, what)
    assert.is_true(r.hwm_kb < LIMIT_KB, what .. ': peak RSS ' .. r.hwm_kb .. ' kB')
    local keys = conn:command('KEYS', prefix .. '*')
    assert.truthy(#keys > 0)
    conn:command('DEL', (table.unpack or unpack)(keys))
  end

  it('a .zip file (the report entry inflated into a temporary file)', function()
    sh('python3 -c ' .. q('import sys, zipfile\n'
       .. 'with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:\n'
       .. '    z.write(sys.argv[2], "report.xml")') .. ' ' .. q(dir .. '/r.zip') .. ' '
       .. q(dir .. '/r.xml'))
    check('zip', dir .. '/r.zip')
    os.remove(dir .. '/r.zip')
  end)

  it('gzip inside gzip (one layer into a temporary file)', function()
    sh('gzip -n -c ' .. q(dir .. '/r.xml') .. ' | gzip -n -c > ' .. q(dir .. '/r.xml.gz.gz'))
    check('gzip inside gzip', dir .. '/r.xml.gz.gz')
    os.remove(dir .. '/r.xml.gz.gz')
  end)

  it('an e-mail of 62 MiB with the XML as a base64 attachment, and that e-mail in an mbox',
     function()
    local eml = dir .. '/r.eml'
    write_email(eml, dir .. '/r.xml', 'report.xml', 'text/xml')
    local size = assert(io.open(eml, 'rb')):seek('end')
    assert.truthy(size > 60 * MB and size < 64 * MB, size)
    check('e-mail', eml)
    local mbox = dir .. '/r.mbox'
    sh('(echo "From reports@example.net Mon Dec  7 10:00:00 2026"; cat ' .. q(eml) .. ') > '
       .. q(mbox))
    check('mbox', mbox)
    os.remove(eml)
    os.remove(mbox)
  end)

  it('standard input (copied into a temporary file)', function()
    check('stdin', '-', dir .. '/r.xml')
  end)
end)
