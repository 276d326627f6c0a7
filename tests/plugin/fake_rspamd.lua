--- A fake rspamd 3.4 for the plugin's unit tests: rspamd_config, the Lua libraries the plugin
-- requires (rspamd_logger, lua_util, lua_redis, rspamd_util) and tasks with a resolver whose
-- answers a test scripts. Only what plugins/rspamd/dmarc_engine.lua uses, with rspamd's
-- calling conventions (callback resolver, lua_redis callbacks, set_pre_result arguments).
local M = {}

local PLUGIN = 'plugins/rspamd/dmarc_engine.lua'
local LIBS = { 'rspamd_logger', 'lua_util', 'lua_redis', 'rspamd_util' }

-- rspamd_logger formats %s (any value) and %1 style is not used by the plugin.
local function format(fmt, ...)
  local args, i = { ... }, 0
  return (tostring(fmt):gsub('%%s', function()
    i = i + 1
    return tostring(args[i])
  end))
end

local function deep_merge(def, over)
  if type(over) ~= 'table' then return over end
  if type(def) ~= 'table' then return over end
  local out = {}
  for k, v in pairs(def) do out[k] = v end
  for k, v in pairs(over) do
    if type(v) == 'table' and type(def[k]) == 'table' and #v == 0 and next(v) ~= nil then
      out[k] = deep_merge(def[k], v)
    else
      out[k] = v
    end
  end
  return out
end

