--- Resolvers for tests: synchronous, asynchronous with a queue the test
-- pumps, and misbehaving ones. All answer from a `dns` map with the
-- semantics of dmarc.receive.json_dns, and log every question.
local json_dns = require 'dmarc.receive.json_dns'

local M = {}

--- A synchronous resolver over @map; .log holds 'NAME/TYPE' strings.
function M.sync(map)
  local lookup = assert(json_dns.resolver(map))
  local r = { log = {} }
  setmetatable(r, {
    __call = function(self, name, qtype)
      self.log[#self.log + 1] = name .. '/' .. qtype
      return lookup(name, qtype)
    end,
  })
  return r
end

--- An asynchronous resolver: questions wait in .queue until :pump().
-- @param how nil (deferred), 'now' (calls back before returning), 'twice'
--   (calls back twice, now), 'raise' (raises instead of starting)
function M.async(map, how)
  local lookup = assert(json_dns.resolver(map))
  local r = { log = {}, queue = {} }
  r.fn = function(name, qtype, cb)
    r.log[#r.log + 1] = name .. '/' .. qtype
    if how == 'raise' then error('resolver down', 0) end
    if how == 'now' then return cb(lookup(name, qtype)) end
    if how == 'twice' then
      cb(lookup(name, qtype))
      return cb('servfail')
    end
    r.queue[#r.queue + 1] = function() cb(lookup(name, qtype)) end
  end
  --- Answer the waiting questions one at a time until none is left.
  function r.pump(limit)
    local n = 0
    while #r.queue > 0 do
      n = n + 1
      if limit and n > limit then break end
      table.remove(r.queue, 1)()
    end
    return n
  end
  return r
end

return M
