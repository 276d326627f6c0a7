-- dmarc.redis.cluster: key slots (CRC16/XMODEM) and routing with MOVED/ASK, on
-- fake nodes; the real 3-master cluster is in tests/integration.
local cluster = require 'dmarc.redis.cluster'
local fake_redis = dofile('tests/lua/report_fake_redis.lua')

describe('cluster key slots', function()
  it('cluster__crc16_matches_the_specification', function()
    -- Redis Cluster specification: CRC16/XMODEM of "123456789" is 0x31C3.
    assert.equal(0x31C3, cluster.crc16('123456789'))
    assert.equal(12182, cluster.key_slot('foo'))
    assert.equal(5061, cluster.key_slot('bar'))
  end)

  it('cluster__hash_tags', function()
    assert.equal(cluster.key_slot('{user1000}.following'), cluster.key_slot('{user1000}.followers'))
    assert.equal(cluster.key_slot('user1000'), cluster.key_slot('{user1000}.following'))
    -- empty tag: the whole key counts; only the first { ... } pair counts
    assert.equal(cluster.crc16('foo{}{bar}') % 16384, cluster.key_slot('foo{}{bar}'))
    assert.equal(cluster.key_slot('{bar'), cluster.key_slot('foo{{bar}}zap'))
    assert.equal(cluster.key_slot('example.com'),
                 cluster.key_slot('dmarc:rpt:{example.com}:20251121:meta'))
  end)

  it('cluster__command_keys', function()
    assert.equal('k', cluster.command_key({ 'EVAL', 'script', '2', 'k', 'k2' }))
    assert.is_nil(cluster.command_key({ 'EVAL', 'script', '0' }))
    assert.equal('k', cluster.command_key({ 'HGETALL', 'k' }))
    assert.is_nil(cluster.command_key({ 'PING' }))
  end)
end)

-- Three fake masters splitting the slots like `redis-cli --cluster create`.
local RANGES = { { 0, 5460, 'n1:1' }, { 5461, 10922, 'n2:2' }, { 10923, 16383, 'n3:3' } }

local function fake_cluster()
  local nodes = {}
  local owner = function(slot)
    for _, r in ipairs(RANGES) do if slot >= r[1] and slot <= r[2] then return r[3] end end
  end
  for _, r in ipairs(RANGES) do
    local node = fake_redis.new()
    local addr = r[3]
    local exec = node.exec
    node.exec = function(self, cmd)
      local name = cmd[1]:upper()
      if name == 'CLUSTER' then
        local out = {}
        for i, rr in ipairs(RANGES) do
          local h, p = rr[3]:match('^(.-):(%d+)$')
          out[i] = { rr[1], rr[2], { h, tonumber(p), 'id' .. i } }
        end
        return out
      end
      if name == 'ASKING' then
        self.asking = true
        return { ok = 'OK' }
      end
      local key = cluster.command_key(cmd)
      if key then
        local slot = cluster.key_slot(key)
        if self.migrating and self.migrating[slot] and not self.asking then
          return { err = 'ASK ' .. slot .. ' ' .. self.migrating[slot] }
        end
        if owner(slot) ~= addr and not self.asking then
          return { err = 'MOVED ' .. slot .. ' ' .. owner(slot) }
        end
      end
      self.asking = false
      return exec(self, cmd)
    end
    nodes[addr] = node
  end
  local function connect(host, port)
    return nodes[host .. ':' .. port] or nil, 'refused', 'io'
  end
  return nodes, connect
end

describe('cluster router', function()
  it('cluster__routes_by_slot', function()
    local nodes, connect = fake_cluster()
    local c = assert(cluster.new { nodes = { 'n1:1' }, connect = connect })
    assert.same({ 'n1:1', 'n2:2', 'n3:3' }, c:nodes())
    local replies = c:pipeline({ { 'HSET', 'foo', 'f', '1' }, { 'HSET', 'bar', 'f', '2' } })
    assert.same({ 1, 1 }, replies)
    assert.is_table(nodes['n3:3'].data.foo) -- slot 12182
    assert.is_table(nodes['n1:1'].data.bar) -- slot 5061
  end)

  it('cluster__follows_moved_and_updates_the_map', function()
    local nodes, connect = fake_cluster()
    local c = assert(cluster.new { nodes = { 'n1:1' }, connect = connect })
    -- A stale map entry sends 'foo' to n1, which answers MOVED.
    c.slots[cluster.key_slot('foo')] = 'n1:1'
    assert.equal(1, c:command('HSET', 'foo', 'f', 'v'))
    assert.is_table(nodes['n3:3'].data.foo)
    assert.equal('n3:3', c.slots[cluster.key_slot('foo')])
  end)

  it('cluster__follows_ask_once', function()
    local nodes, connect = fake_cluster()
    local c = assert(cluster.new { nodes = { 'n1:1' }, connect = connect })
    nodes['n3:3'].migrating = { [cluster.key_slot('foo')] = 'n2:2' }
    assert.equal(1, c:command('HSET', 'foo', 'f', 'v'))
    assert.is_table(nodes['n2:2'].data.foo)
    -- ASK does not change the map
    assert.equal('n3:3', c.slots[cluster.key_slot('foo')])
  end)

  it('cluster__unreachable_node_fails_only_its_commands', function()
    local nodes, connect = fake_cluster()
    local c = assert(cluster.new { nodes = { 'n1:1' }, connect = connect })
    nodes['n3:3'].down = true
    local replies = c:pipeline({ { 'HSET', 'foo', 'f', '1' }, { 'HSET', 'bar', 'f', '2' } })
    assert.is_string(replies[1].err)
    assert.equal(1, replies[2])
  end)

  it('cluster__scan_covers_every_master', function()
    local nodes, connect = fake_cluster()
    local c = assert(cluster.new { nodes = { 'n2:2' }, connect = connect })
    c:pipeline({ { 'HSET', 'dmarc:rpt:{a.example}:20251121', 'f', '1' },
                 { 'HSET', 'dmarc:rpt:{b.example}:20251121', 'f', '1' },
                 { 'HSET', 'dmarc:rpt:{c.example}:20251121', 'f', '1' },
                 { 'HSET', 'dmarc:rpt:{d.example}:20251121', 'f', '1' } })
    local keys = assert(cluster.scan(c, 'dmarc:rpt:{*}:20251121'))
    table.sort(keys)
    assert.equal(4, #keys)
    local used = 0
    for _, n in pairs(nodes) do if next(n.data) then used = used + 1 end end
    assert.is_true(used >= 2)
  end)

  it('cluster__no_seed_reachable', function()
    local _, _, code = cluster.new { nodes = { 'nowhere:9' }, connect = function() return nil, 'x', 'io' end }
    assert.equal('io', code)
  end)
end)
