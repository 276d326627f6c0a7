-- dmarc.site.sandbox: what site code can make the host do is bounded, in Lua instructions,
-- in the library's C work and in memory, on Lua 5.4 and LuaJIT alike.
local sandbox = require 'dmarc.site.sandbox'

local logger = { info = function() end }

-- Runs script text @src in a fresh sandbox environment: ok, result or message, code, seconds.
local function run(src, budget)
  local env = sandbox.env(logger, 't.lua')
  local chunk
  if rawget(_G, 'setfenv') then
    chunk = assert(loadstring(src, '@t.lua'))
    setfenv(chunk, env)
  else
    chunk = assert(load(src, '@t.lua', 't', env))
  end
  if type(jit) == 'table' then jit.off(chunk, true) end
  local t0 = os.clock()
  local ok, res, code = sandbox.call(env, budget or 100000, 't.lua', chunk)
  return ok, res, code, os.clock() - t0
end

describe('site sandbox: library work in C', function()
  it('refuses a pattern whose backtracking on a long subject has no end in sight', function()
    local ok, msg, code, secs = run('local s = ("a"):rep(30000)\nreturn s:find("a-a-a-a-a-a-a-b")')
    assert.is_false(ok)
    assert.equal('runtime', code)
    assert.matches('string.find: pattern "a%-a%-a%-a%-a%-a%-a%-b" is too costly for a subject ' ..
      'of 30000 bytes', msg)
    assert.is_true(secs < 1)
  end)

  it('refuses it in every pattern function, method or library call', function()
    for _, call in ipairs({ 's:match("a-a-a-b")', 'string.find(s, "(a*)*b")',
                            's:gsub("a-a-a-b", "x")', 'string.gmatch(s, "a-a-b")' }) do
      -- (Not a tail call: its frame, and so its line, is kept.)
      local ok, msg = run('local s = ("a"):rep(30000)\nlocal r = ' .. call .. '\nreturn r')
      assert.is_false(ok, call)
      assert.matches('t%.lua:2: string%.%a+: pattern', msg, 1)
    end
  end)

  it('lets the patterns site scripts use run, on what a message gives them', function()
    local ok, a, _ = run([[
      local user, domain = ("alice.smith@mail.example.com"):match("^(.-)@(.+)$")
      local n = 0
      for label in domain:gmatch("[^.]+") do n = n + 1 end
      local list = ("<news.lists.example.org>"):gsub("[<>]", "")
      return user .. "|" .. domain .. "|" .. n .. "|" .. list .. "|" ..
        tostring(("x"):rep(200):find("y", 1, true))]])
    assert.is_true(ok, a)
    assert.equal('alice.smith|mail.example.com|3|news.lists.example.org|nil', a)
  end)

  it('refuses a string of 2 GB at once', function()
    local ok, msg, code, secs = run('local s = string.rep("x", 2^31 - 64)\nreturn #s', 10000000)
    assert.is_false(ok)
    assert.equal('runtime', code)
    assert.matches('t%.lua:1: string%.rep: a result of 2147483584 bytes is over the limit', msg)
    assert.is_true(secs < 1)
    for _, call in ipairs({ 'string.format("%s%s", big, big)', 'table.concat({big, big, big})',
                            'big:gsub("x", "%0%0")', 'big:gsub("x", function() return big end)' }) do
      ok, msg = run('local big = ("x"):rep(600000)\nreturn ' .. call, 10000000)
      assert.is_false(ok, call)
      assert.matches('over the limit', msg, 1, true)
    end
  end)

  it('a refused call is an ordinary error the script may catch', function()
    local ok, res = run('local ok = pcall(string.rep, "x", 1e9)\nreturn ok')
    assert.is_true(ok)
    assert.is_false(res)
  end)

  it('charges what the calls do: many costly calls stop at the work budget', function()
    local ok, msg, code = run([[local s = ("a"):rep(900)
      while true do pcall(string.find, s, "a*b") end]], 1000000)
    assert.is_false(ok)
    assert.equal('budget', code)
    assert.matches('t%.lua:%d+: ', msg)
  end)
end)

describe('site sandbox: memory', function()
  it('stops a string doubled by concatenation before it grows large', function()
    local ok, msg, code = run('local s = "x"\nfor i = 1, 40 do s = s .. s end\nreturn #s', 10000000)
    assert.is_false(ok)
    assert.equal('budget', code)
    assert.matches('t%.lua:2: memory limit exceeded', msg)
  end)

  it('stops a table that grows without end', function()
    local ok, msg, code = run('local t = {}\nfor i = 1, 1e8 do t[i] = i end', 1e9)
    assert.is_false(ok)
    assert.equal('budget', code)
    assert.matches('memory limit exceeded', msg, 1, true)
  end)

  it('garbage is not growth', function()
    local ok, n = run([[local n = 0
      for i = 1, 3000 do local s = ("y"):rep(10000); n = n + #s end
      return n]], 1000000)
    assert.is_true(ok, n)
    assert.equal(30000000, n)
  end)

  it('pcall cannot catch a bound', function()
    local ok, _, code = run('while true do pcall(function() local s = "x" for i = 1, 40 do ' ..
      's = s .. s end end) end', 1e9)
    assert.is_false(ok)
    assert.equal('budget', code)
  end)
end)

describe('site sandbox: the host afterwards', function()
  it('gets its own string methods back', function()
    local before = getmetatable('').__index
    run('return ("a"):rep(3)')
    run('error("x")')
    run('while true do end')
    assert.equal(before, getmetatable('').__index)
    assert.equal(string, getmetatable('').__index)
    -- The host's own calls are not bounded.
    assert.equal(2 * 1024 * 1024, #(('x'):rep(2 * 1024 * 1024)))
  end)

  it('the pattern bound: anchored patterns and plain finds cost less', function()
    assert.equal(101 * 4, sandbox.pattern_cost(100, 'abc', true))
    assert.is_true(sandbox.pattern_cost(100, '^a*b', false, true) < sandbox.pattern_cost(100, 'a*b'))
    assert.is_true(sandbox.pattern_cost(30000, 'a-a-a-a-a-a-a-b') > 1e30)
    -- Quantifier characters inside sets and escapes are literals.
    assert.equal(sandbox.pattern_cost(50, 'abcdefg'), sandbox.pattern_cost(50, '[*+-]%-'))
    assert.is_true(sandbox.pattern_cost(50, 'abcdefg') < sandbox.pattern_cost(50, 'abcdef*'))
  end)
end)