--- A fresh environment. opts.config: section name -> options (what get_all_opt returns);
-- opts.redis: the fake Redis ({ data = {key = value}, down = bool, eval = function(script,
-- keys, args) -> reply (a script's reply; default 1) }).
-- Returns env with .log (entries {level=, msg=}), .symbols (registered), .deps, .disabled,
-- .redis, and env:load() -> the plugin's exports.
--- An EVAL (args: script, numkeys, keys..., arguments...) on the fake server: each script
-- is listed once in redis.scripts, in the order first run, with its runs (keys, arguments,
-- the routing key, the task or nil from a timer). Redis down: not sent (false).
function M.eval(redis, task, key, is_write, cb, args)
  if redis.down then return false end
  local script
  for _, s in ipairs(redis.scripts) do
    if s.script == args[1] then script = s end
  end
  if not script then
    script = { script = args[1], runs = {} }
    redis.scripts[#redis.scripts + 1] = script
  end
  local nkeys = tonumber(args[2])
  local keys, argv = {}, {}
  for i = 3, 2 + nkeys do keys[#keys + 1] = args[i] end
  for i = 3 + nkeys, #args do argv[#argv + 1] = args[i] end
  script.runs[#script.runs + 1] = { keys = keys, args = argv, key = key, write = is_write,
                                    task = task }
  local function reply() cb(nil, redis.eval and redis.eval(script.script, keys, argv) or 1) end
  -- redis.defer: replies wait in redis.unanswered until the test answers them.
  if redis.defer then
    redis.unanswered = redis.unanswered or {}
    redis.unanswered[#redis.unanswered + 1] = reply
  else
    reply()
  end
  return true
end

function M.new(opts)
  opts = opts or {}
  local env = {
    config = opts.config or {},
    log = {},
    symbols = {},
    deps = {},
    disabled = {},
    redis = opts.redis or { data = {}, down = false, requests = {}, scripts = {} },
  }
  env.redis.requests = env.redis.requests or {}
  env.redis.scripts = env.redis.scripts or {}

  -- Each entry keeps what it was logged for (rspamd_config or a task: the task id).
  local function logf(level)
    return function(target, fmt, ...)
      env.log[#env.log + 1] = { level = level, msg = format(fmt, ...), target = target }
    end
  end

  local libs = {}
  libs.rspamd_logger = {
    errx = logf('error'), warnx = logf('warn'), infox = logf('info'),
    debugm = function() end,
  }
  libs.lua_util = {
    override_defaults = deep_merge,
    disable_module = function(name, how) env.disabled[#env.disabled + 1] = { name = name, how = how } end,
    is_skip_local_or_authed = function() return false end,
    is_rspamc_or_controller = function(task) return task.rspamc == true end,
    debugm = function() end,
  }
  local redis = env.redis
  libs.lua_redis = {
    -- As lua_redis: the options given, else the module's section, else redis { }.
    parse_redis_server = function(module_name, module_opts)
      local servers = (module_opts and module_opts.servers)
        or (env.config[module_name] or {}).servers or (env.config.redis or {}).servers
      if not servers then return nil end
      return { servers = servers }
    end,
    redis_make_request = function(task, params, key, is_write, cb, cmd, args)
      if cmd == 'EVAL' then return M.eval(redis, task, key, is_write, cb, args) end
      redis.requests[#redis.requests + 1] = { cmd = cmd, args = args, key = key, write = is_write }
      if redis.down then return false end
      if cmd == 'MGET' then
        local values = {}
        for i, k in ipairs(args) do values[i] = redis.data[k] or M.null end
        cb(nil, values)
      else
        cb(nil, 'OK')
      end
      return true, {}, params
    end,
    -- From a worker's timer: no task.
    redis_make_request_taskless = function(_, _, _, key, is_write, cb, cmd, args)
      if cmd == 'EVAL' then return M.eval(redis, nil, key, is_write, cb, args) end
      error('fake lua_redis: taskless ' .. tostring(cmd) .. ' is not modelled')
    end,
  }
  libs.rspamd_util = {
    get_hostname = function() return 'fake.host' end,
    mime_header_encode = function(s) return '=?UTF-8?B?' .. s .. '?=' end,
  }
  env.libs = libs
  -- The runs of @script on the fake server, listed before it first runs if need be.
  env.script_runs = function(script)
    for _, s in ipairs(redis.scripts) do
      if s.script == script then return s.runs end
    end
    redis.scripts[#redis.scripts + 1] = { script = script, runs = {} }
    return redis.scripts[#redis.scripts].runs
  end

  env.rspamd_config = {
    get_all_opt = function(_, name) return env.config[name] end,
    get_all_actions = function() return { reject = 15, ['add header'] = 6 } end,
    register_symbol = function(_, t)
      env.symbols[t.name] = t
      return t.name
    end,
    register_dependency = function(_, from, to)
      env.deps[#env.deps + 1] = { from, to }
    end,
    -- Worker start, timers and exit: kept, and run by env.start_worker, env.tick and
    -- env.finish_worker.
    add_on_load = function(_, f) env.on_load[#env.on_load + 1] = f end,
    add_periodic = function(_, ev_base, _, f) env.periodic[#env.periodic + 1] = { f, ev_base } end,
    register_finish_script = function(_, f) env.finish[#env.finish + 1] = f end,
  }
  env.on_load, env.periodic, env.finish = {}, {}, {}
  function env.start_worker()
    for _, f in ipairs(env.on_load) do f(env.rspamd_config, 'ev_base', nil) end
  end
  function env.tick()
    for _, p in ipairs(env.periodic) do p[1](env.rspamd_config, p[2]) end
  end
  function env.finish_worker(task)
    for _, f in ipairs(env.finish) do f(task) end
  end

  --- Load the plugin in this environment; returns its exports.
  function env.load()
    -- As in rspamd 3.4 on LuaJIT: its lualib/lupa.lua replaces the global `load` of Lua 5.1
    -- with one that drops the chunk name and the mode (and it stays replaced).
    if _VERSION == 'Lua 5.1' and not M.lupa_load then
      M.lupa_load = function(ld, _, _, fenv)
        local f, err = loadstring(ld)
        if f and fenv then return setfenv(f, fenv) end
        return f, err
      end
      _G.load = M.lupa_load
    end
    for _, name in ipairs(LIBS) do
      package.loaded[name] = libs[name]
    end
    local saved_path, saved_cpath = package.path, package.cpath
    _G.rspamd_config = env.rspamd_config
    _G.confighelp = nil
    local chunk = assert(loadfile(PLUGIN))
    local ok, exports = pcall(chunk)
    _G.rspamd_config = nil
    package.path, package.cpath = saved_path, saved_cpath
    for _, name in ipairs(LIBS) do package.loaded[name] = nil end
    assert(ok, exports)
    env.exports = exports
    return exports
  end

  --- The log lines at @level (all levels when nil) joined with newlines.
  function env.log_text(level)
    local out = {}
    for _, e in ipairs(env.log) do
      if not level or e.level == level then out[#out + 1] = e.level .. ': ' .. e.msg end
    end
    return table.concat(out, '\n')
  end

  return env
end

--- Redis' nil in lua_redis replies.
M.null = setmetatable({}, { __tostring = function() return 'redis.null' end })

-- {==================================================================
-- Tasks
-- ===================================================================

local Task = {}
Task.__index = Task

local Ip = {}
Ip.__index = Ip
function Ip:is_valid() return self.addr ~= nil end
function Ip:to_string() return self.addr end
function Ip.is_local() return false end

--- A task. spec: from (array of raw From values), headers ({Name = {values}}), raw_headers
-- (the header block as received; default: the From fields and `headers`), symbols
-- (array of names present), mail_from, helo, ip, rcpt (array), dkim (rspamd dkim results),
-- dns ({[name] = {results = {...}} | {err = '...'} | 'unsent'}), async_dns (answers wait for
-- task:flush_dns()), dmarc_checks (mempool), rspamc.
function M.task(spec)
  spec = spec or {}
  local headers = {}
  for name, values in pairs(spec.headers or {}) do headers[name:lower()] = values end
  if spec.from then headers.from = spec.from end
  local t = setmetatable({
    spec = spec,
    headers = headers,
    present = {},
    results = {},
    pre_results = {},
    messages = {},
    milter = nil,
    pool = {},
    queued = {},
    dns_asked = {},
    rspamc = spec.rspamc,
  }, Task)
  for _, s in ipairs(spec.symbols or {}) do t.present[s] = true end
  t.pool.dmarc_checks = spec.dmarc_checks or 2
  return t
end

function Task:get_header_full(name)
  local out = {}
  for i, v in ipairs(self.headers[name:lower()] or {}) do
    out[i] = { name = name, value = v, decoded = v }
  end
  return out
end
function Task:get_header_count(name) return #(self.headers[name:lower()] or {}) end
function Task:get_header_raw(name) return (self.headers[name:lower()] or {})[1] end
function Task:get_header(name) return (self.headers[name:lower()] or {})[1] end
function Task:has_symbol(name) return self.present[name] == true or self.results[name] ~= nil end
function Task:get_from(kind)
  if kind == 'smtp' and self.spec.mail_from then
    local addr = self.spec.mail_from
    return { { addr = addr, domain = addr:match('@(.+)$') or '' } }
  end
  return nil
end
function Task:get_helo() return self.spec.helo end
function Task:get_from_ip() return setmetatable({ addr = self.spec.ip }, Ip) end
function Task:get_recipients()
  local out = {}
  for i, r in ipairs(self.spec.rcpt or {}) do out[i] = { addr = r } end
  return out
end
function Task:get_dkim_results() return self.spec.dkim or {} end
function Task:get_raw_headers()
  if self.spec.raw_headers then return self.spec.raw_headers end
  local lines = {}
  for _, v in ipairs(self.headers.from or {}) do lines[#lines + 1] = 'From: ' .. v end
  for name, values in pairs(self.spec.headers or {}) do
    for _, v in ipairs(values) do lines[#lines + 1] = name .. ': ' .. v end
  end
  return table.concat(lines, '\r\n') .. '\r\n'
end
function Task:get_content() return self.spec.content or '' end
function Task.get_date() return 1795305600 end
function Task.get_request_header() return nil end
function Task:get_mempool()
  local pool = self.pool
  return {
    get_variable = function(_, name) return pool[name] end,
    set_variable = function(_, name, value) pool[name] = value end,
  }
end
function Task:insert_result(name, weight, ...)
  local opts = ...
  if type(opts) ~= 'table' then opts = { ... } end
  self.results[name] = { weight = weight, options = opts }
end
function Task:set_pre_result(action, message, module, score, priority, flags)
  self.pre_results[#self.pre_results + 1] = {
    action = action, message = message, module = module, flags = flags,
    score = score, priority = priority,
  }
end
function Task:append_message(message, category) self.messages[category or 'unknown'] = message end
function Task:set_milter_reply(reply) self.milter = reply end

--- The resolver: answers from spec.dns (by name, whatever the type; a PTR question by
-- 'ptr:<address>', the address rspamd's resolve_ptr takes); NXDOMAIN for names not listed.
function Task:get_resolver()
  local task = self
  local function answer(name, args)
    task.dns_asked[#task.dns_asked + 1] = name
    local a = (task.spec.dns or {})[name]
    if a == 'unsent' then return false end
    local function fire()
      if a == nil then return args.callback(nil, name, nil, 'no records with this name') end
      if a.err then return args.callback(nil, name, nil, a.err) end
      return args.callback(nil, name, a.results, nil)
    end
    if task.spec.async_dns then
      task.queued[#task.queued + 1] = fire
    else
      fire()
    end
    return true
  end
  return {
    resolve_txt = function(_, args) return answer(args.name, args) end,
    resolve_a = function(_, args) return answer(args.name, args) end,
    resolve_mx = function(_, args) return answer(args.name, args) end,
    resolve_ptr = function(_, args) return answer('ptr:' .. args.name, args) end,
    resolve = function(_, qtype, args)
      return answer(qtype == 'ptr' and ('ptr:' .. args.name) or args.name, args)
    end,
  }
end

--- Deliver queued (asynchronous) DNS answers, as rspamd's event loop would.
function Task:flush_dns()
  local rounds = 0
  while #self.queued > 0 and rounds < 100 do
    rounds = rounds + 1
    local q = self.queued
    self.queued = {}
    for _, f in ipairs(q) do f() end
  end
end

--- Options of an inserted symbol, or nil.
function Task:options(name)
  local r = self.results[name]
  return r and r.options
end

--- Headers added through the milter reply: name -> value.
function Task:added_headers()
  local out = {}
  for name, v in pairs((self.milter or {}).add_headers or {}) do out[name] = v.value end
  return out
end

return M
