-- dmarc.report.rows: rows, their Redis encoding and commands, the writer, the spool.
local report = require 'dmarc.report.rows'
local fake_redis = dofile('tests/lua/report_fake_redis.lua')

local DAY = 1763683200 -- 2025-11-21 00:00:00 UTC

local function record(over)
  local r = { mode = 'rfc9989', p = 'reject', sp = 'quarantine', np = 'reject',
              adkim = 'relaxed', aspf = 'strict', testing = false, fo_text = '1', pct = 100,
              psd = 'u', rua = { { uri = 'mailto:agg@example.com', max_size = 0 } } }
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

local function verdict(over)
  local v = { result = 'fail', author_domain = 'news.example.com', policy_domain = 'example.com',
              org_domain = 'example.com', policy = 'reject', applied = 'reject',
              spf_aligned = false, dkim_aligned = false, record = record() }
  for k, x in pairs(over or {}) do v[k] = x end
  return v
end

local INPUT = {
  spf = { result = 'softfail', domain = 'bounce.other.example', scope = 'mfrom' },
  dkim = {
    { result = 'fail', domain = 'example.com', selector = 's0' },
    { result = 'pass', domain = 'other.example', selector = 'o1' },
    { result = 'pass', domain = 'example.com', selector = 'relaxed1' },
    { result = 'pass', domain = 'news.example.com', selector = 'strict1' },
  },
}
local CTX = { ip = '192.0.2.10', mail_from = 'x@bounce.other.example', rcpt = { 'a@rcpt.example' } }

