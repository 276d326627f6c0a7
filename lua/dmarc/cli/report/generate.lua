--- `dmarc report generate [--date D | --from T --to T] [--format rfc9990|rfc7489] --out DIR`:
-- write one aggregate report per policy domain and period from the rows in Redis (XML, gzip,
-- one RFC 5322 message per rua destination, a manifest for `send`). Run by bin/dmarc as
-- `dmarc report generate`; the generate step itself is shared with `send` (dmarc.cli.common).
-- @module dmarc.cli.report.generate

local common = require 'dmarc.cli.common'

local M = {}

--- Entry point: run(args) -> exit status (args: those after `generate`).
function M.run(args)
  return common.report_run('generate', args, common.report_generate)
end

return M
