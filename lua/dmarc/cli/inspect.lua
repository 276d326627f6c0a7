--- `dmarc inspect DOMAIN`: discover the DMARC policy that applies to mail from DOMAIN and lint
-- it: the walk taken, the policy and Org Domain, the effective tags with their defaults, and
-- warnings about what a receiver will do with the record.
-- Exit status: 0 a usable policy applies (warnings may remain); 1 errors (no policy record,
-- an unusable record, a DNS failure, duplicate records); 2 usage or input error.
-- @module dmarc.cli.inspect

local dmarc = require 'dmarc'
local common = require 'dmarc.cli.common'
local json = require 'dmarc.util.json'
local options = require 'dmarc.util.options'

local M = {}

M.USAGE = [=[
usage: dmarc inspect DOMAIN [--zone FILE | --dns-server HOST[:PORT]] [--mode rfc9989|rfc7489]
                            [--dns-timeout SECONDS] [--json]

Finds the DMARC record that applies to mail whose From domain is DOMAIN (RFC 9989 tree walk,
or RFC 7489 with --mode rfc7489), shows the walk, the policy and Org Domains and every tag
with its effective value, and warns about problems: p=none without rua, historic pct/rf/ri,
tags with bad values or in the wrong case, duplicate records, a record at a TLD without
psd=y, report addresses at other domains that have not authorised reports.

Exit status: 0 a usable policy applies, 1 errors were found, 2 usage or input error.
]=]

local VALUE_OPTIONS = { zone = true, ['dns-server'] = true, mode = true, ['dns-timeout'] = true }
local FLAG_OPTIONS = { json = true, help = true }
--- External report destinations checked per record (each costs DNS queries).
M.MAX_URIS_CHECKED = 8

local function parse_args(args)
  local opts, operands = options.parse(args, {
    values = VALUE_OPTIONS, flags = FLAG_OPTIONS, once = true, dash_operand = false,
    max_operands = 1, too_many_operands = 'one DOMAIN only',
  })
  if not opts then return nil, operands end
  opts.domain = operands[1]
  if opts.help then return opts end
  if not opts.domain then return nil, 'a DOMAIN is required' end
  if opts.zone and opts['dns-server'] then return nil, '--zone and --dns-server exclude each other' end
  opts.mode = opts.mode or 'rfc9989'
  if opts.mode ~= 'rfc9989' and opts.mode ~= 'rfc7489' then
    return nil, '--mode must be rfc9989 or rfc7489'
  end
  if opts['dns-timeout'] then
    local n = tonumber(opts['dns-timeout'])
    if not n or n <= 0 or n > 60 then return nil, '--dns-timeout must be 0-60 seconds' end
    opts['dns-timeout'] = n
  end
  return opts
end

