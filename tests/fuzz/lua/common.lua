-- Helpers shared by the Lua fuzz targets (tests/fuzz/fuzz_lua.c runs them).
local M = {}

--- Raise (the driver aborts on it) when @cond is false: a broken invariant.
function M.check(cond, what, ...)
  if not cond then error('invariant broken: ' .. what .. ' ' .. table.concat({ ... }, ' '), 2) end
end

--- A failure return must be nil, message (string), code (string).
function M.check_fail(what, v, msg, code)
  M.check(v == nil, what .. ': failure with a value')
  M.check(type(msg) == 'string' and msg ~= '', what .. ': failure without a message')
  M.check(type(code) == 'string' and code ~= '', what .. ': failure without a code')
end

return M
