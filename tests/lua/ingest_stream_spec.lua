-- Streamed ingest: a report file is read a window at a time (dmarc.xml.map reads with
-- pread, never a mapping), so a file cut short by another process while it is parsed fails
-- that input ('io', a failure line, a non-zero exit) where a mapping's pages past the new
-- end would have killed the process with SIGBUS. Each case runs in a child process, so a
-- signal fails the case instead of the suite.
local env = require 'test_env'

local NS = 'urn:ietf:params:xml:ns:dmarc-2.0'

-- A report of n records whose rows differ (pseudo-random addresses and counts), so that
-- it compresses like a real one, not to nothing.
local function report(n)
  local parts = { '<?xml version="1.0"?><feedback xmlns="' .. NS .. '"><report_metadata>'
                  .. '<org_name>Receiver T</org_name><email>r@example.net</email>'
                  .. '<report_id>t-1</report_id><date_range><begin>1763683200</begin>'
                  .. '<end>1763769599</end></date_range></report_metadata><policy_published>'
                  .. '<domain>example.com</domain><p>reject</p></policy_published>' }
  local seed = 12345
  local function rand(m)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % m
  end
  for _ = 1, n do
    parts[#parts + 1] = string.format(
      '<record><row><source_ip>10.%d.%d.%d</source_ip><count>%d</count><policy_evaluated>'
      .. '<disposition>none</disposition><dkim>pass</dkim><spf>fail</spf></policy_evaluated>'
      .. '</row><identifiers><header_from>example.com</header_from></identifiers>'
      .. '<auth_results><dkim><domain>example.com</domain><result>pass</result></dkim>'
      .. '<spf><domain>mail.example.net</domain><result>fail</result></spf></auth_results>'
      .. '</record>', rand(256), rand(256), rand(256), rand(100000) + 1)
  end
  parts[#parts + 1] = '</feedback>\n'
  return table.concat(parts)
end

-- Runs a Lua chunk in a child process of this runtime and build; returns its output and
-- exit status (a signal shows as 128 + its number).
local function child(code, ...)
  local script = env.tmpname()
  env.write_file(script, code)
  local args = {}
  for i, a in ipairs({ ... }) do args[i] = env.shell_quote(a) end
  local out, status = env.run(string.format(
    'cd %s && LUA_PATH=%s LUA_CPATH=%s %s %s %s 2>&1', env.shell_quote(env.root),
    env.shell_quote('./lua/?.lua;./tests/lua/helpers/?.lua;;'),
    env.shell_quote(env.build .. '/?.so;;'), env.runtime, env.shell_quote(script),
    table.concat(args, ' ')))
  os.remove(script)
  return out, status
end

local function gzip_file(src, dst)
  assert(os.execute('gzip -n -c ' .. env.shell_quote(src) .. ' > ' .. env.shell_quote(dst)))
end

describe('dmarc.xml.map: a file cut short while it is read', function()
  local xml_path, gz_path
  setup(function()
    xml_path = env.tmpname()
    env.write_file(xml_path, report(100000))
    gz_path = env.tmpname()
    gzip_file(xml_path, gz_path)
  end)
  teardown(function()
    os.remove(xml_path)
    os.remove(gz_path)
  end)

  -- Reads one batch of records, truncates the file, reads on: the pass must end in a
  -- failure, and the process must live to say so.
  local CUT = [[
    local x = require 'dmarc.xml'
    local path, inflate = arg[1], arg[2] ~= 'plain' and arg[2] or nil
    local doc = assert(x.map(path, { inflate = inflate }))
    local nxt = assert(x.records(doc, { batch = 10 }))
    assert(#assert(nxt()) == 10)
    assert(io.open(path, 'wb')):close()
    for _ = 1, 1e6 do
      local batch, msg, code = nxt()
      if not batch then
        io.write(tostring(code), '|', tostring(msg), '\n')
        break
      end
    end
    -- A pass begun after the cut reads the file's new end as a short read too.
    io.write(tostring(select(3, x.parse(doc))), '\n')
    doc:close()
    io.write(tostring(select(3, x.parse(doc))), '|', tostring(select(2, x.parse(doc))), '\n')
  ]]

  for _, case in ipairs({ { 'plain XML', 'plain' }, { 'gzip', 'gzip' } }) do
    it('fails the pass with io for ' .. case[1] .. ', never the process (SIGBUS)', function()
      local copy = env.tmpname()
      assert(os.execute('cp ' .. env.shell_quote(case[2] == 'gzip' and gz_path or xml_path)
                        .. ' ' .. env.shell_quote(copy)))
      local out, status = child(CUT, copy, case[2])
      os.remove(copy)
      assert.equal(0, status, out)
      assert.equal('io|file cut short while it was read\nio\nio|document closed\n', out)
    end)
  end
end)

describe('ingest: a report file cut short while it is ingested', function()
  it('is a failure line of its own (io), nothing stored, and the run goes on', function()
    local path = env.tmpname()
    env.write_file(path, report(30000))
    local other = env.tmpname()
    env.write_file(other, report(5))
    -- The first staging command (max_args = 1 stages every batch) cuts the file short.
    local out, status = child([[
      local ingest = require 'dmarc.owner.ingest'
      local conn = require 'ingest_fake_redis'()
      local path, other = arg[1], arg[2]
      local pipeline, cut = conn.pipeline, false
      conn.pipeline = function(self, cmds)
        if not cut then
          cut = true
          assert(io.open(path, 'wb')):close()
        end
        return pipeline(self, cmds)
      end
      local stats = ingest.ingest_files(conn, { path, other }, { max_args = 1 })
      local f = stats.failures[1] or {}
      io.write(stats.errors, ' ', stats.stored, ' ', tostring(f.path == path), ' ',
               tostring(f.code), '|', tostring(f.message), '\n')
      local rows = 0
      for k in pairs(conn.data) do if k:find(':stage:', 1, true) then rows = rows + 1 end end
      io.write('staged ', rows, '\n')
    ]], path, other)
    os.remove(path)
    os.remove(other)
    assert.equal(0, status, out)
    assert.equal('1 1 true io|file cut short while it was read\nstaged 0\n', out)
  end)
end)

-- Every fixture, ingested from its file (a layer at a time, through temporary files),
-- gives exactly the results of its bytes ingested whole; the temporary files are gone after.
describe('ingest: a file read a layer at a time, as its bytes', function()
  local ingest = require 'dmarc.owner.ingest'
  local fake_redis = require 'ingest_fake_redis'
  local x = require 'dmarc.xml'

  local function fixtures()
    local names = {}
    for _, dir in ipairs({ 'tests/fixtures/reports/', 'tests/fixtures/ingest/' }) do
      local p = assert(io.popen('ls ' .. dir))
      for n in p:lines() do
        if n ~= 'make-fixtures' and not n:match('%.mbox$') then names[#names + 1] = dir .. n end
      end
      p:close()
    end
    return names
  end

  -- os.tmpname watched: the names made during fn.
  local function watching_temps(fn)
    local real, made = os.tmpname, {}
    os.tmpname = function() -- luacheck: ignore 122
      local n = real()
      made[#made + 1] = n
      return n
    end
    local ok, err = pcall(fn)
    os.tmpname = real -- luacheck: ignore 122
    assert(ok, err)
    return made
  end

  it('stores and refuses every fixture with the same results, messages and codes', function()
    local opts = { now = 1763800000, own = { 'example.com' } }
    local seen = 0
    for _, path in ipairs(fixtures()) do
      local data = env.read_file(path)
      local whole = ingest.ingest_data(fake_redis(), data, opts, path)
      local streamed
      local made = watching_temps(function()
        streamed = ingest.ingest_file(fake_redis(), path, opts, path)
      end)
      assert.same(whole, streamed, path)
      for _, n in ipairs(made) do assert.is_nil(io.open(n, 'rb'), n .. ' left behind') end
      seen = seen + 1
    end
    assert.truthy(seen > 30)
  end)

  it('unpacks zip, gzip (gzip inside gzip too) and zlib into a file as unzip and inflate', function()
    local out = env.tmpname()
    local cases = {
      { 'reports/rfc7489.zip', 'zip' }, { 'reports/rfc7489-stored.zip', 'zip' },
      { 'reports/zip-bomb.zip', 'zip' }, { 'reports/zip-liar.zip', 'zip' },
      { 'reports/two-reports.zip', 'zip' }, { 'ingest/corrupt.zip', 'zip' },
      { 'ingest/not-zip.zip', 'zip' }, { 'reports/rfc9990.xml', 'zip' },
      { 'reports/rfc9990.xml.gz', 'gzip' }, { 'reports/gzip-bomb.gz', 'gzip' },
      { 'reports/truncated.xml.gz', 'gzip' }, { 'ingest/gzip-in-gzip.xml.gz', 'gzip' },
      { 'ingest/zlib.xml.gz', 'zlib' }, { 'reports/rfc9990.xml', 'gzip' },
    }
    for _, c in ipairs(cases) do
      c[1] = 'tests/fixtures/' .. c[1]
      local data = env.read_file(c[1])
      local want
      if c[2] == 'zip' then
        want = { x.unzip(data, { max_output = 1024 * 1024 }) }
      else
        want = { x.inflate(data, { format = c[2], max_output = 1024 * 1024 }) }
      end
      local got = { x.unpack(c[1], out, { format = c[2], max_output = 1024 * 1024 }) }
      if want[1] then
        assert.is_true(got[1], c[1])
        assert.equal(#want[1], got[2], c[1])
        assert.equal(want[1], env.read_file(out), c[1])
        if c[2] == 'zip' then assert.equal(want[2], got[3], c[1]) end
      else
        assert.same(want, got, c[1])
      end
    end
    -- A source that cannot be read, a destination that cannot be written, a source over max_input.
    assert.equal('io', select(3, x.unpack('/nonexistent', out)))
    assert.equal('io', select(3, x.unpack('tests/fixtures/reports/rfc9990.xml.gz', '/nonexistent/out')))
    assert.equal('limit', select(3, x.unpack('tests/fixtures/reports/rfc9990.xml.gz', out,
                                              { max_input = 10 })))
    assert.has_error(function() x.unpack(out, out, { format = 'rar' }) end)
    os.remove(out)
  end)

  it('reads standard input through a temporary file, with the same bound', function()
    local path = 'tests/fixtures/reports/rfc7489.zip'
    local cmd = 'cat ' .. env.shell_quote(path) .. ' | '
    local function via_stdin(max)
      local script = env.tmpname()
      env.write_file(script, [[
        local ingest = require 'dmarc.owner.ingest'
        local stats = ingest.ingest_files(require 'ingest_fake_redis'(), { '-' },
                                          { now = 1763800000, max_input = tonumber(arg[1]) })
        io.write(stats.stored, ' ', stats.records, ' ', stats.errors, ' ',
                 tostring((stats.failures[1] or {}).message), '\n')
      ]])
      local o, s = env.run(string.format('cd %s && %s LUA_PATH=%s LUA_CPATH=%s %s %s %d 2>&1',
        env.shell_quote(env.root), cmd, env.shell_quote('./lua/?.lua;./tests/lua/helpers/?.lua;;'),
        env.shell_quote(env.build .. '/?.so;;'), env.runtime, env.shell_quote(script), max))
      os.remove(script)
      return o, s
    end
    local size = #env.read_file(path)
    local out, status = via_stdin(size)
    assert.equal(0, status, out)
    assert.equal('1 2 0 nil\n', out)
    out, status = via_stdin(size - 1)
    assert.equal(0, status, out)
    assert.equal('0 0 1 input over the size limit (' .. (size - 1) .. ' bytes)\n', out)
  end)

  it('makes its temporary files in $TMPDIR when it is set, mode 0600', function()
    local dir = env.tmpname()
    os.remove(dir)
    assert.equal(0, select(2, env.run('mkdir ' .. env.shell_quote(dir))))
    local made = assert(x.temp_file(dir))
    assert.equal(dir .. '/dmarc-ingest-', made:sub(1, #dir + 14))
    assert.equal('', env.read_file(made))
    local mode = env.run('stat -c %a ' .. env.shell_quote(made))
    assert.equal('600', (mode:gsub('%s+$', '')))
    os.remove(made)
    assert.equal('io', select(3, x.temp_file(dir .. '/missing')))
    assert.equal('io', select(3, x.temp_file('')))

    -- A zip is unpacked into a temporary file: in $TMPDIR, removed once read; a $TMPDIR that
    -- does not exist fails that input (io), with the reason.
    local function ingest_zip(tmpdir)
      local script = env.tmpname()
      env.write_file(script, [[
        local ingest = require 'dmarc.owner.ingest'
        local stats = ingest.ingest_files(require 'ingest_fake_redis'(),
          { 'tests/fixtures/reports/rfc7489.zip' }, { now = 1763800000 })
        io.write(stats.stored, ' ', stats.errors, ' ', tostring((stats.failures[1] or {}).message))
      ]])
      local o, st = env.run(string.format('cd %s && TMPDIR=%s LUA_PATH=%s LUA_CPATH=%s %s %s 2>&1',
        env.shell_quote(env.root), env.shell_quote(tmpdir),
        env.shell_quote('./lua/?.lua;./tests/lua/helpers/?.lua;;'),
        env.shell_quote(env.build .. '/?.so;;'), env.runtime, env.shell_quote(script)))
      os.remove(script)
      assert.equal(0, st, o)
      return o
    end
    assert.equal('1 0 nil', ingest_zip(dir))
    assert.equal('', (env.run('ls -A ' .. env.shell_quote(dir))))
    local out = ingest_zip(dir .. '/missing')
    assert.matches('^0 1 .*no temporary file: .*/missing: No such file or directory', out)
    assert.equal(0, select(2, env.run('rmdir ' .. env.shell_quote(dir))))
  end)
end)

-- The MIME walk reads bodies a window (64 KiB) at a time and decodes them a chunk at a time:
-- the bytes must be those of the whole-body decoders, whatever falls on a window's edge.
describe('ingest: attachments decoded a chunk at a time', function()
  local ingest = require 'dmarc.owner.ingest'

  local function random_text(seed, n, alphabet)
    local out = {}
    for i = 1, n do
      seed = (seed * 1103515245 + 12345) % 2147483648
      local k = seed % #alphabet + 1
      out[i] = alphabet:sub(k, k)
    end
    return table.concat(out)
  end

  local function message(cte, body)
    return 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
      .. 'Content-Type: application/gzip\r\nContent-Transfer-Encoding: ' .. cte .. '\r\n\r\n'
      .. body .. '\r\n--b--\r\n'
  end

  it('gives the bytes of base64_decode and qp_decode on the whole body', function()
    for seed = 1, 6 do
      -- base64 text with line breaks, stray characters and (from seed 4 on) padding inside.
      local b64 = random_text(seed, 200000, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij0123456789+/\r\n \t*'
                                            .. (seed >= 4 and '=' or ''))
      local parts = assert(ingest.mime_attachments(message('base64', b64)))
      assert.equal(ingest.base64_decode(b64), parts[1].data)
      -- quoted-printable with soft breaks, =XX, lone '=' and CRs at every position.
      local qp = random_text(seed, 200000, '=\r\n=\r\nA3f=0Dx=Fz-\t ')
      parts = assert(ingest.mime_attachments(message('quoted-printable', qp)))
      assert.equal(ingest.qp_decode(qp), parts[1].data)
    end
  end)

  it('decodes the same whatever the chunks: every edge of base64 and quoted-printable', function()
    local function chunked(cte, text, seed)
      local out = {}
      local feed = ingest.body_decoder(cte, function(p) out[#out + 1] = p end)
      local pos = 1
      while pos <= #text do
        seed = (seed * 1103515245 + 12345) % 2147483648
        local n = seed % 7 + 1 -- chunks of 1 to 7 bytes: every split of '=\r\n' and '=XX'
        feed(text:sub(pos, pos + n - 1))
        pos = pos + n
      end
      feed(nil)
      return table.concat(out)
    end
    for seed = 1, 20 do
      local b64 = random_text(seed, 3000, 'QUJDRA0K+/\r\n *' .. (seed % 2 == 0 and '=' or ''))
      assert.equal(ingest.base64_decode(b64), chunked('base64', b64, seed))
      local qp = random_text(seed, 3000, '==\r\n\r\nA3f0x=F-')
      assert.equal(ingest.qp_decode(qp), chunked('quoted-printable', qp, seed))
      assert.equal(qp, chunked('7bit', qp, seed))
    end
  end)
end)

-- Each message of an mbox is spooled into a temporary file and unquoted there a chunk
-- (1 MiB) at a time: the bytes must be those of the message held in memory, whatever line
-- falls on a chunk's edge.
describe('ingest: mbox messages spooled to temporary files', function()
  local ingest = require 'dmarc.owner.ingest'

  local function messages(text, sink)
    local pos, got = 1, {}
    local function read(n)
      if pos > #text then return nil end
      local s = text:sub(pos, pos + n - 1)
      pos = pos + n
      return s
    end
    ingest.each_mbox_message(read, {}, function(i, msg, err)
      if sink and msg then msg = env.read_file(msg) end
      got[i] = msg or err
    end, sink)
    return got
  end

  it('gives the messages of the in-memory reader, every edge of a quoted "From " line', function()
    local MiB = 1024 * 1024
    local parts = {}
    -- The From line is 21 bytes; each message puts a quoted separator (or a false one) across
    -- the first 1 MiB edge of its text at another offset.
    local lines = { '\n>From a\n', '\n>>>From b\n', '\n>Fro\n', '\n>From', '\n\n>From c\n' }
    for k = 0, 11 do
      local line = lines[k % #lines + 1]
      parts[#parts + 1] = 'From x@example.net 1\n' .. ('a'):rep(MiB - 1 - k) .. line
                          .. '>From at the start of no line\nend ' .. k .. '\n'
    end
    -- A message without a line end after its From line, last.
    parts[#parts + 1] = 'From only-a-separator'
    local text = table.concat(parts)
    local temps = {}
    local sink = ingest.mbox_file_sink(temps)
    local want, got = messages(text), messages(text, sink)
    sink.close()
    for _, n in ipairs(temps) do os.remove(n) end
    assert.equal(#parts, #want)
    assert.equal(#want, #got)
    for i = 1, #want do assert.equal(want[i], got[i], 'message ' .. i) end
  end)
end)

-- The walk of an e-mail on disk reads it where it lies: when another process cuts it short,
-- each attachment read afterwards fails with io (a failure line each), never a partial
-- attachment taken for the whole one, and the run goes on.
describe('ingest: an e-mail cut short while its attachments are decoded', function()
  local ingest = require 'dmarc.owner.ingest'
  local fake_redis = require 'ingest_fake_redis'

  it('fails each attachment not yet read with io, and says which', function()
    local xml = env.read_file('tests/fixtures/reports/rfc9990.xml')
    local mime = require 'mime'
    local b64 = (mime.b64(xml)):gsub(('.'):rep(76), '%0\r\n')
    local msg = 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    for i = 1, 2 do
      msg = msg .. '--b\r\nContent-Type: text/xml; name="r' .. i .. '.xml"\r\n'
        .. 'Content-Transfer-Encoding: base64\r\n\r\n' .. b64 .. '\r\n'
    end
    msg = msg .. '--b--\r\n'
    local path = env.tmpname()
    env.write_file(path, msg)
    local whole = ingest.ingest_data(fake_redis(), msg, { now = 1763800000 })
    assert.equal(2, #whole)
    -- The first temporary file (the first attachment's) is made after the walk: the cut.
    local real = os.tmpname
    os.tmpname = function() -- luacheck: ignore 122
      assert(io.open(path, 'wb')):close()
      return real()
    end
    local ok, results = pcall(ingest.ingest_file, fake_redis(), path, { now = 1763800000 })
    os.tmpname = real -- luacheck: ignore 122
    os.remove(path)
    assert.is_true(ok, tostring(results))
    assert.equal(2, #results)
    for i = 1, 2 do
      assert.equal('error', results[i].status)
      assert.equal('io', results[i].code)
      assert.equal('file cut short while it was read', results[i].message)
      assert.equal('attachment ' .. i .. ' (r' .. i .. '.xml)', results[i].part)
    end
  end)
end)

-- A run over many files must not hold a descriptor per file until the collector comes (it ran
-- out of them after some 30,000 unpacks when only __gc closed them).
describe('dmarc.xml: descriptors closed when a call returns', function()
  local x = require 'dmarc.xml'

  local function open_fds()
    local f = assert(io.open('/proc/self/stat'))
    local pid = f:read('*l'):match('^(%d+)')
    f:close()
    local p = assert(io.popen('ls /proc/' .. pid .. '/fd | wc -l'))
    local n = tonumber(p:read('*a'))
    p:close()
    return n
  end

  it('xml.unpack, whatever it returns, and xml.map once closed', function()
    local out = env.tmpname()
    collectgarbage('stop')
    local before = open_fds()
    for _ = 1, 20 do
      assert.is_true(x.unpack('tests/fixtures/reports/rfc9990.xml.gz', out))
      assert.is_true(x.unpack('tests/fixtures/reports/rfc7489.zip', out, { format = 'zip' }))
      assert.is_nil(x.unpack('tests/fixtures/reports/truncated.xml.gz', out))
      assert.is_nil(x.unpack('tests/fixtures/reports/two-reports.zip', out, { format = 'zip' }))
      assert.is_nil(x.unpack('tests/fixtures/reports/rfc9990.xml.gz', out, { max_input = 10 }))
      assert.is_nil(x.unpack('tests/fixtures/reports/rfc9990.xml.gz', '/nonexistent/out'))
      local doc = assert(x.map('tests/fixtures/reports/rfc9990.xml.gz', { inflate = 'gzip' }))
      assert(x.parse(doc))
      doc:close()
    end
    local after = open_fds()
    collectgarbage('restart')
    os.remove(out)
    -- (A leak is one descriptor per call: 20 or more here; the listing's own may vary by one.)
    assert.is_true(after - before < 5, before .. ' open before, ' .. after .. ' after')
  end)
end)
