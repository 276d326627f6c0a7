--- Whole-file reads and writes whose failures are errors, never short data.
--
--   local files = require 'dmarc.util.files'
--   local data, err = files.read(path)
-- @module dmarc.util.files

local M = {}

-- {==================================================================
-- Files
-- ===================================================================

--- The whole content of a file.
-- @param path {string}
-- @return {string} data, or nil, message
function M.read(path)
  local f, err = io.open(path, 'rb')
  if not f then return nil, err end
  -- A directory opens, then fails to read: that is an error too, not a nil to crash on.
  local data, rerr = f:read('*a')
  f:close()
  if data == nil then return nil, path .. ': ' .. tostring(rerr or 'cannot be read') end
  return data
end

--- Write @data to @path, replacing the file, and close it: a full disk shows up as an error
-- (of the write or of the close), never as a short file taken for a good one.
-- @param path {string}
-- @param data {string}
-- @return true, or nil, message
function M.write(path, data)
  local f, err = io.open(path, 'wb')
  if not f then return nil, err end
  local ok, werr = f:write(data)
  local closed, cerr = f:close()
  if not ok then return nil, werr end
  if not closed then return nil, cerr end
  return true
end

-- }==================================================================

return M
