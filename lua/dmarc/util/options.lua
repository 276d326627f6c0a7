--- Command-line options, one parser for every command, and the lookup of one setting
-- (command line, then config file, then default).
--
--   local options = require 'dmarc.util.options'
--   local opts, operands = options.parse(args, { values = { zone = true } })
-- @module dmarc.util.options

local M = {}

-- {==================================================================
-- Command lines
-- ===================================================================

-- One option at args[i] (--name, --name=VALUE, -h): sets st.opts.
-- @return the index of the last argument it took (i, or i + 1 for a separate value), or
--   nil, message
local function take_option(st, name, inline, a, i)
  local spec, opts = st.spec, st.opts
  if name == 'help' or st.flags[name] then
    if inline ~= nil and not spec.lenient then
      if st.report_style then return nil, 'option --' .. name .. ' takes no value' end
      return nil, st.unknown(a)
    end
    opts[name] = true
    return i
  end
  if not (st.values[name] or st.repeated[name] or spec.lenient) then return nil, st.unknown(a, name) end
  local v = inline
  if v == nil then
    i = i + 1
    v = st.args[i]
    if v == nil then
      return nil, (st.report_style and 'option --' or '--') .. name .. ' needs a value'
    end
  end
  if st.repeated[name] then
    local list = opts[name]
    if #list >= st.max_repeats then return nil, 'too many --' .. name end
    list[#list + 1] = v
  elseif spec.once and opts[name] ~= nil then
    return nil, '--' .. name .. ' given twice'
  else
    opts[name] = v
  end
  return i
end

--- Parse command-line arguments: `--name VALUE`, `--name=VALUE`, flags, `-h` (--help), and
-- operands. --help is always a flag. Problems come back as a message in the wording of the
-- command family (spec.style), never as a raise.
-- @param args {table} the arguments, in order
-- @param spec {table}
--   values       {set} options that take a value
--   flags        {set} options that take none
--   repeated     {set} value options that may be given again: opts[name] is a list of at
--                most max_repeats values (an empty list when absent)
--   max_repeats  {number} bound of each repeated list (default 100)
--   once         a value option given twice is an error (otherwise the last one counts)
--   max_operands {number} more operands than this are an error, told as too_many_operands
--   dash_operand a lone '-' (standard input) is an operand (default true; false: it is an
--                unknown option)
--   lenient      every --name is accepted: names in neither set take a value, a flag given
--                a value is just set, and '-x' is an operand (the `dmarc report` dispatcher)
--   style        'report': the wording of `dmarc report` and its subcommands (unknown
--                option --NAME, option --NAME needs a value), where '--' ends the options
--                (an operand when lenient); default: the wording of the other commands
--                (unknown option "ARG"), where '--' is an unknown option
-- @return opts (name -> value, true or list), operands (array); or nil, message
function M.parse(args, spec)
  local report_style = spec.style == 'report'
  local st = {
    spec = spec, args = args, opts = {}, report_style = report_style,
    values = spec.values or {}, flags = spec.flags or {}, repeated = spec.repeated or {},
    max_repeats = spec.max_repeats or 100,
  }
  local opts, operands = st.opts, {}
  for name in pairs(st.repeated) do opts[name] = {} end
  -- An unknown option, named by its name (report style) or as it was given.
  function st.unknown(arg, name)
    if not report_style then return 'unknown option "' .. arg .. '"' end
    if name then return 'unknown option --' .. name end
    return 'unknown option ' .. arg
  end
  local function add_operand(a)
    if spec.max_operands and #operands >= spec.max_operands then return false end
    operands[#operands + 1] = a
    return true
  end
  local i = 1
  -- Each round takes one argument, or two for an option and its value: at most #args rounds.
  while i <= #args do
    local a = args[i]
    local name, inline = a:match('^%-%-([%w-]+)=(.*)$')
    if not name then name = a:match('^%-%-([%w-]+)$') end
    if a == '-h' then name = 'help' end
    if name then
      local last, err = take_option(st, name, inline, a, i)
      if not last then return nil, err end
      i = last
    elseif a == '--' and report_style and not spec.lenient then
      for j = i + 1, #args do
        if not add_operand(args[j]) then return nil, spec.too_many_operands end
      end
      break
    elseif a:sub(1, 1) == '-' and not spec.lenient
        and (a ~= '-' or spec.dash_operand == false) then
      return nil, st.unknown(a)
    elseif not add_operand(a) then
      return nil, spec.too_many_operands
    end
    i = i + 1
  end
  return opts, operands
end

--- The value of one option: the command line first, then the config file (the name with
-- '_' for '-': --max-rows is max_rows there), then @default.
-- @param opts {table} parsed options
-- @param conf {table} the config file's table ({} without one)
-- @param name {string} the option's name on the command line
-- @param default {any}
function M.setting(opts, conf, name, default)
  local v = opts[name]
  if v ~= nil then return v end
  v = conf[(name:gsub('%-', '_'))]
  if v ~= nil then return v end
  return default
end

-- }==================================================================

return M