-- {==================================================================
-- Discovery
-- ===================================================================

-- The resolver, wrapped to remember every question and its answer in order.
local function recording(resolver, walk)
  return function(name, qtype)
    local rcode, txts, ttl = resolver:resolve(name, qtype)
    walk[#walk + 1] = { name = name, type = qtype, rcode = rcode, records = json.array(txts) }
    return rcode, txts, ttl
  end
end

--- Evaluate mail from @domain: the verdict, the questions asked and their answers.
local function discover(resolver, domain, mode)
  local walk = json.array()
  -- The whole walk, even where mail from the domain would not need it: the Org Domain
  -- and every record up to the TLD are what an inspection is for [DISC-6].
  local engine = dmarc.new{ mode = mode, full_org_walk = true }
  local out, details = engine:evaluate({
    from = 'postmaster@' .. domain, mode = mode, roll = 0, resolve = recording(resolver, walk),
  }, { details = true })
  engine:close()
  if not out then return nil, details end
  return out, details.verdict, walk
end

-- }==================================================================

-- {==================================================================
-- Lint
-- ===================================================================

local WARNING_TEXT = {
  unknown_tag = 'unknown tag "%s" is ignored (RFC 9989 §4.7)',
  tag_case = 'tag "%s" is not in lowercase: in RFC 9989 mode it is an unknown tag and ignored ' ..
    '(RFC 9989 §4.7)',
  bad_value = 'tag "%s" has a value that is not allowed; its default applies (RFC 9989 §4.7)',
  empty_value = 'tag "%s" has an empty value and is ignored (RFC 9989 §4.7)',
  syntax = 'syntax error near tag "%s"; the tag is ignored (RFC 9989 §4.7)',
  historic_tag = 'tag "%s" is historic in RFC 9989 (App. C.5.2) and is not processed',
  p_not_second = 'p is not the tag right after v (the order of RFC 7489 §6.4)',
  bad_uri = 'a %s URI is malformed and dropped (RFC 9990 §3.5)',
  too_many_uris = 'too many %s URIs: the excess is ignored',
  too_many_tags = 'too many tags: the excess is ignored',
  duplicate_tag = 'tag "%s" appears twice: the record is invalid (the tag-list rule of RFC 6376 §3.2)',
  invalid_policy = 'p, sp or np has an invalid value (RFC 9989 §4.10.1)',
  missing_p = 'no p tag (RFC 9989 §4.7)',
}

local function diag_message(d)
  -- The version's name is a case-insensitive ABNF literal in both modes (RFC 9989 4.8,
  -- RFC 5234 2.3): an uppercase V still makes a record, unlike any other tag.
  if d.code == 'tag_case' and d.tag == 'V' then
    return 'tag "V" is not in lowercase: it is read as the version all the same (RFC 9989 4.8), ' ..
      'but other tags in uppercase are ignored in RFC 9989 mode; write "v=DMARC1"'
  end
  local fmt = WARNING_TEXT[d.code]
  if not fmt then return d.code .. (d.tag and (' (' .. d.tag .. ')') or '') end
  return string.format(fmt, d.tag or '?')
end

local function add(list, code, message)
  list[#list + 1] = { code = code, message = message }
end

-- The DMARC TXT RRs of one answer, and the near misses that look like one but are not.
local function dmarc_rrs(answer, mode)
  local records, near = {}, {}
  for _, txt in ipairs(answer.records or {}) do
    if dmarc.is_record(txt, mode) then
      records[#records + 1] = txt
    elseif txt:lower():find('^%s*v%s*=%s*dmarc') then
      near[#near + 1] = txt
    end
  end
  return records, near
end

local function mailto_host(uri)
  local addr = uri:match('^[Mm][Aa][Ii][Ll][Tt][Oo]:([^?]+)')
  if not addr then return nil end
  return addr:match('@([^@]+)$')
end

-- [RUA-3]: a report destination at another Org Domain must authorise the policy domain.
local function check_destinations(resolver, report, rec, mode, policy_domain, policy_org)
  local checked = 0
  for _, kind in ipairs({ 'rua', 'ruf' }) do
    for _, u in ipairs(rec[kind] or {}) do
      local host = mailto_host(u.uri)
      if not u.mailto or not host then
        add(report.warnings, 'unsupported_uri', string.format(
          '%s %s: only mailto: URIs are used by receivers (RFC 9990 3.5)', kind, u.uri))
      elseif checked < M.MAX_URIS_CHECKED then
        checked = checked + 1
        local norm = dmarc.normalize_domain(host)
        local host_out = norm and discover(resolver, norm, mode)
        local host_org = host_out and host_out.org_domain or norm
        if norm and host_org ~= policy_org then
          local name = policy_domain .. '._report._dmarc.' .. norm
          local rcode, txts = resolver:resolve(name, 'TXT')
          local ok = false
          for _, t in ipairs(txts or {}) do
            if dmarc.is_record(t, 'rfc7489') then ok = true end
          end
          if rcode == 'servfail' or rcode == 'timeout' then
            add(report.warnings, 'rua_unverified', string.format(
              '%s %s: could not check the authorisation at %s (%s) (RFC 9990 §4)', kind, u.uri, name, rcode))
          elseif not ok then
            add(report.warnings, 'rua_unauthorised', string.format(
              '%s %s: %s is outside %s and publishes no authorisation at %s: receivers send no ' ..
              'reports there (RFC 9990 §4)', kind, u.uri, norm, policy_org, name))
          end
        end
      end
    end
  end
end

-- Every record met on the walk: duplicates, near misses, records at a TLD.
local function lint_walk(report, walk, mode)
  for _, answer in ipairs(walk) do
    if answer.type == 'TXT' and answer.name:find('^_dmarc%.') then
      local at = answer.name:sub(8)
      local records, near = dmarc_rrs(answer, mode)
      if answer.rcode == 'servfail' or answer.rcode == 'timeout' then
        add(report.errors, 'dns', string.format('%s: %s: the policy cannot be known now (RFC 9989 §5.3.6)',
          answer.name, answer.rcode))
      end
      if #records > 1 then
        add(report.errors, 'duplicate_records', string.format(
          '%s has %d DMARC records: all of them are discarded (%s)',
          answer.name, #records, mode == 'rfc9989' and 'the walk goes on to the parent, RFC 9989 §4.10'
          or 'DMARC is not applied, RFC 7489 §6.6.3'))
      end
      for _, txt in ipairs(near) do
        add(report.warnings, 'not_dmarc', string.format(
          '%s: "%s" looks like a DMARC record but is not one (v=DMARC1 then ";", RFC 9989 §4.8)',
          answer.name, txt:sub(1, 60)))
      end
      if #records == 1 and not at:find('%.') then
        local rec = dmarc.parse_record(records[1], mode)
        if rec and rec.psd ~= 'y' then
          add(report.warnings, 'tld_record', string.format(
            '%s is a record at a top-level domain without psd=y: it makes %s the Org Domain of ' ..
            'everything below it (RFC 9989 §4.10.2)', answer.name, at))
        end
      end
    end
  end
end

-- The errors the outcome itself says: no record, a DNS failure.
local function outcome_errors(report, out, verdict, domain)
  if out.result == 'none' then
    add(report.errors, 'no_record', 'no DMARC record applies to ' .. domain .. ' (RFC 9989 §4.10.1)')
  elseif out.result == 'temperror' then
    add(report.errors, 'temperror', 'DNS failure during discovery: ' .. tostring(verdict.error))
  end
end

-- The applied record, as published (report.record) and as the engine reads it: the
-- parsed record, or the verdict's when the published one is not found.
local function applied_record(report, out, verdict, walk, mode)
  local rec = verdict.record
  if out.policy_domain then
    for _, answer in ipairs(walk) do
      if answer.type == 'TXT' and answer.name == '_dmarc.' .. out.policy_domain then
        local records = dmarc_rrs(answer, mode)
        if #records == 1 then report.record = records[1] end
      end
    end
  end
  if report.record then
    local parsed, perr = dmarc.parse_record(report.record, mode)
    if parsed then
      rec = parsed
      if parsed.diag and parsed.diag ~= 'none' then
        -- The warning of the same code names the tag involved.
        local d = { code = parsed.diag }
        for _, wd in ipairs(parsed.warnings or {}) do
          if wd.code == parsed.diag then d = wd end
        end
        add(report.errors, parsed.diag, 'the record is not usable: ' .. diag_message(d))
      end
    else
      add(report.errors, 'parse', tostring(perr))
    end
  end
  if out.result == 'permerror' then
    add(report.errors, 'permerror', 'the record is not usable: ' .. tostring(verdict.error))
  end
  return rec
end

-- What the applied record's tags mean for a receiver: warnings, the effective tags, the
-- report destinations checked.
local function record_warnings(report, rec, mode, out, resolver)
  for _, d in ipairs(rec.warnings or {}) do
    local code = d.code
    if code ~= 'duplicate_tag' and code ~= 'invalid_policy' and code ~= 'missing_p' then
      add(report.warnings, code, diag_message(d))
    end
  end
  report.tags = M.effective_tags(rec, mode)
  if rec.p == 'none' and #(rec.rua or {}) == 0 then
    add(report.warnings, 'none_without_rua',
      'p=none without rua: no reports are sent, so the record only says "do nothing"')
  end
  if rec.as_none then
    add(report.warnings, 'as_none', 'an invalid p/sp/np with a valid rua: the whole record acts ' ..
      'as p=none (RFC 9989 §4.10.1)')
  end
  if rec.testing then
    add(report.warnings, 'testing', 't=y: failing mail gets the policy one level lower (RFC 9989 §4.7)')
  end
  if mode == 'rfc7489' and rec.pct < 100 then
    add(report.warnings, 'pct', string.format('pct=%d: the policy applies to %d%% of failing mail ' ..
      '(the rest is treated one level lower, RFC 7489 §6.6.4)', rec.pct, rec.pct))
  end
  if out.policy_domain and out.org_domain then
    check_destinations(resolver, report, rec, mode, out.policy_domain, out.org_domain)
  end
end

--- Inspect @domain: the report table (see the --json output).
function M.inspect(resolver, domain, mode)
  local report = {
    domain = domain, mode = mode, warnings = json.array(), errors = json.array(),
  }
  local out, verdict, walk = discover(resolver, domain, mode)
  if not out then
    add(report.errors, 'input', tostring(verdict))
    return report
  end
  report.walk = walk
  report.result = out.result
  report.policy = out.policy
  report.applied = out.applied
  report.policy_domain = out.policy_domain
  report.org_domain = out.org_domain
  report.flags = json.array(out.flags or {})
  lint_walk(report, walk, mode)
  outcome_errors(report, out, verdict, domain)
  local rec = applied_record(report, out, verdict, walk, mode)
  if rec then record_warnings(report, rec, mode, out, resolver) end
  return report
end

--- Every tag with its effective value and where it came from.
function M.effective_tags(rec, mode)
  local tags = json.array()
  local function tag(name, value, present, default_note)
    tags[#tags + 1] = { tag = name, value = value, source = present and 'record' or default_note }
  end
  tag('p', rec.p, rec.has_p, rec.as_none and 'as none (RFC 9989 §4.10.1)' or 'default')
  tag('sp', rec.sp, rec.has_sp, 'inherits p')
  tag('np', rec.np, rec.has_np, 'inherits sp')
  tag('adkim', rec.adkim == 'strict' and 's' or 'r', rec.has_adkim, 'default')
  tag('aspf', rec.aspf == 'strict' and 's' or 'r', rec.has_aspf, 'default')
  if mode == 'rfc9989' then
    tag('t', rec.testing and 'y' or 'n', rec.has_t, 'default')
    tag('psd', rec.psd, rec.has_psd, 'default')
  else
    tag('pct', tostring(rec.pct), rec.has_pct, 'default')
    tag('rf', rec.rf_afrf and 'afrf' or '', rec.has_rf, 'default')
    tag('ri', tostring(rec.ri), rec.has_ri, 'default')
  end
  tag('fo', rec.fo_text or '0', rec.has_fo, 'default')
  local function uris(list)
    local t = {}
    for _, u in ipairs(list or {}) do t[#t + 1] = u.uri end
    return table.concat(t, ',')
  end
  tag('rua', uris(rec.rua), rec.has_rua, 'none: no aggregate reports')
  tag('ruf', uris(rec.ruf), rec.has_ruf, 'none: no failure reports')
  return tags
end

-- }==================================================================

local function print_report(r)
  local w = function(...) io.stdout:write(...) end
  w('Domain:         ', r.domain, '\n')
  w('Mode:           ', r.mode, '\n')
  w('Walk:\n')
  for _, q in ipairs(r.walk or {}) do
    local what = q.rcode
    if q.rcode == 'noerror' and q.type == 'TXT' then what = what .. ' (' .. #q.records .. ' TXT)' end
    w('  ', q.name, ' ', q.type, ' -> ', what, '\n')
  end
  -- What happens to mail from the domain that nothing authenticates.
  w('Unauthenticated mail: dmarc=', tostring(r.result))
  if r.policy then w(', policy ', r.policy, ', applied ', tostring(r.applied)) end
  w('\n')
  if r.policy_domain then w('Policy domain:  ', r.policy_domain, '\n') end
  if r.org_domain then w('Org domain:     ', r.org_domain, '\n') end
  if r.record then w('Record:         ', r.record, '\n') end
  if r.tags then
    w('Effective tags:\n')
    for _, t in ipairs(r.tags) do
      w(string.format('  %-6s %-16s %s\n', t.tag, t.value == '' and '-' or t.value,
        t.source == 'record' and '' or ('(' .. t.source .. ')')))
    end
  end
  for _, x in ipairs(r.warnings) do w('Warning: ', x.message, '\n') end
  for _, x in ipairs(r.errors) do w('Error: ', x.message, '\n') end
end

--- Entry point: run(args) -> exit status.
function M.run(args)
  local opts, err = parse_args(args or {})
  if not opts then return common.usage_fail('dmarc inspect', err) end
  if opts.help then
    io.stdout:write(M.USAGE)
    return 0
  end
  local domain, derr = dmarc.normalize_domain(opts.domain)
  if not domain then
    return common.fail('dmarc inspect',
                     'not a domain name: ' .. opts.domain .. ' (' .. tostring(derr) .. ')', 2)
  end
  local resolver
  resolver, err = common.resolver(opts)
  if not resolver then return common.fail('dmarc inspect', 'DNS: ' .. tostring(err), 2) end
  local report = M.inspect(resolver, domain, opts.mode)
  resolver:close()
  if opts.json then
    io.stdout:write(json.encode(report), '\n')
  else
    print_report(report)
  end
  return #report.errors > 0 and 1 or 0
end

return M