describe('report rows', function()
  it('report__row_fields_follow_the_evaluation [AGG-2] [AGG-7] [AGG-8]', function()
    local rows = assert(report.build_rows(verdict(), INPUT, CTX, nil, { time = DAY + 10 }))
    assert.equal(1, #rows)
    local r = rows[1]
    assert.equal('example.com', r.policy_domain)
    assert.equal('news.example.com', r.header_from)
    assert.equal('bounce.other.example', r.envelope_from)
    assert.equal('rcpt.example', r.envelope_to)
    assert.equal('reject', r.disposition)
    assert.equal('fail', r.dkim)
    assert.equal('fail', r.spf)
    assert.same({ p = 'reject', sp = 'quarantine', np = 'reject', adkim = 'r', aspf = 's',
                  testing = 'n', discovery_method = 'treewalk', fo = '1', pct = 100, psd = 'u' },
                r.policy)
    assert.same({ domain = 'bounce.other.example', scope = 'mfrom', result = 'softfail' },
                r.spf_result)
  end)

  it('report__dkim_results_in_agg6_order [AGG-6]', function()
    local rows = assert(report.build_rows(verdict(), INPUT, CTX, nil, { time = DAY }))
    local sels = {}
    for i, d in ipairs(rows[1].dkim_results) do sels[i] = d.selector end
    -- pass+strict, pass+relaxed, other pass, then the failure
    assert.same({ 'strict1', 'relaxed1', 'o1', 's0' }, sels)
  end)

  it('report__dkim_results_bounded_to_100 [AGG-6]', function()
    local many = {}
    for i = 1, 150 do many[i] = { result = 'pass', domain = 'd' .. i .. '.example', selector = 's' } end
    local list = report.order_dkim(many, 'example.com', 'example.com')
    assert.equal(report.limits.max_dkim, #list)
  end)

  it('report__no_rua_no_row [RUA-1]', function()
    local v = verdict({ record = record({ rua = {} }) })
    assert.same({}, assert(report.build_rows(v, INPUT, CTX)))
    assert.same({}, assert(report.build_rows(verdict({ record = false }), INPUT, CTX)))
  end)

  it('report__disposition_pass_and_none [AGG-7]', function()
    local v = verdict({ result = 'pass', dkim_aligned = true })
    assert.equal('pass', report.build_rows(v, INPUT, CTX)[1].disposition)
    v = verdict({ result = 'pass', policy = 'none', applied = 'none' })
    assert.equal('none', report.build_rows(v, INPUT, CTX)[1].disposition)
  end)

  it('report__override_reason_is_kept_and_required [OVR-1] [OVR-2]', function()
    local decision = { disposition = 'none', reasons = { { type = 'trusted_forwarder',
                                                           comment = 'arc=pass as[1].d=l.example' } } }
    local r = report.build_rows(verdict(), INPUT, CTX, decision)[1]
    assert.equal('none', r.disposition)
    assert.same({ { type = 'trusted_forwarder', comment = 'arc=pass as[1].d=l.example' } }, r.reasons)
    -- A differing disposition without a reason gets one.
    r = report.build_rows(verdict(), INPUT, CTX, { disposition = 'quarantine' })[1]
    assert.equal(1, #r.reasons)
    assert.equal('local_policy', r.reasons[1].type)
  end)

  it('report__test_mode_reason_from_the_verdict [POL-4]', function()
    local v = verdict({ applied = 'quarantine', reason = 'policy_test_mode',
                        record = record({ testing = true }) })
    local r = report.build_rows(v, INPUT, CTX)[1]
    assert.equal('quarantine', r.disposition)
    assert.equal('policy_test_mode', r.reasons[1].type)
    assert.equal('y', r.policy.testing)
  end)

  it('report__one_row_per_author_domain [AGG-2]', function()
    local v = verdict()
    v.domains = { verdict({ author_domain = 'a.example', policy_domain = 'a.example' }),
                  verdict({ author_domain = 'b.example', policy_domain = 'b.example' }) }
    local rows = assert(report.build_rows(v, INPUT, CTX))
    assert.equal(2, #rows)
    assert.equal('a.example', rows[1].policy_domain)
    assert.equal('b.example', rows[2].policy_domain)
  end)

  it('report__details_from_evaluate_are_used', function()
    local out = { result = 'fail', author_domain = 'news.example.com', policy_domain = 'example.com',
                  policy = 'reject', applied = 'reject' }
    local details = { verdict = verdict(), domains = { verdict() },
                      dkim_alignment = { 'none', 'none', 'relaxed', 'strict' } }
    local rows = assert(report.build_rows(out, INPUT, CTX, nil, { details = details }))
    assert.equal('example.com', rows[1].policy_domain)
    assert.equal('strict1', rows[1].dkim_results[1].selector)
  end)

  it('report__rows_for_own_reports_are_not_collected (loop guard)', function()
    local ctx = { ip = '192.0.2.1', mail_from = '<dmarc@receiver.example>' }
    assert.same({}, report.build_rows(verdict(), INPUT, ctx, nil,
                                      { reporter_address = 'dmarc@receiver.example' }))
  end)

  it('report__bad_ip_and_bad_domain_are_refused', function()
    local _, _, code = report.build_rows(verdict(), INPUT, { ip = '1.2.3.4\r\nX' })
    assert.equal('bad_ip', code)
    _, _, code = report.build_rows(verdict({ policy_domain = 'ex{a}mple.com' }), INPUT, CTX)
    assert.equal('bad_domain', code)
  end)
end)

describe('report encoding', function()
  it('report__encode_decode_round_trip', function()
    local r = report.build_rows(verdict(), INPUT, CTX,
                                { disposition = 'quarantine',
                                  reasons = { { type = 'other', comment = 'a|b;c:d,e%f\r\n<x>' } } })[1]
    local field = report.encode_row(r)
    assert.is_nil(field:find('[\r\n]'))
    local back = assert(report.decode_row(field))
    assert.equal(r.header_from, back.header_from)
    assert.equal(r.envelope_to, back.envelope_to)
    assert.equal(r.disposition, back.disposition)
    assert.same(r.policy, back.policy)
    assert.same(r.reasons, back.reasons)
    assert.same(r.spf_result, back.spf_result)
    assert.equal(#r.dkim_results, #back.dkim_results)
    assert.equal(r.dkim_results[1].selector, back.dkim_results[1].selector)
  end)

  it('report__ipv6_survives_encoding', function()
    local r = report.build_rows(verdict(), INPUT, { ip = '2001:db8::1' })[1]
    assert.equal('2001:db8::1', report.decode_row(report.encode_row(r)).source_ip)
  end)

  it('report__decode_refuses_unknown_encodings', function()
    local _, _, code = report.decode_row('9|x')
    assert.equal('bad_row', code)
    _, _, code = report.decode_row(('x'):rep(report.limits.max_field + 1))
    assert.equal('bad_row', code)
  end)

  it('report__rua_list_bounded_and_round_trips [RUA-2]', function()
    local list = {}
    for i = 1, 300 do
      list[i] = { uri = 'mailto:r' .. i .. '@example.com', max_size = i == 1 and 10485760 or 0 }
    end
    local enc = report.encode_rua(list)
    local back = report.decode_rua(enc)
    assert.equal(report.limits.max_rua, #back)
    assert.equal('mailto:r1@example.com', back[1].uri)
    assert.equal(10485760, back[1].max_size)
  end)

  it('report__key_names_are_hash_tagged_per_domain', function()
    local k = report.keys('dmarc:', 'example.com', '20251121')
    assert.equal('dmarc:rpt:{example.com}:20251121', k.rows)
    assert.equal('dmarc:rpt:{example.com}:20251121:meta', k.meta)
    assert.equal('example.com', report.domain_of_key('dmarc:', k.rows))
    assert.is_nil(report.domain_of_key('dmarc:', k.meta))
  end)

  it('report__injection_into_keys_is_refused', function()
    for _, bad in ipairs({ 'a b.example', 'a}b.example', 'a{b', 'x*.example', 'a\r\nb', '', ('a'):rep(254),
                           'A.EXAMPLE', '.example', 'a..b' }) do
      assert.is_false(report.valid_domain(bad), bad)
    end
    assert.is_true(report.valid_domain('_x.sub-1.example'))
    assert.is_false(report.valid_prefix('dmarc*:'))
    local _, _, code = report.commands({ policy_domain = 'a}b' })
    assert.equal('bad_domain', code)
    _, _, code = report.commands({ policy_domain = 'example.com' }, { prefix = 'x y' })
    assert.equal('bad_prefix', code)
  end)

  it('report__commands_are_one_eval_in_one_slot', function()
    local r = report.build_rows(verdict(), INPUT, CTX, nil, { time = DAY + 5 })[1]
    local cmds = assert(report.commands(r, { ttl = 100, max_rows = 7 }))
    assert.equal(1, #cmds)
    local c = cmds[1]
    assert.equal('EVAL', c[1])
    assert.equal('2', c[3])
    assert.equal('dmarc:rpt:{example.com}:20251121', c[4])
    assert.equal('dmarc:rpt:{example.com}:20251121:meta', c[5])
    assert.equal(report.encode_row(r), c[6])
    assert.equal('1', c[7])
    assert.equal('7', c[8])
    assert.equal('100', c[9])
  end)

  it('report__day_start_is_utc', function()
    assert.equal(DAY, report.day_start('20251121'))
    assert.equal('20251121', report.day_of(DAY + 86399))
    assert.equal(0, report.day_start('19700101'))
    assert.equal(951782400, report.day_start('20000229'))
    assert.is_nil(report.day_start('2025-11-21'))
  end)
end)

describe('report writer', function()
  local function rows_for(i)
    return report.build_rows(verdict(), INPUT, { ip = '192.0.2.' .. (i % 4), rcpt = { 'u@r.example' } },
                             nil, { time = DAY + i })
  end

  local function tmpdir()
    local p = os.tmpname()
    os.remove(p)
    os.execute('mkdir -p ' .. p)
    return p
  end

  it('keeps rows a restarting Redis answers -LOADING for as unreached, not refused', function()
    local conn = fake_redis.new()
    local real = conn.pipeline
    conn.pipeline = function(self, cmds)
      if self.loading then
        local out = {}
        for i = 1, #cmds do out[i] = { err = 'LOADING Redis is loading the dataset in memory' } end
        return out
      end
      return real(self, cmds)
    end
    conn.loading = true
    local res = report.write(conn, rows_for(1))
    assert.equal(0, res.refused)
    assert.equal(#rows_for(1), #res.unreached)
    assert.matches('^LOADING', res.unreached_why)
    conn.loading = false
    assert.equal(#rows_for(1), report.write(conn, res.unreached).written)
  end)

  it('report__identical_rows_aggregate_counts', function()
    local conn = fake_redis.new()
    for i = 1, 40 do assert.equal(1, report.write(conn, rows_for(i)).written) end
    local h = conn.data['dmarc:rpt:{example.com}:20251121']
    local total, n = 0, 0
    for _, v in pairs(h) do
      total = total + tonumber(v)
      n = n + 1
    end
    assert.equal(4, n)
    assert.equal(40, total)
    assert.equal(40, conn.calls) -- one round trip per message
  end)

  it('report__batch_mode_uses_fewer_round_trips', function()
    -- The rows of several messages in one write: one round trip for all of them.
    local conn = fake_redis.new()
    local batch = {}
    for i = 1, 40 do
      for _, r in ipairs(rows_for(i)) do batch[#batch + 1] = r end
      if #batch == 10 then
        assert.equal(10, report.write(conn, batch).written)
        batch = {}
      end
    end
    assert.equal(4, conn.calls)
  end)

  it('report__row_cap_counts_instead_of_trimming', function()
    local conn = fake_redis.new()
    for i = 1, 12 do report.write(conn, rows_for(i), { max_rows = 2 }) end
    local n, total = 0, 0
    for _, v in pairs(conn.data['dmarc:rpt:{example.com}:20251121']) do
      n = n + 1
      total = total + tonumber(v)
    end
    assert.equal(2, n)
    local meta = conn.data['dmarc:rpt:{example.com}:20251121:meta']
    assert.equal(12, total + tonumber(meta.dropped_messages))
    assert.equal('6', meta.dropped_messages)
  end)

  it('report__redis_down_spools_then_writes_everything', function()
    -- What `dmarc check --spool` does: rows that cannot be written wait in the spool, and
    -- the first write that reaches Redis takes them first.
    local conn = fake_redis.new()
    local dir = tmpdir()
    local sp = assert(report.spool(dir))
    local ids = report.id_source()
    local function one(i)
      local out = {}
      for k, r in ipairs(rows_for(i)) do out[k] = report.prepare_row(r, ids()) end
      return out
    end
    assert.equal(1, report.write(conn, one(1)).written)
    conn.down = true
    for i = 2, 30 do
      local rows = one(i)
      local res = report.write(conn, rows)
      assert.is_true(res.failed)
      assert(sp:write(rows))
    end
    assert.is_true(sp:count() > 0)
    conn.down = false
    local all, claims = sp:claim()
    for _, r in ipairs(one(31)) do all[#all + 1] = r end
    local res = report.write(conn, all)
    assert.is_nil(res.failed)
    sp:finish(claims, true)
    local total = 0
    for _, v in pairs(conn.data['dmarc:rpt:{example.com}:20251121']) do total = total + tonumber(v) end
    assert.equal(31, total)
    assert.equal(0, sp:count())
    os.execute('rm -rf ' .. dir)
  end)

  it('report__rows_redis_is_not_ready_for_are_unreached_others_refused', function()
    local conn = fake_redis.new()
    local rows = rows_for(1)
    local function replying(err)
      return { pipeline = function(_, cmds)
        local replies = {}
        for i = 1, #cmds do replies[i] = { err = err } end
        return replies
      end }
    end
    for _, err in ipairs({ 'LOADING Redis is loading the dataset in memory',
                           'BUSY Redis is busy running a script.', 'MASTERDOWN Link with MASTER is down',
                           'TRYAGAIN Multiple keys request during rehashing of slot',
                           'CLUSTERDOWN The cluster is down',
                           "READONLY You can't write against a read only replica.",
                           'io: connection refused' }) do
      local res = report.write(replying(err), rows)
      assert.equal(#rows, #res.unreached, err)
      assert.equal(0, res.refused, err)
      assert.equal(0, res.written, err)
    end
    local wrongtype = 'WRONGTYPE Operation against a key holding the wrong kind of value'
    local res = report.write(replying(wrongtype), rows)
    assert.equal(0, #res.unreached)
    assert.equal(#rows, res.refused)
    assert.equal(0, report.write(conn, rows).refused)
  end)

  it('report__invalid_rows_are_not_sent', function()
    local conn = fake_redis.new()
    local rows = rows_for(1)
    rows[2] = { policy_domain = 'Not A Domain', time = DAY }
    local res = report.write(conn, rows)
    assert.equal(1, res.commands)
    assert.equal(1, res.written)
    assert.equal(1, #res.invalid)
    assert.equal('invalid policy domain', res.invalid[1].message)
    assert.equal(0, report.write(conn, { rows[2] }).commands)
    assert.equal(1, conn.calls) -- nothing to send is no round trip
  end)
end)

-- A retried write must not count a message twice (docs/report-keys.md, "Retries").
describe('report row ids', function()
  local ROWS = 'dmarc:rpt:{example.com}:20251121'

  local function total(conn)
    local sum = 0
    for _, v in pairs(conn.data[ROWS] or {}) do sum = sum + tonumber(v) end
    return sum
  end

  local function one_row(i)
    return report.build_rows(verdict(), INPUT, { ip = '192.0.2.' .. (i or 1) }, nil,
                             { time = DAY + 5 })[1]
  end

  it('report__row_id_write_is_one_eval_with_its_mark_in_the_same_slot', function()
    local cluster = require 'dmarc.redis.cluster'
    local row = report.prepare_row(one_row(), 'abc.1')
    local c = assert(report.commands(row, { seen_ttl = 600 }))[1]
    assert.equal('3', c[3])
    assert.equal(report.seen_key('dmarc:', 'example.com', 'abc.1'), c[6])
    assert.equal(cluster.key_slot(c[4]), cluster.key_slot(c[6]))
    assert.equal(row.field, c[7])
    assert.equal('600', c[14])
    -- seen_ttl = 0 turns the ids off: the plugin's two-key form
    assert.equal('2', assert(report.commands(row, { seen_ttl = 0 }))[1][3])
  end)

  it('report__row_id_retry_counts_once', function()
    local conn = fake_redis.new()
    local row = report.prepare_row(one_row(), 'msg1.1')
    local cmds = assert(report.commands(row))
    assert.equal(1, conn:pipeline(cmds)[1])
    assert.equal(0, conn:pipeline(cmds)[1]) -- the same id again: nothing changes
    assert.equal(1, total(conn))
    -- another id is another message
    assert(conn:pipeline(assert(report.commands(report.prepare_row(one_row(), 'msg2.1')))))
    assert.equal(2, total(conn))
    -- without an id every write counts
    local plain = assert(report.commands(one_row()))
    conn:pipeline(plain)
    conn:pipeline(plain)
    assert.equal(4, total(conn))
  end)

  it('report__row_id_refuses_what_could_change_the_key', function()
    for _, bad in ipairs({ '', 'a b', 'a}b', 'a{b', 'x*', 'a\r\nb', ('a'):rep(65) }) do
      assert.is_false(report.valid_row_id(bad), bad)
      local _, _, code = report.commands(report.prepare_row(one_row(), bad))
      assert.equal('bad_id', code)
    end
    assert.is_true(report.valid_row_id('0123abcdef.17'))
  end)

  it('report__id_source_gives_fresh_ids', function()
    local a, b = report.id_source(), report.id_source()
    local seen = {}
    for _ = 1, 100 do
      for _, id in ipairs({ a(), b() }) do
        assert.is_true(report.valid_row_id(id))
        assert.is_nil(seen[id])
        seen[id] = true
      end
    end
  end)

  it('report__writer_lost_reply_is_not_counted_twice', function()
    local conn = fake_redis.new()
    local rows = { report.prepare_row(one_row(1), 'msg1.1') }
    conn.lose_replies = 1 -- applied, but the reply never arrives
    assert.is_true(report.write(conn, rows).failed)
    assert.equal(1, total(conn))
    -- sent again, as the spool does: the same id counts once
    assert.is_nil(report.write(conn, rows).failed)
    assert.equal(1, total(conn))
    -- the same row of another message counts
    report.write(conn, { report.prepare_row(one_row(1), 'msg2.1') })
    assert.equal(2, total(conn))
  end)

  it('report__writer_without_ids_counts_a_lost_reply_twice', function()
    -- The failure mode the ids prevent, shown with ids turned off.
    local conn = fake_redis.new()
    local rows = { report.prepare_row(one_row(1), 'msg1.1') }
    conn.lose_replies = 1
    report.write(conn, rows, { seen_ttl = 0 })
    assert.is_nil(report.write(conn, rows, { seen_ttl = 0 }).failed)
    assert.equal(2, total(conn))
  end)
end)

describe('report spool', function()
  local function tmpdir()
    local p = os.tmpname()
    os.remove(p)
    os.execute('mkdir -p ' .. p)
    return p
  end

  local function rows(n, id)
    local out = {}
    for i = 1, n do
      local r = report.build_rows(verdict(), INPUT, { ip = '192.0.2.' .. i }, nil, { time = DAY })[1]
      out[i] = report.prepare_row(r, id and (id .. '.' .. i) or nil)
    end
    return out
  end

  local function files(dir, pattern)
    local n = 0
    local p = io.popen('ls -1 ' .. dir)
    for name in p:lines() do if name:match(pattern) then n = n + 1 end end
    p:close()
    return n
  end

  it('report__spool_keeps_rows_until_claimed', function()
    local dir = tmpdir()
    local sp = assert(report.spool(dir))
    assert(sp:write(rows(2, 'aa')))
    assert(sp:write(rows(1, 'bb')))
    assert.equal(2, sp:count())
    local got, claims, bad = sp:claim()
    assert.equal(3, #got)
    assert.equal(2, #claims)
    assert.equal(0, bad)
    -- files of the same second come in any order; rows of one file in theirs
    local ids = {}
    for _, r in ipairs(got) do ids[#ids + 1] = r.id end
    table.sort(ids)
    assert.same({ 'aa.1', 'aa.2', 'bb.1' }, ids)
    for _, r in ipairs(got) do
      if r.id == 'aa.1' then assert.equal(rows(1)[1].field, r.field) end
    end
    -- claimed files belong to this run: another spool on the same directory finds none
    local other = assert(report.spool(dir))
    assert.equal(0, #(other:claim()))
    sp:finish(claims, true)
    assert.equal(0, sp:count())
    os.execute('rm -rf ' .. dir)
  end)

  it('report__spool_claim_given_back_when_not_written', function()
    local dir = tmpdir()
    local sp = assert(report.spool(dir))
    assert(sp:write(rows(1, 'cc')))
    local got, claims = sp:claim()
    assert.equal(1, #got)
    sp:finish(claims, false)
    assert.equal(1, files(dir, '%.rows$'))
    assert.equal(1, #(sp:claim()))
    os.execute('rm -rf ' .. dir)
  end)

  it('report__spool_takes_back_a_stale_claim', function()
    local dir = tmpdir()
    local now = 5000
    local a = assert(report.spool(dir, { clock = function() return now end }))
    assert(a:write(rows(1, 'dd')))
    assert.equal(1, #(a:claim())) -- this run dies without finishing
    local b = assert(report.spool(dir, { clock = function() return now end }))
    assert.equal(0, #(b:claim()))
    now = now + report.spool_limits.stale_claim + 1
    local got, claims = b:claim()
    assert.equal(1, #got)
    b:finish(claims, true)
    assert.equal(0, b:count())
    os.execute('rm -rf ' .. dir)
  end)

  it('report__spool_is_bounded', function()
    local dir = tmpdir()
    local sp = assert(report.spool(dir, { limits = { max_files = 2, flush_files = 1 } }))
    assert(sp:write(rows(1)))
    assert(sp:write(rows(1)))
    local ok, _, code = sp:write(rows(1))
    assert.is_nil(ok)
    assert.equal('full', code)
    -- one file per claim
    local got, claims = sp:claim()
    assert.equal(1, #got)
    assert.equal(1, #claims)
    os.execute('rm -rf ' .. dir)
  end)

  it('report__spool_drops_malformed_lines', function()
    local dir = tmpdir()
    local sp = assert(report.spool(dir))
    local good = rows(1, 'ee')[1]
    local f = assert(io.open(dir .. '/0000000001-abcdef.rows', 'wb'))
    f:write(report.SPOOL_MAGIC, '\n',
            'R\texample.com\t20251121\t1\tee.1\t', good.field, '\t', good.rua_enc, '\t',
            good.policy_enc, '\n',
            'R\ta}b\t20251121\t1\t\t', good.field, '\t\t\n',               -- bad domain
            'R\texample.com\t2025\t1\t\t', good.field, '\t\t\n',           -- bad day
            'R\texample.com\t20251121\t0\t\t', good.field, '\t\t\n',       -- bad count
            'R\texample.com\t20251121\t1\tx y\t', good.field, '\t\t\n',    -- bad id
            'R\texample.com\t20251121\t1\t\t2|x\t\t\n',                     -- bad field
            'garbage\n')
    f:close()
    f = assert(io.open(dir .. '/0000000002-abcdef.rows', 'wb'))
    f:write('not a spool file\n')
    f:close()
    local got, claims, bad = sp:claim()
    assert.equal(1, #got)
    assert.equal('ee.1', got[1].id)
    assert.equal(7, bad)
    sp:finish(claims, true)
    os.execute('rm -rf ' .. dir)
  end)

  it('report__spool_refuses_an_unusable_directory', function()
    local _, _, code = report.spool('/proc/no-such-dir/x')
    assert.equal('io', code)
    assert.is_nil(report.spool('bad\ndir'))
  end)
end)
