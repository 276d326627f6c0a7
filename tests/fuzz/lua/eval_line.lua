-- Fuzz target: one `dmarc eval` input line (JSON: From, SPF / DKIM results, the `dns` map read
-- by dmarc.json_dns) through dmarc.cli.eval.process_line: always one output line or a skip.
local eval = require 'dmarc.cli.eval'
local c = require 'common'

return function(data)
  local out = eval.process_line(data)
  c.check(out == nil or (type(out) == 'string' and not out:find('\n')), 'one output line')
end
