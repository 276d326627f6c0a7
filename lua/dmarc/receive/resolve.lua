--- Drivers of the query loop of a dmarc.eval.
--
-- The core never does I/O: ev:run() returns false when it needs a DNS
-- answer, ev:query() tells the question, ev:answer() feeds the answer in.
-- These drivers run that loop with a synchronous resolver (tests, the CLI)
-- or with a callback-style asynchronous one (Rspamd's resolve_txt). No
-- coroutines: Rspamd 3.4's yielding calls crash workers under load.
--
-- A resolver answers with rcode, txts, ttl:
--   rcode  'noerror' | 'nodata' | 'nxdomain' | 'servfail' | 'timeout'
--          (nil counts as 'servfail': an answer that never came is transient)
--   txts   array of TXT RRs; each a string or an array of strings joined
--          with no separator [REC-1] (nil: none)
--   ttl    seconds for the shared cache [DISC-11] (nil: 0)
--
-- @module dmarc.receive.resolve

local core = require 'dmarc.core'

local M = {}

-- Every false from ev:run() hands out one question, and one evaluation asks
-- at most DMARC_EVAL_MAX_QUERIES; a loop longer than that is a core bug, so
-- the drivers stop there instead of spinning.
M.MAX_STEPS = core.limits.eval_max_queries + 2

local RCODES = {
  noerror = true, nodata = true, nxdomain = true, servfail = true, timeout = true,
}
local MAX_TTL = 4294967295

--- Normalize a resolver's answer (raises on a malformed one: a resolver bug).
-- @return rcode, txts, ttl ready for ev:answer
function M.normalize_answer(rcode, txts, ttl)
  if rcode == nil then
    rcode = 'servfail'
  elseif type(rcode) ~= 'string' or not RCODES[rcode:lower()] then
    error('resolver: unknown rcode ' .. tostring(rcode), 0)
  else
    rcode = rcode:lower()
  end
  local list = {}
  if txts ~= nil then
    if type(txts) ~= 'table' then error('resolver: txts must be an array', 0) end
    -- Only the first core.limits.answer_max_rrs RRs are read by the core.
    for i = 1, math.min(#txts, core.limits.answer_max_rrs) do
      local rr = txts[i]
      if type(rr) == 'table' then rr = table.concat(rr) end
      if type(rr) ~= 'string' then error('resolver: a TXT record must be a string', 0) end
      list[i] = rr
    end
  end
  ttl = tonumber(ttl) or 0
  if ttl ~= ttl or ttl < 0 then ttl = 0 end
  if ttl > MAX_TTL then ttl = MAX_TTL end
  return rcode, list, math.floor(ttl)
end

local function feed(ev, rcode, txts, ttl)
  rcode, txts, ttl = M.normalize_answer(rcode, txts, ttl)
  ev:answer(rcode, txts, ttl)
end

--- Run the loop to the end with a synchronous resolver.
-- Errors of the resolver or the core are raised.
-- @param ev {dmarc.eval} with its inputs added
-- @param resolve {function} (name, qtype) -> rcode, txts, ttl
-- @return true
function M.run_sync(ev, resolve)
  for _ = 1, M.MAX_STEPS do
    if ev:run() then return true end
    local name, qtype = ev:query()
    feed(ev, resolve(name, qtype))
  end
  error('dmarc.receive.resolve: the evaluation did not finish within its query bound', 0)
end

--- Run the loop with a callback-style resolver.
-- resolve_async(name, qtype, cb) starts a lookup and later calls
-- cb(rcode, txts, ttl) once; each answer feeds the core and issues the next
-- question. A resolver may also call cb before it returns (from a cache):
-- that is handled without recursion. Extra or late calls of cb are ignored.
-- on_done(true) or on_done(nil, message) is called exactly once; an error
-- raised by on_done itself propagates to whoever triggered it.
-- @param ev {dmarc.eval} with its inputs added
-- @param resolve_async {function} (name, qtype, cb)
-- @param on_done {function} (ok, message)
function M.run_async(ev, resolve_async, on_done)
  local done = false
  local steps = 0

  local function finish(ok, err)
    if done then return end
    done = true
    on_done(ok, err)
  end

  local advance
  -- The trampoline: one loop iteration per question. A synchronous answer
  -- leaves its values for the loop; an asynchronous one re-enters advance.
  advance = function()
    while not done do
      steps = steps + 1
      if steps > M.MAX_STEPS then
        return finish(nil, 'dmarc.receive.resolve: the evaluation did not finish within its query bound')
      end
      local ok, finished = pcall(ev.run, ev)
      if not ok then return finish(nil, tostring(finished)) end
      if finished then return finish(true) end
      local name, qtype = ev:query()

      local in_call, called, sync_answer = true, false, nil
      local function cb(rcode, txts, ttl)
        if called or done then return end
        called = true
        if in_call then
          sync_answer = { rcode, txts, ttl }
          return
        end
        local fed, err = pcall(feed, ev, rcode, txts, ttl)
        if not fed then return finish(nil, tostring(err)) end
        advance()
      end

      local started, err = pcall(resolve_async, name, qtype, cb)
      in_call = false
      if not started then
        called = true -- a late callback must not feed the core any more
        return finish(nil, tostring(err))
      end
      if not sync_answer then return end -- the callback comes later
      local fed, ferr = pcall(feed, ev, sync_answer[1], sync_answer[2], sync_answer[3])
      if not fed then return finish(nil, tostring(ferr)) end
    end
  end

  advance()
end

return M
