-- bench_check.lua MESSAGE: the `dmarc check` path as the command runs it (dmarc.receive.auth.check:
-- message split, SPF, DKIM, ARC, DMARC through dmarc.evaluate; then the default site
-- decision and the Authentication-Results field), against DKIM alone through the same
-- binding (r:dkim), DNS from examples/example.zone through a warm cache. CPU time (os.clock).
-- Set up as a long-running scanner would be: one resolver, one site policy and one evaluation
-- engine with its answer cache, all made once and reused for every message.
package.path = './lua/?.lua;' .. package.path
local flavour = (type(jit) == 'table') and 'luajit' or 'lua5.4'
package.cpath = './' .. (os.getenv('BUILD') or 'build') .. '/' .. flavour .. '/?.so;' .. package.cpath

local dmarc = require 'dmarc'
local dio = require 'dmarc.io'
local auth = require 'dmarc.receive.auth'
local policy = require 'dmarc.site.policy'

local path = arg[1] or 'build/bench/check_8k.eml'
local f = assert(io.open(path, 'rb'))
local text = f:read('*a')
f:close()

local RUNS = tonumber(os.getenv('BENCH_RUNS')) or 7
local RUN_S = (tonumber(os.getenv('BENCH_RUN_MS')) or 200) / 1000

local r = assert(dio.resolver{ zone = 'examples/example.zone' })
local site = assert(policy.new({}))
local engine = dmarc.new{ cache_size = 1000 }
-- As `dmarc check` without Redis: no report rows, so no evaluation details.
local opts = { ip = '192.0.2.10', helo = 'mx.example.com', mail_from = 'news@example.com', roll = 0,
  engine = engine, details = false }

local function check()
  local res = assert(auth.check(r, text, opts))
  local decision = site:evaluate(res.dmarc, auth.policy_ctx(res, opts), nil)
  auth.format_ar(res, 'mx.example.org', decision)
  return res.dmarc.result
end

local function dkim_only()
  return assert(r:dkim(text)).signatures[1].result
end

assert(check() == 'pass', 'the message does not pass DMARC: nothing to time')
assert(dkim_only() == 'pass')

local function time(fn)
  local n, t0 = 0, os.clock()
  local t1 = t0
  while t1 - t0 < RUN_S do
    fn()
    n = n + 1
    t1 = os.clock()
  end
  return (t1 - t0) / n * 1e6
end

local t_dkim, t_check = {}, {}
for i = 1, RUNS do
  t_dkim[i] = time(dkim_only)
  t_check[i] = time(check)
end
table.sort(t_dkim)
table.sort(t_check)
local function line(what, t)
  print(string.format('%-44s min %9.1f us  median %9.1f us  max %9.1f us', what, t[1],
    t[math.floor(#t / 2) + 1], t[#t]))
end
print(string.format('%s, %d bytes, %d runs of %.0f ms, process CPU time', flavour, #text, RUNS,
  RUN_S * 1000))
line('r:dkim (libopendkim through dmarc.io)', t_dkim)
line('dmarc check path (auth.check + site + A-R)', t_check)
print(string.format('ratio of medians (check / dkim): %.2f',
  t_check[math.floor(#t_check / 2) + 1] / t_dkim[math.floor(#t_dkim / 2) + 1]))

-- BENCH_PHASES=1: where the check's time goes, phase by phase (each timed alone, in a loop,
-- so the sum is a little below the whole: the whole also pays for cache misses between them).
if os.getenv('BENCH_PHASES') then
  local message = require 'dmarc.receive.message'
  local res = assert(auth.check(r, text, opts))
  local msg = assert(message.parse(text))
  local ctx = auth.policy_ctx(res, opts)
  local decision = site:evaluate(res.dmarc, ctx, nil)
  local input = {
    from = msg:get('from'), roll = 0,
    resolve = function(name, qtype) return r:resolve(name, qtype) end,
    spf = { result = res.spf.result, domain = res.spf.domain, scope = res.spf.scope },
    dkim = { { result = 'pass', domain = res.dkim.signatures[1].domain,
      selector = res.dkim.signatures[1].selector } },
  }
  local eval_opts = { details = true }
  local phases = {
    { 'message.parse', function() message.parse(text) end },
    { 'r:spf (mfrom + helo)', function()
      r:spf{ ip = opts.ip, helo = opts.helo, mail_from = opts.mail_from }
      r:spf{ ip = opts.ip, helo = opts.helo, identity = 'helo' }
    end },
    { 'r:dkim', dkim_only },
    { 'auth.arc_verdict', function() auth.arc_verdict(msg, opts) end },
    { 'engine:evaluate (details)', function() engine:evaluate(input, eval_opts) end },
    { 'auth.policy_ctx + site:evaluate', function()
      site:evaluate(res.dmarc, auth.policy_ctx(res, opts), nil)
    end },
    { 'auth.format_ar', function() auth.format_ar(res, 'mx.example.org', decision) end },
  }
  for _, p in ipairs(phases) do
    local t = {}
    for i = 1, 3 do t[i] = time(p[2]) end
    table.sort(t)
    print(string.format('  phase %-36s median %8.2f us', p[1], t[2]))
  end
end
